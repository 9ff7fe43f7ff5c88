"""Fault injection: real SIGKILLs of a trial's worker and of a real `mlflow server` on 127.0.0.1, a second writer,
broken checkpoints. Each asserts with counts against Ray's own per-trial results."""

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from ray import tune

from mlflow_server import MlflowServer
from sslsearch import cli
from sslsearch.errors import InputError
from sslsearch.records.store import default_tracking_uri
from sslsearch.records.tracking import MlflowTracking, ray_results, sync, unsent_records
from sslsearch.search.experiment import load_experiment
from sslsearch.search.folder import STUDY_FILE
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep
from sslsearch.search.sweeplock import SweepLock, check_owned, claim_sweep_folder

ROOT = Path(__file__).resolve().parent.parent
# One pair of trials, 2 epochs, a report every epoch; FIFO so both run their full budget whatever they score.
TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.type=fifo"]


class Faults(tune.Callback):
    """SIGKILLs the worker of the first trial to report epoch 1, and the tracking server at the first report of
    epoch 2 (so it is down over the sweep's end). Marker files keep each from happening twice."""

    def __init__(self, folder: Path, server_pgid: int):
        self.folder, self.server_pgid = folder, server_pgid

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["epoch"] >= 1 and not (self.folder / "worker-killed").exists():
            (self.folder / "worker-killed").write_text(trial.trial_id)
            os.kill(result["pid"], signal.SIGKILL)
        if result["epoch"] >= 2 and not (self.folder / "server-killed").exists():
            (self.folder / "server-killed").touch()
            os.killpg(self.server_pgid, signal.SIGKILL)


def _sweep_runs(client, name, stage=None):
    """The sweep's parent runs, and its child runs by trial id (of the search, or of `stage`)."""
    experiment = client.get_experiment_by_name("sslsearch")
    runs = client.search_runs([experiment.experiment_id], f"tags.`sslsearch.sweep` = '{name}'")
    parents = [r for r in runs if r.data.tags["sslsearch.role"] == "sweep"]
    children = {}
    for r in runs:
        if r.data.tags["sslsearch.role"] == "trial" and r.data.tags.get("sslsearch.stage") == stage:
            children.setdefault(r.data.tags["sslsearch.trial_id"], []).append(r)
    return parents, children


@pytest.fixture(scope="module")
def faulty_sweep(ray_session, tmp_path_factory):
    """A real sweep through a real mlflow server: one worker SIGKILLed mid-trial, the server SIGKILLed before the
    end. Then the server comes back (same port, same store) and `sslsearch sync` runs."""
    folder = tmp_path_factory.mktemp("faults")
    server = MlflowServer(folder).start()
    storage, name = str(folder / "runs"), "faulty"
    experiment = load_experiment(None, TINY)
    space = load_search_space(experiment.space_path())
    uri = server.wait()
    tracking = MlflowTracking(experiment, space, sweep=name, storage=storage, tracking_uri=uri, flush_timeout_s=3)
    try:
        summary = run_sweep(experiment, space, name=name, storage=storage, quiet=True,
                            callbacks=[tracking, Faults(folder, server.process.pid)])
        server.process.wait()
        unsent = unsent_records(summary.path)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = cli.sweep_exit_code(summary)
        server.start().wait()
        first, second = sync(name, storage, uri), sync(name, storage, uri)
        yield types.SimpleNamespace(summary=summary, unsent=unsent, code=code, stderr=stderr.getvalue(), uri=uri,
                                    name=name, storage=storage, first=first, second=second, experiment=experiment,
                                    killed=(folder / "worker-killed").read_text())
    finally:
        server.stop()


@pytest.mark.slow
def test_a_sweep_whose_server_died_says_sync_and_sync_loses_nothing(faulty_sweep):
    s = faulty_sweep
    assert s.unsent > 0 and s.code == 3  # finished, but records wait: not 0
    assert f"run `sslsearch sync {s.name}`" in s.stderr
    assert s.first.unsent == 0 and s.first.replayed == s.unsent
    assert (s.second.points_added, s.second.statuses_fixed, s.second.runs_created) == (0, 0, 0)  # idempotent
    assert unsent_records(s.summary.path) == 0 and not (Path(s.summary.path) / "mlflow-outbox.jsonl").exists()

    assert len(s.summary.trials) == s.experiment.search.num_samples  # planned = finished
    points = _assert_mlflow_equals_ray(MlflowClient(s.uri), s.name, s.summary.path)
    assert points == s.first.points == 2 * 3  # two trials, epochs 0..2


