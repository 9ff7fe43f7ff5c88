"""MLflow records of sweeps: one parent run per sweep, one nested child run per trial.

`MlflowTracking` is a Ray Tune callback; it runs on the driver, the only process that writes
(SQLite allows one writer). The layout below is a contract that the leaderboard reads:

- experiment `sslsearch`, tagged `mlflow.experimentKind=custom_model_development` (so MLflow 3's
  UI opens it on runs, not GenAI traces); parent run named after the sweep, tags `sslsearch.role=sweep`,
  `sslsearch.sweep`; params: the experiment's flattened settings (`pretrain.epochs`, ...);
  metrics `best_val_acc_<loss>` (best final val_acc of the loss's finished trials, step = finished
  trials); artifacts `experiment.yaml`, `search_space.yaml`, `sweep.json` (and `report.html` once
  `sslsearch report` ran).
- child run per trial named after the trial id, nested (`mlflow.parentRunId`), tags
  `sslsearch.role=trial`, `sslsearch.sweep`, `sslsearch.trial_id`, `sslsearch.loss`,
  `sslsearch.pair` (paired sweeps), `sslsearch.outcome` ∈ sslsearch.search.OUTCOMES; params: the trial's config
  (`lmbda`, `lr`, ... and `base.*`); metrics at `step = epoch`; artifacts `statistics.csv`,
  `checkpoints/last.pt`, `checkpoints/best.pt` (best `val_acc` after epoch 0) and, with the
  `all` policy, `checkpoints/epoch_<N>.pt`.

Every write goes through an ordered outbox: a transient failure (server down, SQLite locked) is
retried with backoff, then left queued for a later hook and flushed at the end of the sweep. It
never stops the sweep. MLflow itself is the state: a resumed sweep finds its runs by tags and
continues them, and metric steps already logged are skipped, so nothing is duplicated.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
import requests
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from ray import tune

import sslsearch
from sslsearch.config import Experiment
from sslsearch.errors import InputError
from sslsearch.search import trial_outcome
from sslsearch.space import SearchSpace
# The light half of the store's handling (the CLI uses it before importing MLflow or Ray); re-exported here.
from sslsearch.store import artifact_root as _artifact_root, check_store, default_tracking_uri  # noqa: F401

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "sslsearch"
# The trainable's reported metrics (see trainable.run_trial); Ray's own bookkeeping keys are not logged.
METRICS = ("epoch", "loss", "val_acc", "knn_acc", "images_per_s", "test_acc", "trial_seconds")
ROLE, SWEEP, TRIAL_ID, LOSS, PAIR, OUTCOME = ("sslsearch.role", "sslsearch.sweep", "sslsearch.trial_id",
                                              "sslsearch.loss", "sslsearch.pair", "sslsearch.outcome")
BEST_EPOCH, BEST_VAL_ACC, ERROR = "sslsearch.best_epoch", "sslsearch.best_val_acc", "sslsearch.error"
PARENT_RUN_ID = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment on GenAI traces unless this tag says it is model training
# (key and value as the UI's bundle reads them, mlflow/server/js in MLflow 3.17).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
FINISHED = ("completed", "stopped early")  # the outcomes the leaderboard ranks
SUMMARY_METRIC = "best_val_acc_{loss}"     # on the parent run: best final val_acc of the loss's finished trials
# Error codes that no retry can fix: drop the record (with a warning) instead of blocking the outbox.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "ENDPOINT_NOT_FOUND"}
TRANSIENT = (MlflowException, requests.RequestException, OSError)
COOLDOWN_S = 30.0  # after retries fail, queued records wait this long before the next try


def check_tracking(uri: str, sweep: str | None = None, *, reading: bool = False) -> None:
    """InputError (one line) if the tracking store cannot take records (sslsearch.store.check_store);
    `sweep`: also refuse a name already recorded; `reading` (leaderboard, export): only check that the
    store can be reached, creating nothing (leaderboard.mlflow_client refuses a SQLite store that does not exist)."""
    check_store(uri, reading=reading)
    if sweep is not None:
        _quiet_mlflow()
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None and client.search_runs([experiment.experiment_id], _sweep_filter(sweep), max_results=1):
            raise InputError(f"the MLflow store {uri} already holds a sweep named {sweep!r}; choose another --name")


def _quiet_mlflow() -> None:
    # Creating a SQLite store runs its migrations, which log a page at INFO.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _sweep_filter(sweep: str, role: str = "sweep") -> str:
    return f"tags.`{ROLE}` = '{role}' AND tags.`{SWEEP}` = '{sweep}'"


def _flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(list(value) if isinstance(value, tuple) else value)
    return flat


def _git_commit() -> tuple[str, bool] | None:
    root = Path(sslsearch.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head.stdout.strip(), bool(status.stdout.strip())) if head.returncode == 0 else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _error_text(trial) -> str:
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    return text or "the trial failed (Ray kept no error file)"


@dataclass
class _Run:
    """What the callback knows of one child run; recovered from MLflow after a resume."""
    run_id: str
    status: str
    last_step: int = -1                # highest epoch whose metrics are logged
    best_val_acc: float = -math.inf    # val_acc of checkpoints/best.pt
    best_epoch: int | None = None
    pending_tags: dict = dataclasses.field(default_factory=dict)  # ride along with the next log_batch
    has_params: bool = True            # False until the params of a new run are logged

    @classmethod
    def from_mlflow(cls, run) -> _Run:
        tags, metrics = run.data.tags, run.data.metrics
        best = tags.get(BEST_VAL_ACC)
        return cls(run.info.run_id, run.info.status, int(metrics["epoch"]) if "epoch" in metrics else -1,
                   float(best) if best is not None else -math.inf,
                   int(tags[BEST_EPOCH]) if BEST_EPOCH in tags else None, has_params=bool(run.data.params))


class MlflowTracking(tune.Callback):
    """Ray Tune callback: records the sweep and its trials in MLflow, exactly once each."""

    def __init__(self, experiment: Experiment, space: SearchSpace, *, sweep: str, storage: str | None = None,
                 tracking_uri: str | None = None, attempts: int = 4, backoff_s: float = 0.5):
        if "'" in sweep or "`" in sweep:
            raise InputError(f"sweep name may not hold quotes, got {sweep!r}")
        uri = tracking_uri or experiment.tracking.uri
        if uri is None:
            if storage is None:
                raise InputError("MlflowTracking needs the sweep's storage or a tracking URI")
            uri = default_tracking_uri(storage)
        self.experiment, self.space, self.sweep, self.uri = experiment, space, sweep, uri
        self.sweep_path = f"{storage.rstrip('/')}/{sweep}" if storage else None
        self.attempts, self.backoff_s = attempts, backoff_s
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._runs: dict[str, _Run] = {}
        self._outbox: collections.deque = collections.deque()
        self._retry_at = 0.0
        self._configs: dict[str, dict] = {}
        self._live: set[str] = set()    # trials that ran in this session
        self._ended: set[str] = set()   # trials Ray ended in this session (complete or error)
        self._started = time.monotonic()

    # Ray pickles the callback into the sweep folder (tuner.pkl) and restores it on resume: carry the
    # settings only. Runs, steps and the best val_acc are recovered from MLflow, the source of truth.
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("experiment", "space", "sweep", "uri", "sweep_path", "attempts", "backoff_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- Ray Tune hooks: each queues records, then flushes the outbox -------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._started = time.monotonic()
        self._submit(("sweep",))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._live.add(trial.trial_id)
        self._configs[trial.trial_id] = trial.config
        self._submit(("trial", trial.trial_id))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._live.add(trial.trial_id)
        self._configs.setdefault(trial.trial_id, trial.config)
        metrics = {k: float(result[k]) for k in METRICS if _numeric(result.get(k))}
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        tags = {"sslsearch.node_id": result["node_id"]} if isinstance(result.get("node_id"), str) else {}
        self._submit(("metrics", trial.trial_id, step, metrics, tags))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result or {}  # the report this checkpoint came with
        val_acc = result.get("val_acc")
        self._submit(("checkpoint", trial.trial_id, checkpoint, int(result.get("epoch", -1)),
                      float(val_acc) if _numeric(val_acc) else None))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended.add(trial.trial_id)
        self._finish(trial, self._outcome(trial), RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended.add(trial.trial_id)
        self._finish(trial, "errored", RunStatus.to_string(RunStatus.FAILED), error=_error_text(trial))

    def on_experiment_end(self, trials, **info):
        budget = self.experiment.search.time_budget_s
        # Ray stops a sweep without per-trial hooks in two cases: its time budget ran out (trials
        # stopped early, for good) or it was interrupted (Ctrl-C, an error): then the trials resume later.
        out_of_time = budget is not None and time.monotonic() - self._started >= 0.99 * budget
        interrupted = False
        for trial in trials:
            if trial.trial_id in self._ended:
                continue
            if trial.trial_id in self._live:
                if out_of_time:
                    self._finish(trial, self._outcome(trial), RunStatus.to_string(RunStatus.FINISHED))
                else:
                    interrupted = True
                    self._finish(trial, "running", RunStatus.to_string(RunStatus.KILLED))
            elif trial.status in ("TERMINATED", "ERROR"):
                # Ended in an earlier session: finish its run if that session died before it could.
                errored = trial.status == "ERROR"
                self._finish(trial, "errored" if errored else self._outcome(trial),
                             RunStatus.to_string(RunStatus.FAILED if errored else RunStatus.FINISHED),
                             error=_error_text(trial) if errored else None, only_if_open=True)
        self._submit(("end", RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FINISHED)), force=True)
        if self._outbox:
            log.warning("MLflow at %s did not take %d record(s) of sweep %s; Ray's sweep folder %s still holds "
                        "the metrics and checkpoints", self.uri, len(self._outbox), self.sweep, self.sweep_path or "")

    def _outcome(self, trial) -> str:
        return trial_outcome(int((trial.last_result or {}).get("epoch", 0)), self.experiment.pretrain.epochs)

    def _finish(self, trial, outcome: str, status: str, error: str | None = None, only_if_open: bool = False) -> None:
        result = trial.last_result or {}
        if trial.trial_id not in self._live and "epoch" not in result:
            return  # never ran: no run to finish
        self._configs.setdefault(trial.trial_id, trial.config)
        # The last report rides along (skipped if logged), so a lost report still ends in MLflow.
        last = None
        if "epoch" in result:
            last = (int(result["epoch"]), {k: float(result[k]) for k in METRICS if _numeric(result.get(k))})
        self._submit(("finish", trial.trial_id, outcome, status, error, last, trial.checkpoint, _best_checkpoint(trial),
                      only_if_open))

    # -- the outbox --------------------------------------------------------------------------------

    def _submit(self, record: tuple, force: bool = False) -> None:
        self._outbox.append(record)
        if not force and time.monotonic() < self._retry_at:
            return  # still cooling down after a failure: keep the record for later
        while self._outbox:
            if not self._attempt(self._outbox[0]):
                self._retry_at = time.monotonic() + COOLDOWN_S
                return
            self._outbox.popleft()
        self._retry_at = 0.0

    def _attempt(self, record: tuple) -> bool:
        """Write one record, retrying transient errors; False if it must wait for a later try."""
        for attempt in range(self.attempts):
            try:
                getattr(self, f"_write_{record[0]}")(*record[1:])
                return True
            except TRANSIENT as error:
                if isinstance(error, MlflowException) and error.error_code in PERMANENT_ERRORS:
                    log.warning("MLflow refused a %s record of sweep %s: %s", record[0], self.sweep, _one_line(error))
                    return True
                if attempt + 1 == self.attempts:
                    log.warning("MLflow at %s failed %d times (%s); %d record(s) of sweep %s queued, retrying in %.0f s",
                                self.uri, self.attempts, _one_line(error), len(self._outbox), self.sweep, COOLDOWN_S)
                    return False
                if record[0] == "metrics":
                    self._refresh(record[1])  # the failed request may have landed: never log a step twice
                time.sleep(self.backoff_s * 2 ** attempt)
            except Exception:  # a bug here must not end the sweep: report it, drop the record
                log.warning("could not write a %s record of sweep %s to MLflow", record[0], self.sweep, exc_info=True)
                return True
        return False

    # -- writers: each is idempotent, so a retry after a half-done attempt is safe --------------------

    @property
    def client(self) -> mlflow.MlflowClient:
        if self._client is None:
            _quiet_mlflow()
            if self.uri.startswith("http"):
                # The outbox retries and backs off itself; MLflow's default (7 retries over ~4 minutes,
                # 120 s timeouts) would freeze the driver, and so every trial, while a server is down.
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
                # Else each finished run prints its URL over the live view, at the cost of one more request.
                os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            self._client = mlflow.MlflowClient(self.uri)
        return self._client

    def _write_sweep(self) -> None:
        client = self.client
        if self._experiment_id is None:
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            self._experiment_id = (experiment.experiment_id if experiment is not None else
                                   client.create_experiment(EXPERIMENT_NAME, artifact_location=_artifact_root(self.uri),
                                                            tags=dict([EXPERIMENT_KIND])))
            if experiment is not None and experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(self._experiment_id, *EXPERIMENT_KIND)  # a store from before the tag
        if self._parent is None:
            found = self._search(_sweep_filter(self.sweep))
            if len(found) > 1:
                log.warning("MLflow holds %d parent runs for sweep %s; continuing the oldest", len(found), self.sweep)
            if found:
                parent = min(found, key=lambda r: r.info.start_time)
                if parent.info.status != "RUNNING":
                    client.update_run(parent.info.run_id, status="RUNNING")
            else:
                parent = self._create_parent()
            if not parent.data.params:  # new, or its creation was cut short
                self._fill_parent(parent.info.run_id)
            self._parent = parent.info.run_id
            # One query for every child run of this sweep: a resumed sweep continues them.
            for run in self._search(_sweep_filter(self.sweep, "trial")):
                self._runs.setdefault(run.data.tags[TRIAL_ID], _Run.from_mlflow(run))

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self._experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _create_parent(self):
        tags = {ROLE: "sweep", SWEEP: self.sweep, "sslsearch.version": sslsearch.__version__,
                "sslsearch.torch_version": torch.__version__, "sslsearch.ray_version": ray.__version__,
                "sslsearch.mlflow_version": mlflow.__version__, "sslsearch.optuna_version": _version("optuna"),
                "sslsearch.experiment_source": self.experiment.source or "", "sslsearch.space_source": self.space.source or "",
                "sslsearch.sweep_path": self.sweep_path or ""}
        if (commit := _git_commit()) is not None:
            tags.update({"mlflow.source.git.commit": commit[0], "sslsearch.git_commit": commit[0],
                         "sslsearch.git_dirty": str(commit[1]).lower()})
        if ray.is_initialized():  # not when the callback is driven by hand
            resources = ray.cluster_resources()
            tags.update({"sslsearch.cluster_resources": json.dumps(resources, sort_keys=True)[:8000],
                         "sslsearch.cluster_cpus": str(resources.get("CPU", 0)),
                         "sslsearch.cluster_gpus": str(resources.get("GPU", 0))})
        return self.client.create_run(self._experiment_id, tags=tags, run_name=self.sweep)

    def _fill_parent(self, run_id: str) -> None:
        params = _flatten(self.experiment.to_dict())
        params.update({f"space.{p.name}": _describe(p) for p in self.space.parameters})
        self._log_params(run_id, params)
        with tempfile.TemporaryDirectory() as folder:
            files = {"experiment.yaml": self.experiment.source, "search_space.yaml": self.space.source}
            for name, source in files.items():
                if source and Path(source).is_file():
                    shutil.copyfile(source, Path(folder) / name)
            (Path(folder) / "sweep.json").write_text(json.dumps(
                {"sweep": self.sweep, "experiment": self.experiment.to_dict(), "experiment_source": self.experiment.source,
                 "space": {p.name: dataclasses.asdict(p) for p in self.space.parameters}, "space_source": self.space.source},
                indent=2, default=list))
            self.client.log_artifacts(run_id, folder)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def _write_trial(self, trial_id: str) -> None:
        self._run(trial_id, reopen=True)

    def _run(self, trial_id: str, reopen: bool = False) -> _Run:
        """The trial's run: found by tags or created; `reopen` marks a run continued by a resume RUNNING again."""
        if self._parent is None:
            self._write_sweep()
        run = self._runs.get(trial_id)
        if run is None:
            config = self._configs.get(trial_id, {})
            base = config.get("base", {})
            tags = {ROLE: "trial", SWEEP: self.sweep, TRIAL_ID: trial_id, PARENT_RUN_ID: self._parent,
                    LOSS: str(config.get("loss", base.get("loss"))), OUTCOME: "running"}
            if self.experiment.search.paired and "pair" in config:
                tags[PAIR] = str(config["pair"])
            created = self.client.create_run(self._experiment_id, tags=tags, run_name=trial_id)
            run = self._runs[trial_id] = _Run(created.info.run_id, "RUNNING", has_params=False)
        if not run.has_params and trial_id in self._configs:
            self._log_params(run.run_id, _flatten(self._configs[trial_id]))
            run.has_params = True
        if reopen and run.status != "RUNNING":
            self.client.log_batch(run.run_id, tags=[RunTag(OUTCOME, "running")])
            self.client.update_run(run.run_id, status="RUNNING")
            run.status = "RUNNING"
        return run

    def _refresh(self, trial_id: str) -> None:
        run = self._runs.get(trial_id)
        if run is not None:
            try:
                run.last_step = max(run.last_step, _Run.from_mlflow(self.client.get_run(run.run_id)).last_step)
            except Exception:  # the retry that follows will tell
                pass

    def _write_metrics(self, trial_id: str, step: int, values: dict[str, float], tags: dict[str, str]) -> None:
        run = self._run(trial_id)
        if step <= run.last_step:
            return  # a resumed trial re-reporting an epoch that is already recorded
        now = int(time.time() * 1000)
        all_tags = {**run.pending_tags, **tags}
        # One request for the whole report.
        self.client.log_batch(run.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                              tags=[RunTag(k, v) for k, v in all_tags.items()])
        run.last_step = step
        run.pending_tags = {}

    def _write_checkpoint(self, trial_id: str, checkpoint, epoch: int, val_acc: float | None) -> None:
        run = self._run(trial_id)
        with checkpoint.as_directory() as folder:
            model = Path(folder) / "last.pt"
            if self.experiment.tracking.checkpoints == "all":
                self._upload(run.run_id, model, f"epoch_{epoch}.pt")
            # Epoch 0 is the random initialisation: never the "best" backbone.
            if epoch > 0 and val_acc is not None and val_acc > run.best_val_acc and self._upload(run.run_id, model, "best.pt"):
                run.best_val_acc, run.best_epoch = val_acc, epoch
                run.pending_tags.update({BEST_EPOCH: str(epoch), BEST_VAL_ACC: repr(val_acc)})

    def _upload(self, run_id: str, source: Path, name: str, artifact_path: str | None = "checkpoints") -> bool:
        if not source.is_file():
            # A record written late, after Ray replaced this checkpoint by a newer one (with its own record).
            log.info("%s is gone; not uploaded as %s", source, name)
            return False
        if source.name == name:
            self.client.log_artifact(run_id, str(source), artifact_path)
            return True
        # MLflow names an artifact after its file: link the file under the new name next to the
        # checkpoint (same file system, so a large checkpoint is not copied); copy where links fail.
        try:
            folder = Path(tempfile.mkdtemp(prefix=".sslsearch-upload-", dir=source.parent.parent))
        except OSError:
            folder = Path(tempfile.mkdtemp(prefix="sslsearch-upload-"))
        try:
            try:
                os.link(source, folder / name)
            except OSError:
                shutil.copyfile(source, folder / name)
            self.client.log_artifact(run_id, str(folder / name), artifact_path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return True

    def _write_finish(self, trial_id: str, outcome: str, status: str, error: str | None, last: tuple | None, latest,
                      best, only_if_open: bool) -> None:
        run = self._run(trial_id)
        if only_if_open and run.status in ("FINISHED", "FAILED"):
            return
        if latest is not None:
            with latest.as_directory() as folder:
                self._upload(run.run_id, Path(folder) / "statistics.csv", "statistics.csv", None)
                self._upload(run.run_id, Path(folder) / "last.pt", "last.pt")
        if best is not None and best[1] > 0 and best[2] > run.best_val_acc:
            # Ray kept the best checkpoint; it beats best.pt only if a crash cut an upload short.
            with best[0].as_directory() as folder:
                if self._upload(run.run_id, Path(folder) / "last.pt", "best.pt"):
                    run.best_epoch, run.best_val_acc = best[1], best[2]
                    run.pending_tags.update({BEST_EPOCH: str(best[1]), BEST_VAL_ACC: repr(best[2])})
        tags = {**run.pending_tags, OUTCOME: outcome}
        if error is not None:
            tags[ERROR] = _last_line(error)[:1000]
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "error.txt").write_text(error)
                self.client.log_artifact(run.run_id, str(Path(folder) / "error.txt"))
        metrics = []
        if last is not None and last[0] > run.last_step:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, last[0]) for k, v in last[1].items()]
        self.client.log_batch(run.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        run.last_step = max(run.last_step, last[0]) if last is not None else run.last_step
        run.pending_tags = {}
        self.client.set_terminated(run.run_id, status)
        run.status = status
        if outcome in FINISHED:
            self._write_summary()

    def _write_summary(self) -> None:
        """The answer on the parent run, for MLflow's runs table and charts: `best_val_acc_<loss>`, the best
        final val_acc over the loss's finished trials (the leaderboard's ranking), at step = finished trials.
        Read back from MLflow, so a resumed sweep or a retried record gives the same values."""
        if self._parent is None:
            self._write_sweep()
        best: dict[str, float] = {}
        finished = 0
        for child in self._search(_sweep_filter(self.sweep, "trial")):
            val_acc, loss = child.data.metrics.get("val_acc"), child.data.tags.get(LOSS)
            if child.data.tags.get(OUTCOME) in FINISHED and val_acc is not None and math.isfinite(val_acc) and loss:
                finished += 1
                best[loss] = max(best.get(loss, -math.inf), val_acc)
        now = int(time.time() * 1000)
        metrics = [Metric(SUMMARY_METRIC.format(loss=loss), value, now, finished) for loss, value in sorted(best.items())]
        if metrics:
            self.client.log_batch(self._parent, metrics=metrics)

    def _write_end(self, status: str) -> None:
        if self._parent is None:
            self._write_sweep()
        self._write_summary()
        self.client.set_terminated(self._parent, status)


def _best_checkpoint(trial) -> tuple | None:
    """(checkpoint, epoch, val_acc) of the best checkpoint Ray kept for the trial, if it says."""
    try:
        best = trial.run_metadata.checkpoint_manager.best_checkpoint_result
    except AttributeError:  # Ray's internals moved: best.pt then comes only from the reports
        return None
    if best is None or not _numeric(best.metrics.get("val_acc")) or not _numeric(best.metrics.get("epoch")):
        return None
    return best.checkpoint, int(best.metrics["epoch"]), float(best.metrics["val_acc"])


def _describe(parameter) -> str:
    if parameter.distribution == "choice":
        return f"choice{list(parameter.values)}"
    return f"{parameter.distribution}({parameter.low}, {parameter.high})"


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text
