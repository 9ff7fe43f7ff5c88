"""The pretraining loop end to end on the CPU: learning, resuming, checkpoints, divergence."""

import csv

import pytest
import torch

import sslsearch.method.train as train_module
from sslsearch.errors import InputError
from sslsearch.method.data import load_dataset
from sslsearch.method.train import PretrainConfig, TrainingDiverged, load_checkpoint, model_from_checkpoint, pretrain


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(**overrides):
    values = dict(dataset="digits", epochs=2, eval_every=1, batch_size=128, feature_dim=32, seed=3, device="cpu")
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, digits):
    straight = pretrain(tiny(epochs=4, eval_every=2), out_dir=tmp_path / "a", data=digits, progress=False)
    pretrain(tiny(epochs=2, eval_every=2), out_dir=tmp_path / "b", data=digits, progress=False)
    resumed = pretrain(tiny(epochs=4, eval_every=2), out_dir=tmp_path / "b", data=digits, progress=False,
                       resume=tmp_path / "b" / "last.pt")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert straight.history[-1]["val_acc"] == resumed.history[-1]["val_acc"]


@pytest.mark.slow
def test_checkpoint_is_weights_only_and_rebuilds_the_model(tmp_path, digits):
    result = pretrain(tiny(epochs=1), out_dir=tmp_path, data=digits, progress=False)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "epoch", "step", "config", "history"} <= set(raw)
    assert raw["epoch"] == 1 and raw["config"]["loss"] == "barlow"
    model = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    x = torch.rand(4, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1], result.model(x)[1])
    rows = list(csv.DictReader(open(tmp_path / "statistics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["images_per_s"]) > 0 and rows[0]["train_loss"] == ""
    assert (tmp_path / "best.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path, digits):
    pretrain(tiny(epochs=1), out_dir=tmp_path, data=digits, progress=False)
    with pytest.raises(InputError, match="different settings: lmbda"):
        pretrain(tiny(epochs=2, lmbda=0.5), out_dir=tmp_path, data=digits, progress=False, resume=tmp_path / "last.pt")


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_with_a_clear_message(monkeypatch, digits):
    monkeypatch.setattr(train_module, "ssl_loss", lambda name, z1, z2, lmbda, norm: (z1.sum() + z2.sum()) * float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1"):
        pretrain(tiny(epochs=1), data=digits, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,schedule", [("sgd", "cosine"), ("lars", "cosine"), ("adam", "constant")])
def test_every_optimizer_trains_and_hsic_too(optimizer, schedule, digits):
    config = tiny(epochs=2, optimizer=optimizer, schedule=schedule, warmup_epochs=1, loss="hsic",
                  lr=0.05 if optimizer != "adam" else 1e-3)
    result = pretrain(config, data=digits, progress=False)
    losses = [r["train_loss"] for r in result.history[1:]]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("bad,match", [
    (dict(lmbda=-1.0), "lmbda must be"), (dict(feature_dim=0), "feature_dim must be"),
    (dict(batch_size=1), "batch_size must be ≥ 2"), (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(backbone="vgg"), "unknown backbone 'vgg'"), (dict(loss="simclr"), "unknown loss"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        pretrain(tiny(**bad), out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_batch_larger_than_the_data_set_is_refused(tmp_path, digits):
    with pytest.raises(InputError, match="exceeds the .* pretraining images"):
        pretrain(tiny(batch_size=5000), out_dir=tmp_path / "out", data=digits, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_extends_a_constant_schedule_but_refuses_to_stretch_a_cosine(tmp_path, digits):
    # Constant: the extension is exactly the longer run (the first test resumes 2 → 4 epochs too).
    pretrain(tiny(epochs=1, eval_every=1), out_dir=tmp_path / "c", data=digits, progress=False)
    extended = pretrain(tiny(epochs=2), out_dir=tmp_path / "c", data=digits, progress=False, resume=tmp_path / "c" / "last.pt")
    assert [r["epoch"] for r in extended.history] == [0, 1, 2]
    # Cosine: the learning rates already used depend on epochs; a longer schedule would raise them again.
    cosine = dict(optimizer="sgd", lr=0.05, schedule="cosine")
    pretrain(tiny(epochs=2, **cosine), out_dir=tmp_path / "k", data=digits, progress=False)
    with pytest.raises(InputError, match="cosine schedule over 2 epochs; resume it with epochs=2"):
        pretrain(tiny(epochs=4, **cosine), out_dir=tmp_path / "k", data=digits, progress=False, resume=tmp_path / "k" / "last.pt")
    with pytest.raises(InputError, match="at epoch 2, past the requested epochs=1"):
        pretrain(tiny(epochs=1, **cosine), out_dir=tmp_path / "k", data=digits, progress=False, resume=tmp_path / "k" / "last.pt")
    # The same epochs resumes (nothing left to run: the history is the checkpoint's).
    again = pretrain(tiny(epochs=2, **cosine), out_dir=tmp_path / "k", data=digits, progress=False,
                     resume=tmp_path / "k" / "last.pt")
    assert [r["epoch"] for r in again.history] == [0, 1, 2]


@pytest.mark.slow
def test_learning_rate_in_statistics_follows_warmup_and_cosine(tmp_path, digits):
    result = pretrain(tiny(epochs=3, optimizer="sgd", lr=0.1, schedule="cosine", warmup_epochs=1), data=digits, progress=False)
    steps = (digits.pretrain_images.shape[0]) // 128
    from sslsearch.method.optim import lr_factor
    expected = [0.1 * lr_factor(e * steps - 1, 3 * steps, steps, "cosine") for e in (1, 2, 3)]
    assert [r["lr"] for r in result.history[1:]] == pytest.approx(expected)
