"""A trial that trains nothing: a deterministic learning curve of the sampled configuration.

It reports and checkpoints exactly as `trainable.run_trial` does (`epoch`, `val_acc`, ... every
`eval_every` epochs; a checkpoint per report whose `last.pt` is a small full training state:
`model`, `optimizer`, `rng`; resume from `tune.get_checkpoint()`, refused from a weights-only
checkpoint as `train.pretrain` refuses it; a diverged trial's last report at chance level), so the
real Tuner, searcher, scheduler, checkpoint retention and MLflow callback can be exercised in
seconds: tests of the search's bookkeeping, and `sslsearch bench platform`.

The curve has a known optimum (lr near 1e-3, λ near 1/128, larger feature_dim slightly better,
hsic a little above barlow), rises with the epochs, and carries seeded noise, so a searcher that
learns finds it faster than chance. Settings travel in the trial config under "synthetic":
`epoch_seconds` (sleep per epoch), `diverge_lr` (lr above which the loss diverges at epoch 1),
`fail_flag` (a file: while it exists, trials of pair `fail_pair` raise at their first epoch).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from sslsearch.search.trial_config import trial_value

CHANCE = 10.0  # val_acc (%) of a diverged trial: ten balanced classes
WEIGHTS = 256  # values in the checkpoint's "model" (the optimiser state holds two per weight, as Adam's does)


def synthetic_val_acc(config: dict, epoch: int) -> float:
    """val_acc (%) after `epoch` epochs: a saturating curve whose ceiling depends on the configuration."""
    lr, lmbda = float(trial_value(config, "lr", 1e-3)), float(trial_value(config, "lmbda", 0.0078125))
    feature_dim = int(trial_value(config, "feature_dim", 128))
    loss, seed = trial_value(config, "loss", "barlow"), int(trial_value(config, "seed", 0))
    ceiling = (95.0 - 6.0 * math.log10(lr / 1e-3) ** 2 - 3.0 * math.log10(lmbda / 0.0078125) ** 2
               + 0.5 * math.log2(feature_dim / 128) + (0.5 if loss == "hsic" else 0.0))
    # Configurations that learn faster also end higher: an early rung ranks them roughly as the last epoch does.
    rate = 0.25 + 0.02 * max(0.0, ceiling - 60.0)
    noise = random.Random(f"{seed}-{epoch}-{loss}").gauss(0.0, 0.3)
    start = 60.0 + random.Random(seed).uniform(-2.0, 2.0)   # the random-initialisation score: depends on the seed only
    return max(0.0, min(100.0, start + (ceiling - start) * (1 - math.exp(-rate * epoch)) + (noise if epoch else 0.0)))


def synthetic_trial(config: dict) -> None:
    """Ray Tune function trainable with the reporting contract of `trainable.run_trial`."""
    settings = config.get("synthetic", {})
    base = config["base"]
    epochs, eval_every = int(base["epochs"]), int(base["eval_every"])
    started, epoch = time.perf_counter(), 0
    checkpoint = tune.get_checkpoint()
    seconds_before = 0.0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "last.pt", weights_only=True)
        if "optimizer" not in state:
            raise RuntimeError(f"{checkpoint.path}/last.pt holds weights only: it cannot be resumed")
        epoch, seconds_before = state["epoch"], state["trial_seconds"]

    def report(metrics: dict, with_checkpoint: bool = True) -> None:
        metrics["trial_seconds"] = seconds_before + time.perf_counter() - started
        if not with_checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            weights = torch.full((WEIGHTS,), float(metrics["epoch"]))
            torch.save({"model": {"weights": weights}, "optimizer": {"moments": torch.stack([weights, weights])},
                        "rng": torch.zeros(4), "epoch": metrics["epoch"], "trial_seconds": metrics["trial_seconds"],
                        "history": [{"epoch": metrics["epoch"], "val_acc": metrics["val_acc"]}]}, Path(folder) / "last.pt")
            (Path(folder) / "statistics.csv").write_text(f"epoch,val_acc\n{metrics['epoch']},{metrics['val_acc']}\n")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    if checkpoint is None:
        acc = synthetic_val_acc(config, 0)
        report({"epoch": 0, "loss": None, "val_acc": acc, "knn_acc": acc, "images_per_s": None})
    while epoch < epochs:
        epoch += 1
        time.sleep(float(settings.get("epoch_seconds", 0.0)))
        flag = settings.get("fail_flag")
        if flag and Path(flag).exists() and config.get("pair") == settings.get("fail_pair", 0):
            raise RuntimeError(f"injected failure in epoch {epoch} (while {flag} exists)")
        lr = float(trial_value(config, "lr", 1e-3))
        if lr > float(settings.get("diverge_lr", math.inf)):
            report({"epoch": epoch, "loss": float("nan"), "val_acc": CHANCE, "knn_acc": CHANCE, "diverged": True},
                   with_checkpoint=False)
            return
        if epoch % eval_every == 0 or epoch == epochs:
            acc = synthetic_val_acc(config, epoch)
            metrics = {"epoch": epoch, "loss": 1.0 / epoch, "val_acc": acc, "knn_acc": acc - 1.0, "images_per_s": 1000.0}
            if epoch == epochs:
                metrics["test_acc"] = acc - 0.5
            report(metrics)
