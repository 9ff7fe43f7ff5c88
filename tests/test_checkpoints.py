"""Checkpoints that fit a disk (issue 13, point 4): the full training state only where resuming
needs it, weights only everywhere else (best.pt, MLflow, a finished trial's last Ray checkpoint)."""

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sslsearch.errors import InputError
from sslsearch.method.data import load_dataset
from sslsearch.method.train import PretrainConfig, load_checkpoint, model_from_checkpoint, pretrain
from sslsearch.search.experiment import load_experiment, top_k
from sslsearch.search.outcomes import ranking_key

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.grace_period=1",
        "search.paired=false", "scheduler.type=fifo"]


@pytest.mark.slow
def test_best_pt_is_weights_only_and_refuses_to_resume(tmp_path):
    config = PretrainConfig(dataset="digits", epochs=1, eval_every=1, feature_dim=16, device="cpu")
    result = pretrain(config, out_dir=tmp_path, data=load_dataset("digits"), progress=False)
    last, best = (torch.load(tmp_path / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert {"optimizer", "rng"} <= set(last) and not last.get("weights_only")
    assert best["weights_only"] and not {"optimizer", "rng"} & set(best)
    assert {"model", "config", "history", "image_size", "preset", "classes", "epoch"} <= set(best)
    # Adam keeps two tensors per weight: the weights are about a third of the full state.
    assert (tmp_path / "best.pt").stat().st_size < 0.45 * (tmp_path / "last.pt").stat().st_size
    # What export and `linear` need is there: the model rebuilds, with the projector.
    model = model_from_checkpoint(load_checkpoint(tmp_path / "best.pt"))
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value.cpu()), key
    with pytest.raises(InputError, match="holds weights only .* cannot be resumed; resume from the run's last.pt"):
        pretrain(config, out_dir=tmp_path, progress=False, resume=tmp_path / "best.pt")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["best", "top_k:1"])
def test_a_real_sweep_keeps_what_its_policy_says_and_its_winner_exports(ray_session, tmp_path, policy):
    """Real trials: Ray's storage and MLflow keep what the policy says, and export finds the winner's weights
    (checkpoints/last.pt, or best.pt where only that is kept). The top-1 trial's full state resumes."""
    from sslsearch.analysis.export import export_best
    from sslsearch.records.tracking import MlflowTracking, default_tracking_uri
    from sslsearch.search.space import load_search_space
    from sslsearch.search.sweep import run_sweep

    experiment = load_experiment(None, [*TINY, f"tracking.checkpoints={policy}"])
    space = load_search_space(experiment.space_path())
    storage = str(tmp_path / "runs")
    tracking = MlflowTracking(experiment, space, sweep="ck", storage=storage)
    summary = run_sweep(experiment, space, name="ck", storage=storage, callbacks=[tracking])
    assert [t.outcome for t in summary.trials] == ["completed", "completed"]
    uri = default_tracking_uri(storage)
    assert_retained(summary, policy, MlflowClient(uri), tmp_path / "artifacts")
    card = export_best(uri, "ck", tmp_path / "export")
    assert card["checkpoint"]["artifact"] == ("checkpoints/best.pt" if policy == "best" else "checkpoints/last.pt")
    winner = min(summary.trials, key=lambda t: ranking_key(t.val_acc, t.epoch, t.trial_id))  # ties: as export ranks
    assert card["trial_id"] == winner.trial_id and (tmp_path / "export" / "backbone.pt").is_file()
    if policy == "top_k:1":  # its full state continues training: one more epoch from where it ended
        continued = pretrain(dataclasses.replace(PretrainConfig.from_dict(torch.load(
            Path(winner.checkpoint) / "last.pt", weights_only=True)["config"]), epochs=3),
            out_dir=tmp_path / "continued", resume=Path(winner.checkpoint) / "last.pt", progress=False)
        assert [row["epoch"] for row in continued.history][-1] == 3


# -- what a sweep keeps, per tracking.checkpoints: a real Tuner, synthetic trials, real MLflow (SQLite) ---------------

RETENTION = ["pretrain.epochs=3", "pretrain.eval_every=1", "search.num_samples=4", "search.paired=false",
             "scheduler.grace_period=1", "search.sampler=random"]
# (`all` is tested with test_tracking's sweep, which keeps every checkpoint: one sweep less here.)
MLFLOW_KEEPS = {"best_and_last": {"best.pt", "last.pt"}, "best": {"best.pt"}, "top_k:1": {"best.pt", "last.pt"},
                "none": set()}


def _state(path: Path) -> str:
    """'full' (optimiser state: resumable), 'weights' (weights only) or 'gone' for a checkpoint folder's last.pt."""
    if not (path / "last.pt").exists():
        return "gone"
    checkpoint = torch.load(path / "last.pt", weights_only=True)
    return "full" if "optimizer" in checkpoint else "weights"


