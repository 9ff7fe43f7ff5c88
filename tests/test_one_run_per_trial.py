"""One MLflow child run per Ray trial, whatever a stopped driver left: `sync` (and so `resume`, which ends with it)
removes the runs of trials Ray's saved state does not hold and merges a trial's second run into its first; the
leaderboard then counts every trial once. A real Tuner (synthetic trials), real MLflow (SQLite)."""

import pickle

import pytest
from mlflow import MlflowClient

from sslsearch.analysis.leaderboard import load_trials
from sslsearch.records.tracking import REMOVED, MlflowTracking, default_tracking_uri, ray_results, sync
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep
from sslsearch.search.synthetic import synthetic_trainable
from test_tracking import FakeTrial

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.type=fifo",
        "search.sampler=random"]


def _children(client: MlflowClient, name: str, deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    experiment_id = client.get_experiment_by_name("sslsearch").experiment_id
    return client.search_runs([experiment_id], f"tags.`sslsearch.sweep` = '{name}' and tags.`sslsearch.role` = 'trial'",
                              run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY)


@pytest.mark.slow
def test_sync_removes_orphans_and_merges_duplicates_so_the_leaderboard_counts_each_trial_once(ray_session, tmp_path):
    from ray import tune

    experiment = load_experiment(None, TINY)
    space = load_search_space(experiment.space_path())
    storage, name = str(tmp_path / "runs"), "once"
    tracking = MlflowTracking(experiment, space, sweep=name, storage=storage)
    summary = run_sweep(experiment, space, name=name, storage=storage, quiet=True,
                        trainable=synthetic_trainable(), callbacks=[tracking])
    trials = tune.ExperimentAnalysis(summary.path).trials
    ray_ids = sorted(t.trial_id for t in trials)
    uri = default_tracking_uri(storage)
    client = MlflowClient(uri)

    # An orphan: a trial that started after Ray's last save of the sweep's state, recorded by the live callback (as
    # restored from tuner.pkl) before the driver was SIGKILLed. Ray's saved state does not hold it: no resume runs it.
    late = pickle.loads(pickle.dumps(tracking))
    orphan = FakeTrial("0rphan01", tmp_path / "late", "barlow")
    late.on_trial_start(0, [], orphan)
    orphan.report(late, 0, 50.0), orphan.report(late, 1, 99.0)   # would top the leaderboard
    late.close(timeout_s=60)
    # A duplicate: a second run of a real trial (a create whose answer was lost, then sent again), finished.
    twin = trials[0]
    experiment_id = client.get_experiment_by_name("sslsearch").experiment_id
    duplicate = client.create_run(experiment_id, run_name=twin.trial_id, tags={
        "sslsearch.role": "trial", "sslsearch.sweep": name, "sslsearch.trial_id": twin.trial_id,
        "sslsearch.loss": twin.config["loss"], "sslsearch.outcome": "completed"}).info.run_id
    client.log_metric(duplicate, "val_acc", 98.0, step=1)
    client.log_metric(duplicate, "epoch", 1, step=1)
    client.set_terminated(duplicate, "FINISHED")
    before = load_trials(uri, [name])   # the leaderboard counts a trial's second run once; only Ray knows an orphan
    assert sorted(before["trial_id"]) == sorted([*ray_ids, orphan.trial_id])

    report = sync(name, storage, uri)
    assert (report.orphans, report.duplicates) == (1, 1), report.format()
    children = _children(client, name)
    assert sorted(r.data.tags["sslsearch.trial_id"] for r in children) == ray_ids   # exactly one run per Ray trial
    for run, trial in zip(sorted(children, key=lambda r: r.data.tags["sslsearch.trial_id"]),
                          sorted(trials, key=lambda t: t.trial_id)):
        assert run.info.status == "FINISHED" and run.data.tags["sslsearch.outcome"] == "completed"
        steps = ray_results(trial)
        for metric in ("epoch", "val_acc"):   # every step Ray recorded, once, with Ray's value
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == sorted(steps)
            assert {m.step: m.value for m in history} == {s: v[metric] for s, v in steps.items()}
    removed = _children(client, name, deleted=True)
    assert sorted(r.info.run_id for r in removed) == sorted([duplicate, late._runs[orphan.trial_id].run_id])
    assert all(r.data.tags[REMOVED] and r.info.status != "RUNNING" for r in removed)
    after = load_trials(uri, [name])
    assert sorted(after["trial_id"]) == ray_ids and 99.0 not in set(after["val_acc"])
    again = sync(name, storage, uri)   # nothing left to do
    assert (again.orphans, again.duplicates, again.runs_created, again.points_added, again.statuses_fixed) == (0,) * 5
