"""MLflow records of sweeps: real sweeps against SQLite and against an `mlflow server` on loopback,
a sweep interrupted and resumed, and the callback's hooks replayed as a killed driver would."""

import collections
import json
import os
import pickle
import signal
import threading
import time
import traceback
import types
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from ray import tune

from mlflow_server import MlflowServer
from sslsearch.errors import InputError
from sslsearch.processes import free_port
from sslsearch.records.tracking import MlflowTracking, check_tracking, default_tracking_uri
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import resume_sweep, run_sweep

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.grace_period=1"]


def tiny(*overrides):
    return load_experiment(None, [*TINY, *overrides])


def sweep_runs(uri: str, name: str):
    """(parent runs, child runs by trial id) of one sweep, read the way the leaderboard reads them."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sslsearch")
    runs = client.search_runs([experiment.experiment_id], f"tags.`sslsearch.sweep` = '{name}'")
    parents = [r for r in runs if r.data.tags["sslsearch.role"] == "sweep"]
    children = collections.defaultdict(list)
    for r in runs:
        if r.data.tags["sslsearch.role"] == "trial":
            children[r.data.tags["sslsearch.trial_id"]].append(r)
    return parents, dict(children)


def steps(client, run_id: str, key: str = "val_acc") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def load_artifact(client, run_id: str, path: str, tmp_path: Path):
    return torch.load(client.download_artifacts(run_id, path, str(tmp_path)), weights_only=True)


# -- real sweeps ------------------------------------------------------------------------------------

class Interrupt(tune.Callback):
    """Presses Ctrl-C once, at the first report of epoch 1 (a marker file keeps it from pressing again on resume)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["epoch"] >= 1 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """Starts `mlflow server` on 127.0.0.1 (it takes ~20 s on a busy 2-core machine: start it early)."""
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(server_process):
    """The server's URI, once `/health` answers."""
    try:
        return server_process.wait()
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def sqlite_sweep(ray_session, server_process, tmp_path_factory):
    """A real sweep recorded in SQLite, keeping every checkpoint: MLflow fails twice with a transient
    error, Ctrl-C interrupts the sweep at epoch 1, and `resume_sweep` completes it."""
    storage = str(tmp_path_factory.mktemp("sqlite"))
    experiment = tiny("tracking.checkpoints=all")
    space = load_search_space(experiment.space_path())
    uri, name = default_tracking_uri(storage), "sq"
    original, failures = MlflowClient.log_batch, []

    def flaky_log_batch(self, run_id, metrics=(), *args, **kwargs):
        if metrics and len(failures) < 2:
            failures.append(run_id)
            raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")
        return original(self, run_id, metrics, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowClient, "log_batch", flaky_log_batch)
        tracking = MlflowTracking(experiment, space, sweep=name, storage=storage, backoff_s=0.05)
        run_sweep(experiment, space, name=name, storage=storage,
                  callbacks=[tracking, Interrupt(Path(storage) / "interrupted")])
    interrupted = sweep_runs(uri, name)
    summary = resume_sweep(name, storage)  # Ray restores the pickled callbacks, ours included
    return types.SimpleNamespace(uri=uri, name=name, storage=storage, summary=summary, failures=failures,
                                 experiment=experiment, interrupted=interrupted)


@pytest.fixture(scope="module")
def server_sweep(ray_session, mlflow_server, tmp_path_factory):
    """A real sweep recorded through the server; counts the driver's HTTP requests."""
    storage = str(tmp_path_factory.mktemp("server-sweep"))
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    check_tracking(mlflow_server, sweep="sv")
    original, sent, probes = requests.Session.request, [], []

    def counting_request(self, method, url, *args, **kwargs):
        parts = urlparse(url)
        if parts.netloc == urlparse(mlflow_server).netloc:  # not MLflow's own telemetry
            sent.append((method, parts.path))
            if parts.path.endswith("/server-info"):
                probes.append(f"thread {threading.current_thread().name}:\n" + "".join(traceback.format_stack()[-14:]))
        return original(self, method, url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.Session, "request", counting_request)
        tracking = MlflowTracking(experiment, space, sweep="sv", storage=storage, tracking_uri=mlflow_server)
        summary = run_sweep(experiment, space, name="sv", storage=storage, callbacks=[tracking])
    return types.SimpleNamespace(uri=mlflow_server, name="sv", storage=storage, summary=summary, sent=sent,
                                 probes=probes, experiment=experiment)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite_sweep", "server_sweep"])