def _assert_mlflow_equals_ray(client, name: str, path: str, stage: str | None = None) -> int:
    """One parent run, one run per trial (of the search, or of `stage` in `path`), every reported step exactly once,
    every trial completed in both; the number of steps."""
    parents, children = _sweep_runs(client, name, stage)
    trials = tune.ExperimentAnalysis(path).trials
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == sorted(t.trial_id for t in trials) and all(len(r) == 1 for r in children.values())
    points = 0
    for trial in trials:
        (run,) = children[trial.trial_id]
        reported = ray_results(trial)
        ray_steps = sorted(reported)
        for key in ("epoch", "val_acc", "knn_acc", "loss", "trial_seconds"):  # each point exactly once
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [
                step for step in ray_steps if key in reported[step]], key
        points += len(ray_steps)
        assert trial.status == "TERMINATED" and run.info.status == "FINISHED"
        assert run.data.tags["sslsearch.outcome"] == "completed"
        assert "sslsearch.error" not in run.data.tags
    return points


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_every_record_agrees(faulty_sweep):
    s = faulty_sweep
    (killed,) = [t for t in tune.ExperimentAnalysis(s.summary.path).trials if t.trial_id == s.killed]
    assert killed.num_failures == 1 and killed.status == "TERMINATED"
    assert all(t.outcome == "completed" for t in s.summary.trials)
    client = MlflowClient(s.uri)
    _, children = _sweep_runs(client, s.name)
    assert children[s.killed][0].data.tags["sslsearch.retries"] == "1"
    study = optuna.load_study(study_name=s.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path(s.summary.path) / STUDY_FILE))))
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study.trials}
    assert states == {t.trial_id: "COMPLETE" for t in s.summary.trials}  # Ray, Optuna and MLflow agree


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_sweep_is_held(faulty_sweep, capsys):
    path = faulty_sweep.summary.path
    with SweepLock(path, faulty_sweep.name):
        for argv in (["resume", faulty_sweep.name], ["sync", faulty_sweep.name, "--tracking-uri", faulty_sweep.uri]):
            assert cli.main([*argv, "--storage", faulty_sweep.storage]) == 2
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and f"pid {os.getpid()}" in err and "being written by" in err, err


@pytest.mark.slow
def test_resume_ends_by_giving_mlflow_what_ray_recorded(faulty_sweep, capsys):
    """Records an earlier session could neither send nor keep (its outbox unwritable, then the process gone)
    exist only in Ray's results: resume reconciles MLflow with them. Simulated by deleting a trial's run."""
    s = faulty_sweep
    client = MlflowClient(s.uri)
    _, children = _sweep_runs(client, s.name)
    (lost,) = [trial_id for trial_id in children if trial_id != s.killed]
    client.delete_run(children[lost][0].info.run_id)
    assert cli.main(["resume", s.name, "--storage", s.storage, "--tracking-uri", s.uri]) == 0
    assert f"sync {s.name}:" in capsys.readouterr().out
    assert _assert_mlflow_equals_ray(client, s.name, s.summary.path) == 2 * 3


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sslsearch.search.sweeplock import SweepLock; "
                               f"SweepLock({str(tmp_path)!r}, 's').acquire(); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"being written by pid {holder.pid} on "):
            SweepLock(tmp_path, "s").acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, the lock file still names it
        holder.wait()
    assert f'"pid": {holder.pid}' in (tmp_path / "sslsearch.lock").read_text()
    with SweepLock(tmp_path, "s"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "sslsearch.lock").read_text()
    assert (tmp_path / "sslsearch.lock").read_text() == ""  # released


def test_two_sweeps_of_one_name_started_together_give_one_folder(tmp_path):
    outcomes, locks, start = [], [], threading.Barrier(8)

    def create():
        start.wait()
        try:
            locks.append(claim_sweep_folder(tmp_path / "X", "X"))
            outcomes.append("created")
        except InputError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("created") == 1
    # The folder appears with its lock held: the others are told that X runs, never that it can be resumed.
    assert all(o.startswith(f"sweep 'X' is running now (pid {os.getpid()} on ") for o in outcomes if o != "created"), outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]  # no staging folder left behind
    locks[0].release()


