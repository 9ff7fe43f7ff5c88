"""The confirmation stage: re-measure a sweep's best settings with fresh seeds at the full budget.

A sweep explores: each configuration runs once, on one seed, and ASHA stops most of them early.
Its winner is the best of many noisy measurements, so its score is biased upward (the winner's
curse). `run_confirm` re-runs the sweep's best settings with both losses and N seeds that no sweep
trial used, FIFO, every trial to the last epoch. The leaderboard then ranks the configurations by
their mean over seeds, and the verdict compares the losses on these runs' `test_acc`
(sslsearch.analysis.verdict): the test split is read by no selection step.

Design (`plan_confirmation`): by default ("shared") the top K settings (λ, lr, feature_dim) of the
sweep, ranked by the mean over the losses of their trials' val_acc (a pair's two twins), each run
with both losses; `--design per-loss` runs each loss's own top K configurations instead (tuned
against tuned: under two equally good losses it calls a difference 11–15 % of the time at α = 0.05,
because the two chosen configurations differ in truth after selection; docs/sweeps.md#confirmation).

Independent replicates: seed j is one block, run by every confirmed configuration of both losses
(same initialisation seed, data order and augmentation draws); different blocks share nothing.
So n = the number of seed blocks, whatever K is: a block's difference is the mean of its K hsic
runs minus the mean of its K barlow runs, never K × seeds pairs.

Records: Ray keeps the stage in `<sweep folder>/confirm` (a Tuner of its own, restorable like a
sweep); MLflow keeps it in the sweep's parent run, child runs tagged `sslsearch.stage=confirm`
(the tracking callback, built by the caller with `stage="confirm"`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from sslsearch.errors import InputError
from sslsearch.search.experiment import Experiment, experiment_from_dict
from sslsearch.search.folder import CONFIRM_DIR, PLAN_FILE
from sslsearch.search.outcomes import METRIC, OUTCOMES, ranking_key
from sslsearch.search.retention import CheckpointRetention
from sslsearch.search.saved_state import (
    IntactStateCopy,
    NoIntactState,
    RestoreFailed,
    recover_saved_state,
    set_aside_saved_state,
)
from sslsearch.search.space import Parameter, SearchSpace
from sslsearch.search.sweep import (
    StopOnFullDisk,
    SweepSummary,
    _concurrency,
    _local_path,
    _quiet,
    _read_text,
    _run_callbacks,
    _trainable,
    _write_text,
    check_resources,
    connect_ray,
    fit_stopping_on_os_errors,
    make_tuner,
    summarize,
    sweep_metadata,
    sweep_path,
)
from sslsearch.search.sweeplock import SweepLock, check_owned
from sslsearch.search.trial_config import PAIR, SEED, make_trial_config, sampled_params, trial_value
from sslsearch.search.trial_logs import trial_loggers

STAGE = "confirm"                # the MLflow tag value of its child runs (tracking.STAGE)
DESIGNS = ("shared", "per-loss")  # see plan_confirmation
TOP, SEEDS, DESIGN = 1, 8, "shared"  # the defaults: one setting, 8 seed blocks (the power in docs/sweeps.md)


def confirm_experiment(name: str, storage: str) -> tuple[Experiment, SearchSpace]:
    """The experiment and search space a sweep ran with, from its folder, without the sweep's time
    budget: confirmation runs every trial to its last epoch (and the tracking callback must not
    take an interruption for the budget running out)."""
    meta = sweep_metadata(name, storage)
    local = _local_path(storage)
    if local is not None:   # confirm unpickles the sweep's saved state and its confirm/ stage's: the user's own only
        check_owned(Path(sweep_path(str(local.resolve()), name)), "confirm")
    experiment = experiment_from_dict(meta["experiment"], meta.get("experiment_source"))
    experiment = dataclasses.replace(experiment, search=dataclasses.replace(experiment.search, time_budget_s=None))
    parameters = tuple(Parameter(**{**p, "values": tuple(p["values"]) if p.get("values") is not None else None})
                       for p in meta["space"].values())
    return experiment, SearchSpace(parameters, source=meta.get("space_source"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def search_ranking(path: str) -> list[dict]:
    """The sweep's finished trials in the leaderboard's order (val_acc of the final report, then more
    epochs, then the smaller trial id: outcomes.RANK_ORDER). Only trials that reported after epoch 0 (epoch 0 is the random
    initialisation) and ended normally are ranked."""
    rows = []
    for trial in tune.ExperimentAnalysis(path).trials:
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0) or 0)
        if trial.status != "TERMINATED" or epoch < 1 or not _finite(result.get(METRIC)):
            continue
        config = trial.config
        rows.append({"trial_id": trial.trial_id, "loss": trial_value(config, "loss"), "params": sampled_params(config),
                     "seed": trial_value(config, SEED), "val_acc": float(result[METRIC]),
                     "epoch": epoch, "trial_seconds": float(result.get("trial_seconds", 0.0) or 0.0)})
    return rank_search_rows(rows)


def rank_search_rows(rows: list[dict]) -> list[dict]:
    """Ranking rows in the leaderboard's order (outcomes.ranking_key: val_acc, then more epochs, then trial id)."""
    return sorted(rows, key=lambda r: ranking_key(r["val_acc"], r["epoch"], r["trial_id"]))


