"""MLflow records of sweeps: one parent run per sweep, one nested child run per trial.

`MlflowTracking` is a Ray Tune callback; it runs on the driver, the only process that writes
(SQLite allows one writer). The layout below is a contract that the leaderboard reads (its names:
sslsearch.records.schema):

- experiment `sslsearch`, tagged `mlflow.experimentKind=custom_model_development` (so MLflow 3's
  UI opens it on runs, not GenAI traces); parent run named after the sweep, tags `sslsearch.role=sweep`,
  `sslsearch.sweep`; params: the experiment's flattened settings (`pretrain.epochs`, ...);
  metrics `best_val_acc_<loss>` (best final val_acc of the loss's finished trials, step = finished
  trials); artifacts `experiment.yaml`, `search_space.yaml`, `sweep.json` (and `report.html` once
  `sslsearch report` ran).
- child run per trial named after the trial id, nested (`mlflow.parentRunId`), tags
  `sslsearch.role=trial`, `sslsearch.sweep`, `sslsearch.trial_id`, `sslsearch.loss`,
  `sslsearch.pair` (paired sweeps), `sslsearch.outcome` ∈ sslsearch.search.outcomes.OUTCOMES; params: the trial's config
  (`lmbda`, `lr`, ... and `base.*`); metrics at `step = epoch`; artifacts `statistics.csv`,
  `checkpoints/last.pt`, `checkpoints/best.pt` (best `val_acc` after epoch 0) and, with the
  `all` policy, `checkpoints/epoch_<N>.pt`. Checkpoints in MLflow are weights only (backbone +
  projector, configuration, history; no optimiser): the full state that resuming needs stays in
  Ray's checkpoints. `tracking.checkpoints`: `best_and_last` (default) and `top_k:N` keep both,
  `best` only best.pt, `all` every report's too, `none` none (sslsearch.search.retention: what Ray's storage keeps).

Every record goes through a durable outbox in the sweep's folder (`Outbox`: append-only, fsynced,
numbered): the hooks only append, and a background thread sends in order, retrying transient
failures (server down, SQLite locked) with backoff and then every COOLDOWN_S, so training never
waits on the tracking server. What is left at the end waits on disk: `resume` replays it, and
`sync` (`sslsearch sync NAME`) replays it and then makes MLflow equal to Ray's per-trial results.
Every writer is idempotent: runs are found by tags, metric steps already logged are skipped.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.metadata
import inspect
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pyarrow.fs
import ray
import requests
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from ray import tune

import sslsearch
from sslsearch.errors import InputError, error_line, shown
from sslsearch.method.train import save_weights_only
from sslsearch.records.query import find_experiment, search_all_runs
from sslsearch.records.schema import (
    BEST_EPOCH,
    BEST_VAL_ACC,
    CLUSTER_CPUS,
    CLUSTER_GPUS,
    CLUSTER_RESOURCES,
    ERROR,
    EXPERIMENT_KIND,
    EXPERIMENT_NAME,
    EXPERIMENT_SOURCE,
    GIT_COMMIT,
    GIT_DIRTY,
    LOSS,
    METRICS,
    MLFLOW_VERSION,
    NODE_ID,
    OPTUNA_VERSION,
    OUTCOME,
    PAIR,
    PARENT_RUN_ID,
    RAY_VERSION,
    REMOVED,
    RETRIES,
    ROLE,
    SPACE_SOURCE,
    SSLSEARCH_VERSION,
    STAGE,
    SUMMARY_METRIC,
    SWEEP,
    SWEEP_PATH,
    SWEEP_ROLE,
    TORCH_VERSION,
    TRIAL_ID,
    TRIAL_ROLE,
    runs_filter,
)

# The light half of the store's handling (the CLI uses it before importing MLflow or Ray); re-exported here.
from sslsearch.records.store import artifact_root as _artifact_root  # noqa: F401
from sslsearch.records.store import check_store, default_tracking_uri
from sslsearch.search.confirm import STAGE as CONFIRM_STAGE
from sslsearch.search.experiment import Experiment, experiment_from_dict, keeps_last
from sslsearch.search.folder import CONFIRM_DIR, OUTBOX_FILE
from sslsearch.search.outcomes import FINISHED, result_outcome
from sslsearch.search.retention import best_checkpoint
from sslsearch.search.space import Parameter, SearchSpace
from sslsearch.search.sweep import sweep_metadata, sweep_path
from sslsearch.search.sweeplock import SweepLock, check_owned
from sslsearch.search.trial_config import PAIR as PAIR_KEY
from sslsearch.search.trial_config import trial_value

log = logging.getLogger(__name__)

# Error codes that no retry can fix: drop the record (with a warning) instead of blocking the outbox.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "ENDPOINT_NOT_FOUND"}
TRANSIENT = (MlflowException, requests.RequestException, OSError)
COOLDOWN_S = 30.0  # after retries fail, queued records wait this long before the next try
# How long the end of a sweep waits for the outbox to empty; what is left waits on disk for `sslsearch sync`.
FLUSH_TIMEOUT_S = 60.0
# How long the sweep's start waits for the sweep's parent run (the store created or opened, the trials' runs of a
# resumed sweep found): done before the first trials start, it does not compete with them for the driver's CPU.
SETUP_WAIT_S = 10.0
SENT_FILE = "mlflow-outbox.sent"
# Outbox lines that cannot be replayed (not JSON, no `seq`, wrong types, an unknown record): moved here with the reason,
# so one bad line (a crash mid-write, a hand edit) never blocks the records after it.
QUARANTINE_FILE = "mlflow-outbox.quarantine.jsonl"


def check_tracking(uri: str, sweep: str | None = None, *, reading: bool = False) -> None:
    """InputError (one line) if the tracking store cannot take records (sslsearch.records.store.check_store);
    `sweep`: also refuse a name already recorded; `reading` (leaderboard, export): only check that the
    store can be reached, creating nothing (records.query.records_client refuses a SQLite store that does not exist)."""
    check_store(uri, reading=reading)
    if sweep is not None:
        _quiet_mlflow()
        client = mlflow.MlflowClient(uri)
        experiment = find_experiment(client)
        if experiment is not None and client.search_runs([experiment.experiment_id], runs_filter(sweep), max_results=1):
            raise InputError(f"the MLflow store {uri} already holds a sweep named {sweep!r}; choose another --name")


def _quiet_mlflow() -> None:
    # Creating a SQLite store runs its migrations, which log a page at INFO.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A failed write (disk full, locked database) also logs its SQLAlchemy traceback there; the outbox
    # retries it and reports it in one line of ours, so the page of traceback is noise.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


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
    outcome: str = "running"
    error: bool = False                # holds an sslsearch.error tag
    # What the parent run's summary reads, as MLflow holds it: the latest val_acc (at last_step), the loss tag
    # and the stage tag.
    val_acc: float | None = None
    loss: str | None = None
    stage: str | None = None

    @classmethod
    def from_mlflow(cls, run) -> _Run:
        tags, metrics = run.data.tags, run.data.metrics
        best = tags.get(BEST_VAL_ACC)
        return cls(run.info.run_id, run.info.status, int(metrics["epoch"]) if "epoch" in metrics else -1,
                   float(best) if best is not None else -math.inf,
                   int(tags[BEST_EPOCH]) if BEST_EPOCH in tags else None, has_params=bool(run.data.params),
                   outcome=tags.get(OUTCOME, "running"), error=bool(tags.get(ERROR)), val_acc=metrics.get("val_acc"),
                   loss=tags.get(LOSS), stage=tags.get(STAGE))


class Outbox:
    """Records for MLflow, on disk before anything tries to send them: append-only, fsynced, in order.

    `mlflow-outbox.jsonl` holds one numbered JSON record per line; `mlflow-outbox.sent` the numbers
    MLflow has taken. A record is on disk before the hook that made it returns, so a driver that
    dies loses nothing it was told; an acknowledgement is not fsynced (losing one only replays an
    idempotent record). Once every record is sent, both files are removed.
    """

    def __init__(self, folder: Path | None, kinds: frozenset[str] | None = None):
        self.folder = folder
        self.kinds = kinds      # the record kinds a replay can write (None: any name)
        self.pending: collections.deque = collections.deque()  # (number, record), not yet sent, oldest first
        self.durable = folder is not None
        self._next = 1
        if folder is not None:
            self._load()

    @property
    def path(self) -> Path:
        return self.folder / OUTBOX_FILE

    @property
    def sent_path(self) -> Path:
        return self.folder / SENT_FILE

    @property
    def quarantine_path(self) -> Path:
        return self.folder / QUARANTINE_FILE

    def _problem(self, entry) -> str | None:
        """Why a parsed line cannot be replayed, or None."""
        if not isinstance(entry, dict):
            return f"a JSON {type(entry).__name__}, not an object"
        seq, record = entry.get("seq"), entry.get("record")
        if "seq" not in entry:
            return "no 'seq'"
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            return f"'seq' is {shown(seq, 40)}, not a whole number ≥ 1"
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            return f"'record' is {shown(record, 40)}, not a list starting with a record kind"
        if self.kinds is not None and record[0] not in self.kinds:
            return f"unknown record kind {shown(record[0], 40)}"
        return None

    def _load(self) -> None:
        sent = 0
        if self.sent_path.is_file():
            # Numbers are sent in order, so the largest is the mark; a line cut short is a prefix, never larger.
            sent = max((int(line) for line in self.sent_path.read_text().split() if line.isdigit()), default=0)
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            # A line cut short by a crash was never acknowledged to Ray: drop it, so appends start clean.
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        kept, bad = [], []
        for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                entry = json.loads(line)
                problem = self._problem(entry)
            except (ValueError, RecursionError):
                entry, problem = None, "not JSON"
            if problem is not None:
                bad.append((number, line, problem))
                continue
            kept.append(line)
            self._next = max(self._next, entry["seq"] + 1)
            if entry["seq"] > sent:
                self.pending.append((entry["seq"], entry["record"]))
        if bad:
            self._quarantine(bad, kept)

    def _quarantine(self, bad: list[tuple[int, str, str]], kept: list[str]) -> None:
        """Move unreplayable lines to the quarantine file (with their reasons), rewrite the outbox without them, and
        say so in one warning naming both files; the rest replays in order."""
        try:
            with open(self.quarantine_path, "a") as f:
                for number, line, problem in bad:
                    f.write(json.dumps({"line": number, "problem": problem, "text": line}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            tmp = self.path.with_name(f".{OUTBOX_FILE}.tmp")
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            where = f"moved to {self.quarantine_path}"
        except OSError as error:   # a full disk: replay the good lines anyway; the bad ones stay, skipped again
            where = f"left in place ({error.strerror or error})"
        named = "; ".join(f"line {number}: {problem}" for number, _, problem in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        log.warning("skipped %d malformed line(s) of the MLflow outbox %s (%s%s), %s; the other %d record(s) are "
                    "replayed", len(bad), self.path, named, more, where, len(kept))

    def quarantine(self, number: int, record: list, problem: str) -> None:
        """Set aside a record a writer could not use (one warning): the records after it go on."""
        if self.durable:
            try:
                with open(self.quarantine_path, "a") as f:
                    f.write(json.dumps({"seq": number, "problem": problem, "record": record}, default=str) + "\n")
            except OSError:
                pass
        log.warning("MLflow outbox record %d (%s) cannot be written (%s); set aside in %s, the others go on", number,
                    shown(record[0] if record else record, 40), problem,
                    self.quarantine_path if self.durable else "memory")

    def append(self, record: list) -> int:
        """Queue `record` (on disk first); its number."""
        line = json.dumps({"seq": self._next, "record": record}, default=str)
        record = json.loads(line)["record"]  # what a replay will read: one code path for both
        if self.durable:
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as error:  # disk full, folder gone: keep sending from memory, say so once
                self.durable = False
                log.warning("cannot write the MLflow outbox %s (%s); records of this session are kept in memory only",
                            self.path, error.strerror or error)
        self.pending.append((self._next, record))
        self._next += 1
        return self._next - 1

    def acknowledge(self, number: int) -> None:
        if self.pending and self.pending[0][0] == number:
            self.pending.popleft()
        if self.durable:
            try:
                with open(self.sent_path, "a") as f:
                    f.write(f"{number}\n")
            except OSError:
                pass  # the record is replayed once more later; its writer is idempotent
        if not self.pending:
            self.compact()

    def compact(self) -> None:
        """Everything was sent: remove the files (the marks first, so a crash in between only replays)."""
        if self.folder is None or self.pending:
            return
        for path in (self.sent_path, self.path):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def outbox_folder(sweep_path: str | None, stage: str | None = None) -> Path | None:
    """Where a sweep's outbox lives: its own folder; for remote storage (s3://, gs://), a local cache. A stage's
    (confirm) has its own, in the stage's folder: a replay writes each record as the stage it came from (its runs
    tagged with the stage)."""
    if sweep_path is None:
        return None
    if "://" in sweep_path:
        folder = Path.home() / ".cache" / "sslsearch" / "outbox" / sweep_path.rstrip("/").rsplit("/", 1)[-1]
    else:
        folder = Path(sweep_path)
    if stage:
        folder = folder / stage
        with contextlib.suppress(OSError):   # (else the outbox says once that it keeps records in memory)
            folder.mkdir(parents=True, exist_ok=True)
    return folder


def unsent_records(sweep_path: str) -> int:
    """How many records of the sweep at `sweep_path` wait in its outbox (0 when all were sent)."""
    folder = outbox_folder(sweep_path)
    return (len(Outbox(folder, kinds=RECORD_KINDS).pending) if folder is not None and (folder / OUTBOX_FILE).is_file()
            else 0)


def artifact_bytes(uri: str, sweep: str) -> int | None:
    """Bytes of the MLflow artifacts of sweep `sweep` (its parent and child runs, a confirmation stage's included) when
    they are local files, as with the default SQLite store; None when a server keeps them, or MLflow cannot be read."""
    try:
        _quiet_mlflow()
        client = mlflow.MlflowClient(uri)
        experiment = find_experiment(client)
        if experiment is None:
            return 0
        runs = search_all_runs(client, experiment.experiment_id, f"tags.`{SWEEP}` = '{sweep}'")
    except TRANSIENT:
        return None
    total = 0
    for run in runs:
        if not run.info.artifact_uri.startswith("file:"):
            return None
        for folder, _, files in os.walk(urllib.parse.unquote(urllib.parse.urlparse(run.info.artifact_uri).path)):
            total += sum(os.lstat(os.path.join(folder, name)).st_size for name in files)
    return total


class MlflowTracking(tune.Callback):
    """Ray Tune callback: records the sweep and its trials in MLflow, exactly once each.

    Hooks only append to the outbox; a background thread sends, so the driver (and every trial
    waiting on it) never blocks on the tracking server."""

    def __init__(self, experiment: Experiment, space: SearchSpace, *, sweep: str, storage: str | None = None,
                 tracking_uri: str | None = None, attempts: int = 3, backoff_s: float = 0.5,
                 flush_timeout_s: float = FLUSH_TIMEOUT_S, stage: str | None = None):
        if "'" in sweep or "`" in sweep:
            raise InputError(f"sweep name may not hold quotes, got {sweep!r}")
        uri = tracking_uri or experiment.tracking.uri
        if uri is None:
            if storage is None:
                raise InputError("MlflowTracking needs the sweep's storage or a tracking URI")
            uri = default_tracking_uri(storage)
        self.experiment, self.space, self.sweep, self.uri = experiment, space, sweep, uri
        self.sweep_path = f"{storage.rstrip('/')}/{sweep}" if storage else None
        self.attempts, self.backoff_s, self.flush_timeout_s = attempts, backoff_s, flush_timeout_s
        self.stage = stage  # None: the sweep's own trials; else tagged STAGE on every child run it creates
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._runs: dict[str, _Run] = {}
        self._box: Outbox | None = None  # opened at the first record: the sweep folder may not exist before
        self._configs: dict[str, dict] = {}
        self._live: set[str] = set()    # trials that ran in this session
        self._ended: set[str] = set()   # trials Ray ended in this session (complete or error)
        self._started = time.monotonic()
        self._wake = threading.Condition()
        self._sender: threading.Thread | None = None
        self._stop = self._retry_now = False
        self._failures = 0              # times the sender gave up on a record and waited (an outage)
        self.unsent = 0                 # records left in the outbox when the sweep ended

    # Ray pickles the callback into the sweep folder (tuner.pkl) and restores it on resume: carry the
    # settings only. Runs, steps and the best val_acc are recovered from MLflow, the source of truth,
    # and records not yet sent from the outbox.
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("experiment", "space", "sweep", "uri", "sweep_path", "attempts", "backoff_s",
                                              "flush_timeout_s", "stage")}

    def __setstate__(self, state: dict) -> None:
        state.setdefault("flush_timeout_s", FLUSH_TIMEOUT_S)
        self.__dict__.update({"stage": None, **state})  # a sweep pickled before stages existed
        self._reset()

    def use_tracking_uri(self, uri: str) -> None:
        """Write to `uri` from now on (`sslsearch resume --tracking-uri`; Ray restores the callback with its old one)."""
        self.uri = uri
        self._reset()   # (nothing sent yet: Ray calls this before the first hook)

    @property
    def outbox(self) -> Outbox:
        if self._box is None:
            self._box = Outbox(outbox_folder(self.sweep_path, self.stage), kinds=RECORD_KINDS)
        return self._box

    # -- Ray Tune hooks: each appends records to the outbox and wakes the sender --------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._started = time.monotonic()
        failures = self._failures   # (read first: a try that fails before the wait below must end it)
        number = self._submit(("sweep",))
        # Ray calls this before it starts the first trials: let the sender create (or find) the sweep's run now, up to
        # SETUP_WAIT_S, instead of while the first trials start (on a 2-core machine it delayed one of them by about
        # 0.6 s: docs/sweeps.md, "Slot utilisation"). A store that fails is not waited for: its records wait in the
        # outbox, as in any outage.
        with self._wake:
            self._wait_for_sender(lambda: not (self.outbox.pending and self.outbox.pending[0][0] <= number)
                                  or self._failures != failures, SETUP_WAIT_S)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._live.add(trial.trial_id)
        self._configs[trial.trial_id] = trial.config
        self._submit(("trial", trial.trial_id, trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._live.add(trial.trial_id)
        self._configs.setdefault(trial.trial_id, trial.config)
        metrics = {k: float(result[k]) for k in METRICS if _numeric(result.get(k))}
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        tags = {NODE_ID: result["node_id"]} if isinstance(result.get("node_id"), str) else {}
        self._submit(("metrics", trial.trial_id, step, metrics, tags))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result or {}  # the report this checkpoint came with
        val_acc = result.get("val_acc")
        self._submit(("checkpoint", trial.trial_id, _checkpoint_uri(checkpoint), int(result.get("epoch", -1)),
                      float(val_acc) if _numeric(val_acc) else None))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # The worker died (SIGKILL, OOM, node lost); Ray retries the trial from its last checkpoint.
        self._submit(("retry", trial.trial_id, int(trial.num_failures), _last_line(_error_text(trial))[:1000]))

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
        self._submit(("end", RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FINISHED)))
        self.unsent = self.close(self.flush_timeout_s)
        if self.unsent:
            where = self.outbox.path if self.outbox.durable else "memory (the outbox file could not be written)"
            log.warning("MLflow at %s has not taken %d record(s) of sweep %s yet; they wait in %s. Once the server "
                        "answers, run: sslsearch sync %s", self.uri, self.unsent, self.sweep, where, self.sweep)

    def _outcome(self, trial) -> str:
        return result_outcome(trial.last_result, self.experiment.pretrain.epochs)

    def _finish(self, trial, outcome: str, status: str, error: str | None = None, only_if_open: bool = False) -> None:
        result = trial.last_result or {}
        if trial.trial_id not in self._live and "epoch" not in result:
            return  # never ran: no run to finish
        self._configs.setdefault(trial.trial_id, trial.config)
        # The last report rides along (skipped if logged), so a lost report still ends in MLflow.
        last = None
        if "epoch" in result:
            last = (int(result["epoch"]), {k: float(result[k]) for k in METRICS if _numeric(result.get(k))})
        best = best_checkpoint(trial)
        self._submit(("finish", trial.trial_id, outcome, status, error, last, _checkpoint_uri(trial.checkpoint),
                      best and (_checkpoint_uri(best[0]), best[1], best[2]), only_if_open, trial.config))

    # -- the outbox and its sender -------------------------------------------------------------------

    def _submit(self, record: tuple) -> int:
        """Queue `record` and wake the sender; the record's number in the outbox."""
        with self._wake:
            number = self.outbox.append(list(record))
            if self._sender is None or not self._sender.is_alive():
                self._stop = False
                self._sender = threading.Thread(target=self._send_loop, name=f"sslsearch-mlflow-{self.sweep}", daemon=True)
                self._sender.start()
            self._wake.notify_all()
        return number

    def _send_loop(self) -> None:
        """Send records in order; after a failure wait COOLDOWN_S (or until a flush asks) and try again."""
        while True:
            with self._wake:
                while not self.outbox.pending and not self._stop:
                    self._wake.wait(timeout=1.0)
                if self._stop or not self.outbox.pending:
                    return
                number, record = self.outbox.pending[0]
            sent = self._attempt(record, number)
            with self._wake:
                if sent:
                    self.outbox.acknowledge(number)
                    self._wake.notify_all()
                    continue
                self._retry_now = False
                self._failures += 1
                self._wake.notify_all()
                self._wake.wait_for(lambda: self._retry_now or self._stop, timeout=COOLDOWN_S)

    def flush(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the sender to empty the outbox (retrying at once); the records left."""
        with self._wake:
            self._retry_now = True
            self._wake.notify_all()
            self._wait_for_sender(lambda: not self.outbox.pending, timeout_s)
            return len(self.outbox.pending)

    def _wait_for_sender(self, done, timeout_s: float) -> None:
        """With `self._wake` held: wait up to `timeout_s` until `done()`, or until no sender runs."""
        deadline = time.monotonic() + timeout_s
        while not done() and self._sender is not None and self._sender.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.wait(timeout=min(left, 0.5))

    def close(self, timeout_s: float) -> int:
        """Flush, then stop the sender; the records left (they stay in the outbox file for a later replay)."""
        left = self.flush(timeout_s)
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)
        return len(self.outbox.pending) if left else 0

    def drain(self) -> int:
        """Send every queued record from this thread, in order, stopping at the first that will not go; the
        records left. (For `sync`, where nothing else runs.)"""
        while self.outbox.pending:
            number, record = self.outbox.pending[0]
            if not self._attempt(record, number):
                break
            self.outbox.acknowledge(number)
        return len(self.outbox.pending)

    def _attempt(self, record: list, number: int = 0) -> bool:
        """Write one record, retrying transient errors; False if it must wait for a later try. A record no writer
        can take (unknown kind, wrong arguments, a writer's own failure) is set aside, never retried forever."""
        writer = getattr(self, f"_write_{record[0]}", None) if record and isinstance(record[0], str) else None
        try:
            if writer is None:
                raise TypeError("no such record kind")
            inspect.signature(writer).bind(*record[1:])
        except TypeError as error:
            self.outbox.quarantine(number, record, str(error))
            return True
        for attempt in range(self.attempts):
            try:
                writer(*record[1:])
                return True
            except TRANSIENT as error:
                if isinstance(error, MlflowException) and error.error_code in PERMANENT_ERRORS:
                    log.warning("MLflow refused a %s record of sweep %s: %s", record[0], self.sweep, error_line(error))
                    return True
                if attempt + 1 == self.attempts:
                    log.warning("MLflow at %s failed %d times (%s); %d record(s) of sweep %s wait in the outbox, "
                                "next try in %.0f s", self.uri, self.attempts, error_line(error),
                                len(self.outbox.pending), self.sweep, COOLDOWN_S)
                    return False
                if record[0] == "metrics":
                    self._refresh(record[1])  # the failed request may have landed: never log a step twice
                time.sleep(self.backoff_s * 2 ** attempt)
            except Exception as error:  # a bad record or a bug must not end the sweep: set it aside, say so once
                self.outbox.quarantine(number, record, error_line(error))
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

    def _write_sweep(self, reopen: bool = True) -> None:
        """Find (or create) the parent run and the trials' runs; `reopen`: a sweep (re)starting marks it RUNNING."""
        client = self.client
        if self._experiment_id is None:
            experiment = find_experiment(client)
            self._experiment_id = (experiment.experiment_id if experiment is not None else
                                   client.create_experiment(EXPERIMENT_NAME, artifact_location=_artifact_root(self.uri),
                                                            tags=dict([EXPERIMENT_KIND])))
            if experiment is not None and experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(self._experiment_id, *EXPERIMENT_KIND)  # a store from before the tag
        if self._parent is None:
            found = self._search(runs_filter(self.sweep))
            if len(found) > 1:
                log.warning("MLflow holds %d parent runs for sweep %s; continuing the oldest", len(found), self.sweep)
            if found:
                parent = min(found, key=lambda r: r.info.start_time)
                if reopen and parent.info.status != "RUNNING":
                    client.update_run(parent.info.run_id, status="RUNNING")
            else:
                parent = self._create_parent()
            if not parent.data.params:  # new, or its creation was cut short
                self._fill_parent(parent.info.run_id)
            self._parent = parent.info.run_id
            # One query for every child run of this sweep: a resumed sweep continues them.
            for run in self._search(runs_filter(self.sweep, TRIAL_ROLE)):
                self._runs.setdefault(run.data.tags[TRIAL_ID], _Run.from_mlflow(run))

    def _search(self, filter_string: str) -> list:
        return search_all_runs(self.client, self._experiment_id, filter_string)

    def _create_parent(self):
        tags = {ROLE: SWEEP_ROLE, SWEEP: self.sweep, SSLSEARCH_VERSION: sslsearch.__version__,
                TORCH_VERSION: torch.__version__, RAY_VERSION: ray.__version__, MLFLOW_VERSION: mlflow.__version__,
                OPTUNA_VERSION: _version("optuna"), EXPERIMENT_SOURCE: self.experiment.source or "",
                SPACE_SOURCE: self.space.source or "", SWEEP_PATH: self.sweep_path or ""}
        if (commit := _git_commit()) is not None:
            tags.update({"mlflow.source.git.commit": commit[0], GIT_COMMIT: commit[0], GIT_DIRTY: str(commit[1]).lower()})
        if ray.is_initialized():  # not when the callback is driven by hand
            resources = ray.cluster_resources()
            tags.update({CLUSTER_RESOURCES: json.dumps(resources, sort_keys=True)[:8000],
                         CLUSTER_CPUS: str(resources.get("CPU", 0)), CLUSTER_GPUS: str(resources.get("GPU", 0))})
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

    def _write_trial(self, trial_id: str, config: dict) -> None:
        self._configs.setdefault(trial_id, config)
        self._run(trial_id, reopen=True)

    def _write_retry(self, trial_id: str, failures: int, error: str) -> None:
        run = self._run(trial_id)
        self.client.log_batch(run.run_id, tags=[RunTag(RETRIES, str(failures)), RunTag(f"{ERROR}.retried", error)])

    def _run(self, trial_id: str, reopen: bool = False) -> _Run:
        """The trial's run: found by tags or created; `reopen` marks a run continued by a resume RUNNING again."""
        if self._parent is None:
            self._write_sweep(reopen=False)
        run = self._runs.get(trial_id)
        if run is None:
            config = self._configs.get(trial_id, {})
            tags = {ROLE: TRIAL_ROLE, SWEEP: self.sweep, TRIAL_ID: trial_id, PARENT_RUN_ID: self._parent,
                    LOSS: str(trial_value(config, "loss")), OUTCOME: "running"}
            if self.experiment.search.paired and PAIR_KEY in config:
                tags[PAIR] = str(config[PAIR_KEY])
            if self.stage:
                tags[STAGE] = self.stage
            created = self.client.create_run(self._experiment_id, tags=tags, run_name=trial_id)
            run = self._runs[trial_id] = _Run(created.info.run_id, "RUNNING", has_params=False, loss=tags[LOSS],
                                              stage=self.stage)
        if not run.has_params and trial_id in self._configs:
            self._log_params(run.run_id, _flatten(self._configs[trial_id]))
            run.has_params = True
        if reopen and run.status != "RUNNING":
            self.client.log_batch(run.run_id, tags=[RunTag(OUTCOME, "running")])
            self.client.update_run(run.run_id, status="RUNNING")
            run.status, run.outcome = "RUNNING", "running"
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
        run.val_acc = values.get("val_acc", run.val_acc)
        run.pending_tags = {}

    def _write_checkpoint(self, trial_id: str, checkpoint: str, epoch: int, val_acc: float | None) -> None:
        run = self._run(trial_id)
        policy = self.experiment.tracking.checkpoints
        if policy == "none":
            return
        with _checkpoint_from(checkpoint).as_directory() as folder:
            model = Path(folder) / "last.pt"
            if policy == "all":
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
        checkpoint = source.suffix == ".pt"
        if source.name == name and not checkpoint:
            self.client.log_artifact(run_id, str(source), artifact_path)
            return True
        # MLflow names an artifact after its file: checkpoints are written under the new name next
        # to the source, weights only (MLflow never holds optimiser state); other files are linked
        # there (same file system, no copy), or copied where links fail.
        try:
            folder = Path(tempfile.mkdtemp(prefix=".sslsearch-upload-", dir=source.parent.parent))
        except OSError:
            folder = Path(tempfile.mkdtemp(prefix="sslsearch-upload-"))
        try:
            if checkpoint:
                save_weights_only(source, folder / name)
            else:
                try:
                    os.link(source, folder / name)
                except OSError:
                    shutil.copyfile(source, folder / name)
            self.client.log_artifact(run_id, str(folder / name), artifact_path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return True

    def _write_finish(self, trial_id: str, outcome: str, status: str, error: str | None, last: list | None,
                      latest: str | None, best: list | None, only_if_open: bool, config: dict | None = None) -> None:
        if config is not None:
            self._configs.setdefault(trial_id, config)
        run = self._run(trial_id)
        if only_if_open and run.status in ("FINISHED", "FAILED"):
            return
        policy = self.experiment.tracking.checkpoints
        if latest is not None and _checkpoint_exists(latest):
            with _checkpoint_from(latest).as_directory() as folder:
                self._upload(run.run_id, Path(folder) / "statistics.csv", "statistics.csv", None)
                if keeps_last(policy):
                    self._upload(run.run_id, Path(folder) / "last.pt", "last.pt")
        if policy != "none" and best is not None and best[1] > 0 and best[2] > run.best_val_acc and _checkpoint_exists(best[0]):
            # Ray kept the best checkpoint; it beats best.pt only if a crash cut an upload short.
            with _checkpoint_from(best[0]).as_directory() as folder:
                if self._upload(run.run_id, Path(folder) / "last.pt", "best.pt"):
                    run.best_epoch, run.best_val_acc = best[1], best[2]
                    run.pending_tags.update({BEST_EPOCH: str(best[1]), BEST_VAL_ACC: repr(best[2])})
        tags = {**run.pending_tags, OUTCOME: outcome}
        if error is None and run.error:
            # The error of an earlier attempt, since retried or resumed to its end: it no longer describes the run.
            try:
                self.client.delete_tag(run.run_id, ERROR)
            except MlflowException as gone:
                if gone.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            run.error = False
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
        if metrics:
            run.val_acc = last[1].get("val_acc", run.val_acc)
        run.last_step = max(run.last_step, last[0]) if last is not None else run.last_step
        run.pending_tags = {}
        self.client.set_terminated(run.run_id, status)
        run.status, run.outcome, run.error = status, outcome, error is not None or run.error
        if outcome in FINISHED:
            self._write_summary()

    def _write_summary(self, read_back: bool = False) -> None:
        """The answer on the parent run, for MLflow's runs table and charts: `best_val_acc_<loss>`, the best
        final val_acc over the loss's finished search trials (the leaderboard's ranking; a confirmation
        stage's runs are not search results), at step = finished trials. From the child runs as this
        process knows them (read from MLflow when the sweep (re)starts, then kept as written: a resumed
        sweep or a retried record gives the same values); `read_back` reads them all from MLflow again,
        which costs O(trials) per call: once, at the end, never per finished trial (docs/scale.md)."""
        if self._parent is None:
            self._write_sweep(reopen=False)
        children = ([_Run.from_mlflow(r) for r in self._search(runs_filter(self.sweep, TRIAL_ROLE))] if read_back
                    else self._runs.values())
        best: dict[str, float] = {}
        finished = 0
        for child in children:
            val_acc, loss = child.val_acc, child.loss
            if child.outcome in FINISHED and not child.stage and val_acc is not None and math.isfinite(val_acc) and loss:
                finished += 1
                best[loss] = max(best.get(loss, -math.inf), val_acc)
        now = int(time.time() * 1000)
        metrics = [Metric(SUMMARY_METRIC.format(loss=loss), value, now, finished) for loss, value in sorted(best.items())]
        if metrics:
            self.client.log_batch(self._parent, metrics=metrics)

    def _write_end(self, status: str) -> None:
        if self._parent is None:
            self._write_sweep(reopen=False)
        self._write_summary(read_back=True)
        self.client.set_terminated(self._parent, status)


# What the outbox may hold: the writers' names (`_write_<kind>`), checked when an outbox is read back.
RECORD_KINDS = frozenset(name.removeprefix("_write_") for name in vars(MlflowTracking) if name.startswith("_write_"))


@dataclass
class SyncReport:
    sweep: str
    replayed: int          # outbox records sent
    unsent: int            # outbox records MLflow still would not take
    trials: int            # trials in Ray's saved state
    runs_created: int      # trials that had no run
    points_added: int      # metric points (steps) that MLflow lacked
    points: int            # steps in Ray's results, all trials
    statuses_fixed: int    # runs whose status or outcome differed from Ray's
    duplicates: int        # trials that had more than one run: merged into one
    orphans: int = 0       # runs of trials that Ray's saved state does not hold: removed
    stage_trials: int = 0  # of `trials`, those of the confirmation stage

    def including(self, stage: SyncReport) -> SyncReport:
        """This report and that of the sweep's confirmation stage, as one."""
        counts = {f.name: getattr(self, f.name) + getattr(stage, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("sweep", "stage_trials")}
        return SyncReport(self.sweep, **counts, stage_trials=stage.trials)

    def format(self) -> str:
        staged = f" ({self.stage_trials} of the confirmation stage)" if self.stage_trials else ""
        lines = [f"sync {self.sweep}: replayed {self.replayed} queued record(s); {self.trials} trials{staged}: created "
                 f"{self.runs_created} run(s), added {self.points_added} of {self.points} metric points, fixed "
                 f"{self.statuses_fixed} status(es)"]
        if self.duplicates:
            lines.append(f"merged the runs of {self.duplicates} trial(s) that had more than one run into one each")
        if self.orphans:
            lines.append(f"removed {self.orphans} run(s) of trials that Ray's saved sweep state does not hold (started "
                         "after its last save, before the sweep stopped: never resumed); MLflow keeps them as deleted runs")
        if self.unsent:
            lines.append(f"{self.unsent} record(s) still unsent: MLflow did not take them; run sslsearch sync {self.sweep} again")
        return "\n".join(lines)


def sync(name: str, storage: str, tracking_uri: str | None = None) -> SyncReport:
    """`sslsearch sync NAME`: replay the sweep's outbox and reconcile MLflow with Ray's results (holds the sweep's lock)."""
    local = "://" not in storage
    storage = str(Path(storage).resolve()) if local else storage
    meta = sweep_metadata(name, storage)
    path = sweep_path(storage, name)
    if local:   # sync reads Ray's saved state (pickles inside) and replays the outbox: both must be the user's own
        check_owned(Path(path), "sync")
    experiment = experiment_from_dict(meta["experiment"], meta.get("experiment_source"))
    space = SearchSpace(tuple(Parameter(**{**p, "values": tuple(p["values"]) if p.get("values") is not None else None})
                              for p in meta["space"].values()), source=meta.get("space_source"))
    uri = tracking_uri or experiment.tracking.uri or default_tracking_uri(storage)
    check_tracking(uri)
    lock = SweepLock(path, name, "sync") if local else contextlib.nullcontext()
    with lock:
        tracking = MlflowTracking(experiment, space, sweep=name, storage=storage, tracking_uri=uri)
        # The confirmation stage's trials are the stage's, not orphans of the search; then the stage is synced too,
        # from its own outbox and Ray's records of it (a full disk or a kill during `confirm` leaves them behind).
        confirm = f"{path}/{CONFIRM_DIR}"
        stage = tune.ExperimentAnalysis(confirm).trials if tune.Tuner.can_restore(confirm) else []
        search = tune.ExperimentAnalysis(path).trials
        report = sync_sweep(tracking, search, other_trials={t.trial_id for t in stage}, close_parent=not stage)
        if not stage or report.unsent:
            return report
        staged = MlflowTracking(experiment, space, sweep=name, storage=storage, tracking_uri=uri, stage=CONFIRM_STAGE)
        return report.including(sync_sweep(staged, stage, other_trials={t.trial_id for t in search}))


def ray_results(trial) -> dict[int, dict[str, float]]:
    """Epoch → the metrics Ray recorded for it (the trial's result.json; a re-reported epoch keeps its first report)."""
    fs, where = trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/result.json"
    try:
        with fs.open_input_stream(where) as stream:
            text = stream.readall().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return {}
    steps: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if _numeric(result.get("epoch")):
            steps.setdefault(int(result["epoch"]), {k: float(result[k]) for k in METRICS if _numeric(result.get(k))})
    return steps


def sync_sweep(tracking: MlflowTracking, trials: list, other_trials: set[str] = frozenset(),
               close_parent: bool = True) -> SyncReport:
    """Make MLflow equal to Ray's per-trial results: replay the outbox, then give every trial one run holding every
    reported step exactly once, with Ray's status and outcome, and (`close_parent`) close the parent run as Ray left
    the sweep. `trials`: the stage's trials as Ray saved them (tune.ExperimentAnalysis(path).trials); `other_trials`:
    ids of trials another stage of the sweep ran, whose runs are never taken for orphans."""
    queued = len(tracking.outbox.pending)
    unsent = tracking.drain()
    if unsent:
        return SyncReport(tracking.sweep, queued - unsent, unsent, len(trials), 0, 0, 0, 0, 0)
    client = tracking.client
    tracking._write_sweep(reopen=False)
    merged, orphans = _one_run_per_trial(tracking, {t.trial_id for t in trials}, other_trials)
    created = added = points = fixed = 0
    ended = ("TERMINATED", "ERROR")
    for trial in trials:
        steps = ray_results(trial)
        points += len(steps)
        if not steps and trial.trial_id not in tracking._runs:
            continue  # never reported: no run, as in a live sweep
        tracking._configs[trial.trial_id] = trial.config
        created += trial.trial_id not in tracking._runs
        run = tracking._run(trial.trial_id)
        logged = {m.step for m in client.get_metric_history(run.run_id, "epoch")}
        now = int(time.time() * 1000)
        missing = [Metric(k, v, now, step) for step, values in sorted(steps.items()) if step not in logged
                   for k, v in values.items()]
        for start in range(0, len(missing), 1000):  # MLflow takes at most 1000 metrics per batch
            tracking.client.log_batch(run.run_id, metrics=missing[start:start + 1000])
        added += len({m.step for m in missing})
        top = max(steps, default=None)
        if top is not None and top > max(logged, default=-1) and "val_acc" in steps[top]:
            run.val_acc = steps[top]["val_acc"]   # MLflow's latest val_acc now: the summary reads it
        run.last_step = max([run.last_step, *steps])
        errored = trial.status == "ERROR"
        if trial.status in ended:
            outcome = "errored" if errored else tracking._outcome(trial)
            status = RunStatus.to_string(RunStatus.FAILED if errored else RunStatus.FINISHED)
        else:
            outcome, status = "running", RunStatus.to_string(RunStatus.KILLED)
        if (run.status, run.outcome) != (status, outcome) or (run.error and not errored) or trial.trial_id in merged:
            fixed += 1   # (a merged run is finished again: its checkpoints may have gone to the removed one)
            best = best_checkpoint(trial)
            tracking._write_finish(trial.trial_id, outcome, status, _error_text(trial) if errored else None, None,
                                   _checkpoint_uri(trial.checkpoint), best and [_checkpoint_uri(best[0]), *best[1:]],
                                   False, trial.config)
    done = all(t.status in ended for t in trials)
    parent = client.get_run(tracking._parent)
    want = RunStatus.to_string(RunStatus.FINISHED if done else RunStatus.KILLED)
    if merged or orphans:   # the parent's best_val_acc_<loss> may have counted a removed run
        tracking._write_summary(read_back=True)
    if close_parent and parent.info.status != want:
        client.set_terminated(tracking._parent, want)
        fixed += 1
    return SyncReport(tracking.sweep, queued, 0, len(trials), created, added, points, fixed, len(merged), orphans)


def _runs_by_trial(tracking: MlflowTracking) -> dict[str, list]:
    """Trial id → the live child runs of this sweep and of the callback's stage (the search, or e.g. confirm)."""
    runs = collections.defaultdict(list)
    for run in tracking._search(runs_filter(tracking.sweep, TRIAL_ROLE)):
        if run.data.tags.get(STAGE) == tracking.stage:
            runs[run.data.tags[TRIAL_ID]].append(run)
    return runs


def _one_run_per_trial(tracking: MlflowTracking, ray_trials: set[str], other_trials: set[str] = frozenset()
                       ) -> tuple[set[str], int]:
    """One child run per Ray trial: (ids of the trials whose runs were merged, runs removed as orphans).

    A driver killed late (or stopped by a full disk) leaves runs of trials that Ray's saved state does not hold:
    they started after its last save, so no resume continues them, and the resumed searcher samples anew. Such
    orphans are removed. Two runs of one trial (a create whose answer was lost, then retried) are merged: the
    run that got furthest (then the oldest) stays, the others are removed, and Ray's results then give the
    kept run every step it lacks. Removing is MLflow's soft delete, with a tag saying why: `mlflow runs
    restore` brings a run back."""
    client = tracking.client
    merged, orphans = set(), 0
    for trial_id, runs in _runs_by_trial(tracking).items():
        if trial_id in other_trials:
            continue   # another stage's trial (its own callback keeps its runs)
        if trial_id in ray_trials:
            if len(runs) == 1:
                continue
            keep = max(runs, key=lambda r: (r.data.metrics.get("epoch", -1), -r.info.start_time, r.info.run_id))
            extra = [r for r in runs if r is not keep]
            reason = f"a second run of trial {trial_id}; merged into run {keep.info.run_id} by sslsearch sync"
            merged.add(trial_id)
        else:
            keep, extra = None, runs
            reason = ("trial not in Ray's saved sweep state (started after its last save, before the sweep stopped): "
                      "never resumed; removed by sslsearch sync")
            orphans += len(runs)
        for run in extra:
            client.set_tag(run.info.run_id, REMOVED, reason)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            client.delete_run(run.info.run_id)
        if keep is None:
            tracking._runs.pop(trial_id, None)
        else:
            tracking._runs[trial_id] = _Run.from_mlflow(client.get_run(keep.info.run_id))
    return merged, orphans


def _checkpoint_uri(checkpoint) -> str | None:
    """A checkpoint as a string the outbox can hold: its local path, or scheme://path on remote storage."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(checkpoint.filesystem.type_name, checkpoint.filesystem.type_name)
    return f"{scheme}://{checkpoint.path}"


def _checkpoint_from(uri: str) -> tune.Checkpoint:
    return tune.Checkpoint(uri)


def _checkpoint_exists(uri: str) -> bool:
    if "://" not in uri:
        return Path(uri).is_dir()
    return True  # remote: as_directory will tell


def _describe(parameter) -> str:
    if parameter.distribution == "choice":
        return f"choice{list(parameter.values)}"
    return f"{parameter.distribution}({parameter.low}, {parameter.high})"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text
