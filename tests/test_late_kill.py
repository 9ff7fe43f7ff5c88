"""A late SIGKILL of the driver: a paired ASHA sweep of 8 synthetic trials runs in its own process and is SIGKILLed (with
its Ray) once the MLflow store shows a finished trial; `resume`, then `sync`, leave exactly one child run per Ray trial,
with Ray's outcome, and the twins of every pair with the same budget. (tests/test_one_run_per_trial.py writes the
orphan and the duplicate by hand; here they come from a real kill, whenever it falls.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from local_processes import kill_processes_mentioning
from sslsearch.records.tracking import default_tracking_uri, sync
from sslsearch.search.outcomes import result_outcome
from sslsearch.search.sweep import resume_sweep
from sslsearch.search.synthetic import SyntheticSettings, synthetic_trainable
from sslsearch.search.trial_config import PAIR, trial_value
from test_sweep import _private_ray_env

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["pretrain.epochs=4", "pretrain.eval_every=1", "search.num_samples=8", "search.sampler=random",
            "scheduler.type=asha", "scheduler.grace_period=1", "scheduler.reduction_factor=2", "search.paired=true"]
EPOCH_SECONDS = 0.3   # a trial lasts about a second or two: the kill falls while others run or wait
DRIVER = f"""
import sys
from sslsearch.records.tracking import MlflowTracking
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.synthetic import SyntheticSettings, synthetic_trainable
from sslsearch.search.sweep import run_sweep

experiment = load_experiment(None, {SETTINGS!r})
space = load_search_space(experiment.space_path())
storage = sys.argv[1]
run_sweep(experiment, space, name="late", storage=storage, quiet=True,
          trainable=synthetic_trainable(SyntheticSettings(epoch_seconds={EPOCH_SECONDS})),
          callbacks=[MlflowTracking(experiment, space, sweep="late", storage=storage)])
"""
FINISHED_TRIAL_RUNS = """
SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'sslsearch.role' AND t.value = 'trial'
WHERE r.status = 'FINISHED'
"""


def _finished_trial_runs(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=0.5) as connection:
            return connection.execute(FINISHED_TRIAL_RUNS).fetchone()[0]
    except sqlite3.Error:   # (the store is being created, or locked by the driver for a moment)
        return 0


@pytest.mark.slow
def test_a_driver_killed_late_leaves_one_run_per_trial_and_twins_with_equal_budgets(ray_session, tmp_path):
    storage = tmp_path / "runs"
    env, marker = _private_ray_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(storage)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while _finished_trial_runs(storage / "mlflow.db") < 1:
            if driver.poll() is not None:
                pytest.fail("the sweep ended before it could be killed:\n" + driver.stdout.read()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no trial finished within 180 s")
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)   # the driver, late: Ray's saved state may lag what MLflow holds
        driver.wait()
    finally:
        kill_processes_mentioning(marker)   # its Ray

    name = "late"
    summary = resume_sweep(name, str(storage), trainable=synthetic_trainable(SyntheticSettings(epoch_seconds=0.0)))
    assert len(summary.trials) == 8 and not summary.unfinished, summary.format()
    report = sync(name, str(storage))
    assert not report.unsent, report.format()

    trials = tune.ExperimentAnalysis(str(storage / name)).trials
    assert len(trials) == 8 and all(t.status == "TERMINATED" for t in trials)
    client = MlflowClient(default_tracking_uri(str(storage)))
    experiment_id = client.get_experiment_by_name("sslsearch").experiment_id
    runs = client.search_runs([experiment_id], f"tags.`sslsearch.sweep` = '{name}' and tags.`sslsearch.role` = 'trial'")
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["sslsearch.trial_id"], []).append(run)
    assert sorted(by_trial) == sorted(t.trial_id for t in trials)   # no orphan: a run per Ray trial ...
    assert all(len(r) == 1 for r in by_trial.values())              # ... and one only
    for trial in trials:
        (run,) = by_trial[trial.trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["sslsearch.outcome"] == result_outcome(trial.last_result, 4), trial.trial_id
        assert run.data.metrics["epoch"] == trial.last_result["epoch"]
    budgets = {}
    for trial in trials:   # the twins of a pair end at the same epoch: ASHA judges (and stops) a pair as one
        budgets.setdefault(trial.config[PAIR], {})[trial_value(trial.config, "loss")] = trial.last_result["epoch"]
    assert len(budgets) == 4 and all(len(b) == 2 and len(set(b.values())) == 1 for b in budgets.values()), budgets
