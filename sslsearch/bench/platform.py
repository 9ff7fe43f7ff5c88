"""The platform at scale: what the sweep's driver costs as trials and reports grow (`sslsearch bench platform`).

A real sweep — the real Tuner, SweepSearcher (Optuna), ASHA, MlflowTracking to a real SQLite store
or a real `mlflow server` on 127.0.0.1, the live view, Ray's experiment checkpoints — whose trainable
trains nothing: `sslsearch.search.synthetic` sleeps through each report interval, reports a synthetic
learning curve and writes a checkpoint of a chosen size, so the only work left is the driver's. Each sweep
size runs in a fresh process (clean memory figures, a Ray instance of its own) and returns:

- the driver process's CPU seconds (all its threads; not wall time, because the cores are shared),
  per report and per trial, and what each component took of it (CPU time of the calling thread);
- wall time beyond the trials' own time (Σ trial seconds / concurrency);
- searcher `suggest` latency against the number of trials already finished (TPE's cost grows with it);
- the study snapshot that SweepSearcher writes at every finished trial;
- MLflow client calls (and HTTP requests to a server) with their seconds, per report;
- Ray's experiment-state saves: how many, their time, the size of what they write;
- the driver's resident memory before and after the sweep, and its peak.

Instrumentation is by subclassing (SweepSearcher, MlflowTracking, LiveView) and by wrapping, for the
run only, TuneController.save_to_dir and MlflowClient's methods; nothing in search.py or tracking.py
changes. This module imports Ray, Optuna and MLflow: unlike bench.py it does not run on a bare GPU machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import ray

from sslsearch.errors import InputError
from sslsearch.presets import EXPERIMENTS
from sslsearch.processes import free_port, start_server, stop_server, tree_cpu_seconds, wait_until_answers
from sslsearch.records.store import default_tracking_uri
from sslsearch.records.tracking import MlflowTracking
from sslsearch.search.asha import PairedASHA, RungState
from sslsearch.search.experiment import PROJECT_ROOT, load_experiment
from sslsearch.search.folder import STUDY_FILE
from sslsearch.search.proposals import DEFAULT_PROPOSALS, ProposalSettings, configuration_sampler
from sslsearch.search.retention import CheckpointRetention
from sslsearch.search.saved_state import IntactStateCopy
from sslsearch.search.slots import SlotUse
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import (
    LiveView,
    SweepSearcher,
    connect_ray,
    make_scheduler,
    make_tuner,
    summarize,
    sweep_path,
    write_study_snapshot,
)
from sslsearch.search.synthetic import SyntheticSettings, synthetic_trainable, synthetic_val_acc
from sslsearch.search.trial_config import make_trial_config
from sslsearch.search.trial_logs import ResultJsonLog, own_loggers_only, ray_default_loggers, trial_loggers

# The workhorse GPU sweep (ResNet-18 on CIFAR-10): its settings are what the driver records and
# schedules; only the training is replaced.
DEFAULT_EXPERIMENT = EXPERIMENTS / "cifar10_resnet18.yaml"
QUICK = {"trials": (4, 8), "reports": 2, "concurrency": 2, "report_seconds": 0.0, "checkpoint_mb": 0.01}
# Components timed on the Tune loop's thread, none inside another: with Ray's upload of its state
# (its own thread) their sum is the driver CPU that sslsearch and Ray's state saves add; the rest of
# the process's CPU is Ray's own loop and threads.
TOP_LEVEL = ("searcher.suggest", "searcher.on_trial_result", "searcher.on_trial_complete", "tracking.setup",
             "tracking.on_trial_start", "tracking.on_trial_result", "tracking.on_checkpoint",
             "tracking.on_trial_complete", "tracking.on_trial_error", "tracking.on_experiment_end",
             "liveview.on_trial_result", "liveview.on_trial_complete", "scheduler.on_trial_result",
             "scheduler.choose_trial_to_run", "ray.logger.json", "ray.logger.csv", "ray.logger.tbx",
             "ray.save_experiment_state", "intact_state.hooks", "retention.on_experiment_end")
# Components timed inside Ray's state save (its callbacks' get_state, the searcher's save): part of ray.save_experiment_state.
IN_STATE_SAVE = ("searcher.save (in ray.save_experiment_state)", "intact_state (in ray.save_experiment_state)",
                 "retention (in ray.save_experiment_state)")
# Components timed on threads of their own: MLflow's sender (the records the hooks queue) and Ray's upload
# of its experiment state.
OWN_THREADS = ("tracking.send", "tracking.send.sweep", "ray.upload_experiment_state")
MLFLOW_METHODS = ("create_experiment", "get_experiment_by_name", "search_runs", "create_run", "get_run", "update_run",
                  "log_batch", "log_artifact", "log_artifacts", "set_terminated", "set_tag", "log_metric", "log_param")


# ---------------------------------------------------------------------------------------------
# Instrumentation: one profile per process (the driver)
# ---------------------------------------------------------------------------------------------

class _Profile:
    """Calls, wall seconds and CPU seconds (of the calling thread) per component; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[str, list] = {}      # name → [calls, wall s, cpu s]
        self.suggests: list[tuple] = []       # (finished trials at the call, wall s, cpu s)
        self.snapshots: list[tuple] = []      # (finished trials, wall s, cpu s)
        self.saves: list[tuple] = []          # (trials known to Ray, wall s, cpu s, bytes written)
        self.actors: set = set()              # process ids of the trial actors that reported

    @contextlib.contextmanager
    def timed(self, name: str):
        timing = {}
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield timing
        finally:
            timing["wall"], timing["cpu"] = time.perf_counter() - wall, time.thread_time() - cpu
            with self.lock:
                entry = self.calls.setdefault(name, [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += timing["wall"]
                entry[2] += timing["cpu"]


PROFILE = _Profile()


class _TimedSearcher(SweepSearcher):
    """SweepSearcher, timed. `append_snapshot` False: the study snapshot is rewritten whole at every
    finished trial, as before the fix (docs/scale.md), to measure both side by side."""

    append_snapshot = True

    def suggest(self, trial_id: str):
        finished = len(self._completed_trials)
        with PROFILE.timed("searcher.suggest") as t:
            config = super().suggest(trial_id)
        if isinstance(config, dict):
            PROFILE.suggests.append((finished, t["wall"], t["cpu"]))
        return config

    def on_trial_result(self, trial_id: str, result: dict):
        with PROFILE.timed("searcher.on_trial_result"):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        with PROFILE.timed("searcher.on_trial_complete"):
            super().on_trial_complete(trial_id, result, error)

    def persist(self) -> None:
        with PROFILE.timed("searcher.persist") as t:
            if self.append_snapshot or not self._study_path:
                super().persist()   # what search.py ships: append each newly finished trial
            else:
                write_study_snapshot(self._ot_study, self._study_path)   # the pre-fix rewrite, for comparison
        PROFILE.snapshots.append((len(self._completed_trials), t["wall"], t["cpu"]))

    def save(self, checkpoint_path: str):
        with PROFILE.timed("searcher.save (in ray.save_experiment_state)"):
            super().save(checkpoint_path)


def _timed_function(function, name: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        with PROFILE.timed(name):
            return function(*args, **kwargs)
    return timed


class _TimedTracking(MlflowTracking):
    """MlflowTracking, each Tune hook timed on the Tune loop's thread."""

    for _hook in ("setup", "on_trial_start", "on_trial_result", "on_checkpoint", "on_trial_complete",
                  "on_trial_error", "on_experiment_end"):
        locals()[_hook] = _timed_function(getattr(MlflowTracking, _hook), f"tracking.{_hook}")
    del _hook

    def _attempt(self, record: list, number: int = 0) -> bool:
        # The sender thread's work (at the end of the sweep, on_experiment_end waits for it: both count).
        # The first record creates (or opens) the MLflow store and the sweep's run: once per sweep, timed apart.
        # Within tracking.send, each kind of record apart too ("tracking.send (checkpoint)": best.pt uploads).
        if record[0] == "sweep":
            with PROFILE.timed("tracking.send.sweep"):
                return super()._attempt(record, number)
        with PROFILE.timed("tracking.send"), PROFILE.timed(f"tracking.send ({record[0]})"):
            return super()._attempt(record, number)


class _TimedIntactStateCopy(IntactStateCopy):
    def get_state(self):
        with PROFILE.timed("intact_state (in ray.save_experiment_state)"):
            return super().get_state()

    def _copy(self, force: bool = False) -> None:
        if force:   # (from get_state, timed there)
            return super()._copy(force)
        with PROFILE.timed("intact_state.hooks"):
            return super()._copy(force)


class _TimedRetention(CheckpointRetention):
    def get_state(self):
        with PROFILE.timed("retention (in ray.save_experiment_state)"):
            return super().get_state()

    def on_experiment_end(self, trials, **info):
        with PROFILE.timed("retention.on_experiment_end"):
            super().on_experiment_end(trials, **info)


class _TimedLiveView(LiveView):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        PROFILE.actors.add(result.get("pid"))
        with PROFILE.timed("liveview.on_trial_result"):
            super().on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, *args, **kwargs):
        with PROFILE.timed("liveview.on_trial_complete"):
            super().on_trial_complete(*args, **kwargs)


def _counted_reuse(function):
    @functools.wraps(function)
    def counted(*args, **kwargs):
        reused = function(*args, **kwargs)
        if reused:
            with PROFILE.lock:
                PROFILE.calls.setdefault("ray.actor_reuses", [0, 0.0, 0.0])[0] += 1
        return reused
    return counted


@contextlib.contextmanager
def _instrumented():
    """For the sweep only: time Ray's experiment-state saves (and measure what they write), and count
    MLflow client calls and HTTP requests."""
    import mlflow
    import ray.train._internal.storage as ray_storage
    import requests
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    save_to_dir = TuneController.save_to_dir

    def timed_save(controller):
        with PROFILE.timed("ray.save_experiment_state") as t:
            save_to_dir(controller)
        folder = Path(controller._storage.experiment_driver_staging_path)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.name.startswith("tmp"))
        PROFILE.saves.append((len(controller._trials), t["wall"], t["cpu"], size))

    patched = [(TuneController, "save_to_dir", save_to_dir, timed_save),
               # After each save Ray copies the staging folder to the sweep's storage, in a thread of its own.
               (ray_storage, "_upload_to_fs_path", ray_storage._upload_to_fs_path,
                _timed_function(ray_storage._upload_to_fs_path, "ray.upload_experiment_state")),
               (requests.Session, "request", requests.Session.request,
                _timed_function(requests.Session.request, "http.request"))]
    # Trial actors Ray asks for (a new process each), and those it reuses from its cache.
    patched += [(RayActorManager, "add_actor", RayActorManager.add_actor,
                 _timed_function(RayActorManager.add_actor, "ray.actor_requests")),
                (TuneController, "_maybe_reuse_cached_actor", TuneController._maybe_reuse_cached_actor,
                 _counted_reuse(TuneController._maybe_reuse_cached_actor))]
    patched += [(PairedASHA, name, getattr(PairedASHA, name), _timed_function(getattr(PairedASHA, name), f"scheduler.{name}"))
                for name in ("on_trial_result", "choose_trial_to_run")]
    patched += [(owner, name, owner.__dict__[name], _timed_function(owner.__dict__[name], f"ray.logger.{label}"))
                for owner, label in ((JsonLoggerCallback, "json"), (CSVLoggerCallback, "csv"), (TBXLoggerCallback, "tbx"))
                for name in ("log_trial_start", "log_trial_result", "log_trial_end") if name in owner.__dict__]
    patched += [(mlflow.MlflowClient, name, getattr(mlflow.MlflowClient, name),
                 _timed_function(getattr(mlflow.MlflowClient, name), f"mlflow.{name}"))
                for name in MLFLOW_METHODS if hasattr(mlflow.MlflowClient, name)]
    for owner, name, _, new in patched:
        setattr(owner, name, new)
    try:
        yield
    finally:
        for owner, name, original, _ in patched:
            setattr(owner, name, original)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _mlflow_server(folder: Path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, local artifacts); yields (uri, pid)."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", (folder / "server-artifacts").as_uri()]
    uri = f"http://127.0.0.1:{port}"
    with open(folder / "mlflow-server.log", "w") as log:
        server = start_server(command, stdout=log)
        try:
            failed = wait_until_answers(server, f"{uri}/health", timeout_s=120, poll_s=0.5)
            if failed is not None:
                raise RuntimeError(f"mlflow server {failed}; see {folder / 'mlflow-server.log'}")
            yield uri, server.pid
        finally:
            stop_server(server)   # its own session: the server and its workers, nothing else