def _files(folder: Path, pattern: str = "*") -> int:
    """Bytes of the regular files under `folder` matching -path `pattern`, summed by find(1) (du's apparent size)."""
    sizes = subprocess.run(["find", str(folder), "-type", "f", "-path", pattern, "-printf", "%s\\n"], check=True,
                           capture_output=True, text=True).stdout.split()
    return sum(map(int, sizes))


@pytest.fixture(scope="module")
def retention_sweeps(ray_session, tmp_path_factory):
    """One synthetic sweep per policy, each recorded in its own SQLite store."""
    from sslsearch.records.tracking import MlflowTracking
    from sslsearch.search.space import load_search_space
    from sslsearch.search.sweep import run_sweep
    from sslsearch.search.synthetic import synthetic_trainable

    sweeps = {}
    for policy in MLFLOW_KEEPS:
        storage = tmp_path_factory.mktemp(policy.replace(":", "-"))
        experiment = load_experiment(None, [*RETENTION, f"tracking.checkpoints={policy}"])
        space = load_search_space(experiment.space_path())
        tracking = MlflowTracking(experiment, space, sweep="keep", storage=str(storage))
        sweeps[policy] = (storage, run_sweep(experiment, space, name="keep", storage=str(storage), quiet=True,
                                             trainable=synthetic_trainable(),
                                             callbacks=[tracking]))
    return sweeps


def assert_retained(summary, policy: str, client: MlflowClient, tmp_path: Path) -> None:
    """Every trial of the ended sweep keeps, in Ray's storage and in MLflow, what `policy` says (retention.py)."""
    ranked = sorted((t for t in summary.trials if t.rankable), key=lambda t: ranking_key(t.val_acc, t.epoch, t.trial_id))
    top = {t.trial_id for t in ranked[:top_k(policy)]}
    runs = {r.data.tags["sslsearch.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("sslsearch").experiment_id],
        f"tags.`sslsearch.role` = 'trial' AND tags.`sslsearch.sweep` = '{summary.name}'")}
    for trial in summary.trials:
        folder = Path(summary.path) / f"trial_{trial.trial_id}"
        reported = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        kept = sorted(folder.glob("checkpoint_*"))  # checkpoint_00000k holds the trial's k-th report
        assert all((k / "statistics.csv").is_file() for k in kept)
        latest = kept[-1]
        trained = [k for k in kept if reported[int(k.name[-6:])]["epoch"] > 0]  # as MLflow's best.pt: after epoch 0,
        best = max(trained, key=lambda k: (reported[int(k.name[-6:])]["val_acc"], -int(k.name[-6:])))  # earlier on a tie
        expected = {"best_and_last": {latest: "weights", best: "weights"}, "best": {best: "weights"},
                    "top_k": {best: "weights", latest: "full" if trial.trial_id in top else "weights"},
                    "all": {k: "weights" for k in kept}, "none": {}}[policy.split(":")[0]]
        assert {k.name: _state(k) for k in kept} == {k.name: expected.get(k, "gone") for k in kept}, trial.trial_id
        # MLflow: weights only, what the policy names.
        artifacts = {Path(a.path).name for a in client.list_artifacts(runs[trial.trial_id].info.run_id, "checkpoints")}
        if policy == "all":  # every report's weights too
            assert {f"epoch_{r['epoch']}.pt" for r in reported} <= artifacts
            artifacts -= {f"epoch_{r['epoch']}.pt" for r in reported}
        assert artifacts == MLFLOW_KEEPS.get(policy, {"best.pt", "last.pt"})
        for name in artifacts:
            local = client.download_artifacts(runs[trial.trial_id].info.run_id, f"checkpoints/{name}", str(tmp_path))
            assert torch.load(local, weights_only=True)["weights_only"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", list(MLFLOW_KEEPS))
def test_each_policy_keeps_full_state_only_for_top_k_and_weights_as_it_says(retention_sweeps, policy, tmp_path):
    from sslsearch.records.tracking import default_tracking_uri

    storage, summary = retention_sweeps[policy]
    assert {t.outcome for t in summary.trials} <= {"completed", "stopped early"} and len(summary.trials) == 4
    assert_retained(summary, policy, MlflowClient(default_tracking_uri(str(storage))), tmp_path)
    states = [_state(k) for k in Path(summary.path).glob("trial_*/checkpoint_*")]
    # Not vacuous: some folder lost its weights (Ray's runner-up) except where every one is kept.
    assert states.count("full") == (1 if policy == "top_k:1" else 0) and ("gone" in states) == (policy != "all")


@pytest.mark.slow
def test_the_summary_names_the_disk_the_sweep_uses(retention_sweeps):
    from sslsearch.records.tracking import artifact_bytes, default_tracking_uri
    from sslsearch.search.retention import size_text

    storage, summary = retention_sweeps["best_and_last"]
    assert summary.disk.total == _files(Path(summary.path)) > 0
    assert summary.disk.checkpoints == _files(Path(summary.path), "*/trial_*/checkpoint_*/*") > 0
    mlflow = artifact_bytes(default_tracking_uri(str(storage)), "keep")
    assert mlflow == _files(storage / "mlartifacts") > 0   # the store holds this one sweep
    summary.mlflow_artifact_bytes = mlflow
    assert (f"disk: {size_text(summary.disk.total)} in {summary.path} (checkpoints {size_text(summary.disk.checkpoints)}), "
            f"MLflow artifacts {size_text(mlflow)}") in summary.format().splitlines()
    assert [size_text(n) for n in (999, 12_345, 12_345_678, 2_500_000_000)] == ["999 B", "12.3 kB", "12.3 MB", "2.5 GB"]


def test_checkpoints_in_trial_folders_no_trial_owns_are_rewritten_weights_only(tmp_path):
    # A driver killed between creating a trial and Ray's next save of the sweep's state leaves a trial folder
    # that the resumed sweep does not know (it creates a new trial instead): nothing resumes it.
    import types

    import pyarrow.fs

    from sslsearch.search.retention import LAST, settle_orphans

    full = {"backbone": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "rng": {"torch": torch.zeros(1)},
            "config": {"lr": 0.1}, "history": [0.5]}
    files = {name: tmp_path / name / LAST for name in
             ("trial_kept/checkpoint_000001", "trial_orphan/checkpoint_000000", "trial_orphan/checkpoint_000001",
              "elsewhere/checkpoint_000000", "trial_orphan/not_a_checkpoint")}
    for path in files.values():
        path.parent.mkdir(parents=True)
        torch.save(full, path)

    storage = types.SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(tmp_path),
                                    trial_fs_path=str(tmp_path / "trial_kept"))
    assert settle_orphans([types.SimpleNamespace(storage=storage)]) == 2

    loaded = {name: torch.load(path, weights_only=True) for name, path in files.items()}
    for name in ("trial_orphan/checkpoint_000000", "trial_orphan/checkpoint_000001"):
        assert loaded[name].keys() == {"backbone", "config", "history", "weights_only"}
        assert torch.equal(loaded[name]["backbone"]["w"], full["backbone"]["w"])
    for name in ("trial_kept/checkpoint_000001", "elsewhere/checkpoint_000000", "trial_orphan/not_a_checkpoint"):
        assert loaded[name].keys() == full.keys()  # owned, not a trial, not a checkpoint: untouched
    assert not list(tmp_path.rglob("*.tmp"))
    assert settle_orphans([types.SimpleNamespace(storage=storage)]) == 0  # again: nothing left to rewrite