def _used_seeds(path: str, base_seed: int) -> set[int]:
    seeds = {int(base_seed)}
    for trial in tune.ExperimentAnalysis(path).trials:
        if trial.config.get(SEED) is not None:
            seeds.add(int(trial.config[SEED]))
    return seeds


def _setting(params: dict) -> str:
    """A configuration without its loss, as a key (what twins share)."""
    return json.dumps({k: v for k, v in params.items() if k != "loss"}, sort_keys=True)


def _shared_settings(ranking: list[dict], top: int) -> list[str]:
    """The `top` settings (λ, lr, feature_dim, ...) whose trials score best on average over the losses: each loss's
    best trial of the setting counts once, so neither loss's luck alone picks it (pairs: the mean of the twins)."""
    best: dict[str, dict[str, dict]] = {}
    for row in ranking:   # in ranking order: the first row of a loss is its best
        best.setdefault(_setting(row["params"]), {}).setdefault(row["loss"], row)
    scored = [(-sum(r["val_acc"] for r in rows.values()) / len(rows), -min(r["epoch"] for r in rows.values()), i, key)
              for i, (key, rows) in enumerate(best.items())]
    return [key for *_, key in sorted(scored)[:top]]


def plan_confirmation(ranking: list[dict], used_seeds: set[int], top: int, seeds: int, design: str = "shared") -> dict:
    """The configurations to confirm and their runs: `seeds` fresh seeds (above every seed the sweep used),
    each one block run by every confirmed configuration of both losses.

    design "shared" (the default): the `top` best settings of the sweep (`_shared_settings`), each run with both
    losses, so a block compares the losses at the same settings; "per-loss": the `top` best distinct
    configurations of each loss (tuned against tuned; docs/sweeps.md shows why that is not the default).
    """
    if top < 1 or seeds < 1:
        raise InputError(f"--top and --seeds must be ≥ 1, got --top {top} --seeds {seeds}")
    if design not in DESIGNS:
        raise InputError(f"unknown confirmation design {design!r}; expected one of {', '.join(DESIGNS)}")
    if not ranking:
        raise InputError("the sweep has no finished trial that reported after epoch 0; nothing to confirm")
    losses = sorted({row["loss"] for row in ranking})
    chosen: dict[str, list[tuple[dict, dict | None]]] = {}   # loss → [(params, the search trial's row or None)]
    if design == "shared":
        settings = _shared_settings(ranking, top)
        for loss in losses:
            for key in settings:
                row = next((r for r in ranking if r["loss"] == loss and _setting(r["params"]) == key), None)
                chosen.setdefault(loss, []).append(({**json.loads(key), "loss": loss}, row))
    else:
        for row in ranking:
            picked = chosen.setdefault(row["loss"], [])
            if len(picked) < top and _setting(row["params"]) not in {_setting(p) for p, _ in picked}:
                picked.append((row["params"], row))
    first = max(used_seeds) + 1
    fresh = list(range(first, first + seeds))
    # Seed j is block j for every configuration of both losses; `pair` numbers the (rank, seed) units.
    points = [{**params, "loss": loss, SEED: seed, PAIR: k * seeds + j}
              for loss in losses for k, (params, _) in enumerate(chosen[loss]) for j, seed in enumerate(fresh)]
    configurations = [{"loss": loss, "rank": k + 1, "params": params,
                       "search_trial": row["trial_id"] if row else None, "search_val_acc": row["val_acc"] if row else None,
                       "search_epoch": row["epoch"] if row else None}
                      for loss in losses for k, (params, row) in enumerate(chosen[loss])]
    return {"top": top, "design": design, "seeds": fresh, "configurations": configurations, "points": points}


