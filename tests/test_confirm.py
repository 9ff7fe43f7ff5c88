"""The confirmation stage: which configurations and seeds it plans, and a real one killed and continued."""

import dataclasses
import fnmatch
import json
import os
import signal
import subprocess
import time

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from local_processes import kill_processes_mentioning  # noqa: E402
from sslsearch.cli import main  # noqa: E402
from sslsearch.errors import InputError  # noqa: E402
from sslsearch.search.confirm import plan_confirmation  # noqa: E402
from sslsearch.search.folder import PLAN_FILE, SWEEP_FILE  # noqa: E402
from sslsearch.search.saved_state import STATE_PATTERNS  # noqa: E402
from sslsearch.search.sweeplock import unpickled_paths  # noqa: E402
from test_sweep import SSLSEARCH, _private_ray_env, _trial_epochs  # noqa: E402


def _row(trial_id, loss, val_acc, lmbda, seed):
    return {"trial_id": trial_id, "loss": loss, "params": {"loss": loss, "lmbda": lmbda, "lr": 1e-3, "feature_dim": 64},
            "seed": seed, "val_acc": val_acc, "epoch": 4, "trial_seconds": 1.0}


def _blocks(plan):
    """seed → the (loss, rank) runs of that seed."""
    ranks = {(c["loss"], json.dumps(c["params"], sort_keys=True)): c["rank"] for c in plan["configurations"]}
    blocks = {}
    for point in plan["points"]:
        params = {k: v for k, v in point.items() if k not in ("seed", "pair")}
        blocks.setdefault(point["seed"], set()).add((point["loss"], ranks[(point["loss"], json.dumps(params, sort_keys=True))]))
    return blocks


RANKING = [_row("h0", "hsic", 95.0, 0.01, 0), _row("b0", "barlow", 94.0, 0.01, 0), _row("b1", "barlow", 93.0, 0.1, 1),
           _row("h1", "hsic", 92.0, 0.1, 1), _row("b2", "barlow", 91.0, 0.3, 2), _row("h2", "hsic", 80.0, 0.3, 2)]


@pytest.mark.parametrize("design", ["shared", "per-loss"])
@pytest.mark.parametrize("top", [1, 2, 3])
def test_every_seed_is_one_block_run_by_every_configuration_of_both_losses(design, top):
    plan = plan_confirmation(RANKING, {0, 1, 2, 7}, top=top, seeds=6, design=design)
    assert plan["seeds"] == [8, 9, 10, 11, 12, 13] and plan["design"] == design  # above every seed the sweep used
    blocks = _blocks(plan)
    # n = 6 blocks whatever --top is: each block holds every rank of both losses once, and no two blocks share a seed.
    assert sorted(blocks) == plan["seeds"]
    for runs in blocks.values():
        assert runs == {(loss, k) for loss in ("barlow", "hsic") for k in range(1, top + 1)}
    assert len(plan["points"]) == 2 * top * 6


def test_shared_design_confirms_the_best_settings_with_both_losses():
    # Settings by the mean of their twins' val_acc: 0.01 → 94.5, 0.1 → 92.5, 0.3 → 85.5.
    plan = plan_confirmation(RANKING, {0, 1, 2}, top=2, seeds=6)
    assert plan["design"] == "shared"
    assert [(c["loss"], c["rank"], c["params"]["lmbda"], c["search_trial"]) for c in plan["configurations"]] == [
        ("barlow", 1, 0.01, "b0"), ("barlow", 2, 0.1, "b1"), ("hsic", 1, 0.01, "h0"), ("hsic", 2, 0.1, "h1")]
    # One loss's luck alone does not pick a setting: hsic's 95 at 0.01 is averaged with barlow's 94.
    lucky = [_row("h9", "hsic", 99.0, 0.5, 3), _row("b9", "barlow", 70.0, 0.5, 3), *RANKING]
    assert plan_confirmation(lucky, {0, 1, 2, 3}, top=1, seeds=6)["configurations"][0]["params"]["lmbda"] == 0.01