def _checkpoint(folder: Path, epoch: int) -> None:
    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "model": {"w": torch.zeros(1000)}}, folder / "last.pt")
    (folder / "trial_seconds.txt").write_text(repr(float(epoch)))


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_is_named(tmp_path, capsys):
    from sslsearch.search.trainable import restore

    trial = tmp_path / "trial_x"
    _checkpoint(trial / "checkpoint_000001", 1)
    _checkpoint(trial / "checkpoint_000002", 2)
    broken = trial / "checkpoint_000002" / "last.pt"
    broken.write_bytes(broken.read_bytes()[:200])  # cut short, as by a full disk or a crash mid-write
    last, seconds = restore(tune.Checkpoint(str(trial / "checkpoint_000002")), tmp_path / "scratch")
    assert torch.load(last, weights_only=True)["epoch"] == 1 and seconds == 1.0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"checkpoint {trial / 'checkpoint_000002'}/last.pt is unreadable" in err
    (trial / "checkpoint_000001" / "last.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no intact checkpoint to resume from; broken: .*000002/last.pt, .*000001/last.pt"):
        restore(tune.Checkpoint(str(trial / "checkpoint_000002")), tmp_path / "scratch2")


def test_resume_refuses_a_sweep_folder_others_can_write(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(b"")
    check_owned(tmp_path)
    os.chmod(tmp_path / "tuner.pkl", 0o666)
    with pytest.raises(InputError, match="tuner.pkl is writable by everyone .*chmod o-w"):
        check_owned(tmp_path)


def test_a_crafted_backbone_pickle_is_one_line_not_code(tmp_path):
    import json
    import pickle

    from sslsearch.analysis.export import load_backbone, sha256_of

    class Payload:  # what a crafted file would run on a plain torch.load
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "backbone.pt").write_bytes(pickle.dumps(Payload()))
    card = {"weights": {"sha256": sha256_of(tmp_path / "backbone.pt")}, "backbone": "small_cnn", "image_size": 8}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="cannot load .*backbone.pt \\(UnpicklingError: .*weights_only refuses"):
        load_backbone(tmp_path)
    assert not (Path.cwd() / "pwned").exists()


class FillDisk(tune.Callback):
    """Fills the storage's file system at the first report of epoch 1 (once: a marker outside it remembers)."""

    def __init__(self, disk: Path, marker: Path):
        self.disk, self.marker = disk, marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["epoch"] >= 1 and not self.marker.exists():
            self.marker.touch()
            with open(self.disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_in_good_order_and_resume_finishes_it(ray_session, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the sweep's storage needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        storage, name = str(disk / "runs"), "full"
        experiment = load_experiment(None, [*TINY, "resources.max_failures=1"])
        space = load_search_space(experiment.space_path())
        tracking = MlflowTracking(experiment, space, sweep=name, storage=storage, flush_timeout_s=3)
        code = cli._report_sweep(lambda: run_sweep(experiment, space, name=name, storage=storage, quiet=True,
                                                   callbacks=[tracking, FillDisk(disk, tmp_path / "filled")]))
        out, err = capsys.readouterr()
        assert (tmp_path / "filled").exists()
        lines = [line for line in err.splitlines() if line.startswith("sslsearch: error:")]
        # The first trial that could not save stops the sweep (StopOnFullDisk): no retry, no trial errored for it,
        # one line, the summary (from Ray's saved state) and the resume hint.
        assert code == 4, out + err
        assert len(lines) == 1 and f"sslsearch resume {name}" in lines[0] and "Traceback" not in err, err
        assert f"sweep {name}: 2 trials" in out and "errored" not in out and "stopped early" not in out, out
        assert f"unfinished; continue with: sslsearch resume {name}" in out, out
        assert err.count("Trial task failed") <= 2, err   # at most one failure per running trial, never a retry
        assert not list(disk.rglob("*.tmp"))
        (disk / "filler").unlink()  # space freed
        # Ray copies its saved state over the previous one in place, so the full disk may have cut it short:
        # resume then starts from the intact copy (sslsearch.search.saved_state) instead of forgetting the trials,
        # and ends by reconciling MLflow with Ray's results (records the full disk kept from the outbox).
        assert cli.main(["resume", name, "--storage", storage]) == 0
        out = capsys.readouterr().out
        assert f"sweep {name}: 2 trials (2 completed)" in out
        assert _assert_mlflow_equals_ray(MlflowClient(default_tracking_uri(storage)), name, f"{storage}/{name}") == 2 * 3
        assert not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.slow
def test_a_saved_state_ray_cannot_restore_is_refused_before_anything_runs(ray_session, tmp_path):
    """A saved state that loads (so `recover_saved_state` finds nothing cut short) but that Ray cannot restore: here an
    experiment state listing no trials (Ray indexes its first trial). Ray logged "Failed to restore the run state" and
    started the sweep over, running its search again from the start beside the old trials. Now: one line, nothing run,
    every file as it was."""
    import json

    from sslsearch.search.saved_state import RestoreFailed
    from sslsearch.search.sweep import resume_sweep
    from sslsearch.search.synthetic import synthetic_trainable

    storage, name, trainable = str(tmp_path / "runs"), "unrestorable", synthetic_trainable()
    experiment = load_experiment(None, [*TINY, "search.sampler=random"])
    run_sweep(experiment, load_search_space(experiment.space_path()), name=name, storage=storage, quiet=True,
              trainable=trainable)
    folder = tmp_path / "runs" / name
    state = sorted(folder.glob("experiment_state-*.json"))[-1]
    saved = json.loads(state.read_text())
    assert len(saved["trial_data"]) == 2
    state.write_text(json.dumps({**saved, "trial_data": []}))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "sslsearch.lock"}
    with pytest.raises(RestoreFailed) as refused:
        resume_sweep(name, storage, trainable=trainable)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"sweep {name} cannot be resumed: Ray could not restore")
    assert "IndexError" in message and "nothing was run" in message, message
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "sslsearch.lock"}
    assert after == before   # no trial started, no state saved, no file of the old trials touched