def confirm_path(name: str, storage: str) -> str:
    local = _local_path(storage)
    return f"{sweep_path(str(local.resolve()) if local else storage, name)}/{CONFIRM_DIR}"


def read_plan(name: str, storage: str) -> dict | None:
    """The confirmation plan of a sweep, or None if `confirm` never started for it."""
    try:
        return json.loads(_read_text(f"{confirm_path(name, storage)}/{PLAN_FILE}"))
    except (FileNotFoundError, OSError):
        return None


def run_confirm(name: str, storage: str, *, top: int, seeds: int, design: str | None = None, address: str | None = None,
                callbacks: list | None = None, quiet: bool = False, trainable=None) -> SweepSummary:
    """Run (or continue) the confirmation stage of sweep `name`: Ray records in `<sweep>/confirm`.

    Called again after an interruption, it continues the same trials from their checkpoints (the
    callbacks then come back from Ray's saved state, as in `resume_sweep`). A finished stage is
    not run twice; asking for a different --top, --seeds or --design than the stage was started with is
    refused. `design` None: the started stage's, else DESIGN (plans written before designs existed were per-loss).
    `trainable` replaces the real trial, as in `run_sweep` (e.g. `synthetic.synthetic_trainable(...)`).
    As the search does, the stage stops at the first trial that fails for want of disk space (SweepStopped: the
    summary and `sslsearch confirm NAME`), keeps an intact copy of Ray's saved state, and is continued from that
    copy when the full disk cut Ray's own short. Unlike the search, a stage whose saved state Ray cannot restore
    (and no copy mends) starts its trials again from its plan, with one warning: its trials are fixed by the plan.
    """
    local = _local_path(storage)
    storage = str(local.resolve()) if local is not None else storage
    experiment, _ = confirm_experiment(name, storage)
    path = confirm_path(name, storage)
    plan = read_plan(name, storage)
    if plan is not None:
        started = (plan["top"], len(plan["seeds"]), plan.get("design", "per-loss"))
        if (top, seeds, design or started[2]) != started:
            raise InputError(f"sweep {name!r} was confirmed with --top {started[0]} --seeds {started[1]} --design {started[2]}; "
                             f"run `sslsearch confirm {name} --top {started[0]} --seeds {started[1]} --design {started[2]}` "
                             "to continue it")
    _quiet()
    connect_ray(address)
    check_resources(experiment, address)
    if plan is not None and tune.Tuner.can_restore(path) and _recovered(Path(path), name, local is not None):
        tuner = tune.Tuner.restore(path, trainable=_trainable(experiment, trainable), resume_unfinished=True,
                                   resume_errored=True)
        # Ray restores the stage's callbacks as they were pickled: a tracking callback keeps its old URI unless told
        # the one this call was given (`confirm/resume --tracking-uri`), as resume_sweep does for the search.
        uri = next((c.uri for c in callbacks or [] if hasattr(c, "use_tracking_uri")), None)
        for callback in _run_callbacks(tuner) if uri is not None else []:
            if hasattr(callback, "use_tracking_uri") and callback.uri != uri:
                callback.use_tracking_uri(uri)
        try:
            return _fit(tuner, name, path, experiment, len(plan["points"]))
        except RestoreFailed as refused:
            if local is None:   # a remote store's files are not ours to move
                raise
            # Nothing ran (RestoreFailed stops Ray before any trial or save), and the stage's trials are fixed by its
            # plan: they start again from it, as when no intact copy existed (`_recovered`), rather than stop here.
            aside = set_aside_saved_state(Path(path))
            print(f"warning: Ray could not restore the saved state of sweep {name}'s confirmation stage "
                  f"({refused.cause}); its trials start again from its plan (that state kept in {aside})",
                  file=sys.stderr, flush=True)
    if plan is None:
        sweep = sweep_path(storage, name)
        plan = plan_confirmation(search_ranking(sweep), _used_seeds(sweep, experiment.pretrain.seed), top, seeds,
                                 design or DESIGN)
        # Written before any trial starts: a stage killed before Ray saved its state starts again
        # from this same plan (no trial had run, so nothing is recorded twice).
        _write_text(f"{path}/{PLAN_FILE}", json.dumps(plan, indent=2))
    points = plan["points"]
    if not quiet:
        losses = sorted({c["loss"] for c in plan["configurations"]})
        print(f"confirm {name}: {len(plan['configurations'])} configurations ({', '.join(losses)}) × {len(plan['seeds'])} "
              f"seeds {plan['seeds']} = {len(points)} trials of {experiment.pretrain.epochs} epochs; n = "
              f"{len(plan['seeds'])} seed blocks (seed j runs every configuration of both losses); records in {path}",
              flush=True)
    sampled = sorted({k for p in points for k in sampled_params(p)})
    tuner = make_tuner(
        experiment, name=CONFIRM_DIR, storage=sweep_path(storage, name), scheduler=FIFOScheduler(), num_samples=len(points),
        trainable=trainable,
        search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=experiment.search.max_concurrent),
        # The sampled keys are placeholders that each point fills in (BasicVariantGenerator refuses unknown keys).
        param_space=make_trial_config(experiment.pretrain.to_dict(), cpus=experiment.resources.cpus_per_trial,
                                      **{k: None for k in (*sampled, SEED, PAIR)}),
        callbacks=[StopOnFullDisk(), *trial_loggers(), *([IntactStateCopy(path)] if local is not None else []),
                   CheckpointRetention(experiment.tracking.checkpoints), *(callbacks or [])])
    return _fit(tuner, name, path, experiment, len(points))