def test_sweep_leaves_a_parent_run_and_one_child_per_trial(store, request, tmp_path):
    sweep = request.getfixturevalue(store)
    client = MlflowClient(sweep.uri)
    parents, children = sweep_runs(sweep.uri, sweep.name)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == sweep.name and parent.info.status == "FINISHED"
    assert parent.data.params["pretrain.epochs"] == "2" and parent.data.params["search.num_samples"] == "2"
    assert {"sslsearch.version", "sslsearch.torch_version", "sslsearch.ray_version", "sslsearch.git_commit",
            "sslsearch.cluster_resources"} <= set(parent.data.tags)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"experiment.yaml", "search_space.yaml", "sweep.json"}
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    finished = [t for t in sweep.summary.trials if t.outcome in ("completed", "stopped early")]
    for loss in {t.loss for t in finished}:
        assert parent.data.metrics[f"best_val_acc_{loss}"] == max(t.val_acc for t in finished if t.loss == loss)

    trials = {t.trial_id: t for t in sweep.summary.trials}
    assert set(children) == set(trials) and all(len(runs) == 1 for runs in children.values())
    for trial_id, (run,) in children.items():
        trial, tags = trials[trial_id], run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.run_name == trial_id
        assert tags["sslsearch.loss"] == trial.loss and tags["sslsearch.outcome"] == trial.outcome
        assert tags["sslsearch.pair"] == "0"  # the digits experiment pairs the losses
        assert run.info.status == "FINISHED"
        assert {"lmbda", "lr", "feature_dim", "loss", "seed", "base.epochs"} <= set(run.data.params)
        # One point per reported epoch, at step = epoch; every report's metrics together.
        assert steps(client, run.info.run_id) == list(range(trial.epoch + 1))
        assert steps(client, run.info.run_id, "knn_acc") == list(range(trial.epoch + 1))
        assert {"loss", "images_per_s", "trial_seconds"} <= set(run.data.metrics)
        assert ("test_acc" in run.data.metrics) == (trial.outcome == "completed")  # measured once, at the natural end
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        best_epoch = max((e for e in history if e > 0), key=lambda e: (history[e], -e))
        last = load_artifact(client, run.info.run_id, "checkpoints/last.pt", tmp_path)
        best = load_artifact(client, run.info.run_id, "checkpoints/best.pt", tmp_path)
        assert last["epoch"] == trial.epoch and best["epoch"] == best_epoch and "model" in best
        statistics = Path(client.download_artifacts(run.info.run_id, "statistics.csv", str(tmp_path))).read_text()
        assert len(statistics.strip().splitlines()) == trial.epoch + 2  # a header, then epochs 0..N
        if sweep.experiment.tracking.checkpoints == "all":
            kept = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
            assert {f"checkpoints/epoch_{e}.pt" for e in range(trial.epoch + 1)} <= kept
            assert load_artifact(client, run.info.run_id, "checkpoints/epoch_1.pt", tmp_path)["epoch"] == 1


@pytest.mark.slow
def test_an_interrupted_and_resumed_sweep_keeps_every_checkpoint_weights_only_with_policy_all(sqlite_sweep, tmp_path):
    from test_checkpoints import assert_retained

    assert sqlite_sweep.experiment.tracking.checkpoints == "all"
    assert_retained(sqlite_sweep.summary, "all", MlflowClient(sqlite_sweep.uri), tmp_path)