def _registered(manager, folder: Path, epoch: int, val_acc: float):
    """Register one checkpoint folder with a real Ray checkpoint manager, as Ray does at a report."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"state")
    result = _TrainingResult(checkpoint=Checkpoint.from_directory(str(folder)),
                             metrics={"epoch": epoch, "val_acc": val_acc, "training_iteration": epoch + 1})
    manager.register_checkpoint(result)
    return result


def _trial(trial_id: str, manager):
    """What repair_restore_point reads of a Ray trial: its id and its checkpoint manager."""
    import types

    return types.SimpleNamespace(trial_id=trial_id, run_metadata=types.SimpleNamespace(checkpoint_manager=manager))


def test_a_restore_point_that_ray_deleted_after_its_last_save_falls_back_to_the_newest_kept(tmp_path):
    # Ray ranks kept checkpoints by val_acc: when epoch 2 beats epoch 1, and epoch 1 was the worst of three,
    # registering epoch 2 deletes epoch 1 at once, while Ray's saved state (a pickle taken before) names it latest.
    import pickle
    import shutil

    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    from sslsearch.search.retention import repair_restore_point

    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_acc",
                                                  checkpoint_score_order="max"))
    _registered(manager, tmp_path / "checkpoint_000000", 0, 92.0)
    _registered(manager, tmp_path / "checkpoint_000001", 1, 90.0)
    saved = pickle.dumps(manager)                                   # Ray saves the sweep's state here
    _registered(manager, tmp_path / "checkpoint_000002", 2, 93.0)   # ... and the driver is killed after this
    assert not (tmp_path / "checkpoint_000001").exists()            # Ray deleted it (the worst, not the latest)

    resumed = _trial("t0", pickle.loads(saved))
    assert resumed.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000001")
    line = repair_restore_point(resumed)
    assert line == ("trial t0: its saved checkpoint checkpoint_000001 is gone (Ray deleted it after its last save); "
                    "it resumes from checkpoint_000000 (epoch 0)")
    repaired = resumed.run_metadata.checkpoint_manager
    assert repaired.latest_checkpoint_result.checkpoint.path == str(tmp_path / "checkpoint_000000")
    assert [Path(r.checkpoint.path).name for r in repaired._checkpoint_results] == ["checkpoint_000000"]
    assert repair_restore_point(resumed) is None                     # nothing wrong any more

    # The live manager (no kill) is left alone; one with every kept checkpoint gone starts again from epoch 0.
    assert repair_restore_point(_trial("t1", manager)) is None
    shutil.rmtree(tmp_path / "checkpoint_000000")
    again = _trial("t2", pickle.loads(saved))
    assert repair_restore_point(again).endswith("it starts again from epoch 0")
    assert again.run_metadata.checkpoint_manager.latest_checkpoint_result is None


@pytest.mark.slow
def test_a_trial_resumed_from_a_saved_state_whose_checkpoint_ray_deleted_finishes(ray_session, tmp_path, caplog):
    # A real Tuner with the sweep's checkpoint settings. Restoring the state saved before the last report over the
    # sweep's folder is what a driver SIGKILLed after that report leaves: a state naming a checkpoint Ray deleted.
    # Without the repair, Ray's restore fails on every retry and the trial ends ERROR (CI, test_confirm, 2026-12-06).
    import shutil

    from ray import tune

    from sslsearch.search.retention import CheckpointRetention

    def _three_reports(config):
        """Reports epoch 0, 1 (val_acc 92, 90, each with a checkpoint); in its first run it then waits until Ray's saved
        state names epoch 1's checkpoint as the latest and copies that state aside (what a driver killed after the next
        report leaves behind), then reports epoch 2 (val_acc 93)."""
        import glob
        import shutil
        import tempfile

        from ray import tune

        values = {0: 92.0, 1: 90.0, 2: 93.0}
        restored = tune.get_checkpoint()
        start = 0
        if restored is not None:
            with restored.as_directory() as folder:
                start = int((Path(folder) / "epoch.txt").read_text()) + 1
        for epoch in range(start, 3):
            if epoch == 2 and restored is None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:   # (a copy taken while Ray rewrites a file is taken again)
                    shutil.rmtree(config["saved"], ignore_errors=True)
                    shutil.copytree(config["sweep"], config["saved"], ignore=shutil.ignore_patterns("trial_*"))
                    states = sorted(glob.glob(f"{config['saved']}/experiment_state-*.json"))
                    # Ray's state holds the trial's checkpoint manager pickled, as hex: it names the folder to restore.
                    if states and b"checkpoint_000001".hex() in Path(states[-1]).read_text():
                        break
                    time.sleep(0.1)
                else:
                    raise RuntimeError("Ray never saved a state naming checkpoint_000001")
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "epoch.txt").write_text(str(epoch))
                tune.report({"epoch": epoch, "val_acc": values[epoch]}, checkpoint=tune.Checkpoint.from_directory(folder))

    storage, saved = tmp_path / "runs", tmp_path / "saved"

    run_config = tune.RunConfig(name="s", storage_path=str(storage), verbose=0,
                                callbacks=[CheckpointRetention("best_and_last")],
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_acc",
                                                                        checkpoint_score_order="max"),
                                failure_config=tune.FailureConfig(max_failures=1))
    config = {"sweep": str(storage / "s"), "saved": str(saved)}
    tune.Tuner(_three_reports, param_space=config, run_config=run_config).fit()
    trial_dir = next(p for p in (storage / "s").iterdir() if (p / "result.json").exists())
    assert not (trial_dir / "checkpoint_000001").exists() and (trial_dir / "checkpoint_000000").exists()

    for item in (storage / "s").iterdir():           # the sweep's state rolls back to the copy; trial folders stay
        if item.is_file():
            item.unlink()
    for item in saved.iterdir():
        if item.is_file():
            shutil.copy2(item, storage / "s" / item.name)
    with caplog.at_level("WARNING", logger="sslsearch.search.retention"):
        results = tune.Tuner.restore(str(storage / "s"), trainable=_three_reports).fit()
    assert [r.error for r in results] == [None]
    assert results[0].metrics["epoch"] == 2 and results[0].metrics["val_acc"] == 93.0
    assert any("its saved checkpoint checkpoint_000001 is gone" in m and "resumes from checkpoint_000000 (epoch 0)" in m
               for m in caplog.messages)
