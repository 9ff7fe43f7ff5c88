"""One truth per trial, checked on the real Tuner, searcher and scheduler (a synthetic trainable that
reports like run_trial without training): what Optuna holds equals what Ray's trials reported."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from ray import tune

from sslsearch.errors import InputError
from sslsearch.records.tracking import ROLE, TRIAL_ID, MlflowTracking, default_tracking_uri
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import resume_sweep, run_sweep, saved_statuses
from sslsearch.search.synthetic import CHANCE, SyntheticSettings, synthetic_trainable
from test_sweep import _result_rows

ROOT = Path(__file__).resolve().parent.parent


def _overrides(overrides) -> list[str]:
    return ["pretrain.epochs=8", "pretrain.eval_every=1", "search.num_samples=8", "scheduler.grace_period=1",
            "scheduler.reduction_factor=2", *overrides]


def _experiment(*overrides):
    return load_experiment(None, _overrides(overrides))


def _study(summary):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(summary.study_path))
    return optuna.load_study(study_name=Path(summary.path).name, storage=storage)


def _ray_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Every result Ray recorded per trial (its result.json), keyed by trial id (whole lines: also read while the
    sweep runs)."""
    return {path.parent.name.removeprefix("trial_"): _result_rows(path) for path in sweep_dir.glob("trial_*/result.json")}


def _sweep(tmp_path, name, experiment, **settings):
    space = load_search_space(experiment.space_path())
    return run_sweep(experiment, space, name=name, storage=str(tmp_path), quiet=True,
                     trainable=synthetic_trainable(SyntheticSettings(**settings)))


class _Restarts(tune.Callback):
    """How many times Ray started each trial: more than once means it paused (a twin waiting at a rung)."""

    def __init__(self):
        self.starts: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts[trial.trial_id] = self.starts.get(trial.trial_id, 0) + 1