# ---------------------------------------------------------------------------------------------
# One sweep, measured (in this process)
# ---------------------------------------------------------------------------------------------

def measure_sweep(trials: int, reports: int = 10, concurrency: int = 8, report_seconds: float = 0.25,
                  checkpoint_mb: float = 1.0, tracking: str = "sqlite", sampler: str = "tpe",
                  storage: str | None = None, ray_num_to_keep: int | None = 2, append_snapshot: bool = True,
                  ray_loggers: str = "sweep", experiment_path: str | Path | None = None,
                  paused_twins_hold_slots: bool = False) -> dict:
    """Run one synthetic sweep of `trials` trials (`reports` report intervals at most each) and return
    the driver's figures. Uses the Ray instance already running in this process, else starts one with
    `concurrency` CPUs. `ray_num_to_keep` and `append_snapshot` are the fixes measured in docs/scale.md;
    `paused_twins_hold_slots` is the slot accounting before issue 19 (a twin paused at a rung kept a new trial
    from starting), for the side-by-side figure in docs/sweeps.md."""
    _check_settings(trials, reports, concurrency, report_seconds, checkpoint_mb, tracking)
    experiment = _sweep_experiment(trials, reports, concurrency, sampler, experiment_path)
    space = load_search_space(experiment.space_path())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    global PROFILE
    PROFILE = _Profile()
    folder = Path(storage or tempfile.mkdtemp(prefix="sslsearch-bench-platform-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"platform-{trials}"
    with contextlib.ExitStack() as stack:
        server_pid = None
        uri = default_tracking_uri(str(folder))
        if tracking == "server":
            uri, server_pid = stack.enter_context(_mlflow_server(folder))
        connect_ray(None, num_cpus=concurrency)
        callbacks = [_TimedLiveView(quiet=False)]
        if ray_loggers == "json":  # Ray's result.json only, not its progress.csv and TensorBoard files
            callbacks.append(ResultJsonLog())
            stack.enter_context(ray_default_loggers("1"))
        else:  # result.json and progress.csv kept whole across a twin's pause, as run_sweep
            callbacks.extend(trial_loggers())
            if ray_loggers == "all":  # and Ray's TensorBoard logger, as run_sweep had it until 2026-12-06
                stack.enter_context(ray_default_loggers("0"))
        if tracking != "none":
            callbacks.append(_TimedTracking(experiment, space, sweep=name, storage=str(folder), tracking_uri=uri))
        scheduler = make_scheduler(experiment)
        searcher = _TimedSearcher(space, max_epochs=experiment.pretrain.epochs, sampler=sampler,
                                  seed=experiment.search.seed, paired=experiment.search.paired, study_name=name,
                                  study_path=f"{sweep_path(str(folder), name)}/{STUDY_FILE}",
                                  scheduler=scheduler if isinstance(scheduler, PairedASHA) and not paused_twins_hold_slots
                                  else None, num_samples=experiment.search.num_samples)
        searcher.append_snapshot = append_snapshot
        slot_use = _Transitions()
        callbacks.append(slot_use)
        # As run_sweep: [live view, rungs, intact state copy, retention, …] (the copy before retention in each save).
        callbacks[1:1] = [*([RungState(scheduler)] if isinstance(scheduler, PairedASHA) else []),
                          _TimedIntactStateCopy(sweep_path(str(folder), name)),
                          _TimedRetention(experiment.tracking.checkpoints)]
        Path(sweep_path(str(folder), name)).mkdir(parents=True, exist_ok=True)
        # run_sweep's Tuner, with the synthetic trainable.
        tuner = make_tuner(
            experiment, name=name, storage=str(folder), search_alg=searcher, scheduler=scheduler, num_samples=trials,
            param_space=make_trial_config(experiment.pretrain.to_dict(), cpus=1),
            trainable=synthetic_trainable(SyntheticSettings(epoch_seconds=report_seconds / experiment.pretrain.eval_every,
                                                            checkpoint_bytes=int(checkpoint_mb * 2 ** 20))),
            callbacks=callbacks, num_to_keep=ray_num_to_keep)
        rss_before = _rss_mb()
        server_cpu_before = tree_cpu_seconds(server_pid) if server_pid else None
        tree_cpu_before = tree_cpu_seconds(os.getpid(), reaped=True)
        with _instrumented(), own_loggers_only(callbacks):   # "sweep": no TensorBoard writer, as run_sweep
            cpu, wall = time.process_time(), time.perf_counter()
            results = tuner.fit()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = tree_cpu_seconds(server_pid) - server_cpu_before if server_pid else None
        # Everything the sweep cost the machine: the driver, Ray's raylet and GCS, every trial actor.
        tree_cpu = tree_cpu_seconds(os.getpid(), reaped=True) - tree_cpu_before
        rss_after = _rss_mb()
    summary = summarize(results, name, sweep_path(str(folder), name), wall, concurrency, None)
    reported = sum(int((r.metrics or {}).get("training_iteration", 0)) for r in results)
    outcome = {o: sum(t.outcome == o for t in summary.trials) for o in ("completed", "stopped early", "errored")}
    result = _figures(trials, reported, concurrency, wall, cpu, summary, server_cpu)
    result.update({
        "slot_utilization": slot_use.utilization(concurrency), "paired": experiment.search.paired,
        **slot_use.figures(concurrency, report_seconds),
        "paused_twins_hold_slots": paused_twins_hold_slots,
        "reports_max": reports + 1, "report_seconds": report_seconds, "checkpoint_mb": checkpoint_mb,
        "tracking": tracking, "sampler": sampler, "ray_num_to_keep": ray_num_to_keep, "append_snapshot": append_snapshot,
        "ray_loggers": ray_loggers,
        "outcomes": outcome, "storage": str(folder), "all_processes_cpu_s": tree_cpu,
        "all_processes_cpu_ms_per_trial": 1e3 * tree_cpu / trials,
        "memory_mb": {"before": rss_before, "after": rss_after,
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    })
    if storage is None:
        shutil.rmtree(folder, ignore_errors=True)
        result["storage"] = None
    return result


class _Transitions(SlotUse):
    """SlotUse, and what the idle slot-time is made of: the trials' (re)starts, each of which leaves a slot idle from
    the last report of the trial before to the start (docs/sweeps.md, "Slot utilisation"), and each report's interval
    beyond the trial's own sleep (a report blocks the trial until the driver asks for the next one)."""

    def setup(self, **info):
        super().setup(**info)
        self.starts = 0
        self.intervals: list[float] = []
        self._previous: dict[str, float] = {}   # trial id → its last report since it (re)started

    def on_trial_start(self, iteration, trials, trial, **info):
        super().on_trial_start(iteration, trials, trial, **info)
        self.starts += 1
        self._previous.pop(trial.trial_id, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        now = self._last[trial.trial_id]
        if trial.trial_id in self._previous:
            self.intervals.append(now - self._previous[trial.trial_id])
        self._previous[trial.trial_id] = now

    def figures(self, slots: int, report_seconds: float) -> dict:
        idle = (slots * (self.last_end - self.first_start) - self.busy
                if self.utilization(slots) is not None else math.nan)
        median = statistics.median(self.intervals) if self.intervals else math.nan
        return {"trial_starts": self.starts, "idle_slot_s_per_start": idle / self.starts if self.starts else math.nan,
                "report_interval_beyond_sleep_ms": 1e3 * (median - report_seconds)}


def _sweep_experiment(trials: int, reports: int, concurrency: int, sampler: str, path: str | Path | None):
    """The experiment file's settings (default: the ResNet-18 CIFAR-10 sweep: reports every 10 epochs,
    ASHA grace 10, factor 3) at the bench's size; one trial slot per CPU, no GPU, no retries."""
    experiment = load_experiment(path or DEFAULT_EXPERIMENT, [
        f"pretrain.epochs={reports * 10}", "pretrain.eval_every=10", f"search.num_samples={trials}",
        f"search.max_concurrent={concurrency}", f"search.sampler={sampler}", "resources.cpus_per_trial=1",
        "resources.gpus_per_trial=0", "resources.max_failures=0", "pretrain.device=cpu", "scheduler.grace_period=10"])
    return experiment


def _check_settings(trials, reports, concurrency, report_seconds, checkpoint_mb, tracking) -> None:
    checks = [(trials >= 2, f"--trials must be ≥ 2, got {trials}"), (reports >= 1, f"--reports must be ≥ 1, got {reports}"),
              (concurrency >= 1, f"--concurrency must be ≥ 1, got {concurrency}"),
              (math.isfinite(report_seconds) and report_seconds >= 0, f"--report-seconds must be ≥ 0, got {report_seconds}"),
              (math.isfinite(checkpoint_mb) and 0 <= checkpoint_mb <= 1024,
               f"--checkpoint-mb must be in [0, 1024], got {checkpoint_mb}"),
              (tracking in ("sqlite", "server", "none"), f"--tracking must be sqlite, server or none, got {tracking!r}")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def _figures(trials, reported, concurrency, wall, cpu, summary, server_cpu) -> dict:
    calls = {name: {"calls": c, "wall_s": w, "cpu_s": u} for name, (c, w, u) in sorted(PROFILE.calls.items())}
    sslsearch_cpu = sum(calls[n]["cpu_s"] for n in TOP_LEVEL + OWN_THREADS if n in calls)
    setup = sum(calls.get(name, {}).get("cpu_s", 0.0) for name in ("tracking.setup", "tracking.send.sweep"))
    own = sum(t.trial_seconds for t in summary.trials) / concurrency
    mlflow_calls = {k: v for k, v in calls.items() if k.startswith("mlflow.")}
    http = calls.get("http.request", {"calls": 0, "wall_s": 0.0})
    saves = PROFILE.saves
    return {
        "trials": trials, "reports": reported, "concurrency": concurrency,
        "wall_s": wall, "trials_own_s_over_concurrency": own, "wall_beyond_trials_s": wall - own,
        # Creating the MLflow store (migrations, the sweep's run) is once per sweep: left out of the rates.
        "driver_cpu_s": cpu, "setup_cpu_s": setup,
        "driver_cpu_ms_per_report": 1e3 * (cpu - setup) / max(1, reported),
        "driver_cpu_ms_per_trial": 1e3 * (cpu - setup) / trials,
        "timed_cpu_s": sslsearch_cpu, "ray_rest_cpu_s": cpu - sslsearch_cpu,
        "components": calls,
        "suggest_ms": _curve(PROFILE.suggests, trials),
        "snapshot_ms": _curve(PROFILE.snapshots, trials),
        "mlflow": {"calls": sum(v["calls"] for v in mlflow_calls.values()),
                   "seconds": sum(v["wall_s"] for v in mlflow_calls.values()),
                   "calls_per_report": sum(v["calls"] for v in mlflow_calls.values()) / max(1, reported),
                   "ms_per_report": 1e3 * sum(v["wall_s"] for v in mlflow_calls.values()) / max(1, reported),
                   "http_requests": http["calls"], "http_seconds": http["wall_s"], "server_cpu_s": server_cpu},
        # With reuse_actors, Ray starts a trial actor only when no idle one is cached; each start imports the trainable.
        "actor_processes": len(PROFILE.actors),
        "actor_requests": calls.get("ray.actor_requests", {}).get("calls", 0),
        "actor_reuses": calls.get("ray.actor_reuses", {}).get("calls", 0),
        "ray_state_saves": {"count": len(saves), "cpu_s": sum(s[2] for s in saves), "wall_s": sum(s[1] for s in saves),
                            "last_ms": 1e3 * saves[-1][1] if saves else None,
                            "last_bytes": saves[-1][3] if saves else None,
                            "per_report": len(saves) / max(1, reported)},
    }


def _curve(points: list[tuple], trials: int) -> dict:
    """Mean wall and CPU ms of the calls made with few and with many finished trials (first and last tenth)."""
    if not points:
        return {}
    tenth = max(1, len(points) // 10)
    def mean(part, i):
        return 1e3 * sum(p[i] for p in part) / len(part)
    first, last = points[:tenth], points[-tenth:]
    return {"calls": len(points), "first_finished": first[-1][0], "last_finished": last[0][0],
            "first_ms": mean(first, 1), "last_ms": mean(last, 1), "first_cpu_ms": mean(first, 2),
            "last_cpu_ms": mean(last, 2), "total_cpu_s": sum(p[2] for p in points)}


# ---------------------------------------------------------------------------------------------
# The sampler alone: suggest latency against the finished trials it learns from
# ---------------------------------------------------------------------------------------------

SAMPLER_VARIANTS = {
    # The configuration study's samplers (search.proposals.configuration_sampler) with the sweep's settings and
    # the TPE variants the replay benchmark compared; the budget is unknown here, so startup is 10 configurations.
    "tpe": lambda seed: configuration_sampler("tpe", seed, None),
    "tpe-univariate": lambda seed: configuration_sampler("tpe", seed, None, ProposalSettings(multivariate=False)),
    "tpe-no-liar": lambda seed: configuration_sampler("tpe", seed, None, ProposalSettings(constant_liar=False)),
    "random": lambda seed: configuration_sampler("random", seed, None),
    "gp": lambda seed: configuration_sampler("gp", seed, None),
    # The searcher before issue 19: TPE (optuna's defaults, constant liar) sampling the sweep's own study.
    "tpe-old": lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
}


def suggest_latency(finished: tuple[int, ...] = (50, 200, 1000), samplers: tuple[str, ...] = ("tpe", "random"),
                    running: int = 8, calls: int = 16, seed: int = 0) -> dict:
    """CPU ms per `suggest` of a paired SweepSearcher whose configuration study (where the sampler works) already
    holds `finished` configurations (a third completed, the rest pruned, with intermediate values, as ASHA leaves
    them) while `running` to `running + calls` trials are in flight (half of them second twins, which the sampler
    does not sample), for each sampler variant; no Ray. Returns {sampler: {finished: ms}}."""
    unknown = [name for name in samplers if name not in SAMPLER_VARIANTS]
    if unknown:
        raise InputError(f"unknown sampler variant(s) {', '.join(unknown)}; expected {', '.join(SAMPLER_VARIANTS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_search_space(_sweep_experiment(2, 10, running, "tpe", None).space_path())
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    for name in samplers:
        out[name] = {}
        for n in finished:
            old = name == "tpe-old"
            searcher = SweepSearcher(space, max_epochs=100, sampler=SAMPLER_VARIANTS[name](seed), seed=seed, paired=True,
                                     study_name="s", study_path=None, proposals=None if old else DEFAULT_PROPOSALS)
            study = searcher.study if old else searcher.configuration_study
            # a paired sweep's configurations (the old searcher's study had the loss among them)
            distributions = {k: d for k, d in space.to_optuna().items() if old or k != "loss"}
            for i in range(n):
                params = {k: rng.choice(d.choices) if isinstance(d, optuna.distributions.CategoricalDistribution)
                          else math.exp(rng.uniform(math.log(d.low), math.log(d.high))) for k, d in distributions.items()}
                epochs = 10 if i % 3 else 100
                curve = {e: synthetic_val_acc({"loss": "barlow", **params}, e) for e in range(0, epochs + 1, 10)}
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=distributions, intermediate_values=curve,
                    state=optuna.trial.TrialState.COMPLETE if epochs == 100 else optuna.trial.TrialState.PRUNED,
                    value=curve[100] if epochs == 100 else None))
            for i in range(running):
                searcher.suggest(f"warm{i}")
            started = time.thread_time()
            for i in range(calls):
                searcher.suggest(f"t{i}")
            out[name][str(n)] = 1e3 * (time.thread_time() - started) / calls
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark: several sweep sizes, each in a fresh process
# ---------------------------------------------------------------------------------------------

def bench_platform(trials: tuple[int, ...] = (50, 200, 1000), reports: int = 10, concurrency: int = 8,
                   report_seconds: float = 0.25, checkpoint_mb: float = 1.0, tracking: str = "sqlite",
                   sampler: str = "tpe", ray_num_to_keep: int | None = 2, append_snapshot: bool = True,
                   ray_loggers: str = "sweep", paused_twins_hold_slots: bool = False, timeout_s: float = 3600) -> dict:
    """`measure_sweep` for each sweep size, each in a fresh Python process: its own Ray instance and
    clean memory figures. Returns the settings and one result per size."""
    if not trials:
        raise InputError("--trials needs at least one sweep size, e.g. 50,200,1000")
    for n in trials:
        _check_settings(n, reports, concurrency, report_seconds, checkpoint_mb, tracking)
        _sweep_experiment(n, reports, concurrency, sampler, None)
    settings = {"reports": reports, "concurrency": concurrency, "report_seconds": report_seconds,
                "checkpoint_mb": checkpoint_mb, "tracking": tracking, "sampler": sampler,
                "ray_num_to_keep": ray_num_to_keep, "append_snapshot": append_snapshot, "ray_loggers": ray_loggers,
                "paused_twins_hold_slots": paused_twins_hold_slots}
    runs = []
    for n in trials:
        with tempfile.TemporaryDirectory(prefix="sslsearch-bench-platform-") as folder:
            out = Path(folder) / "result.json"
            log = Path(folder) / "driver.log"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
            with open(log, "w") as stream:
                completed = subprocess.run(
                    [sys.executable, "-m", "sslsearch.bench.platform", json.dumps({**settings, "trials": n,
                                                                                   "storage": str(Path(folder) / "sweep")}),
                     str(out)], stdout=stream, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
            if completed.returncode != 0 or not out.is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"the {n}-trial sweep failed (exit {completed.returncode}):\n{tail}")
            result = json.loads(out.read_text())
            result["storage"] = None  # removed with the temporary folder
            runs.append(result)
            # A long run's finished sizes survive an interruption of the next one.
            print(f"bench platform: {n} trials done in {result['wall_s']:.0f} s: {json.dumps(result)}",
                  file=sys.stderr, flush=True)
    return {**settings, "machine": _machine(), "runs": runs}


def _machine() -> dict:
    import platform

    import mlflow

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "ray": ray.__version__, "optuna": optuna.__version__, "mlflow": mlflow.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def format_bench_platform(result: dict) -> str:
    """The curves as a table: one column per sweep size."""
    runs = result["runs"]
    fix = "".join([f", Ray num_to_keep={result['ray_num_to_keep']}" if result["ray_num_to_keep"] != 1 else "",
                   ", appended study snapshot" if result["append_snapshot"] else "",
                   {"json": ", Ray's result.json only",
                    "all": ", Ray's TensorBoard logger too"}.get(result.get("ray_loggers"), ""),
                   ", paused twins holding slots (before issue 19)" if result.get("paused_twins_hold_slots") else ""])
    lines = [f"platform: synthetic trials ({result['report_seconds']} s per report interval, {result['checkpoint_mb']} MB "
             f"checkpoints, up to {result['reports'] + 1} reports), {result['concurrency']} at a time, {result['sampler']} "
             f"sampler, MLflow: {result['tracking']}{fix}; {result['machine']['cpus']} CPUs, {result['machine']['date']}"]

    def row(label, values):
        lines.append(f"  {label:<44}" + "".join(f"{v:>12}" for v in values))

    row("trials", [f"{r['trials']:,}" for r in runs])
    row("reports (all trials)", [f"{r['reports']:,}" for r in runs])
    row("wall s", [f"{r['wall_s']:.1f}" for r in runs])
    row("slot utilisation % (training / slots × wall)", [f"{100 * r.get('slot_utilization', math.nan):.1f}" for r in runs])
    row("  trial starts (new trials, resumed twins)", [f"{r.get('trial_starts', 0):,}" for r in runs])
    row("  idle slot-s per trial start", [f"{r.get('idle_slot_s_per_start', math.nan):.2f}" for r in runs])
    row("  report interval beyond sleep, median ms",
        [f"{r.get('report_interval_beyond_sleep_ms', math.nan):.0f}" for r in runs])
    row("  beyond the trials' own time / concurrency", [f"{r['wall_beyond_trials_s']:.1f}" for r in runs])
    row("driver CPU s (process, all threads)", [f"{r['driver_cpu_s']:.1f}" for r in runs])
    row("  of which MLflow store set-up (once)", [f"{r['setup_cpu_s']:.1f}" for r in runs])
    row("  ms per report, set-up left out", [f"{r['driver_cpu_ms_per_report']:.1f}" for r in runs])
    row("  ms per trial, set-up left out", [f"{r['driver_cpu_ms_per_trial']:.0f}" for r in runs])
    for name in TOP_LEVEL + OWN_THREADS + ("searcher.persist", *IN_STATE_SAVE):
        if any(name in r["components"] for r in runs):
            row(f"  CPU s in {name}", [f"{r['components'].get(name, {}).get('cpu_s', 0.0):.2f}" for r in runs])
        if name == "tracking.send":   # its records by kind
            for kind in sorted({k for r in runs for k in r["components"] if k.startswith("tracking.send (")}):
                row(f"    of which {kind[len('tracking.send ('):-1]} records",
                    [f"{r['components'].get(kind, {}).get('cpu_s', 0.0):.2f}" for r in runs])
    row("  CPU s elsewhere (Ray's loop and threads)", [f"{r['ray_rest_cpu_s']:.1f}" for r in runs])
    row("CPU s, all processes (driver, Ray, actors)", [f"{r.get('all_processes_cpu_s', math.nan):.1f}" for r in runs])
    row("  ms per trial", [f"{r.get('all_processes_cpu_ms_per_trial', math.nan):.0f}" for r in runs])
    row("trial actors: requested / reused / reported", [f"{r.get('actor_requests', 0)}/{r.get('actor_reuses', 0)}/"
                                                         f"{r.get('actor_processes', 0)}" for r in runs])
    row("suggest ms, first tenth of calls", [f"{r['suggest_ms'].get('first_ms', math.nan):.1f}" for r in runs])
    row("suggest ms, last tenth of calls", [f"{r['suggest_ms'].get('last_ms', math.nan):.1f}" for r in runs])
    row("study snapshot ms, last tenth", [f"{r['snapshot_ms'].get('last_ms', math.nan):.1f}" for r in runs])
    row("MLflow calls per report", [f"{r['mlflow']['calls_per_report']:.2f}" for r in runs])
    row("MLflow ms per report", [f"{r['mlflow']['ms_per_report']:.1f}" for r in runs])
    if any(r["mlflow"]["http_requests"] for r in runs):
        row("HTTP requests", [f"{r['mlflow']['http_requests']:,}" for r in runs])
    if any(r["mlflow"]["server_cpu_s"] for r in runs):
        row("MLflow server CPU s", [f"{r['mlflow']['server_cpu_s']:.1f}" for r in runs])
    row("Ray state saves per report", [f"{r['ray_state_saves']['per_report']:.2f}" for r in runs])
    row("Ray state save ms (last)", [f"{r['ray_state_saves']['last_ms'] or 0:.1f}" for r in runs])
    row("Ray state KB (last)", [f"{(r['ray_state_saves']['last_bytes'] or 0) / 1024:,.0f}" for r in runs])
    row("driver RSS MB before / after", [f"{r['memory_mb']['before']:.0f}/{r['memory_mb']['after']:.0f}" for r in runs])
    row("driver peak RSS MB", [f"{r['memory_mb']['peak']:.0f}" for r in runs])
    return "\n".join(lines)


def _child_main(argv: list[str]) -> int:
    """`python -m sslsearch.bench.platform SETTINGS_JSON OUT_JSON`: one sweep, its figures written to OUT_JSON."""
    settings = json.loads(argv[0])
    result = measure_sweep(**settings)
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    # Run as a module the classes above would live in __main__; import them from their module instead.
    from sslsearch.bench.platform import _child_main as main

    sys.exit(main(sys.argv[1:]))