@pytest.mark.slow
def test_one_batched_request_per_report(server_sweep):
    """Counts every HTTP request of the driver: each report costs one log-batch, plus one upload of best.pt
    when val_acc improves; the rest is a fixed cost per sweep and per trial."""
    client = MlflowClient(server_sweep.uri)
    _, children = sweep_runs(server_sweep.uri, server_sweep.name)
    trials, reports, improvements = len(children), 0, 0
    for (run,) in children.values():
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")]
        reports += len(history)
        improvements += sum(v > max(history[1:i], default=-float("inf")) for i, v in enumerate(history) if i > 0)
    kinds = collections.Counter("artifact upload" if "/mlflow-artifacts/" in path else f"{method} {path.split('/mlflow/')[-1]}"
                                for method, path in server_sweep.sent)
    # MLflow ≥ 3.18's artifact client asks the server's capabilities (GET server-info) before its first upload and
    # caches the answer: one request per sweep, not per report (CI of 2026-12-07 with mlflow 3.18.0: from the sender's
    # `log_artifacts` of the sweep's files; 3.17 never asks). The stack says from where, should there be more.
    assert kinds.pop("GET server-info", 0) <= 1, "\n".join(server_sweep.probes)
    # Parent params; per trial: params, final tags; the parent's best_val_acc_<loss> once per finished trial and at the end.
    summaries = trials + 1  # every trial of this sweep finishes
    assert kinds["POST runs/log-batch"] == 1 + reports + 2 * trials + summaries, kinds
    assert kinds["artifact upload"] == 3 + improvements + 2 * trials, kinds  # parent: 3 files; per trial: last.pt, statistics.csv
    # runs/search: the parent and the children when the sweep starts, the children once more at its end (the summary
    # is read back once, not at every finished trial: that would be O(trials²) over a sweep, docs/scale.md).
    per_sweep = {"GET experiments/get-by-name": 1, "POST experiments/create": 1, "POST runs/search": 3,
                 "POST runs/create": 1 + trials, "POST runs/update": 1 + trials,
                 "GET runs/get": 1 + trials}  # the run's artifact location, once per run
    assert {k: v for k, v in kinds.items() if k in per_sweep} == per_sweep, kinds
    assert sum(kinds.values()) == sum(per_sweep.values()) + kinds["POST runs/log-batch"] + kinds["artifact upload"], kinds
    fixed = sum(per_sweep.values()) + 1 + 3 + 4 * trials + summaries
    print(f"\n{reports} reports of {trials} trials, {improvements} of them a new best: {sum(kinds.values())} requests = "
          f"{fixed} fixed + {reports} log-batch + {improvements} best.pt; {dict(kinds)}")


@pytest.mark.slow
def test_interrupted_sweep_is_marked_honestly_then_resumed_into_the_same_runs(sqlite_sweep):
    parents, children = sqlite_sweep.interrupted
    assert [p.info.status for p in parents] == ["KILLED"]  # the sweep had not ended
    statuses = {(r.info.status, r.data.tags["sslsearch.outcome"]) for runs in children.values() for r in runs}
    assert ("KILLED", "running") in statuses and statuses <= {("KILLED", "running"), ("FINISHED", "completed"),
                                                              ("FINISHED", "stopped early")}
    # After the resume, the test above finds one FINISHED parent and one FINISHED child per trial.


@pytest.mark.slow
def test_transient_failures_are_retried_and_nothing_is_lost(sqlite_sweep):
    assert len(sqlite_sweep.failures) == 2
    assert all(t.outcome in ("completed", "stopped early") for t in sqlite_sweep.summary.trials)


# -- the hooks replayed: a driver killed, then resumed ------------------------------------------------

