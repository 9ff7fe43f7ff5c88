"""The official Barlow Twins recipe as a configuration (issue 13, point 2), checked against an
independent transcription of facebookresearch/barlowtwins main.py: its parameter groups, LARS
with its two filters, its learning-rate schedule, its projector and BatchNorm on z, its loss."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sslsearch.cli import main
from sslsearch.method.losses import barlow_twins_loss
from sslsearch.method.optim import lr_factor
from sslsearch.method.train import PretrainConfig, build_model, prepare_training, pretrain
from sslsearch.search.experiment import load_experiment

sys.path.insert(0, str(Path(__file__).parent))
from fake_datasets import write_cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / "experiments" / "cifar10_official_barlow.yaml"


# --- The official code's rules, transcribed -----------------------------------------------------

def official_groups(model):
    weights = [p for p in model.parameters() if p.ndim != 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    return [{"params": weights}, {"params": biases}]


def official_lr(step, steps_per_epoch, epochs, batch_size, lr_weights=0.2, lr_biases=0.0048):
    max_steps, warmup_steps = epochs * steps_per_epoch, 10 * steps_per_epoch
    base = batch_size / 256
    if step < warmup_steps:
        lr = base * step / warmup_steps
    else:
        q = 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (max_steps - warmup_steps)))
        lr = base * q + base * 0.001 * (1 - q)
    return lr * lr_weights, lr * lr_biases


@torch.no_grad()
def official_lars_step(groups, state, lrs, weight_decay=1.5e-6, momentum=0.9, eta=0.001):
    for group, lr in zip(groups, lrs):
        for p in group["params"]:
            dp = p.grad
            if p.ndim != 1:                      # weight_decay_filter = lars_adaptation_filter = (ndim == 1)
                dp = dp.add(p, alpha=weight_decay)
                pn, un = torch.norm(p), torch.norm(dp)
                q = eta * pn / un if (pn > 0 and un > 0) else torch.tensor(1.0)
                dp = dp.mul(q)
            mu = state.setdefault(p, torch.zeros_like(p))
            mu.mul_(momentum).add_(dp)
            p.add_(mu, alpha=-lr)


def official_loss(z1, z2, lambd=0.0051):
    bn = nn.BatchNorm1d(z1.shape[1], affine=False)
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag


# --- Checks ------------------------------------------------------------------------------------

def official_config(**overrides) -> PretrainConfig:
    """The experiment file's pretraining settings on a small backbone and projector (the rules do not depend on size)."""
    config = load_experiment(OFFICIAL).pretrain
    return dataclasses.replace(config, **{"backbone": "resnet18", "projector_hidden": (64, 64), "feature_dim": 64,
                                          "device": "cpu", **overrides})


def test_the_experiment_file_sets_every_part_of_the_recipe_and_the_twin_differs_only_in_the_loss():
    c = load_experiment(OFFICIAL).pretrain
    assert (c.backbone, c.zero_init_residual, c.projector_hidden, c.feature_dim) == ("resnet50", True, (8192, 8192), 8192)
    assert (c.projector_last_bias, c.normalize_projection, c.normalization) == (False, False, "batchnorm")
    assert (c.loss, c.lmbda, c.optimizer, c.momentum) == ("barlow", 0.0051, "lars", 0.9)
    assert (c.lr, c.lr_biases, c.lr_per_256, c.weight_decay) == (0.2, 0.0048, True, 1.5e-6)
    assert (c.weight_decay_filter, c.lars_adaptation_filter, c.schedule, c.warmup_epochs) == (True, True, "cosine", 10)
    assert not c.joint_views  # the official code runs the two views in separate passes
    twin = load_experiment(ROOT / "experiments" / "cifar10_official_hsic.yaml").pretrain
    assert dataclasses.replace(twin, loss="barlow") == c and twin.loss == "hsic"


def test_parameter_groups_rates_and_exclusions_follow_the_official_rules():
    config = official_config(batch_size=512)
    model, optimizer = prepare_training(config, 32, torch.device("cpu"))
    expected = official_groups(model)
    assert len(optimizer.param_groups) == 2
    for ours, theirs in zip(optimizer.param_groups, expected):
        assert [id(p) for p in ours["params"]] == [id(p) for p in theirs["params"]]
    weights, biases = optimizer.param_groups
    assert weights["base_lr"] == pytest.approx(0.2 * 512 / 256) and biases["base_lr"] == pytest.approx(0.0048 * 512 / 256)
    assert (weights["weight_decay"], biases["weight_decay"]) == (1.5e-6, 0.0)
    assert (weights["lars_adaptation"], biases["lars_adaptation"]) == (True, False)
    # Every bias and BatchNorm parameter is in the second group, and no projector bias on the last layer.
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith((".bias", ".weight")) and p.ndim == 1 for p in biases["params"])
    assert model.projector[-1].bias is None and not model.normalize_projection


