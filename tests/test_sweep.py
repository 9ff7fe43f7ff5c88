"""Sweeps end to end: Optuna + ASHA on Ray, PRUNED bookkeeping, pairing, kill + resume, two nodes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from ray.tune.logger import LoggerCallback

from local_processes import kill_processes_mentioning
from sslsearch.errors import InputError
from sslsearch.processes import free_port
from sslsearch.search.experiment import load_experiment
from sslsearch.search.folder import STUDY_FILE, SWEEP_FILE
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import SweepSearcher, check_resources, run_sweep, summarize
from sslsearch.search.trial_logs import AUTO_LOGGERS, own_loggers_only, trial_loggers

ROOT = Path(__file__).resolve().parent.parent
SSLSEARCH = [sys.executable, "-m", "sslsearch.cli"]


def _searcher(paired=True, max_epochs=4, tmp_path=None):
    space = load_search_space(ROOT / "search_spaces" / "barlow_hsic.yaml")
    return SweepSearcher(space, max_epochs=max_epochs, sampler="tpe", seed=0, paired=paired, study_name="t",
                         study_path=str(tmp_path / STUDY_FILE) if tmp_path else None)


@pytest.mark.slow
def test_resources_no_node_can_give_are_refused_before_any_trial(ray_session, capsys):
    # the session's Ray instance: 2 CPUs, no GPU
    check_resources(load_experiment(ROOT / "experiments" / "digits.yaml"), None)
    for override, needs in (("resources.gpus_per_trial=0.25", "1 CPU and 0.25 GPU"), ("resources.cpus_per_trial=8", "8 CPU")):
        experiment = load_experiment(ROOT / "experiments" / "digits.yaml", [override])
        with pytest.raises(InputError, match=f"a trial needs {needs}.*has 2 CPU and 0 GPU in all; lower"):
            check_resources(experiment, None)
        check_resources(experiment, "10.0.0.1:6379")  # a cluster may still grow: a warning only
        assert "trials wait until the cluster grows" in capsys.readouterr().err


class _Result:
    def __init__(self, trial_id, epoch):
        self.metrics = {"epoch": epoch, "val_acc": 50.0 + epoch, "trial_seconds": 1.0}
        self.config = {"base": {"epochs": 4, "loss": "barlow", "seed": 0}, "loss": "barlow"}
        self.error, self.checkpoint, self.path = None, None, f"/sweeps/s/trial_{trial_id}"


def test_an_interrupted_sweep_says_so_and_how_to_resume(monkeypatch):
    import sslsearch.search.sweep as search

    results = [_Result("a", 4), _Result("b", 2), _Result("c", 1)]
    # what Tune saved after Ctrl-C (the ResultGrid itself calls all three TERMINATED)
    monkeypatch.setattr(search, "saved_statuses", lambda path: {"trial_a": "TERMINATED", "trial_b": "TERMINATED",
                                                                "trial_c": "PENDING"})
    summary = summarize(results, "s", "/sweeps/s", 10.0, 2, None)
    assert [t.outcome for t in summary.trials] == ["completed", "stopped early", "running"]
    assert summary.unfinished == 1
    text = summary.format()
    assert "1 completed, 1 stopped early, 1 running" in text
    assert text.splitlines()[-1] == "interrupted with 1 trial unfinished; continue with: sslsearch resume s"
    monkeypatch.setattr(search, "saved_statuses", lambda path: {})  # unreadable state: no claim either way
    finished = summarize(results, "s", "/sweeps/s", 10.0, 2, None)
    assert finished.unfinished == 0 and "interrupted" not in finished.format()


def test_paired_searcher_gives_twins_that_differ_only_in_loss():
    s = _searcher()
    configs = [s.suggest(f"t{i}") for i in range(6)]
    for a, b in zip(configs[::2], configs[1::2]):
        assert {a["loss"], b["loss"]} == {"barlow", "hsic"}
        assert {k: v for k, v in a.items() if k != "loss"} == {k: v for k, v in b.items() if k != "loss"}
    assert len({c["pair"] for c in configs}) == 3 and len({c["seed"] for c in configs}) == 3


@pytest.mark.slow
def test_sweep_runs_pairs_on_ray_and_keeps_optuna_consistent(ray_session, tmp_path):
    experiment = load_experiment(None, ["pretrain.epochs=3", "pretrain.eval_every=1", "search.num_samples=4",
                                        "scheduler.grace_period=1", "scheduler.reduction_factor=2"])
    space = load_search_space(experiment.space_path())
    summary = run_sweep(experiment, space, name="small", storage=str(tmp_path), quiet=True)
    assert len(summary.trials) == 4
    by_pair = {}
    for t in summary.trials:
        by_pair.setdefault(t.pair, []).append(t)
        assert t.checkpoint and Path(t.checkpoint, "last.pt").is_file()
        if t.outcome == "completed":
            assert t.test_acc is not None and t.epoch == 3
    assert all({t.loss for t in pair} == {"barlow", "hsic"} for pair in by_pair.values())
    study = optuna.load_study(study_name="small", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(summary.study_path)))
    states = {t.user_attrs["ray_trial_id"]: t.state for t in study.trials}
    for t in summary.trials:
        expected = {"completed": "COMPLETE", "stopped early": "PRUNED"}[t.outcome]
        assert states[t.trial_id].name == expected, (t.trial_id, t.outcome)
    assert set(summary.best_per_loss()) == {"barlow", "hsic"}
    assert "best barlow by final report: val_acc" in summary.format() and "overhead" in summary.format()
    # Ray's result.json and progress.csv per trial, no TensorBoard writer (own_loggers_only), the switch put back.
    folders = sorted((tmp_path / "small").glob("trial_*"))
    assert len(folders) == 4
    for folder in folders:
        assert (folder / "result.json").is_file() and (folder / "progress.csv").is_file(), sorted(folder.iterdir())
        assert not list(folder.glob("events.out.tfevents*")), sorted(folder.iterdir())
    assert AUTO_LOGGERS not in os.environ


def test_ray_adds_no_logger_of_its_own_only_while_a_sweep_with_both_of_ours_fits(monkeypatch):
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.delenv(AUTO_LOGGERS, raising=False)
    ours = trial_loggers()
    with own_loggers_only(ours):
        # Ray's own choice of default callbacks, as tune.run makes it inside fit: nothing added to ours.
        assert [type(c) for c in _create_default_callbacks(list(ours), metric="val_acc")
                if isinstance(c, LoggerCallback)] == [type(c) for c in ours]
    assert AUTO_LOGGERS not in os.environ
    added = [type(c).__name__ for c in _create_default_callbacks(list(ours), metric="val_acc")]
    assert "TBXLoggerCallback" in added   # outside the block Ray adds its TensorBoard logger (tensorboardX installed)
    with own_loggers_only(ours[:1]):      # only one of ours: Ray's defaults stay, so no per-trial file goes missing
        assert AUTO_LOGGERS not in os.environ
    monkeypatch.setenv(AUTO_LOGGERS, "0")  # the user asks for Ray's TensorBoard files: left as set
    with own_loggers_only(ours):
        assert os.environ[AUTO_LOGGERS] == "0"
    assert os.environ[AUTO_LOGGERS] == "0"


@pytest.mark.slow
def test_sweep_on_uri_storage_keeps_its_records_there_and_resumes(ray_session, tmp_path):
    """s3:// and gs:// go through the same pyarrow file-system code as this file:// URI."""
    from sslsearch.search.sweep import resume_sweep

    experiment = load_experiment(None, ["pretrain.epochs=2", "search.num_samples=2", "scheduler.type=fifo"])
    space = load_search_space(experiment.space_path())
    storage = f"file://{tmp_path}/remote"
    summary = run_sweep(experiment, space, name="uri", storage=storage, quiet=True)
    assert len(summary.trials) == 2
    for name in (SWEEP_FILE, STUDY_FILE, "tuner.pkl"):
        assert (tmp_path / "remote" / "uri" / name).is_file(), name
    again = resume_sweep("uri", storage)
    assert sorted(t.trial_id for t in again.trials) == sorted(t.trial_id for t in summary.trials)


