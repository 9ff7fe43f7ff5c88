"""Checkpoints that fit a disk (issue 13, point 4): the full training state only where resuming
needs it, weights only everywhere else (best.pt, MLflow, a finished trial's last Ray checkpoint)."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sslsearch.config import load_experiment
from sslsearch.data import load_dataset
from sslsearch.errors import InputError
from sslsearch.train import PretrainConfig, load_checkpoint, model_from_checkpoint, pretrain

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.grace_period=1",
        "search.paired=false", "scheduler.type=fifo"]


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
def test_sweep_keeps_weights_only_in_mlflow_and_in_finished_trials(ray_session, tmp_path):
    policy, expected = "best", {"checkpoints/best.pt"}  # ("none" was checked to keep nothing; one sweep keeps CI short)
    from sslsearch.search import run_sweep
    from sslsearch.space import load_search_space
    from sslsearch.tracking import MlflowTracking, default_tracking_uri

    experiment = load_experiment(None, [*TINY, f"tracking.checkpoints={policy}"])
    space = load_search_space(experiment.space_path())
    storage = str(tmp_path / "runs")
    tracking = MlflowTracking(experiment, space, sweep="ck", storage=storage)
    summary = run_sweep(experiment, space, name="ck", storage=storage, callbacks=[tracking])
    assert [t.outcome for t in summary.trials] == ["completed", "completed"]
    client = MlflowClient(default_tracking_uri(storage))
    runs = client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id],
                              "tags.`sslsearch.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        kept = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert kept == expected
        for path in kept:
            checkpoint = torch.load(client.download_artifacts(run.info.run_id, path, str(tmp_path / run.info.run_id)),
                                    weights_only=True)
            assert checkpoint["weights_only"] and "optimizer" not in checkpoint
    # Ray's checkpoint of a completed trial's final report is weights only too: it never resumes.
    for trial in summary.trials:
        final = torch.load(Path(trial.checkpoint) / "last.pt", weights_only=True)
        assert final["epoch"] == 2 and final["weights_only"] and (Path(trial.checkpoint) / "complete").exists()