def _recovered(path: Path, name: str, local: bool) -> bool:
    """Whether Ray's saved state of the stage can be restored: intact, or put back from its intact copy after a full disk
    cut it short. If neither (the disk filled before the first copy), it is set aside and the stage starts again from
    its plan: the trials restart (`sync` then removes the runs of the old ones, which Ray no longer holds)."""
    if not local:
        return True
    try:
        recover_saved_state(path, name)
    except NoIntactState:
        aside = set_aside_saved_state(path)
        print(f"warning: the saved state of sweep {name}'s confirmation stage was cut short (a full disk?) before an "
              f"intact copy of it existed; its trials start again from its plan (damaged files kept in {aside})",
              file=sys.stderr, flush=True)
        return False
    return True


def _fit(tuner, name: str, path: str, experiment: Experiment, planned: int) -> SweepSummary:
    """The stage's fit, holding the sweep's lock; a full disk (any OS error) raises SweepStopped, as in the search.
    `planned`: the trials of the stage's plan (its summary's extra["planned"]: some may not have started)."""
    started, concurrency = time.monotonic(), _concurrency(experiment)
    lock = SweepLock(str(Path(path).parent), name, "confirm") if "://" not in path else None
    with lock.acquire() if lock is not None else contextlib.nullcontext():   # one writer per sweep
        results = fit_stopping_on_os_errors(tuner, name, path, started, concurrency, None,
                                            stage="the confirmation stage of sweep", then="confirm")
    summary = summarize(results, name, path, time.monotonic() - started, concurrency, None)
    summary.extra["planned"] = planned
    return summary


def _not_started(summary: SweepSummary) -> int:
    """The trials of the stage's plan that an interruption left unstarted (Ray never created them)."""
    return max(0, summary.extra.get("planned", 0) - len(summary.trials))


def stage_unfinished(summary: SweepSummary) -> int:
    """The stage's trials that have not ended: those interrupted, and those of its plan not yet started."""
    return summary.unfinished + _not_started(summary)


def format_stage(summary: SweepSummary, continue_with: str | None = None) -> str:
    """One line on the stage's trials; the figures themselves are the leaderboard's (means over seeds,
    never the best seed, which would bring the winner's curse back). `continue_with`: the command an interrupted stage
    names (the command line passes its own, with the flags and --storage it was given)."""
    counts = {o: sum(t.outcome == o for t in summary.trials) for o in OUTCOMES}
    # An interrupted stage may not have started every trial of its plan: those count as unfinished too.
    waiting = _not_started(summary)
    if waiting:
        counts["not started"] = waiting
    line = (f"confirm {summary.name}: {len(summary.trials) + waiting} trials "
            f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)}), wall {summary.wall_seconds:.0f}s")
    unfinished = stage_unfinished(summary)
    if unfinished:
        line += (f"\n{unfinished} unfinished; continue with: "
                 f"{continue_with or f'sslsearch confirm {summary.name} (or sslsearch resume {summary.name})'}")
    return line