def test_learning_rates_follow_the_official_schedule_at_every_step():
    steps_per_epoch, epochs, batch_size = 3, 30, 512
    config = official_config(batch_size=batch_size, epochs=epochs)
    lr_w, lr_b = config.learning_rates()
    for step in range(steps_per_epoch * epochs):
        factor = lr_factor(step, steps_per_epoch * epochs, steps_per_epoch * config.warmup_epochs, config.schedule)
        theirs = official_lr(step, steps_per_epoch, epochs, batch_size)
        assert (lr_w * factor, lr_b * factor) == pytest.approx(theirs, rel=1e-12, abs=1e-15), step


@pytest.mark.slow
def test_lars_steps_equal_the_official_lars_with_its_filters():
    config = official_config(batch_size=256, epochs=20)
    model, optimizer = prepare_training(config, 32, torch.device("cpu"))
    twin = build_model(config, 32)
    twin.load_state_dict(model.state_dict())
    groups, state = official_groups(twin), {}
    generator = torch.Generator().manual_seed(0)
    total, warmup = 20 * 3, 10 * 3
    for step in (0, 1, 35, 36):
        for ours, theirs in zip(model.parameters(), twin.parameters()):
            grad = torch.randn(ours.shape, generator=generator)
            ours.grad, theirs.grad = grad.clone().contiguous(memory_format=torch.preserve_format), grad.clone()
        factor = lr_factor(step, total, warmup, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        optimizer.step()
        official_lars_step(groups, state, official_lr(step, 3, 20, 256))
    for (name, ours), theirs in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)


def test_model_and_loss_equal_the_official_forward():
    config = official_config()
    model = build_model(config, 32).train()
    for block in model.backbone.modules():  # zero_init_residual: each residual branch's last BN starts at 0
        if hasattr(block, "bn2") and not hasattr(block, "bn3"):
            assert torch.count_nonzero(block.bn2.weight) == 0
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    _, z1 = model(x1)
    _, z2 = model(x2)
    torch.testing.assert_close(z1, model.projector(model.backbone(x1)))   # no L2 normalisation
    torch.testing.assert_close(barlow_twins_loss(z1, z2, config.lmbda, config.normalization), official_loss(z1, z2))


def test_the_readme_command_line_is_the_experiment_file(monkeypatch, tmp_path):
    import sslsearch.method.train as train

    seen = {}
    monkeypatch.setattr(train, "pretrain", lambda config, **kw: (seen.setdefault("config", config), sys.exit(0)))
    readme = (ROOT / "README.md").read_text()
    line = next(row for row in readme.splitlines() if row.startswith("sslsearch pretrain") and "--lars-adaptation-filter" in row)
    write_cifar10(tmp_path)   # on disk: else `pretrain` downloads it first (before --out exists)
    with pytest.raises(SystemExit):
        main(line.split()[1:] + ["--data-dir", str(tmp_path)])
    from_file = load_experiment(OFFICIAL).pretrain
    keep = {"data_dir", "eval_every", "epochs"}
    differing = [f.name for f in dataclasses.fields(from_file)
                 if f.name not in keep and getattr(seen["config"], f.name) != getattr(from_file, f.name)]
    assert differing == []


@pytest.mark.slow
def test_the_official_experiment_file_runs_one_epoch_on_fake_cifar(tmp_path):
    # The file as shipped (ResNet-50, 8192-wide projector, LARS, ...) with only data and run-length
    # settings overridden: one step of 10 images keeps a CPU run of ResNet-50 under a minute.
    data = tmp_path / "data"
    write_cifar10(data, n_train=20, n_test=10)
    experiment = load_experiment(OFFICIAL, [f"pretrain.data_dir={data}", "pretrain.val_fraction=0.5", "pretrain.epochs=1",
                                            "pretrain.batch_size=10", "pretrain.device=cpu", "scheduler.grace_period=1"])
    result = pretrain(experiment.pretrain, progress=False)  # no out_dir: checkpoints of ~1.4 GB would dominate
    row = result.history[-1]
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and row["val_acc"] is not None
    assert row["lr"] == official_lr(0, 1, 1, 10)[0] == 0.0   # the warm-up starts from 0, as the official code's
    assert result.model.projector[-1].out_features == 8192 and result.model.projector[-1].bias is None