def _mlflow_reports(uri: str, sweep: str) -> dict[str, dict[int, float]]:
    """trial id → {epoch: val_acc} as MLflow holds it."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sweep) or client.search_experiments()[0]
    reports = {}
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'"):
        history = client.get_metric_history(run.info.run_id, "val_acc")
        reports[run.data.tags[TRIAL_ID]] = {m.step: m.value for m in history}
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("paired", [False, True])
def test_ray_optuna_and_mlflow_hold_every_report_including_the_one_that_stopped_the_trial(ray_session, tmp_path,
                                                                                          paired):
    experiment = _experiment(f"search.paired={str(paired).lower()}", "search.num_samples=10")
    space = load_search_space(experiment.space_path())
    restarts, storage = _Restarts(), str(tmp_path)
    tracking = MlflowTracking(experiment, space, sweep="truth", storage=storage)
    # Paired: twins that race each other to the rungs, so some wait paused and restart (Ray's stale restore of
    # result.json lost the report a twin paused at).
    summary = run_sweep(experiment, space, name="truth", storage=storage, quiet=True, callbacks=[restarts, tracking],
                        trainable=synthetic_trainable(SyntheticSettings(epoch_seconds=0.05 if paired else 0.0)))
    if paired:
        assert any(n > 1 for n in restarts.starts.values()), "no twin paused: the paired case shows nothing"
    assert 0 < summary.slot_utilization <= 1 and "slot utilisation" in summary.format()
    results = _ray_results(Path(summary.path))
    mlflow_reports = _mlflow_reports(default_tracking_uri(storage), "truth")
    study = _study(summary)
    assert len(study.trials) == 10 and len(mlflow_reports) == 10
    outcomes = {t.trial_id: t.outcome for t in summary.trials}
    assert "stopped early" in outcomes.values() and "completed" in outcomes.values()
    for trial in study.trials:
        reported = results[trial.user_attrs["ray_trial_id"]]
        # every report at step = epoch, the last one (ASHA's STOP, or the final epoch) included, in all three
        assert [r["epoch"] for r in reported] == list(range(reported[-1]["epoch"] + 1)), "Ray lost or repeated a report"
        assert trial.intermediate_values == {r["epoch"]: pytest.approx(r["val_acc"]) for r in reported}
        assert mlflow_reports[trial.user_attrs["ray_trial_id"]] == pytest.approx(trial.intermediate_values)
        last = reported[-1]
        assert max(trial.intermediate_values) == last["epoch"]
        expected = {"completed": optuna.trial.TrialState.COMPLETE, "stopped early": optuna.trial.TrialState.PRUNED}
        assert trial.state == expected[outcomes[trial.user_attrs["ray_trial_id"]]]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(last["val_acc"]) and last["epoch"] == 8
        else:
            assert last["epoch"] < 8


@pytest.mark.slow
def test_paired_sweep_stops_both_twins_of_a_pair_at_the_same_epoch(ray_session, tmp_path):
    summary = _sweep(tmp_path, "pairs", _experiment("search.sampler=random"), epoch_seconds=0.02)
    by_pair = {}
    for t in summary.trials:
        by_pair.setdefault(t.pair, {})[t.loss] = t.epoch
    assert len(by_pair) == 4 and all(set(p) == {"barlow", "hsic"} for p in by_pair.values())
    assert all(p["barlow"] == p["hsic"] for p in by_pair.values()), by_pair
    assert any(p["barlow"] < 8 for p in by_pair.values()), "ASHA stopped no pair: the test shows nothing"
    # Optuna agrees: both twins PRUNED at that epoch, or both COMPLETE
    states = {}
    for trial in _study(summary).trials:
        states.setdefault(trial.user_attrs["pair"], set()).add((trial.state, max(trial.intermediate_values)))
    assert all(len(s) == 1 for s in states.values()), states


@pytest.mark.slow
def test_diverged_trials_reach_optuna_as_finished_at_chance_level(ray_session, tmp_path):
    summary = _sweep(tmp_path, "nan", _experiment("search.paired=false", "search.num_samples=6", "scheduler.type=fifo",
                                                   "pretrain.epochs=3"), diverge_lr=1e-3)
    outcomes = {t.trial_id: t for t in summary.trials}
    diverged = [t for t in summary.trials if t.outcome == "diverged"]
    assert diverged and len(diverged) < 6
    for trial in _study(summary).trials:
        t = outcomes[trial.user_attrs["ray_trial_id"]]
        assert trial.user_attrs["outcome"] == t.outcome
        if t.outcome == "diverged":
            assert trial.params["lr"] > 1e-3
            assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == CHANCE
            assert trial.intermediate_values[1] == CHANCE
        else:
            assert trial.params["lr"] <= 1e-3
    text = summary.format()
    assert "diverged" in text.splitlines()[0]
    assert all(b.outcome != "diverged" for b in summary.best_per_loss().values())


@pytest.mark.slow
def test_a_resumed_errored_trial_tells_optuna_its_true_outcome(ray_session, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    experiment = _experiment("search.paired=false", "search.num_samples=3", "scheduler.type=fifo", "pretrain.epochs=3")
    summary = _sweep(tmp_path, "err", experiment, fail_flag=str(flag), fail_pair=1)
    assert sorted(t.outcome for t in summary.trials) == ["completed", "completed", "errored"]
    errored = next(t.trial_id for t in summary.trials if t.outcome == "errored")
    assert not any(b.trial_id == errored for b in summary.best_per_loss().values())
    flag.unlink()
    again = resume_sweep("err", str(tmp_path), trainable=synthetic_trainable(SyntheticSettings(fail_flag=str(flag), fail_pair=1)))
    assert sorted(t.outcome for t in again.trials) == ["completed"] * 3
    attempts = [t for t in _study(again).trials if t.user_attrs["ray_trial_id"] == errored]
    # the failed attempt stays FAIL; a fresh trial with the same parameters holds the rerun's true outcome
    assert [t.state for t in attempts] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert attempts[1].params == attempts[0].params and attempts[1].user_attrs["rerun_of"] == attempts[0].number
    assert set(attempts[1].intermediate_values) == {0, 1, 2, 3}
    assert attempts[1].user_attrs["outcome"] == "completed"


@pytest.mark.parametrize("overrides, message", [
    (("scheduler.grace_period=3", "pretrain.eval_every=2"), "3 is not a report epoch"),
    (("scheduler.reduction_factor=1.5", "scheduler.grace_period=2"), r"4\.5, 6\.75 are not report epochs"),
    (("search.max_concurrent=1",), "search.max_concurrent must be at least 2"),
])
def test_rungs_between_reports_and_unpairable_concurrency_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        _experiment(*overrides)


@pytest.mark.slow
def test_the_opening_line_says_where_asha_decides(ray_session, tmp_path, capsys):
    experiment = _experiment("search.num_samples=2", "pretrain.epochs=4")
    space = load_search_space(experiment.space_path())
    run_sweep(experiment, space, name="line", storage=str(tmp_path), trainable=synthetic_trainable())
    first = capsys.readouterr().out.splitlines()[0]
    assert "ASHA stops pairs below the top 1/2 at epochs 1, 2;" in first, first


def _stops(summary) -> dict[tuple, int]:
    """(pair, loss) → the epoch the trial ended at: comparable across runs (Ray's trial ids are random)."""
    return {(t.pair, t.loss): t.epoch for t in summary.trials}


def _unfinished_checkpoints(sweep_dir: Path) -> list[list[Path]]:
    """The full-state checkpoints of each trial Ray's saved experiment state does not record as ended."""
    try:
        statuses = saved_statuses(str(sweep_dir))
    except (OSError, ValueError, KeyError):   # not written yet, or being replaced
        return []
    return [sorted((sweep_dir / folder).glob("checkpoint_*/last.pt")) for folder, status in statuses.items()
            if status != "TERMINATED"]


@pytest.mark.slow
def test_a_killed_and_resumed_sweep_stops_the_same_trials_at_the_same_epochs(ray_session, tmp_path):
    """ASHA's rungs are part of the sweep's saved state: the driver is SIGKILLed mid-sweep, and the
    resumed sweep decides exactly as an uninterrupted one with the same seed."""
    from local_processes import kill_processes_mentioning
    from test_sweep import _private_ray_env

    overrides = ["search.sampler=random", "search.num_samples=10", "pretrain.epochs=8"]
    synthetic = {"epoch_seconds": 0.15}
    uninterrupted = _sweep(tmp_path / "a", "s", _experiment(*overrides), **synthetic)
    reference = _stops(uninterrupted)
    assert len(set(reference.values())) > 1, "every trial ended at the same epoch: nothing to compare"

    env, marker = _private_ray_env(tmp_path)
    # Ray saves the experiment's state every 0.5 s (its "auto" period can leave it behind a sweep this short until
    # the end), so the kill below falls while the saved state holds unfinished trials with their checkpoints.
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "0.5"
    # One trial of the last pair waits before its first epoch while `hold` exists, so the sweep cannot finish before the kill
    # however slow or fast this machine is; the flag is gone before the resume.
    hold = tmp_path / "hold"
    hold.touch()
    held = {**synthetic, "hold_flag": str(hold), "hold_pair": 4}
    script = ("import sys; from sslsearch.search.experiment import load_experiment; "
              "from sslsearch.search.space import load_search_space; "
              "from sslsearch.search.sweep import run_sweep; "
              "from sslsearch.search.synthetic import SyntheticSettings, synthetic_trainable; "
              f"e = load_experiment(None, {_overrides(overrides)!r}); "
              f"run_sweep(e, load_search_space(e.space_path()), name='s', storage={str(tmp_path / 'b')!r}, quiet=True, "
              f"trainable=synthetic_trainable(SyntheticSettings(**{held!r})))")
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_dir, deadline = tmp_path / "b" / "s", time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill once some trials ended and others run: genuinely mid-sweep
            time.sleep(0.5)
            assert driver.poll() is None, "the sweep finished before it could be killed"
            results = _ray_results(sweep_dir) if sweep_dir.exists() else {}
            if (len(results) >= 6 and sum(bool(rows) and rows[-1]["epoch"] >= 2 for rows in results.values()) >= 4
                    and any(_unfinished_checkpoints(sweep_dir))):   # Ray's saved state (it lags) has caught up too
                break
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        kill_processes_mentioning(marker)
        hold.unlink()
    # Checkpoint retention: every trial that Ray's saved state does not record as ended still holds its full training
    # state (the synthetic trial, like pretrain, refuses to resume from weights only); after the resume, none does.
    unfinished = _unfinished_checkpoints(sweep_dir)
    assert any(unfinished)
    assert all("optimizer" in torch.load(kept[-1], weights_only=True) for kept in unfinished if kept)
    resumed = resume_sweep("s", str(tmp_path / "b"), trainable=synthetic_trainable(SyntheticSettings(**synthetic)))
    assert _stops(resumed) == reference
    assert not any("optimizer" in torch.load(path, weights_only=True) for path in sweep_dir.glob("trial_*/checkpoint_*/last.pt"))
    outcomes = {(t.pair, t.loss): t.outcome for t in uninterrupted.trials}
    assert {(t.pair, t.loss): t.outcome for t in resumed.trials} == outcomes

