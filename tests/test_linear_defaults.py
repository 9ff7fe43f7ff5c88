"""`sslsearch linear`: the reference's protocol for the reference's data sets, per-data-set defaults elsewhere
(issue 13, point 5)."""

import pytest

import sslsearch.method.linear as linear_module
from sslsearch.cli import main
from sslsearch.method.evaluate import REFERENCE_LINEAR, linear_defaults


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "stl10", "tiny_imagenet"])
def test_reference_data_sets_keep_the_reference_protocol(dataset):
    assert linear_defaults(dataset, 50_000) == {"epochs": 200, "batch_size": 512, "lr": 1e-3, "weight_decay": 1e-6}


def test_small_data_sets_get_enough_steps_per_epoch():
    digits = linear_defaults("digits", 1438)
    assert 1438 // digits["batch_size"] >= 20 and digits["lr"] > REFERENCE_LINEAR["lr"]
    assert linear_defaults("folder", 100_000)["batch_size"] == 512
    assert linear_defaults("folder", 3_000)["batch_size"] == 128     # 23 steps per epoch
    assert linear_defaults("folder", 100)["batch_size"] == 16        # the floor


@pytest.mark.slow
def test_cli_uses_the_data_sets_defaults_and_flags_win(tmp_path, capsys, monkeypatch):
    assert main(["pretrain", "--dataset", "digits", "--epochs", "1", "--eval-every", "1", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    seen = []

    def fake(backbone, data, *, on_epoch, **settings):
        seen.append(settings)
        on_epoch({"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "test_acc": 50.0})
        return {"test_acc": 50.0}

    monkeypatch.setattr(linear_module, "linear_evaluation", fake)
    assert main(["linear", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["linear", "--checkpoint", str(tmp_path / "run"), "--lr", "0.5", "--out", str(tmp_path / "b.csv")]) == 0
    digits = linear_defaults("digits", 0)
    assert seen[0] == {**digits, "seed": 0} and seen[1] == {**digits, "lr": 0.5, "seed": 0}
    assert "linear evaluation on digits: epochs 100, batch_size 64, lr 0.03" in capsys.readouterr().err