@pytest.mark.slow
def test_a_confirmation_stage_ray_cannot_restore_starts_again_from_its_plan(ray_session, tmp_path, capsys):
    """The stage's counterpart of the test above. Its trials are fixed by its plan, so rather than stop with
    RestoreFailed (and leave the user to delete files), `confirm` sets Ray's saved state aside and runs the plan's
    trials again, with one warning; the old state is kept, not deleted."""
    import json

    from sslsearch.search.confirm import confirm_path, read_plan, run_confirm
    from sslsearch.search.synthetic import synthetic_trainable

    storage, name, trainable = str(tmp_path / "runs"), "cunrestorable", synthetic_trainable()
    experiment = load_experiment(None, [*TINY, "search.sampler=random"])
    run_sweep(experiment, load_search_space(experiment.space_path()), name=name, storage=storage, quiet=True,
              trainable=trainable)
    first = run_confirm(name, storage, top=1, seeds=1, quiet=True, trainable=trainable)
    plan = read_plan(name, storage)
    stage = Path(confirm_path(name, storage))
    state = sorted(stage.glob("experiment_state-*.json"))[-1]
    saved = json.loads(state.read_text())
    assert len(saved["trial_data"]) == 2
    broken = json.dumps({**saved, "trial_data": []})
    state.write_text(broken)
    capsys.readouterr()
    again = run_confirm(name, storage, top=1, seeds=1, quiet=True, trainable=trainable)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "could not restore" in warning[0] and "IndexError" in warning[0], warning
    assert "start again from its plan" in warning[0]
    assert read_plan(name, storage) == plan
    # the same points of the plan, run again by new trials, all to the end
    assert sorted((t.loss, sorted(t.params.items())) for t in again.trials) == sorted(
        (t.loss, sorted(t.params.items())) for t in first.trials)
    assert {t.trial_id for t in again.trials}.isdisjoint(t.trial_id for t in first.trials)
    assert len(again.trials) == 2 and {t.outcome for t in again.trials} == {"completed"}
    kept = list(stage.glob(f"damaged-state-*/{state.name}"))
    assert len(kept) == 1 and kept[0].read_text() == broken

