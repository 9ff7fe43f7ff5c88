"""Sweeps: a Ray Tune Tuner with Optuna sampling and ASHA early stopping.

Fixes a known defect of Ray's OptunaSearch: when ASHA stops a trial early, OptunaSearch tells
Optuna the trial COMPLETED with its truncated score, so TPE learns from short trials as if they
were final. `SweepSearcher` records such trials as PRUNED, with their intermediate values at
step = epoch, as Optuna's own pruners would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
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
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from sslsearch.config import Experiment, experiment_from_dict
from sslsearch.data import prepare_dataset
from sslsearch.errors import InputError
from sslsearch.space import SearchSpace
from sslsearch.trainable import run_trial

# The objective, named once: ASHA, Optuna and the summaries all read it from here.
METRIC, MODE = "val_acc", "max"
SWEEP_FILE = "sslsearch-sweep.json"
STUDY_FILE = "optuna-study.journal"
OUTCOMES = ("completed", "stopped early", "errored", "running")


def trial_outcome(last_epoch: int, max_epochs: int | None, errored: bool = False) -> str:
    """A finished trial's outcome: errored, completed (reached its last epoch), or stopped early by
    ASHA or the time budget. The searcher, the sweep summary and the MLflow records all use this."""
    if errored:
        return "errored"
    return "completed" if max_epochs is not None and last_epoch >= max_epochs else "stopped early"


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
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp)))
    copy = optuna.create_study(storage=storage, study_name=study.study_name, directions=study.directions)
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    os.replace(tmp, path)
    Path(str(tmp) + ".lock").unlink(missing_ok=True)


class SweepSearcher(OptunaSearch):
    """OptunaSearch that reports ASHA-stopped trials as PRUNED and can pair the loss variants."""

    def __init__(self, space: SearchSpace, *, max_epochs: int, sampler: str, seed: int, paired: bool,
                 study_name: str, study_path: str | None):
        super().__init__(space=space.to_optuna(), metric=METRIC, mode=MODE, sampler=make_sampler(sampler, seed),
                         study_name=study_name)
        self._max_epochs = max_epochs
        self._paired = paired
        self._seed = seed
        self._study_path = study_path
        self._partner: dict | None = None   # params waiting for their other-loss twin
        self._suggested = 0
        self.outcomes: dict[str, str] = {}

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and self._paired and self._partner is not None:
            # The next ask() returns exactly these params: the same configuration with the other loss.
            self._ot_study.enqueue_trial(self._partner, skip_if_exists=False)
        fresh = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        if fresh:
            pair = self._suggested // 2 if self._paired else self._suggested
            if self._paired and self._partner is None:
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
        return {**config, "seed": ot_trial.user_attrs["seed"], "pair": ot_trial.user_attrs["pair"]}

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or result.get(METRIC) is None:
            return
        self._ot_trials[trial_id].report(result[METRIC], step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(METRIC)
        failed = error or value is None or (isinstance(value, float) and not math.isfinite(value))
        outcome = trial_outcome(int((result or {}).get("epoch", 0)), self._max_epochs, errored=failed)
        # Stopped by ASHA (or by the time budget) before its last epoch: PRUNED, not COMPLETE.
        state, values = {"errored": (optuna.trial.TrialState.FAIL, None),
                         "stopped early": (optuna.trial.TrialState.PRUNED, None),
                         "completed": (optuna.trial.TrialState.COMPLETE, value)}[outcome]
        ot_trial.set_user_attr("outcome", outcome)
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)
        self.outcomes[trial_id] = outcome
        self.persist()

    def persist(self) -> None:
        if self._study_path:
            write_study_snapshot(self._ot_study, self._study_path)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class LiveView(tune.Callback):
    """Prints a line per report and per finished trial, with the best val_acc reported so far per loss (at
    any epoch; the summary and the leaderboard rank trials by their final report)."""

    def __init__(self, quiet: bool = False):
        # No file object kept here: Ray pickles callbacks into the sweep's state for resuming.
        self.quiet = quiet
        self.best: dict[str, float] = {}
        self.start = time.monotonic()

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {text}", flush=True)

    @staticmethod
    def _describe(trial) -> str:
        c = trial.config
        return (f"{trial.trial_id} {c.get('loss', c['base']['loss'])} λ={c.get('lmbda', c['base']['lmbda']):.3g} "
                f"lr={c.get('lr', c['base']['lr']):.3g} d={c.get('feature_dim', c['base']['feature_dim'])}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        loss = trial.config.get("loss", trial.config["base"]["loss"])
        if result.get(METRIC) is not None:
            self.best[loss] = max(self.best.get(loss, -math.inf), result[METRIC])
        for other in trials:  # after a resume, the reports of earlier sessions too (Ray restores each trial's max)
            earlier = (getattr(other, "metric_analysis", None) or {}).get(METRIC, {}).get("max")
            if earlier is not None and math.isfinite(earlier):
                key = other.config.get("loss", other.config["base"]["loss"])
                self.best[key] = max(self.best.get(key, -math.inf), earlier)
        best = "  ".join(f"{k} {v:.2f}" for k, v in sorted(self.best.items()))
        running = sum(t.status == "RUNNING" for t in trials)
        self._print(f"{self._describe(trial)} epoch {result['epoch']} val_acc {result[METRIC]:.2f} "
                    f"| running {running}, finished {sum(t.is_finished() for t in trials)} "
                    f"| best report, any epoch: {best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._print(f"{self._describe(trial)} finished at epoch {result.get('epoch', '?')}")

    def on_trial_error(self, iteration, trials, trial, **info):
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

    def best_per_loss(self) -> dict[str, TrialSummary]:
        best: dict[str, TrialSummary] = {}
        for t in self.trials:
            if t.val_acc is None or not math.isfinite(t.val_acc):
                continue
            if t.loss not in best or t.val_acc > best[t.loss].val_acc:
                best[t.loss] = t
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

    def format(self) -> str:
        counts = {o: sum(t.outcome == o for t in self.trials) for o in OUTCOMES}
        lines = [f"sweep {self.name}: {len(self.trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)})"]
        if self.resumed:  # earlier sessions' wall time is unknown here: no overhead figure rather than a wrong one
            lines.append(f"wall {self.wall_seconds:.0f}s in this session (resumed; trials' own time across sessions "
                         f"{sum(t.trial_seconds for t in self.trials):.0f}s, so no overhead figure)")
        else:
            lines.append(f"wall {self.wall_seconds:.0f}s vs trials' own time / concurrency "
                         f"{sum(t.trial_seconds for t in self.trials) / max(1, self.concurrency):.0f}s "
                         f"(concurrency {self.concurrency}): overhead {100 * self.overhead:.0f}%")
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
        if self.unfinished:
            lines.append(f"interrupted with {self.unfinished} trial{'s' * (self.unfinished > 1)} unfinished; "
                         f"continue with: sslsearch resume {self.name}")
        return "\n".join(lines)


def _quiet() -> None:
    """The live view replaces Ray's and Optuna's console chatter."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Our summary says `sslsearch resume NAME`; Ray's "Resume experiment with: Tuner.restore(...)" would be a second hint.
    logging.getLogger("ray.tune.tune").addFilter(_no_ray_resume_hint)
    # Checkpointing every report interval is intended; Ray warns about it when trials are short.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _no_ray_resume_hint(record: logging.LogRecord) -> bool:
    return "Resume experiment with" not in record.getMessage() and "Resume training with" not in record.getMessage()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start a local Ray instance with explicit CPUs, or join a cluster; InputError if unreachable."""
    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            # address="local": a private instance, never whatever Ray cluster happens to run on this machine.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {str(error).splitlines()[0]}") from None


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable address for minutes; a plain TCP connect answers in seconds."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
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


def _trainable(experiment: Experiment):
    return tune.with_resources(run_trial, {"cpu": experiment.resources.cpus_per_trial,
                                           "gpu": experiment.resources.gpus_per_trial})


def _local_path(storage: str) -> Path | None:
    return None if "://" in storage else Path(storage)


def sweep_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def run_sweep(experiment: Experiment, space: SearchSpace, *, name: str, storage: str, address: str | None = None,
              callbacks: list | None = None, quiet: bool = False) -> SweepSummary:
    """Run a new sweep; its records live in `storage`/`name`."""
    local = _local_path(storage)
    if local is not None:
        storage = str(local.resolve())
        if (local / name).exists():
            raise InputError(f"a sweep named {name!r} already exists in {storage}; resume it with `sslsearch resume {name}` "
                             "or choose another --name")
    if experiment.search.paired and space.choices("loss") is None:
        raise InputError("search.paired needs 'loss' in the search space as a choice of barlow and hsic")
    if experiment.search.paired and sorted(space.choices("loss")) != ["barlow", "hsic"]:
        raise InputError(f"search.paired needs loss choices [barlow, hsic], got {list(space.choices('loss'))}")
    if address is None:
        # Once, here: trials would race to download it, or fail one by one if it cannot be had.
        # (On a cluster the data folder is the workers', which this machine may not see.)
        prepare_dataset(experiment.pretrain.dataset, experiment.pretrain.data_dir)
    _quiet()
    connect_ray(address)
    check_resources(experiment, address)
    path = sweep_path(storage, name)
    print(f"sweep {name}: {experiment.search.num_samples} trials of up to {experiment.pretrain.epochs} epochs on "
          f"{experiment.pretrain.dataset}; records in {path}", file=open(os.devnull, "w") if quiet else sys.stdout, flush=True)
    study_path = f"{path}/{STUDY_FILE}"
    if local is not None:
        Path(path).mkdir(parents=True)
    # Written through pyarrow so that a sweep on s3:// or gs:// storage can be resumed from anywhere.
    _write_text(f"{path}/{SWEEP_FILE}", json.dumps(
        {"experiment": experiment.to_dict(), "experiment_source": experiment.source,
         "space": {p.name: dataclasses.asdict(p) for p in space.parameters}, "space_source": space.source,
         "storage": storage, "name": name}, indent=2))
    searcher = SweepSearcher(space, max_epochs=experiment.pretrain.epochs, sampler=experiment.search.sampler,
                             seed=experiment.search.seed, paired=experiment.search.paired, study_name=name,
                             study_path=study_path)
    if experiment.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=experiment.pretrain.epochs,
                                  grace_period=experiment.scheduler.grace_period,
                                  reduction_factor=experiment.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    concurrency = _concurrency(experiment)
    tuner = tune.Tuner(
        _trainable(experiment),
        param_space={"base": experiment.pretrain.to_dict(), "final_test": True,
                     "cpus": experiment.resources.cpus_per_trial},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=experiment.search.num_samples,
                                    max_concurrent_trials=experiment.search.max_concurrent,
                                    time_budget_s=experiment.search.time_budget_s, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0,
            callbacks=[LiveView(quiet), *(callbacks or [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1 if experiment.tracking.checkpoints != "all" else None,
                                                    checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    started = time.monotonic()
    results = tuner.fit()
    return summarize(results, name, path, time.monotonic() - started, concurrency, study_path)


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
        known = sorted(p.name for p in local.iterdir() if tune.Tuner.can_restore(str(p))) if local and local.is_dir() else []
        raise InputError(f"no sweep named {name!r} in {storage}; known sweeps: {', '.join(known) or 'none'}")
    return json.loads(_read_text(f"{path}/{SWEEP_FILE}"))


def resume_sweep(name: str, storage: str, address: str | None = None) -> SweepSummary:
    """Continue an interrupted sweep: searcher, scheduler and unfinished trials from their checkpoints."""
    local = _local_path(storage)
    if local is not None:
        storage = str(local.resolve())
    path = sweep_path(storage, name)
    meta = sweep_metadata(name, storage)
    _quiet()
    experiment = experiment_from_dict(meta["experiment"], meta.get("experiment_source"))
    connect_ray(address)
    check_resources(experiment, address)
    tuner = tune.Tuner.restore(path, trainable=_trainable(experiment),
                               resume_unfinished=True, resume_errored=True)
    started = time.monotonic()
    results = tuner.fit()
    concurrency = _concurrency(experiment)
    summary = summarize(results, name, path, time.monotonic() - started, concurrency, f"{path}/{STUDY_FILE}")
    summary.resumed = True
    return summary


def saved_statuses(path: str) -> dict[str, str]:
    """Trial folder name → status, as Tune last saved the sweep's state. After Ctrl-C the unfinished
    trials are saved PENDING or PAUSED (to be resumed), while the ResultGrid that fit() returns calls
    every trial TERMINATED, having stopped them; {} when the state cannot be read."""
    try:
        return {f"trial_{t.trial_id}": t.status for t in tune.ExperimentAnalysis(path).trials}
    except Exception:  # noqa: BLE001 — a summary without the interruption count is still a summary
        return {}


def summarize(results, name: str, path: str, wall: float, concurrency: int, study_path: str | None) -> SweepSummary:
    """Per-trial outcomes from a ResultGrid (outcome from epochs reached and errors; "running" for a
    trial that had not ended when the sweep was interrupted)."""
    status = saved_statuses(path)
    trials = []
    for result in results:
        metrics = result.metrics or {}
        config = result.config or {}
        base = config.get("base", {})
        epoch = int(metrics.get("epoch", 0) or 0)
        outcome = trial_outcome(epoch, base.get("epochs"), errored=result.error is not None)
        if status.get(Path(result.path).name, "TERMINATED") not in ("TERMINATED", "ERROR"):
            outcome = "running"
        params = {k: v for k, v in config.items() if k not in ("base", "final_test", "cpus", "pair", "seed")}
        params["seed"] = config.get("seed", base.get("seed"))
        trials.append(TrialSummary(
            trial_id=metrics.get("trial_id") or Path(result.path).name, loss=params.get("loss", base.get("loss")),
            params=params, epoch=epoch, val_acc=metrics.get(METRIC), test_acc=metrics.get("test_acc"), outcome=outcome,
            trial_seconds=float(metrics.get("trial_seconds", 0.0) or 0.0),
            checkpoint=result.checkpoint.path if result.checkpoint else None, node_id=metrics.get("node_id"),
            pair=config.get("pair")))
    if study_path and "://" not in study_path and not Path(study_path).exists():
        study_path = None
    return SweepSummary(name, path, trials, wall, concurrency, study_path)
