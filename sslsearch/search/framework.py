"""The private members of Ray Tune and Optuna that sslsearch relies on, named once and checked.

Ray's OptunaSearch hands the searcher no public way to report intermediate values, to tell Optuna a
trial was pruned, or to re-ask an errored trial (docs/sweeps.md), so SweepSearcher works on its
Optuna study and trial table; PairedASHA asks the controller to checkpoint a twin it pauses. These
are not APIs: pyproject.toml bounds ray[tune] and optuna at the versions tested, `check()` refuses
to start a sweep with one line when a member is missing, and tests/test_framework_contract.py fails
when an upgrade removes one.
"""

from __future__ import annotations

import importlib

# (where, member, what sslsearch uses it for)
OPTUNA_SEARCH_MEMBERS = (
    ("ray.tune.search.optuna.OptunaSearch", "_ot_study", "the Optuna study: enqueue, ask, tell, snapshot"),
    ("ray.tune.search.optuna.OptunaSearch", "_ot_trials", "Ray trial id -> Optuna trial: report at step = epoch"),
    ("ray.tune.search.optuna.OptunaSearch", "_completed_trials", "trials already told to Optuna"),
    ("ray.tune.search.optuna.OptunaSearch", "_space", "the distributions, to re-ask an errored trial"),
)
CONTROLLER_MEMBERS = (
    ("ray.tune.execution.tune_controller.TuneController", "_mark_trial_to_checkpoint",
     "PairedASHA: checkpoint a twin it pauses at a rung"),
)
# Classes whose method we override or whose instance attribute we read: (module, class, member, why).
CLASS_MEMBERS = (
    ("ray.tune.logger.logger", "LoggerCallback", "_restore_from_remote",
     "search/trial_logs.py: a paused twin's restart must not copy a stale result.json over the driver's"),
)
INSTANCE_MEMBERS = (
    ("ray.train._internal.checkpoint_manager", "_CheckpointManager", "_checkpoint_results",
     "search/retention.py: the checkpoints Ray keeps per trial, pruned of folders already gone"),
)
TUNER_MEMBERS = (
    ("ray.tune.Tuner", "_local_tuner", "the run config a restored Tuner unpickled: its SlotUse callback's figure"),
)

# Ray's log line when TuneController cannot restore a saved experiment; it then starts the experiment over with no
# trials (ray 2.x, tune_controller.py). saved_state.refusing_a_failed_restore stops there instead; its test,
# tests/test_faults.py::test_a_saved_state_ray_cannot_restore_is_refused_before_anything_runs, fails if this changes.
RESTORE_FAILED_LOG = ("ray.tune.execution.tune_controller", "Failed to restore the run state.")

MODULE_MEMBERS = (
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER", "connect_ray: a local sweep's Ray listens on 127.0.0.1 only"),
)


def missing_members() -> list[str]:
    """The members above that the installed Ray lacks, as `Class.member` strings."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    missing = []
    searcher = OptunaSearch(space=None, metric="val_acc", mode="max")   # no space: builds no study
    for where, member, _ in OPTUNA_SEARCH_MEMBERS:
        if not hasattr(searcher, member):
            missing.append(f"{where}.{member}")
    for where, member, _ in CONTROLLER_MEMBERS:
        if not hasattr(TuneController, member):
            missing.append(f"{where}.{member}")
    for module, cls, member, _ in CLASS_MEMBERS:
        if not hasattr(getattr(importlib.import_module(module), cls, None), member):
            missing.append(f"{module}.{cls}.{member}")
    for module, cls, member, _ in INSTANCE_MEMBERS:
        owner = getattr(importlib.import_module(module), cls, None)
        try:
            instance = owner(checkpoint_config=None) if owner is not None else None
        except Exception:  # noqa: BLE001 — a constructor that changed is a change too
            instance = None
        if not hasattr(instance, member):
            missing.append(f"{module}.{cls}.{member}")
    for where, member, _ in MODULE_MEMBERS:
        if not hasattr(importlib.import_module(where), member):
            missing.append(f"{where}.{member}")
    from ray import tune

    for where, member, _ in TUNER_MEMBERS:   # instance attributes, declared on the class
        if member not in getattr(tune.Tuner, "__annotations__", {}):
            missing.append(f"{where}.{member}")
    return missing


def check() -> None:
    """Refuse, in one line (InputError: exit code 2), to run with a Ray whose private members moved."""
    missing = missing_members()
    if missing:
        import optuna
        import ray

        from sslsearch.errors import InputError

        raise InputError(f"this ray {ray.__version__} / optuna {optuna.__version__} lacks {', '.join(missing)}, "
                           "which sslsearch needs; install the versions pyproject.toml allows")
