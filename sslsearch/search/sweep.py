"""Sweeps: a Ray Tune Tuner with Optuna sampling and ASHA early stopping (sslsearch.search.asha).

`SweepSearcher` keeps Optuna's study equal to what the trials reported (DESIGN.md, "One truth per trial"):
- every reported val_acc at step = epoch, including the report that got a trial stopped: Ray passes
  that one (and a completed trial's last report) only to `on_trial_complete`, never to `on_trial_result`;
- a trial stopped early by ASHA or the time budget is PRUNED, not COMPLETE with its truncated score
  (Ray's OptunaSearch tells COMPLETE, so TPE would learn from short trials as if they were final);
- a diverged trial (NaN/inf loss) is COMPLETE at chance-level val_acc, so TPE learns to avoid its
  region (told FAIL, TPE ignores it and keeps sampling there); FAIL is kept for real errors;
- an errored trial that `resume` runs again gets a fresh Optuna trial (same parameters, the reports
  so far) that learns the rerun's true outcome; the failed attempt stays FAIL.

What to try next comes from a second, in-memory study of configurations (sslsearch.search.proposals):
the sweep's study gets each proposal enqueued, so it keeps one Optuna trial per Ray trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.error import TuneError
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from sslsearch.errors import InputError, first_line
from sslsearch.method.data import prepare_dataset
from sslsearch.processes import ctrl_c_held, sigint_restored, sigterm_kept
from sslsearch.search import framework
from sslsearch.search.asha import PairedASHA, RungState, TwinAwareSearch
from sslsearch.search.experiment import Experiment, experiment_from_dict, ray_address
from sslsearch.search.folder import STUDY_FILE, SWEEP_FILE
from sslsearch.search.outcomes import FINISHED, METRIC, MODE, OUTCOMES, ranking_key, result_outcome, trial_outcome  # noqa: F401
from sslsearch.search.proposals import DEFAULT_PROPOSALS, ConfigurationStudy, ProposalSettings, configuration_sampler
from sslsearch.search.retention import CheckpointRetention, DiskUse, disk_use, size_text
from sslsearch.search.rungs import rung_epochs
from sslsearch.search.saved_state import IntactStateCopy, recover_saved_state, refusing_a_failed_restore
from sslsearch.search.slots import SlotUse
from sslsearch.search.space import SearchSpace, check_space
from sslsearch.search.sweeplock import SweepLock, check_owned, claim_sweep_folder, refuse_while_starting
from sslsearch.search.trainable import FALLBACK, run_trial
from sslsearch.search.trial_config import PAIR, SEED, make_trial_config, sampled_params, trial_value
from sslsearch.search.trial_logs import own_loggers_only, trial_loggers


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: concurrent trials see each other as provisional results, so they spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise InputError(f"unknown sampler {name!r}; expected tpe, random or gp")


def write_study_snapshot(study: optuna.Study, path: Path | str) -> None:
    """Write the study as an Optuna journal file that optuna-dashboard can open (atomic replace).

    `path` may be a URI of the sweep's remote storage: the snapshot is then written locally and copied.
    """
    if "://" in str(path):
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / STUDY_FILE
            write_study_snapshot(study, local)
            _write_bytes(str(path), local.read_bytes())
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp)))
        copy = optuna.create_study(storage=storage, study_name=study.study_name, directions=study.directions)
        copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
        os.replace(tmp, path)
    finally:  # a full disk must not leave a half-written snapshot behind (the previous one stays intact)
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".lock").unlink(missing_ok=True)


class SweepSearcher(OptunaSearch):
    """OptunaSearch that reports ASHA-stopped trials as PRUNED, pairs the loss variants, and proposes
    configurations from a configuration study (sslsearch.search.proposals)."""

    # A searcher pickled before the configuration study (a sweep started before issue 19, resumed) has none:
    # it samples its own study, as it did when it started.
    _configurations: ConfigurationStudy | None = None

    def __init__(self, space: SearchSpace, *, max_epochs: int, sampler: str | optuna.samplers.BaseSampler, seed: int,
                 paired: bool, study_name: str, study_path: str | None, scheduler: PairedASHA | None = None,
                 num_samples: int | None = None, proposals: ProposalSettings | None = DEFAULT_PROPOSALS):
        """`sampler`: make_sampler's name, or an Optuna sampler used as is (tests, benchmarks). `num_samples`: the
        sweep's trials (its configurations: half of them when paired), which startup is scaled to. `proposals`:
        how the configuration study proposes; None samples the sweep's own study directly (the searcher before
        issue 19: the replay benchmark's "old" methods)."""
        configurations = None if num_samples is None else num_samples // 2 if paired else num_samples
        if proposals is None:
            study_sampler = sampler if isinstance(sampler, optuna.samplers.BaseSampler) else make_sampler(sampler, seed)
        else:   # every trial of the sweep's study is enqueued with the proposed parameters: its sampler never samples
            study_sampler = optuna.samplers.RandomSampler(seed=seed)
        super().__init__(space=space.to_optuna(), metric=METRIC, mode=MODE, study_name=study_name, sampler=study_sampler)
        if proposals is not None:
            model = sampler if isinstance(sampler, optuna.samplers.BaseSampler) else configuration_sampler(
                sampler, seed, configurations, proposals)
            self._configurations = ConfigurationStudy(space.to_optuna(), model, paired=paired, twins=proposals.twins)
        self._max_epochs = max_epochs
        self._paired = paired
        self._seed = seed
        self._study_path = study_path
        self._partner: dict | None = None   # params waiting for their other-loss twin (without a configuration study)
        self._suggested = 0
        self._steps: dict[str, dict[int, float]] = {}   # trial id → the val_acc told to Optuna per epoch
        self.outcomes: dict[str, str] = {}
        # The sweep's PairedASHA, for its twins waiting at a rung (they hold no slot). Ray pickles searcher and
        # scheduler together in tuner.pkl, so the link survives Tuner.restore; `save` leaves it out.
        self._scheduler = scheduler

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # The searcher limits concurrency itself: Ray's ConcurrencyLimiter drops on_trial_complete for
        # a trial it does not count as live, such as an errored trial that `resume` runs again.
        self._max_concurrent = max_concurrent
        if getattr(self, "_scheduler", None) is not None:
            self._scheduler.slots = max_concurrent   # a released twin resumes into a free slot only
        return True

    def slots_taken(self) -> int:
        """Trials that hold a slot or wait for one: started or pending, not ended, not a twin paused at a rung.

        A twin waiting at a rung holds no actor, so it must not keep a new trial from starting (on a GPU
        cluster, an idle slot is an idle GPU). Paused twins stay bounded: each waits for a partner that holds
        or wants a slot, so at most `max_concurrent` wait, and TPE's constant-liar set stays below 2×."""
        live = len(self._ot_trials) - len(self._completed_trials)
        waiting = getattr(self, "_scheduler", None)
        if waiting is None:
            return live
        return live - sum(t in self._ot_trials and t not in self._completed_trials for t in waiting.waiting)

    def has_room(self) -> bool:
        """Whether a new trial may start: fewer than max_concurrent slots taken, or the new trial is a pair's
        second twin and a twin released at its rung holds the slot that is free.

        A pair's second twin goes before a released twin resumes (PairedASHA.choose_trial_to_run waits for a free
        slot for it), so that the twins of a pair train side by side. Otherwise, in the sweep's last pair, the
        first twin reaches its rung and waits while the second trains alone, and a slot stands idle with nothing
        left to run (the default sweep's largest idle stretch: docs/sweeps.md, "Slot utilisation")."""
        limit = getattr(self, "_max_concurrent", math.inf)
        taken = self.slots_taken()
        if taken < limit:
            return True
        scheduler = getattr(self, "_scheduler", None)
        second_twin = self._paired and self._suggested % 2 == 1
        return (second_twin and scheduler is not None and scheduler.slots is not None
                and taken - scheduler.resumable() < limit)

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and not self.has_room():
            return None
        fresh = trial_id not in self._ot_trials
        if fresh and self._configurations is not None:
            # The configuration study proposes; the sweep's study records it as this trial's parameters.
            self._ot_study.enqueue_trial(self._configurations.propose(trial_id), skip_if_exists=False)
        elif fresh and self._paired and self._partner is not None:
            # The next ask() returns exactly these params: the same configuration with the other loss.
            self._ot_study.enqueue_trial(self._partner, skip_if_exists=False)
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        if fresh:
            pair = self._suggested // 2 if self._paired else self._suggested
            if self._paired and self._configurations is None and self._partner is None:
                twin = dict(ot_trial.params)
                twin["loss"] = "hsic" if twin["loss"] == "barlow" else "barlow"
                self._partner = twin
            elif self._paired:
                self._partner = None
            self._suggested += 1
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("pair", pair)
            ot_trial.set_user_attr("seed", self._seed + pair)
        # Paired trials share a seed, so the two losses start from the same initialisation and data order.
        return {**config, SEED: ot_trial.user_attrs["seed"], PAIR: ot_trial.user_attrs["pair"]}

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials and self.outcomes.get(trial_id) == "errored":
            self._rerun(trial_id)   # an errored trial that Tuner.restore(resume_errored=True) runs again
        if trial_id in self._completed_trials:
            return
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict | None) -> None:
        """Record a report's val_acc at step = epoch, once per step."""
        if not result or result.get(METRIC) is None or "epoch" not in result:
            return
        value, step = float(result[METRIC]), int(result["epoch"])
        steps = self._steps.setdefault(trial_id, {})
        if step not in steps and math.isfinite(value):
            self._ot_trials[trial_id].report(value, step=step)
            steps[step] = value

    def _rerun(self, trial_id: str) -> None:
        """A fresh Optuna trial with the same parameters and the reports so far: the study keeps the
        failed attempt as FAIL and learns the rerun's true outcome."""
        failed = self._ot_trials[trial_id]
        self._ot_study.enqueue_trial(dict(failed.params), skip_if_exists=False)
        fresh = self._ot_study.ask(fixed_distributions=self._space)
        for key in ("pair", "seed"):
            fresh.set_user_attr(key, failed.user_attrs[key])
        fresh.set_user_attr("ray_trial_id", trial_id)
        fresh.set_user_attr("rerun_of", failed.number)
        self._ot_trials[trial_id] = fresh
        for step, value in sorted(self._steps.get(trial_id, {}).items()):
            fresh.report(value, step=step)
        self._completed_trials.discard(trial_id)
        self.outcomes.pop(trial_id, None)
        if self._configurations is not None:
            self._configurations.rerun(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials and self.outcomes.get(trial_id) == "errored" and not error:
            self._rerun(trial_id)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        # Ray does not pass the report that made the scheduler stop a trial (nor a completed trial's
        # last report) to on_trial_result: it arrives here, as the trial's last result.
        self._report(trial_id, result)
        steps = self._steps.get(trial_id, {})
        last_step = max(steps, default=0)
        if result is None or "epoch" not in result:
            # A paused trial stopped while it waited for its twin: its last report is the one recorded.
            result = {"epoch": last_step, METRIC: steps.get(last_step)} if steps else None
        value = (result or {}).get(METRIC)
        # Never reported (removed while pending, e.g. when the time budget ran out): stopped early, not errored.
        failed = error or (value is not None and not math.isfinite(float(value)))
        outcome = result_outcome(result, self._max_epochs, errored=failed)
        # Stopped by ASHA (or by the time budget) before its last epoch: PRUNED, not COMPLETE. A diverged
        # trial is a finished result at chance-level val_acc, so TPE learns to avoid its region.
        state, values = {"errored": (optuna.trial.TrialState.FAIL, None),
                         "stopped early": (optuna.trial.TrialState.PRUNED, None),
                         "diverged": (optuna.trial.TrialState.COMPLETE, value),
                         "completed": (optuna.trial.TrialState.COMPLETE, value)}[outcome]
        ot_trial.set_user_attr("outcome", outcome)
        self._ot_study.tell(ot_trial, values, state=state)
        if self._configurations is not None:
            self._configurations.tell(trial_id, outcome, None if value is None else float(value), dict(steps))
        self._completed_trials.add(trial_id)
        self.outcomes[trial_id] = outcome
        self.persist()

    def persist(self) -> None:
        """Keep the journal next to the sweep equal to the study's finished trials, for optuna-dashboard.

        Local storage: written whole once per process (atomically), then each newly finished trial is
        appended, O(1) per trial (rewriting it at every finished trial costs O(N²) over a sweep:
        docs/scale.md). Remote storage: rewritten and uploaded whole."""
        if not self._study_path:
            return
        snapshot = getattr(self, "_snapshot", None)   # (the journal's study, numbers written); this process only
        if "://" in self._study_path or snapshot is None:
            write_study_snapshot(self._ot_study, self._study_path)
            if "://" not in self._study_path:
                storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self._study_path))
                written = {t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
                self._snapshot = (optuna.load_study(study_name=self._ot_study.study_name, storage=storage), written)
            return
        journal, written = snapshot
        new = [t for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in written]
        journal.add_trials(new)
        written.update(t.number for t in new)

    def save(self, checkpoint_path: str):
        # Ray pickles the searcher into its experiment state: the open journal stays out of it, and so does the
        # scheduler (its state is RungState's; on restore the searcher keeps the link tuner.pkl gave it).
        kept = {key: self.__dict__.pop(key) for key in ("_snapshot", "_scheduler") if key in self.__dict__}
        try:
            super().save(checkpoint_path)
        finally:
            self.__dict__.update(kept)

    @property
    def study(self) -> optuna.Study:
        """The sweep's study: one Optuna trial per Ray trial (what the journal next to the sweep holds)."""
        return self._ot_study

    @property
    def configuration_study(self) -> optuna.Study | None:
        """The in-memory study that proposes configurations (sslsearch.search.proposals); None for a searcher
        pickled before it existed."""
        return None if self._configurations is None else self._configurations.study


class LiveView(tune.Callback):
    """Prints a line per report and per finished trial, with the best val_acc reported so far per loss (at
    any epoch; the summary and the leaderboard rank trials by their final report), and how many trials are
    left of the sweep's or stage's total (Ray passes it to `setup`)."""

    def __init__(self, quiet: bool = False):
        # No file object kept here: Ray pickles callbacks into the sweep's state for resuming.
        self.quiet = quiet
        self.best: dict[str, float] = {}
        self.start = time.monotonic()
        self.setup()

    def setup(self, total_num_samples: int | None = None, **info):
        self.total = total_num_samples
        # Per session, O(1) per report (a count over all trials at every report is O(trials²) over a sweep):
        # the trials started and not ended, and the ended ones, known from the session's first report on.
        self._live: dict[str, object] = {}
        self._ended: set[str] | None = None

    def on_trial_start(self, iteration, trials, trial, **info):
        self._live[trial.trial_id] = trial

    def _end(self, trial) -> None:
        self._live.pop(trial.trial_id, None)
        if self._ended is not None:
            self._ended.add(trial.trial_id)

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {text}", flush=True)

    @staticmethod
    def _describe(trial) -> str:
        c = trial.config or {}   # (empty for a trial that failed before Ray resolved its config)

        def value(key: str, spec: str = "") -> str:
            v = trial_value(c, key)
            return "?" if v is None else format(v, spec)

        return f"{trial.trial_id} {value('loss')} λ={value('lmbda', '.3g')} lr={value('lr', '.3g')} d={value('feature_dim')}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if isinstance(result.get(FALLBACK), str):  # always shown: Ray keeps the worker's own stderr in its log
            print(result[FALLBACK], file=sys.stderr, flush=True)
        loss = trial_value(trial.config, "loss", "?")
        if result.get(METRIC) is not None:
            self.best[loss] = max(self.best.get(loss, -math.inf), result[METRIC])
        if self._ended is None:  # the session's first report: what earlier sessions left (after a resume)
            self._ended = {t.trial_id for t in trials if t.is_finished()}
            for other in trials:  # their reports too (Ray restores each trial's max)
                earlier = (getattr(other, "metric_analysis", None) or {}).get(METRIC, {}).get("max")
                if earlier is not None and math.isfinite(earlier):
                    key = trial_value(other.config, "loss")
                    self.best[key] = max(self.best.get(key, -math.inf), earlier)
        self._live[trial.trial_id] = trial
        best = "  ".join(f"{k} {v:.2f}" for k, v in sorted(self.best.items()))
        running = sum(t.status == "RUNNING" for t in self._live.values())
        paused = sum(t.status == "PAUSED" for t in self._live.values())
        # Never started (not in _live), or started and queued again for a slot.
        pending = len(trials) - len(self._live) - len(self._ended) + sum(t.status == "PENDING" for t in self._live.values())
        left = f", left {self.total - len(self._ended)}" if self.total is not None else ""
        self._print(f"{self._describe(trial)} epoch {result['epoch']} val_acc {result[METRIC]:.2f} "
                    f"| running {running}, paused {paused}, pending {pending}, finished {len(self._ended)}{left} "
                    f"| best report, any epoch: {best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)
        result = trial.last_result or {}
        self._print(f"{self._describe(trial)} finished at epoch {result.get('epoch', '?')}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial)
        self._print(f"{self._describe(trial)} ERRORED: {trial.error_file or ''}")


@dataclass
class TrialSummary:
    trial_id: str
    loss: str
    params: dict
    epoch: int
    val_acc: float | None
    test_acc: float | None
    outcome: str
    trial_seconds: float
    checkpoint: str | None
    node_id: str | None = None
    pair: int | None = None

    @property
    def rankable(self) -> bool:
        """Only trained, finished, finite results are ranked: never a trial that errored, diverged, is
        still running, or was stopped after its epoch-0 report (a random network)."""
        return (self.outcome in FINISHED and self.epoch > 0 and self.val_acc is not None
                and math.isfinite(self.val_acc))


@dataclass
class SweepSummary:
    name: str
    path: str
    trials: list[TrialSummary]
    wall_seconds: float
    concurrency: int
    study_path: str | None = None
    extra: dict = field(default_factory=dict)
    resumed: bool = False  # wall_seconds then covers this session only, trial_seconds every session
    disk: DiskUse | None = None                 # the sweep's folder in Ray's storage (None: remote storage)
    mlflow_artifact_bytes: int | None = None    # its MLflow artifacts, when they are local files (set by the caller)
    slot_utilization: float | None = None       # busy slot-seconds / (slots × wall), this session (sslsearch.search.slots)

    def best_per_loss(self) -> dict[str, TrialSummary]:
        best: dict[str, TrialSummary] = {}
        for t in self.trials:
            if not t.rankable:
                continue
            if t.loss not in best or ranking_key(t.val_acc, t.epoch, t.trial_id) < ranking_key(
                    best[t.loss].val_acc, best[t.loss].epoch, best[t.loss].trial_id):
                best[t.loss] = t   # (the one ranking order: outcomes.ranking_key)
        return best

    @property
    def overhead(self) -> float:
        """Wall time over the ideal (Σ trial time / concurrency), minus 1."""
        ideal = sum(t.trial_seconds for t in self.trials) / max(1, self.concurrency)
        return self.wall_seconds / ideal - 1 if ideal > 0 else float("nan")

    @property
    def unfinished(self) -> int:
        """Trials still running or pending when the sweep returned: it was interrupted (Ctrl-C)."""
        return sum(t.outcome == "running" for t in self.trials)

    def format(self, continue_with: str | None = None) -> str:
        """The summary; `continue_with`: the command an interrupted sweep names (default `sslsearch resume NAME`; the
        command line passes its own, with the --storage it was given)."""
        counts = {o: sum(t.outcome == o for t in self.trials) for o in OUTCOMES}
        lines = [f"sweep {self.name}: {len(self.trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)})"]
        if self.resumed:  # earlier sessions' wall time is unknown here: no overhead figure rather than a wrong one
            lines.append(f"wall {self.wall_seconds:.0f}s in this session (resumed; trials' own time across sessions "
                         f"{sum(t.trial_seconds for t in self.trials):.0f}s, so no overhead figure)")
        else:
            lines.append(f"wall {self.wall_seconds:.0f}s vs trials' own time / concurrency "
                         f"{sum(t.trial_seconds for t in self.trials) / max(1, self.concurrency):.0f}s "
                         f"(concurrency {self.concurrency}): overhead {100 * self.overhead:.0f}%")
        if self.slot_utilization is not None:
            lines.append(f"slot utilisation {100 * self.slot_utilization:.1f}% (training slot-seconds / "
                         f"({self.concurrency} slots × wall{' of this session' if self.resumed else ''}))")
        for loss, t in sorted(self.best_per_loss().items()):
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items() if k != "loss")
            test = f", test_acc {t.test_acc:.2f}" if t.test_acc is not None else ""
            lines.append(f"best {loss} by final report: val_acc {t.val_acc:.2f}{test} (trial {t.trial_id}, {t.outcome} "
                         f"at epoch {t.epoch}; {params})")
            lines.append(f"  checkpoint: {t.checkpoint}")
        if self.study_path and "://" in self.study_path:
            lines.append(f"optuna study: {self.study_path} (copy it locally, then optuna-dashboard FILE)")
        elif self.study_path:
            lines.append(f"optuna study: optuna-dashboard {self.study_path}")
        if self.disk is not None:
            mlflow = "" if self.mlflow_artifact_bytes is None else f", MLflow artifacts {size_text(self.mlflow_artifact_bytes)}"
            lines.append(f"disk: {size_text(self.disk.total)} in {self.path} (checkpoints "
                         f"{size_text(self.disk.checkpoints)}){mlflow}")
        if self.unfinished:
            lines.append(f"interrupted with {self.unfinished} trial{'s' * (self.unfinished > 1)} unfinished; "
                         f"continue with: {continue_with or f'sslsearch resume {self.name}'}")
        return "\n".join(lines)


def _quiet() -> None:
    """The live view replaces Ray's and Optuna's console chatter."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Our summary says `sslsearch resume NAME`; Ray's "Resume experiment with: Tuner.restore(...)" would be a second hint.
    logging.getLogger("ray.tune.tune").addFilter(_no_ray_resume_hint)
    # A failed trial or upload is one line of ours (the live view names the trial and its error file;
    # a stopped sweep says why and how to resume), not Ray's traceback per attempt.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_no_traceback)
    logging.getLogger("ray.train._internal.syncer").addFilter(_no_traceback)
    # Checkpointing every report interval is intended; Ray warns about it when trials are short.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _no_traceback(record: logging.LogRecord) -> bool:
    """Keep Ray's message, drop the traceback it carries (the error file holds it)."""
    record.exc_info, record.exc_text = None, None
    message = record.getMessage()
    if "Traceback (most recent call last)" in message:
        record.msg, record.args = message.split("\n", 1)[0].rstrip(":") + " (details in the trial's error file)", ()
    return True


def _no_ray_resume_hint(record: logging.LogRecord) -> bool:
    return "Resume experiment with" not in record.getMessage() and "Resume training with" not in record.getMessage()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start a local Ray instance with explicit CPUs, or join a cluster; InputError if unreachable."""
    framework.check()
    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_no_token_notice)
    try:
        # Ray takes SIGTERM: a scheduler's stop must still end in good order; a Ctrl-C while Ray forks is held, not lost.
        with ctrl_c_held(), sigterm_kept():
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                # address="local": a private instance, never whatever Ray cluster happens to run on this machine;
                # on loopback only: a local sweep needs no port that another machine can reach.
                with _loopback_node():
                    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {first_line(error)}") from None


@contextlib.contextmanager
def _loopback_node():
    """Start Ray's processes on 127.0.0.1. Its GCS, raylet, driver and workers listen on every interface unless the
    node's address is 127.0.0.1, and ray.init turns an explicit `_node_ip_address="127.0.0.1"` back into the LAN
    address unless ENABLE_RAY_CLUSTER is off (ray/_private/services.py: resolve_ip_for_localhost,
    get_node_ip_address). A cluster is joined with --address instead, and binds as its `ray start` says."""
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


def _no_token_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 says at every start that token authentication is on by default ("Set RAY_AUTH_MODE=disabled to
    opt out"): nothing to act on, so that line is dropped; its warning that authentication is off still shows."""
    return "Token authentication is enabled" not in record.getMessage()


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable address for minutes; a plain TCP connect answers in seconds."""
    host, port = ray_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise InputError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


def check_resources(experiment: Experiment, address: str | None) -> None:
    """A trial that asks for more CPUs or GPUs than Ray has would wait forever: refuse it (a local
    instance) or warn (a cluster, whose autoscaler may still add nodes)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    need_cpus, need_gpus = experiment.resources.cpus_per_trial, experiment.resources.gpus_per_trial
    if need_cpus <= cpus and need_gpus <= gpus:
        return
    message = (f"a trial needs {need_cpus:g} CPU and {need_gpus:g} GPU, but the Ray {'cluster' if address else 'instance'} "
               f"has {cpus:g} CPU and {gpus:g} GPU in all")
    if address:
        print(f"warning: {message}; trials wait until the cluster grows", file=sys.stderr, flush=True)
        return
    raise InputError(f"{message}; lower resources.cpus_per_trial / resources.gpus_per_trial "
                     "(e.g. --set resources.gpus_per_trial=0 on a machine without a GPU)")


def _concurrency(experiment: Experiment) -> int:
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    slots = cpus // experiment.resources.cpus_per_trial
    if experiment.resources.gpus_per_trial > 0:
        slots = min(slots, gpus // experiment.resources.gpus_per_trial)
    return int(max(1, min(experiment.search.max_concurrent, slots)))


def _trainable(experiment: Experiment, trainable=None):
    return tune.with_resources(trainable or run_trial, {"cpu": experiment.resources.cpus_per_trial,
                                                        "gpu": experiment.resources.gpus_per_trial})


def _local_path(storage: str) -> Path | None:
    return None if "://" in storage else Path(storage)


def sweep_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def run_sweep(experiment: Experiment, space: SearchSpace, *, name: str, storage: str, address: str | None = None,
              callbacks: list | None = None, quiet: bool = False, trainable=None, claim: SweepLock | None = None
              ) -> SweepSummary:
    """Run a new sweep; its records live in `storage`/`name`.

    `trainable` replaces `trainable.run_trial`, e.g. `synthetic.synthetic_trainable(...)` for tests and
    benchmarks that exercise the search without training. `claim`: the sweep's folder, already made and
    locked by `sweeplock.claim_sweep_folder` (the command line claims the name before it imports Ray);
    released when the sweep ends.
    """
    local = _local_path(storage)
    if local is not None:
        storage = str(local.resolve())
        if claim is None and (local / name).exists():
            raise InputError(f"a sweep named {name!r} already exists in {storage}; resume it with `sslsearch resume {name}` "
                             "or choose another --name")
    check_space(space, experiment)
    scheduler_line = describe_scheduler(experiment)
    if address is None and trainable is None:
        # Once, here: trials would race to download it, or fail one by one if it cannot be had.
        # (On a cluster the data folder is the workers', which this machine may not see.)
        prepare_dataset(experiment.pretrain.dataset, experiment.pretrain.data_dir)
    _quiet()
    connect_ray(address)
    check_resources(experiment, address)
    path = sweep_path(storage, name)
    if not quiet:
        print(f"sweep {name}: {experiment.search.num_samples} trials of up to {experiment.pretrain.epochs} epochs on "
              f"{experiment.pretrain.dataset}; {scheduler_line}; records in {path}", flush=True)
    study_path = f"{path}/{STUDY_FILE}"
    lock = contextlib.nullcontext()
    if claim is not None:
        lock = claim
    elif local is not None:  # one rename is the name check, so two sweeps of one name cannot both start
        lock = claim_sweep_folder(Path(path), name)
    # Written through pyarrow so that a sweep on s3:// or gs:// storage can be resumed from anywhere.
    _write_text(f"{path}/{SWEEP_FILE}", json.dumps(
        {"experiment": experiment.to_dict(), "experiment_source": experiment.source,
         "space": {p.name: dataclasses.asdict(p) for p in space.parameters}, "space_source": space.source,
         # The files as they were: `resume` says in one line what changed in them since (it keeps these values).
         "experiment_text": _file_text(experiment.source), "space_text": _file_text(space.source),
         "storage": storage, "name": name}, indent=2))
    scheduler = make_scheduler(experiment)
    searcher = SweepSearcher(space, max_epochs=experiment.pretrain.epochs, sampler=experiment.search.sampler,
                             seed=experiment.search.seed, paired=experiment.search.paired, study_name=name,
                             study_path=study_path, scheduler=scheduler if isinstance(scheduler, PairedASHA) else None,
                             num_samples=experiment.search.num_samples)
    state = [RungState(scheduler)] if isinstance(scheduler, PairedASHA) else []
    if local is not None:  # a full disk can cut Ray's saved state short: resume then uses the intact copy
        state.append(IntactStateCopy(path))
    concurrency = _concurrency(experiment)
    tuner = make_tuner(
        experiment, name=name, storage=storage, search_alg=searcher, scheduler=scheduler,
        param_space=make_trial_config(experiment.pretrain.to_dict(), cpus=experiment.resources.cpus_per_trial),
        num_samples=experiment.search.num_samples, trainable=trainable,
        # Full training state only where a resume needs it (tracking.checkpoints; sslsearch.search.retention).
        callbacks=[StopOnFullDisk(), LiveView(quiet), SlotUse(), *trial_loggers(), *state,
                   CheckpointRetention(experiment.tracking.checkpoints),
                   *(callbacks or [])])
    started = time.monotonic()
    with lock:
        results = fit_stopping_on_os_errors(tuner, name, path, started, concurrency, study_path)
    summary = summarize(results, name, path, time.monotonic() - started, concurrency, study_path)
    summary.slot_utilization = slot_utilization(tuner, concurrency)
    return summary


def slot_utilization(tuner: tune.Tuner, slots: int) -> float | None:
    """The sweep session's busy slot-seconds / (slots × wall), from its SlotUse callback (sslsearch.search.slots)."""
    callbacks = _run_callbacks(tuner)
    use = next((c for c in callbacks if isinstance(c, SlotUse)), None)
    return use.utilization(slots) if use is not None else None


def _run_callbacks(tuner: tune.Tuner) -> list:
    """The callbacks the Tuner runs with (restored ones included). A Ray Client Tuner (`ray://`) runs on the
    cluster and has none here."""
    local = getattr(tuner, "_local_tuner", None)
    return (local.get_run_config().callbacks or []) if local is not None else []


def checkpoints_kept(experiment: Experiment) -> int | None:
    """How many checkpoints per trial Ray keeps (None: all, for tracking.checkpoints=all). Two, not one: Ray's
    saved experiment state can name the checkpoint before the newest, and a resumed trial restores from the
    one it names (Ray syncs that state every num_to_keep checkpoints)."""
    return 2 if experiment.tracking.checkpoints != "all" else None


def make_tuner(experiment: Experiment, *, name: str, storage: str, search_alg, scheduler: TrialScheduler,
               param_space: dict, num_samples: int, callbacks: list, trainable=None,
               num_to_keep: int | None | str = "by policy") -> tune.Tuner:
    """The Tuner of a sweep, a confirmation stage and the platform benchmark: `trainable` (default: the real
    trial) with the experiment's resources, one folder `trial_<id>` per trial, actors reused, the experiment's
    concurrency, time budget and retries; Ray keeps `num_to_keep` checkpoints per trial (default:
    `checkpoints_kept`), ranked by METRIC."""
    max_concurrent = experiment.search.max_concurrent
    if isinstance(search_alg, Searcher) and isinstance(scheduler, PairedASHA):
        # As Tune wraps a Searcher (ConcurrencyLimiter, then SearchGenerator), but in TwinAwareSearch: actors are
        # kept for twins that will resume.
        search_alg, max_concurrent = TwinAwareSearch(ConcurrencyLimiter(search_alg, max_concurrent), scheduler), None
    return tune.Tuner(
        _trainable(experiment, trainable), param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            # A generator of fixed points (confirm) takes the limit itself; Tune would ignore this one, with a warning.
            max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else max_concurrent,
            time_budget_s=experiment.search.time_budget_s, reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=checkpoints_kept(experiment) if num_to_keep == "by policy" else num_to_keep,
                checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            # A dead worker (SIGKILL, OOM, node lost) is retried from the trial's last checkpoint.
            failure_config=tune.FailureConfig(max_failures=experiment.resources.max_failures)))


def make_scheduler(experiment: Experiment) -> TrialScheduler:
    """ASHA (pair-aware in paired sweeps, rungs saved with the sweep) or FIFO (every trial to its full budget)."""
    if experiment.scheduler.type != "asha":
        return FIFOScheduler()
    return PairedASHA(metric=METRIC, max_epochs=experiment.pretrain.epochs, eval_every=experiment.pretrain.eval_every,
                      grace_period=experiment.scheduler.grace_period,
                      reduction_factor=experiment.scheduler.reduction_factor, paired=experiment.search.paired)


def describe_scheduler(experiment: Experiment) -> str:
    """The sweep's opening words on stopping: at which epochs ASHA decides."""
    if experiment.scheduler.type != "asha":
        return "no early stopping (FIFO)"
    pretrain = experiment.pretrain
    rungs = rung_epochs(pretrain.epochs, pretrain.eval_every, experiment.scheduler.grace_period,
                        experiment.scheduler.reduction_factor)
    unit = "pairs" if experiment.search.paired else "trials"
    keep = f"1/{experiment.scheduler.reduction_factor:g}"
    return (f"ASHA stops {unit} below the top {keep} at epochs {', '.join(map(str, rungs))}" if rungs
            else "ASHA has no rung before the last epoch: no early stopping")


FULL_DISK_BYTES = 1 << 20   # free bytes below which a trial's unexplained failure is blamed on a full disk


class StopOnFullDisk(tune.Callback):
    """Stops the sweep (or its confirmation stage) at the first trial that failed for want of disk space, instead of
    letting Ray retry it and start others that fail the same way (minutes of failing trials before the driver itself
    hits the full disk). The OSError it raises escapes `fit`, and `fit_stopping_on_os_errors` turns it into the
    summary and the hint to continue (exit 4)."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check(trials, trial)

    @staticmethod
    def _check(trials: list, trial) -> None:
        try:
            text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            text = ""
        full = "[Errno 28]" in text or "No space left on device" in text
        if (not full and not text.strip()
                and isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem)):
            # The error could not even be written down: is it the disk?
            with contextlib.suppress(OSError):
                full = shutil.disk_usage(trial.storage.storage_fs_path).free < FULL_DISK_BYTES
        if full:
            error = OSError(errno.ENOSPC, f"No space left on device (trial {trial.trial_id} could not save)",
                            trial.storage.trial_fs_path)
            # For the summary: Ray's saved state may be cut short by the same full disk. The statuses as they are now:
            # on the way out Ray marks every trial it stops TERMINATED, as if it had ended.
            error.trials, error.statuses = trials, {f"trial_{t.trial_id}": t.status for t in trials}
            raise error


class SweepStopped(RuntimeError):
    """An OS error (disk full, storage gone) stopped the sweep; `summary` is what its saved state says, if readable.
    `cause` is the line without the command that continues it, `then` that command (`sslsearch resume NAME`): the
    command line names its own instead (`line`), with the --storage it was given."""

    def __init__(self, cause: str, summary: SweepSummary | None, then: str):
        self.cause, self.then, self.summary = cause, then, summary
        super().__init__(self.line())

    def line(self, then: str | None = None) -> str:
        """The one line, ending with `then` (default: the plain `sslsearch resume NAME`)."""
        return f"{self.cause}; free the space (or fix the storage), then: {then or self.then}"


def fit_stopping_on_os_errors(tuner, name: str, path: str, started: float, concurrency: int, study_path: str | None,
                              *, stage: str = "sweep", then: str = "resume"):
    """tuner.fit() of a sweep or of its confirmation stage (in `path`; its callbacks include StopOnFullDisk); an OS
    error stops it in good order: SweepStopped with one line and the summary, ending with `sslsearch THEN NAME`.
    A restored Tuner whose saved state Ray cannot restore is refused (RestoreFailed) before anything runs."""
    try:
        with sigint_restored(), own_loggers_only(_run_callbacks(tuner)), refusing_a_failed_restore(f"{stage} {name}", path):
            return tuner.fit()
    except (OSError, TuneError) as raised:
        error = _os_error(raised)
        if error is None:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        summary = None
        live = getattr(error, "trials", None)   # StopOnFullDisk hands over Ray's trials as they are now
        try:  # else Ray saved the sweep's state before the error; if the disk allowed it, the summary says where it was
            analysis = tune.ExperimentAnalysis(path, trials=live) if live else tune.ExperimentAnalysis(path)
            summary = summarize(tune.ResultGrid(analysis), name, path, time.monotonic() - started, concurrency,
                                study_path, statuses=getattr(error, "statuses", None) if live else None)
        except Exception:  # noqa: BLE001 — no summary is better than a second traceback
            pass
        raise SweepStopped(f"{stage} {name} stopped: {error.strerror or error}{where}", summary,
                           f"sslsearch {then} {name}") from None


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`: Ray re-raises one from a callback or the searcher as a TuneError holding its text."""
    for _ in range(10):
        if error is None or isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_bytes(uri: str, data: bytes) -> None:
    fs, where = pyarrow.fs.FileSystem.from_uri(uri) if "://" in uri else (pyarrow.fs.LocalFileSystem(), uri)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as stream:
        stream.write(data)


def _write_text(uri: str, text: str) -> None:
    _write_bytes(uri, text.encode())


def _read_text(uri: str) -> str:
    fs, where = pyarrow.fs.FileSystem.from_uri(uri) if "://" in uri else (pyarrow.fs.LocalFileSystem(), uri)
    with fs.open_input_stream(where) as stream:
        return stream.read().decode()


def sweep_metadata(name: str, storage: str) -> dict:
    """What `run_sweep` wrote about a sweep (experiment, space); InputError for an unknown sweep."""
    local = _local_path(storage)
    path = sweep_path(str(local.resolve()) if local else storage, name)
    if not tune.Tuner.can_restore(path):
        if local is not None:
            refuse_while_starting(Path(path), name)
        known = sorted(p.name for p in local.iterdir() if tune.Tuner.can_restore(str(p))) if local and local.is_dir() else []
        raise InputError(f"no sweep named {name!r} in {storage}; known sweeps: {', '.join(known) or 'none'}")
    return json.loads(_read_text(f"{path}/{SWEEP_FILE}"))


def _file_text(source: str | None) -> str | None:
    try:
        return Path(source).read_text() if source else None
    except (OSError, UnicodeDecodeError):
        return None


def _flat(values, prefix: str = "") -> dict:
    if not isinstance(values, dict):
        return {prefix: values}
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def files_changed(meta: dict) -> str | None:
    """One line naming the experiment/space files edited since the sweep started and the values that differ, or
    None. A resumed sweep keeps the values it started with (Ray restores the searcher and the trials as they were)."""
    from sslsearch.search.experiment import load_yaml  # bounded: an edited file is input like any other

    differences, files = [], []
    for kind in ("experiment", "space"):
        source, before = meta.get(f"{kind}_source"), meta.get(f"{kind}_text")
        now = _file_text(source)
        if before is None or now is None or now == before:
            continue   # (a sweep from before the text was kept, or the file is gone: nothing to compare)
        files.append(source)
        try:
            old, new = _flat(load_yaml(before, source) or {}), _flat(load_yaml(now, source) or {})
        except InputError:
            differences.append(f"{Path(source).name} no longer parses")
            continue
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) != new.get(key):
                differences.append(f"{key} {old.get(key, '(unset)')!s:.40} → {new.get(key, '(unset)')!s:.40}")
    if not files:
        return None
    listed = "; ".join(differences[:6]) + ("; …" if len(differences) > 6 else "")
    return (f"note: {' and '.join(files)} changed since sweep {meta.get('name')} started ({listed}); resume keeps "
            "the values the sweep started with: start a new sweep to use the files' values")


def resume_sweep(name: str, storage: str, address: str | None = None, trainable=None,
                 tracking_uri: str | None = None) -> SweepSummary:
    """Continue an interrupted sweep: searcher, scheduler and unfinished trials from their checkpoints.
    `tracking_uri`: where the restored tracking callback now writes (else the URI it was pickled with)."""
    local = _local_path(storage)
    if local is not None:
        storage = str(local.resolve())
    path = sweep_path(storage, name)
    meta = sweep_metadata(name, storage)
    _quiet()
    experiment = experiment_from_dict(meta["experiment"], meta.get("experiment_source"))
    if (changed := files_changed(meta)) is not None:
        print(changed, file=sys.stderr, flush=True)
    lock = contextlib.nullcontext()
    if local is not None:  # Ray unpickles tuner.pkl from this folder: it must be the user's own
        check_owned(Path(path), "resume")
        lock = SweepLock(path, name, "resume").acquire()
        try:
            recover_saved_state(Path(path), name)
        except BaseException:
            lock.release()
            raise
    try:
        connect_ray(address)
        check_resources(experiment, address)
        tuner = tune.Tuner.restore(path, trainable=_trainable(experiment, trainable),
                                   resume_unfinished=True, resume_errored=True)
    except BaseException:
        if isinstance(lock, SweepLock):   # refused before the sweep ran (e.g. resources): the lock is free again
            lock.release()
        raise
    if tracking_uri is not None:  # Ray restores the callbacks from tuner.pkl, each with the settings it was pickled with
        for callback in _run_callbacks(tuner):
            if hasattr(callback, "use_tracking_uri"):
                callback.use_tracking_uri(tracking_uri)
    started = time.monotonic()
    concurrency = _concurrency(experiment)
    with lock:
        results = fit_stopping_on_os_errors(tuner, name, path, started, concurrency, f"{path}/{STUDY_FILE}")
    summary = summarize(results, name, path, time.monotonic() - started, concurrency, f"{path}/{STUDY_FILE}")
    summary.slot_utilization = slot_utilization(tuner, concurrency)
    summary.resumed = True
    return summary


def saved_statuses(path: str) -> dict[str, str]:
    """Trial folder name → status, as Tune last saved the sweep's state. After Ctrl-C the unfinished
    trials are saved PENDING or PAUSED (to be resumed), while the ResultGrid that fit() returns calls
    every trial TERMINATED, having stopped them; {} when the state cannot be read."""
    try:
        return {_trial_dirname(t): t.status for t in tune.ExperimentAnalysis(path).trials}
    except Exception:  # noqa: BLE001 — a summary without the interruption count is still a summary
        return {}


def summarize(results, name: str, path: str, wall: float, concurrency: int, study_path: str | None,
              statuses: dict[str, str] | None = None) -> SweepSummary:
    """Per-trial outcomes from a ResultGrid (outcome from epochs reached and errors; "running" for a
    trial that had not ended when the sweep was interrupted). `statuses`: trial folder name → Ray's status, when
    known better than Ray's saved state says (a sweep stopped by a full disk)."""
    status = statuses if statuses is not None else saved_statuses(path)
    trials = []
    for result in results:
        metrics = result.metrics or {}
        config = result.config or {}
        epoch = int(metrics.get("epoch", 0) or 0)
        outcome = result_outcome(metrics, trial_value(config, "epochs"), errored=result.error is not None)
        if result.error is None and status.get(Path(result.path).name, "TERMINATED") not in ("TERMINATED", "ERROR"):
            outcome = "running"   # (an errored trial is errored, whatever Ray saved before it failed)
        params = {**sampled_params(config), SEED: trial_value(config, SEED)}
        trials.append(TrialSummary(
            trial_id=metrics.get("trial_id") or Path(result.path).name, loss=trial_value(config, "loss"),
            params=params, epoch=epoch, val_acc=metrics.get(METRIC), test_acc=metrics.get("test_acc"), outcome=outcome,
            trial_seconds=float(metrics.get("trial_seconds", 0.0) or 0.0),
            checkpoint=result.checkpoint.path if result.checkpoint else None, node_id=metrics.get("node_id"),
            pair=config.get(PAIR)))
    if study_path and "://" not in study_path and not Path(study_path).exists():
        study_path = None
    return SweepSummary(name, path, trials, wall, concurrency, study_path, disk=disk_use(path))
