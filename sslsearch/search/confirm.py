"""The confirmation stage: re-measure a sweep's top configurations with fresh seeds at the full budget.

A sweep explores: each configuration runs once, on one seed, and ASHA stops most of them early.
Its winner is the best of many noisy measurements, so its score is biased upward (the winner's
curse). `run_confirm` takes the top-K configurations of each loss by the sweep's own ranking and
runs each with N seeds that no sweep trial used, FIFO, every trial to the last epoch. The
leaderboard then ranks configurations by their mean over seeds and compares the losses on these
runs (sslsearch.analysis.leaderboard).

Pairing: the k-th ranked barlow configuration and the k-th ranked hsic configuration run with the
same seed and form pair `k * N + j` (seed j): each loss with its own tuned settings, the same
initialisation seed and data order. `--top 2 --seeds 3` gives 6 pairs, the fewest with which an
exact two-sided test can reach p < 0.05.

Records: Ray keeps the stage in `<sweep folder>/confirm` (a Tuner of its own, restorable like a
sweep); MLflow keeps it in the sweep's parent run, child runs tagged `sslsearch.stage=confirm`
(the tracking callback, built by the caller with `stage="confirm"`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from sslsearch.errors import InputError
from sslsearch.processes import sigint_restored
from sslsearch.search.experiment import Experiment, experiment_from_dict
from sslsearch.search.folder import CONFIRM_DIR, PLAN_FILE
from sslsearch.search.outcomes import METRIC, OUTCOMES
from sslsearch.search.retention import CheckpointRetention
from sslsearch.search.space import Parameter, SearchSpace
from sslsearch.search.sweep import (
    SweepSummary,
    _concurrency,
    _local_path,
    _quiet,
    _read_text,
    _trainable,
    _write_text,
    check_resources,
    connect_ray,
    make_tuner,
    summarize,
    sweep_metadata,
    sweep_path,
)
from sslsearch.search.sweeplock import SweepLock, check_owned
from sslsearch.search.trial_config import PAIR, SEED, make_trial_config, sampled_params, trial_value

STAGE = "confirm"                # the MLflow tag value of its child runs (tracking.STAGE)


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
    epochs, less wall time, trial id). Only trials that reported after epoch 0 (epoch 0 is the random
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
    rows.sort(key=lambda r: r["trial_id"])
    rows.sort(key=lambda r: (-r["val_acc"], -r["epoch"], r["trial_seconds"]))
    return rows


def _used_seeds(path: str, base_seed: int) -> set[int]:
    seeds = {int(base_seed)}
    for trial in tune.ExperimentAnalysis(path).trials:
        if trial.config.get(SEED) is not None:
            seeds.add(int(trial.config[SEED]))
    return seeds


def plan_confirmation(ranking: list[dict], used_seeds: set[int], top: int, seeds: int) -> dict:
    """The configurations to confirm: the top `top` distinct configurations of each loss, each with
    `seeds` seeds above every seed the sweep used; one point (a trial's config) per configuration and seed."""
    if top < 1 or seeds < 1:
        raise InputError(f"--top and --seeds must be ≥ 1, got --top {top} --seeds {seeds}")
    chosen: dict[str, list[dict]] = {}
    for row in ranking:
        picked = chosen.setdefault(row["loss"], [])
        key = json.dumps(row["params"], sort_keys=True)
        if len(picked) < top and key not in {json.dumps(p["params"], sort_keys=True) for p in picked}:
            picked.append(row)
    if not chosen:
        raise InputError("the sweep has no finished trial that reported after epoch 0; nothing to confirm")
    first = max(used_seeds) + 1
    fresh = list(range(first, first + seeds))
    points = []
    for loss in sorted(chosen):
        for k, row in enumerate(chosen[loss]):
            for j, seed in enumerate(fresh):
                points.append({**row["params"], "loss": loss, SEED: seed, PAIR: k * seeds + j})
    configurations = [{"loss": loss, "rank": k + 1, "params": row["params"], "search_trial": row["trial_id"],
                       "search_val_acc": row["val_acc"], "search_epoch": row["epoch"]}
                      for loss in sorted(chosen) for k, row in enumerate(chosen[loss])]
    return {"top": top, "seeds": fresh, "configurations": configurations, "points": points}


def confirm_path(name: str, storage: str) -> str:
    local = _local_path(storage)
    return f"{sweep_path(str(local.resolve()) if local else storage, name)}/{CONFIRM_DIR}"


def read_plan(name: str, storage: str) -> dict | None:
    """The confirmation plan of a sweep, or None if `confirm` never started for it."""
    try:
        return json.loads(_read_text(f"{confirm_path(name, storage)}/{PLAN_FILE}"))
    except (FileNotFoundError, OSError):
        return None


def run_confirm(name: str, storage: str, *, top: int, seeds: int, address: str | None = None,
                callbacks: list | None = None, quiet: bool = False) -> SweepSummary:
    """Run (or continue) the confirmation stage of sweep `name`: Ray records in `<sweep>/confirm`.

    Called again after an interruption, it continues the same trials from their checkpoints (the
    callbacks then come back from Ray's saved state, as in `resume_sweep`). A finished stage is
    not run twice; asking for a different --top or --seeds than the stage was started with is refused.
    """
    local = _local_path(storage)
    storage = str(local.resolve()) if local is not None else storage
    experiment, _ = confirm_experiment(name, storage)
    path = confirm_path(name, storage)
    plan = read_plan(name, storage)
    if plan is not None and (plan["top"], len(plan["seeds"])) != (top, seeds):
        raise InputError(f"sweep {name!r} was confirmed with --top {plan['top']} --seeds {len(plan['seeds'])}; "
                         f"run `sslsearch confirm {name} --top {plan['top']} --seeds {len(plan['seeds'])}` to continue it")
    _quiet()
    connect_ray(address)
    check_resources(experiment, address)
    if plan is not None and tune.Tuner.can_restore(path):
        return _fit(tune.Tuner.restore(path, trainable=_trainable(experiment), resume_unfinished=True,
                                       resume_errored=True), name, path, experiment)
    if plan is None:
        sweep = sweep_path(storage, name)
        plan = plan_confirmation(search_ranking(sweep), _used_seeds(sweep, experiment.pretrain.seed), top, seeds)
        # Written before any trial starts: a stage killed before Ray saved its state starts again
        # from this same plan (no trial had run, so nothing is recorded twice).
        _write_text(f"{path}/{PLAN_FILE}", json.dumps(plan, indent=2))
    points = plan["points"]
    if not quiet:
        print(f"confirm {name}: {len(plan['configurations'])} configurations × {len(plan['seeds'])} seeds "
              f"{plan['seeds']} = {len(points)} trials of {experiment.pretrain.epochs} epochs; records in {path}", flush=True)
    sampled = sorted({k for p in points for k in sampled_params(p)})
    tuner = make_tuner(
        experiment, name=CONFIRM_DIR, storage=sweep_path(storage, name), scheduler=FIFOScheduler(), num_samples=len(points),
        search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=experiment.search.max_concurrent),
        # The sampled keys are placeholders that each point fills in (BasicVariantGenerator refuses unknown keys).
        param_space=make_trial_config(experiment.pretrain.to_dict(), cpus=experiment.resources.cpus_per_trial,
                                      **{k: None for k in (*sampled, SEED, PAIR)}),
        callbacks=[CheckpointRetention(experiment.tracking.checkpoints), *(callbacks or [])])
    return _fit(tuner, name, path, experiment)


def _fit(tuner, name: str, path: str, experiment: Experiment) -> SweepSummary:
    started = time.monotonic()
    lock = SweepLock(str(Path(path).parent), name, "confirm") if "://" not in path else None
    with lock.acquire() if lock is not None else contextlib.nullcontext(), sigint_restored():   # one writer per sweep
        results = tuner.fit()
    return summarize(results, name, path, time.monotonic() - started, _concurrency(experiment), None)


def format_stage(summary: SweepSummary) -> str:
    """One line on the stage's trials; the figures themselves are the leaderboard's (means over seeds,
    never the best seed, which would bring the winner's curse back)."""
    counts = {o: sum(t.outcome == o for t in summary.trials) for o in OUTCOMES}
    line = (f"confirm {summary.name}: {len(summary.trials)} trials "
            f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)}), wall {summary.wall_seconds:.0f}s")
    if summary.unfinished:
        line += f"\ninterrupted; continue with: sslsearch confirm {summary.name} (or sslsearch resume {summary.name})"
    return line