@pytest.mark.slow
def test_a_confirmation_stage_whose_list_of_points_was_cut_short_continues_from_its_intact_copy(ray_session, tmp_path,
                                                                                                 capsys):
    """The fresh-clone CI of 2026-12-07: a full disk left the stage's experiment state whole but cut its
    basic-variant-state-*.json (BasicVariantGenerator's pickle: the points left to run) short; neither the intact copy
    nor the check before resuming knew that file, Ray failed to restore the stage, restarted it with no search space
    and raised KeyError: 'feature_dim'. Here the stage has finished, so continuing it runs nothing again."""
    from sslsearch.search.confirm import confirm_path, run_confirm
    from sslsearch.search.synthetic import synthetic_trainable

    storage, name, trainable = str(tmp_path / "runs"), "cpoints", synthetic_trainable()
    experiment = load_experiment(None, [*TINY, "search.sampler=random"])
    run_sweep(experiment, load_search_space(experiment.space_path()), name=name, storage=storage, quiet=True,
              trainable=trainable)
    first = run_confirm(name, storage, top=1, seeds=1, quiet=True, trainable=trainable)
    stage = Path(confirm_path(name, storage))
    points = sorted(stage.glob("basic-variant-state-*.json"))[-1]
    assert (stage / "intact-state" / points.name).read_bytes() == points.read_bytes()
    points.write_bytes(points.read_bytes()[:10])
    capsys.readouterr()
    again = run_confirm(name, storage, top=1, seeds=1, quiet=True, trainable=trainable)
    assert "cut short" in capsys.readouterr().err
    assert sorted((t.trial_id, t.outcome, t.epoch) for t in again.trials) == sorted(
        (t.trial_id, t.outcome, t.epoch) for t in first.trials)
    assert len(first.trials) == 2 and {t.outcome for t in first.trials} == {"completed"}


@pytest.mark.slow
def test_a_full_disk_stops_the_confirmation_stage_in_good_order_and_confirm_and_sync_finish_it(ray_session, tmp_path,
                                                                                                 capsys):
    """As the search does: the first trial that cannot save stops the stage (exit 4, one line, the stage's line and
    `sslsearch confirm NAME`); once space is freed the stage continues from Ray's state (or its intact copy) and `sync`
    gives MLflow every step of the stage's trials exactly once. Synthetic trials: seconds, not minutes."""
    from sslsearch.search.confirm import STAGE, confirm_experiment, run_confirm
    from sslsearch.search.synthetic import synthetic_trainable

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the sweep's storage needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], capture_output=True,
                      check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        storage, name, trainable = str(disk / "runs"), "cfull", synthetic_trainable()
        experiment = load_experiment(None, [*TINY, "search.sampler=random", "resources.max_failures=1"])
        space = load_search_space(experiment.space_path())
        run_sweep(experiment, space, name=name, storage=storage, quiet=True, trainable=trainable,
                  callbacks=[MlflowTracking(experiment, space, sweep=name, storage=storage, flush_timeout_s=1)])
        staged, _ = confirm_experiment(name, storage)

        def stage(*extra):
            tracking = MlflowTracking(staged, space, sweep=name, storage=storage, stage=STAGE, flush_timeout_s=1)
            return run_confirm(name, storage, top=1, seeds=1, quiet=True, trainable=trainable,
                               callbacks=[tracking, *extra])

        capsys.readouterr()
        code = cli._report_confirm(lambda: stage(FillDisk(disk, tmp_path / "filled")))
        out, err = capsys.readouterr()
        assert (tmp_path / "filled").exists()
        lines = [line for line in err.splitlines() if line.startswith("sslsearch: error:")]
        assert code == 4, out + err   # before: Ray retried and errored the stage's trials, a traceback, no hint
        assert len(lines) == 1 and f"sslsearch confirm {name}" in lines[0] and "Traceback" not in err, err
        assert f"confirm {name}: " in out and "running" in out and "errored" not in out, out   # (the trials started)
        assert f"unfinished; continue with: sslsearch confirm {name}" in out, out
        assert err.count("Trial task failed") <= 2, err   # at most one failure per running trial, never a retry
        (disk / "filler").unlink()  # space freed
        # As the CI run of 2026-12-07 found it: the stage's list of points (BasicVariantGenerator's pickle) cut short
        # while the experiment state was whole. Ray then failed to restore and restarted the stage with no search space.
        for points in sorted((disk / "runs" / name / "confirm").glob("basic-variant-state-*.json"))[-1:]:
            points.write_bytes(points.read_bytes()[:10])
        # Continued from Ray's saved state of the stage, from its intact copy if the full disk cut it short, or, if the
        # disk filled before the first copy, started again from the stage's plan (whichever Ray's save timing gave).
        assert cli._report_confirm(stage) == 0
        assert f"confirm {name}: 2 trials (2 completed)" in capsys.readouterr().out
        assert cli.main(["sync", name, "--storage", storage]) == 0   # the stage's records, not only the search's
        assert "(2 of the confirmation stage)" in capsys.readouterr().out
        client, confirm = MlflowClient(default_tracking_uri(storage)), f"{storage}/{name}/confirm"
        assert _assert_mlflow_equals_ray(client, name, confirm, STAGE) == 2 * 3
        assert _assert_mlflow_equals_ray(client, name, f"{storage}/{name}") == 2 * 3
        assert not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