class FakeTrial:
    """What the callback reads of a Ray trial."""

    def __init__(self, trial_id: str, folder: Path, loss: str):
        self.trial_id, self.folder = trial_id, folder
        self.config = {"base": {"epochs": 2, "loss": "barlow"}, "lmbda": 0.01, "lr": 1e-3, "feature_dim": 32,
                       "loss": loss, "seed": 0, "pair": 0, "final_test": True, "cpus": 1}
        self.last_result, self.checkpoint, self.status, self.error_file = {}, None, "RUNNING", None
        self.saved = 0

    def report(self, callback: MlflowTracking, epoch: int, val_acc: float) -> None:
        result = {"epoch": epoch, "val_acc": val_acc, "knn_acc": val_acc / 2, "loss": 10.0 - epoch, "images_per_s": 1e3,
                  "trial_seconds": float(epoch), "node_id": "n1", "training_iteration": epoch + 1, "time_total_s": 1.0}
        callback.on_trial_result(0, [], self, dict(result))
        self.last_result = result
        self.saved += 1
        folder = self.folder / self.trial_id / f"checkpoint_{self.saved:06d}"
        folder.mkdir(parents=True)
        torch.save({"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}}, folder / "last.pt")
        (folder / "statistics.csv").write_text("epoch,val_acc\n" + "".join(f"{e},{val_acc}\n" for e in range(epoch + 1)))
        self.checkpoint = tune.Checkpoint.from_directory(str(folder))
        callback.on_checkpoint(0, [], self, self.checkpoint)


@pytest.mark.slow
def test_killed_then_interrupted_then_resumed_driver_keeps_one_run_per_trial(tmp_path):
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    (tmp_path / "replay").mkdir()  # run_sweep creates the sweep folder, where the outbox lives
    first = MlflowTracking(experiment, space, sweep="replay", storage=str(tmp_path), backoff_s=0)
    def restored():
        return pickle.loads(pickle.dumps(first))  # what Ray does on resume (tuner.pkl)
    a, b = FakeTrial("aaaa0001", tmp_path, "barlow"), FakeTrial("bbbb0002", tmp_path, "hsic")

    # Session 1: SIGKILLed after a few reports; runs are left RUNNING, nothing else happens.
    first.setup()
    for trial in (a, b):
        first.on_trial_start(0, [], trial)
    a.report(first, 0, 50.0), a.report(first, 1, 80.0), b.report(first, 0, 50.0)
    pickle.dumps(first)  # Ray saves the callback with the experiment: no client, no lock in its state
    first.close(timeout_s=0)  # the SIGKILL: its sender stops wherever it is; unsent records stay in the outbox file
    first._sender.join()  # (a killed driver's thread is gone; this one finishes the record in hand first)

    # Session 2: re-reports an epoch already logged, then is interrupted (Ctrl-C).
    second = restored()
    second.setup()
    for trial in (a, b):
        second.on_trial_start(0, [], trial)
    a.report(second, 1, 80.0)
    second.on_experiment_end([a, b])
    client, uri = MlflowClient(default_tracking_uri(str(tmp_path))), default_tracking_uri(str(tmp_path))
    parents, children = sweep_runs(uri, "replay")
    assert parents[0].info.status == "KILLED"
    assert {r.info.status for runs in children.values() for r in runs} == {"KILLED"}
    assert {r.data.tags["sslsearch.outcome"] for runs in children.values() for r in runs} == {"running"}

    # Session 3: resumed to the end; b fails.
    third = restored()
    third.setup()
    for trial in (a, b):
        third.on_trial_start(0, [], trial)
    a.report(third, 1, 80.0), a.report(third, 2, 70.0)
    third.on_trial_complete(0, [], a)
    b.report(third, 1, 60.0)
    (tmp_path / "error.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
    b.error_file, b.status = str(tmp_path / "error.txt"), "ERROR"
    third.on_trial_error(0, [], b)
    a.status = "TERMINATED"
    third.on_experiment_end([a, b])

    parents, children = sweep_runs(uri, "replay")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {k: len(v) for k, v in children.items()} == {"aaaa0001": 1, "bbbb0002": 1}
    (run_a,), (run_b,) = children["aaaa0001"], children["bbbb0002"]
    assert steps(client, run_a.info.run_id) == [0, 1, 2] and steps(client, run_b.info.run_id) == [0, 1]
    assert [m.value for m in client.get_metric_history(run_a.info.run_id, "val_acc")] == [50.0, 80.0, 70.0]
    assert run_a.info.status == "FINISHED" and run_a.data.tags["sslsearch.outcome"] == "completed"
    assert run_b.info.status == "FAILED" and run_b.data.tags["sslsearch.outcome"] == "errored"
    assert run_b.data.tags["sslsearch.error"] == "RuntimeError: out of memory"
    # best.pt is the best epoch after 0, whichever session saw it; last.pt the last.
    assert load_artifact(client, run_a.info.run_id, "checkpoints/best.pt", tmp_path / "d1")["epoch"] == 1
    assert load_artifact(client, run_a.info.run_id, "checkpoints/last.pt", tmp_path / "d2")["epoch"] == 2
    assert run_a.data.params["lmbda"] == "0.01" and run_a.data.params["base.epochs"] == "2"


@pytest.mark.slow
def test_a_stage_callback_tags_its_runs_even_after_ray_restores_it(tmp_path):
    """The confirm stage's callback (stage="confirm") survives the pickling of a resume; the sweep's own does not tag."""
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    sweep = MlflowTracking(experiment, space, sweep="staged", storage=str(tmp_path), backoff_s=0)
    confirm = pickle.loads(pickle.dumps(MlflowTracking(experiment, space, sweep="staged", storage=str(tmp_path), backoff_s=0,
                                                       stage="confirm")))
    trials = (FakeTrial("s0000001", tmp_path, "barlow"), FakeTrial("c0000001", tmp_path, "hsic"))
    for callback, trial in zip((sweep, confirm), trials):
        callback.setup()
        callback.on_trial_start(0, [], trial)
        trial.report(callback, 0, 50.0)
        assert callback.flush(60) == 0
    parents, children = sweep_runs(default_tracking_uri(str(tmp_path)), "staged")
    assert len(parents) == 1  # one parent run: the stage joins the sweep's
    assert "sslsearch.stage" not in children["s0000001"][0].data.tags
    assert children["c0000001"][0].data.tags["sslsearch.stage"] == "confirm"


@pytest.mark.slow
def test_the_sweeps_run_exists_when_setup_returns_and_a_store_that_fails_is_not_waited_for(tmp_path, monkeypatch):
    """Ray calls setup before it starts the first trials: the sweep's parent run is created then, not while the first
    trials start. A store that fails is not waited for: setup returns after the sender's first failed try (the
    records wait in the outbox), not after SETUP_WAIT_S (set here far above any try)."""
    from sslsearch.records import tracking as tracking_module

    monkeypatch.setattr(tracking_module, "SETUP_WAIT_S", 600.0)
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    sweep = MlflowTracking(experiment, space, sweep="early", storage=str(tmp_path), backoff_s=0)
    sweep.setup()
    parents, _ = sweep_runs(default_tracking_uri(str(tmp_path)), "early")   # read by a separate client
    assert len(parents) == 1 and not sweep.outbox.pending
    closed = f"http://127.0.0.1:{free_port()}"   # nobody listens
    down = MlflowTracking(experiment, space, sweep="down", storage=str(tmp_path), tracking_uri=closed, attempts=1,
                          backoff_s=0)
    started = time.monotonic()
    down.setup()
    assert time.monotonic() - started < 300   # returned at the failure (a few seconds), not at the 600 s limit
    assert down._failures == 1 and [r[0] for _, r in down.outbox.pending] == ["sweep"]
    assert down.close(0.1) == 1


@pytest.mark.slow
def test_a_stage_queues_in_its_own_outbox_and_a_replay_tags_its_runs(tmp_path):
    """The confirm stage's records wait in `<sweep>/confirm/`, apart from the search's: a replay (as `sync` does, with a
    callback of the stage) creates the stage's runs tagged with it, never as search trials."""
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    closed = f"http://127.0.0.1:{free_port()}"   # nobody listens: every record waits in the outbox
    live = MlflowTracking(experiment, space, sweep="queued", storage=str(tmp_path), tracking_uri=closed, attempts=1,
                          backoff_s=0, stage="confirm")
    trial = FakeTrial("c0000002", tmp_path, "hsic")
    live.on_trial_start(0, [], trial)
    trial.report(live, 0, 50.0)
    assert live.close(0.1) > 0
    assert (tmp_path / "queued" / "confirm" / "mlflow-outbox.jsonl").is_file()
    assert not (tmp_path / "queued" / "mlflow-outbox.jsonl").exists()   # the search's outbox holds none of them
    uri = default_tracking_uri(str(tmp_path))
    replay = MlflowTracking(experiment, space, sweep="queued", storage=str(tmp_path), tracking_uri=uri, stage="confirm")
    assert replay.drain() == 0
    _, children = sweep_runs(uri, "queued")
    assert children["c0000002"][0].data.tags["sslsearch.stage"] == "confirm"


@pytest.mark.slow
def test_outage_queues_records_on_disk_without_blocking_and_sends_them_in_order_later(tmp_path, monkeypatch):
    experiment = tiny()
    space = load_search_space(experiment.space_path())
    (tmp_path / "outage").mkdir()
    tracking = MlflowTracking(experiment, space, sweep="outage", storage=str(tmp_path), attempts=2, backoff_s=0.2)
    trial = FakeTrial("cccc0003", tmp_path, "barlow")
    tracking.setup()
    tracking.on_trial_start(0, [], trial)
    assert tracking.flush(60) == 0
    original, calls, down = MlflowClient.log_batch, [], [True]

    def log_batch(self, *args, **kwargs):
        calls.append(down[0])
        if down[0]:
            time.sleep(0.5)  # a server that takes its time to refuse
            raise requests.ConnectionError("connection refused")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    started = time.monotonic()
    trial.report(tracking, 0, 50.0)
    trial.report(tracking, 1, 70.0)
    hooks_s = time.monotonic() - started
    assert hooks_s < 0.5, hooks_s  # the hooks only append to the outbox: training never waits on the server
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == [True, True]  # two attempts, then the sender cools down (30 s) instead of hammering
    outbox = tmp_path / "outage" / "mlflow-outbox.jsonl"
    queued = [json.loads(line)["record"][0] for line in outbox.read_text().splitlines()]
    assert queued[-4:] == ["metrics", "checkpoint", "metrics", "checkpoint"]  # on disk, in order
    down[0] = False
    trial.report(tracking, 2, 60.0)  # still cooling down
    tracking.on_trial_complete(0, [], trial)
    tracking.on_experiment_end([trial])  # the end asks for a try at once: everything goes, in order
    assert tracking.unsent == 0 and not outbox.exists()  # all sent: the outbox is removed
    client = MlflowClient(default_tracking_uri(str(tmp_path)))
    _, children = sweep_runs(default_tracking_uri(str(tmp_path)), "outage")
    (run,) = children["cccc0003"]
    assert steps(client, run.info.run_id) == [0, 1, 2] and run.info.status == "FINISHED"
    assert load_artifact(client, run.info.run_id, "checkpoints/best.pt", tmp_path / "d")["epoch"] == 1


@pytest.mark.slow
def test_trials_cut_by_the_time_budget_are_stopped_early_not_interrupted(tmp_path):
    experiment = tiny("search.time_budget_s=60")
    tracking = MlflowTracking(experiment, load_search_space(experiment.space_path()), sweep="budget", storage=str(tmp_path))
    trial = FakeTrial("dddd0004", tmp_path, "hsic")
    tracking.setup()
    tracking._started -= 60   # the sweep began a budget ago (the shortest budget the validator takes is a minute)
    tracking.on_trial_start(0, [], trial)
    trial.report(tracking, 0, 50.0), trial.report(tracking, 1, 60.0)
    trial.status = "TERMINATED"  # what Ray's time budget leaves, without calling on_trial_complete
    tracking.on_experiment_end([trial])
    parents, children = sweep_runs(default_tracking_uri(str(tmp_path)), "budget")
    (run,) = children["dddd0004"]
    assert parents[0].info.status == "FINISHED"
    assert run.info.status == "FINISHED" and run.data.tags["sslsearch.outcome"] == "stopped early"


@pytest.mark.slow
def test_the_experiment_opens_as_model_training_and_the_parent_run_holds_the_answer(tmp_path):
    experiment = tiny()
    tracking = MlflowTracking(experiment, load_search_space(experiment.space_path()), sweep="answer", storage=str(tmp_path))
    trials = [FakeTrial("aaaa0001", tmp_path, "barlow"), FakeTrial("bbbb0002", tmp_path, "hsic"),
              FakeTrial("cccc0003", tmp_path, "barlow")]
    tracking.setup()
    for trial, finals in zip(trials, ((60.0, 70.0), (55.0, 65.0), (62.0, 90.0))):
        tracking.on_trial_start(0, [], trial)
        trial.report(tracking, 0, 10.0), trial.report(tracking, 1, finals[0]), trial.report(tracking, 2, finals[1])
    tracking.on_trial_complete(0, [], trials[0])
    tracking.on_trial_complete(0, [], trials[1])
    # cccc0003 is still running when the sweep is interrupted: not part of the answer.
    tracking.on_experiment_end(trials)
    client = MlflowClient(default_tracking_uri(str(tmp_path)))
    assert client.get_experiment_by_name("sslsearch").tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,), _ = sweep_runs(default_tracking_uri(str(tmp_path)), "answer")
    assert parent.data.metrics == {"best_val_acc_barlow": 70.0, "best_val_acc_hsic": 65.0}
    history = client.get_metric_history(parent.info.run_id, "best_val_acc_barlow")
    assert [(m.step, m.value) for m in history][-1] == (2, 70.0)  # step: finished trials so far


# -- where records go -----------------------------------------------------------------------------------

def test_unreachable_server_is_a_one_line_input_error():
    with pytest.raises(InputError) as error:
        check_tracking(f"http://127.0.0.1:{free_port()}")
    # The root cause in a few words, not urllib3's repr cut mid-word.
    assert "unreachable (Connection refused)" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "sqlite:///relative.db", "postgres://x"])
def test_stores_mlflow_cannot_use_here_are_refused(uri):
    with pytest.raises(InputError):
        check_tracking(uri)


def test_default_store_is_sqlite_at_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri("runs") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    with pytest.raises(InputError):
        default_tracking_uri("s3://bucket/runs")


@pytest.mark.slow
def test_a_sweep_name_already_recorded_is_refused(sqlite_sweep):
    with pytest.raises(InputError, match="already holds a sweep named 'sq'"):
        check_tracking(sqlite_sweep.uri, sweep="sq")
    check_tracking(sqlite_sweep.uri, sweep="another")