def _result_rows(result: Path) -> list[dict]:
    """The reports in a trial's result.json, whole lines only: a sweep still running may be midway through writing
    one (Ray's json.dump goes through an 8 kB buffer before its newline; CI of 2026-12-07 read such a half line while
    polling a live sweep)."""
    text = result.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def _trial_epochs(sweep_dir: Path) -> dict[str, list[int]]:
    return {result.parent.name: [row["epoch"] for row in _result_rows(result)]
            for result in sweep_dir.glob("trial_*/result.json")}


@pytest.mark.slow
def test_default_sweep_killed_and_resumed_finishes_every_planned_trial_once(tmp_path):
    """The acceptance run: the embedded default, SIGKILLed mid-sweep, then `sslsearch resume`."""
    env, marker = _private_ray_env(tmp_path)
    driver = subprocess.Popen([*SSLSEARCH, "sweep", "--name", "acc", "--storage", str(tmp_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sweep_dir = tmp_path / "acc"
    deadline = time.monotonic() + 240
    # Kill once a few trials have reported (and at least one has finished), i.e. genuinely mid-sweep.
    while time.monotonic() < deadline:
        time.sleep(2)
        if driver.poll() is not None:
            pytest.fail("sweep finished before it could be killed:\n" + driver.stdout.read())
        epochs = _trial_epochs(sweep_dir) if sweep_dir.exists() else {}
        if len(epochs) >= 4 and sum(1 for e in epochs.values() if e) >= 4:
            break
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies without any cleanup: a crash
    driver.wait()
    kill_processes_mentioning(marker)    # and with it the Ray processes it had started
    started = time.monotonic()
    try:
        resumed = subprocess.run([*SSLSEARCH, "resume", "acc", "--storage", str(tmp_path)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
    finally:
        kill_processes_mentioning(marker)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    planned = load_experiment(None).search.num_samples
    out = resumed.stdout
    assert re.search(rf"sweep acc: {planned} trials", out), out
    epochs = _trial_epochs(sweep_dir)
    assert len(epochs) == planned
    for trial, seq in epochs.items():
        assert seq.count(0) <= 1, f"{trial} started twice from scratch: {seq}"
        assert seq == sorted(seq) or seq.count(0) == 1, f"{trial} went backwards: {seq}"
    assert "stopped early" in out and "best barlow by final report: val_acc" in out and "best hsic by final report" in out
    assert "in this session (resumed;" in out and "so no overhead figure)" in out and "overhead -" not in out
    study = optuna.load_study(study_name="acc", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / STUDY_FILE))))
    assert len(study.trials) == planned
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    print(f"resume took {time.monotonic() - started:.0f}s")


def _private_ray_env(tmp_path: Path) -> tuple[dict, str]:
    # A short private temp root (Ray's socket paths must stay under 107 characters) that also marks
    # this test's Ray processes, so they can be killed without touching any other Ray on the machine.
    root = Path("/tmp") / f"rt{os.getpid()}{tmp_path.name[-6:]}"
    root.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(root), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONUNBUFFERED": "1"}
    return env, str(root)


@pytest.mark.slow
def test_two_node_cluster_places_trials_on_both_nodes(tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    env, marker = _private_ray_env(tmp_path)
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=True, capture_output=True, env=env)
        subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=True, capture_output=True, env=env)
        result = subprocess.run([*SSLSEARCH, "sweep", "--name", "two", "--storage", str(tmp_path / "runs"),
                                 "--address", f"127.0.0.1:{port}", "--set", "pretrain.epochs=2", "--set", "pretrain.eval_every=1",
                                 "--set", "search.num_samples=4", "--set", "scheduler.type=fifo"],
                                capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        nodes = set()
        for path in (tmp_path / "runs" / "two").glob("trial_*/result.json"):
            nodes |= {json.loads(line)["node_id"] for line in path.read_text().splitlines() if line.strip()}
        assert len(nodes) == 2, nodes
    finally:
        kill_processes_mentioning(marker)