def test_per_loss_design_takes_each_losss_own_top_configurations():
    plan = plan_confirmation(RANKING, {0, 1, 2, 7}, top=2, seeds=3, design="per-loss")
    assert [(c["loss"], c["rank"], c["search_trial"]) for c in plan["configurations"]] == [
        ("barlow", 1, "b0"), ("barlow", 2, "b1"), ("hsic", 1, "h0"), ("hsic", 2, "h1")]
    with pytest.raises(InputError, match="nothing to confirm"):
        plan_confirmation([], {0}, top=2, seeds=3)
    with pytest.raises(InputError, match="unknown confirmation design 'both'"):
        plan_confirmation(RANKING, {0}, top=1, seeds=6, design="both")


@pytest.mark.slow
def test_confirm_killed_and_continued_records_every_trial_once(ray_session, tmp_path, capsys):
    """A real sweep, then `sslsearch confirm` SIGKILLed mid-stage (driver and its Ray processes) and run again:
    every planned confirm trial ends finished, in Ray and in MLflow, with one child run each."""
    from mlflow import MlflowClient

    from sslsearch.records.tracking import MlflowTracking
    from sslsearch.search.experiment import load_experiment
    from sslsearch.search.space import load_search_space
    from sslsearch.search.sweep import run_sweep

    storage = tmp_path / "runs"
    # 4 epochs: on a quiet machine a 2-epoch confirmation could finish between two polls.
    experiment = load_experiment(None, ["pretrain.epochs=4", "pretrain.eval_every=1", "search.num_samples=2",
                                        "scheduler.type=fifo"])
    space = load_search_space(experiment.space_path())
    tracking = MlflowTracking(experiment, space, sweep="tiny", storage=str(storage))
    run_sweep(experiment, space, name="tiny", storage=str(storage), callbacks=[tracking], quiet=True)

    env, marker = _private_ray_env(tmp_path)
    command = [*SSLSEARCH, "confirm", "tiny", "--storage", str(storage), "--top", "1", "--seeds", "1"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    stage = storage / "tiny" / "confirm"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # kill once a trial has trained (reported epoch 1) and not all are done
            time.sleep(0.2)
            if driver.poll() is not None:
                pytest.fail("confirm finished before it could be killed:\n" + driver.stdout.read())
            epochs = _trial_epochs(stage) if stage.exists() else {}
            if any(max(e, default=0) >= 1 for e in epochs.values()) and sum(max(e, default=0) == 4 for e in epochs.values()) < 2:
                break
        else:
            pytest.fail("no confirm trial reported within 300 s")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        kill_processes_mentioning(marker)
    killed_at = _trial_epochs(stage)
    try:
        again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        kill_processes_mentioning(marker)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "confirm tiny: 2 trials (2 completed)" in again.stdout, again.stdout
    assert "verdict (confirm stage): Too few non-zero differences" in again.stdout and "n = 1 seed," in again.stdout

    epochs = _trial_epochs(stage)
    assert len(epochs) == 2, epochs
    # Ray restores from every top-level .json and .pkl it wrote: each is one that the saved-state copy and the trust check know.
    for folder in (storage / "tiny", stage):
        ours = {SWEEP_FILE, PLAN_FILE, "tuner.pkl", "trainable.pkl"}
        written = [p.name for p in folder.iterdir() if p.suffix in (".json", ".pkl") and p.name not in ours]
        unknown = [n for n in written if not any(fnmatch.fnmatch(n, pattern) for pattern in STATE_PATTERNS)]
        assert written and not unknown, f"{folder}: Ray state files neither copied nor checked: {unknown}"
        assert {p.name for p in unpickled_paths(folder) if p.parent == folder} >= {*written, "tuner.pkl"}
    for folder in stage.glob("trial_*"):   # the sweep's loggers: result.json and progress.csv, no TensorBoard files
        assert (folder / "progress.csv").is_file() and not list(folder.glob("events.out.tfevents*")), sorted(folder.iterdir())
    for trial, seq in epochs.items():
        assert seq[-1] == 4 and seq.count(0) <= 1, f"{trial} restarted from scratch: {seq} (killed at {killed_at})"

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("sslsearch").experiment_id
    runs = client.search_runs([experiment_id], "tags.`sslsearch.sweep` = 'tiny'")
    parents = [r for r in runs if r.data.tags["sslsearch.role"] == "sweep"]
    confirm = [r for r in runs if r.data.tags.get("sslsearch.stage") == "confirm"]
    assert len(parents) == 1 and len(runs) == 1 + 2 + 2
    folders = sorted(p.name[len("trial_"):] for p in stage.glob("trial_*"))
    assert sorted(r.data.tags["sslsearch.trial_id"] for r in confirm) == folders
    plan = json.loads((stage / "confirm-plan.json").read_text())
    assert sorted((r.data.params["loss"], int(r.data.params["seed"])) for r in confirm) == sorted(
        (loss, seed) for loss in ("barlow", "hsic") for seed in plan["seeds"])
    for run in confirm:
        assert run.info.status == "FINISHED" and run.data.tags["sslsearch.outcome"] == "completed"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == sorted(set(steps)) == [0, 1, 2, 3, 4], steps  # no epoch logged twice
    verdict = client.get_run(parents[0].info.run_id).data
    assert verdict.metrics["verdict.n"] == 1 and verdict.tags["sslsearch.verdict"].startswith("Too few non-zero differences")

    # Refused before Ray starts: in this process.
    assert main(["confirm", "tiny", "--storage", str(storage), "--top", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was confirmed with --top 1 --seeds 1 --design shared and that stage has finished" in err


@pytest.mark.slow  # a subprocess: about 1.5 s under load
def test_a_stage_started_with_another_design_is_refused_at_once_naming_it(tmp_path):
    from test_sweep_names import refused, write_sweep_file

    write_sweep_file(tmp_path / "s", "s")
    plan = {"top": 1, "design": "shared", "seeds": list(range(5, 13)), "points": [{}] * 16, "configurations": []}
    (tmp_path / "s" / "confirm").mkdir()
    (tmp_path / "s" / "confirm" / "confirm-plan.json").write_text(json.dumps(plan))
    line = refused("confirm", "s", "--design", "per-loss", "--storage", tmp_path)
    assert line == ("the confirmation of sweep 's' was started with --top 1 --seeds 8 --design shared and has not "
                    f"finished; continue it with `sslsearch confirm s --storage {tmp_path} --top 1 --seeds 8 --design shared`")


def test_an_interrupted_stage_counts_the_trials_of_its_plan_it_had_not_started():
    """Found by review: a stage of 4 planned trials stopped while 2 ran said "2 trials (2 running) ... 2 unfinished"."""
    from sslsearch.search.confirm import format_stage, stage_unfinished
    from sslsearch.search.sweep import SweepSummary, TrialSummary

    running = [TrialSummary(trial_id=t, loss="barlow", params={}, epoch=1, val_acc=90.0, test_acc=None,
                            outcome="running", trial_seconds=1.0, checkpoint=None) for t in ("a", "b")]
    summary = SweepSummary(name="k1", path="/sweeps/k1/confirm", trials=running, wall_seconds=3.0, concurrency=2,
                           extra={"planned": 4})
    assert summary.unfinished == 2 and stage_unfinished(summary) == 4
    first, second = format_stage(summary, "sslsearch confirm k1 --seeds 2").splitlines()
    assert first == "confirm k1: 4 trials (2 running, 2 not started), wall 3s", first
    assert second == "4 unfinished; continue with: sslsearch confirm k1 --seeds 2", second
    done = SweepSummary(name="k1", path="/p", trials=[dataclasses.replace(t, outcome="completed") for t in running],
                        wall_seconds=3.0, concurrency=2, extra={"planned": 2})
    assert stage_unfinished(done) == 0 and format_stage(done) == "confirm k1: 2 trials (2 completed), wall 3s"
