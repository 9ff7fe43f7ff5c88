"""A trial that trains nothing: a deterministic learning curve of the sampled configuration, reported and
checkpointed as `trainable.run_trial` does, so the real Tuner, searcher, scheduler, checkpoint retention and
MLflow callback run in seconds: the tests of the search's bookkeeping, and `sslsearch bench platform`.

- Reports: epoch 0, then every `eval_every` epochs and the last (train.pretrain's schedule): `epoch, loss,
  val_acc, knn_acc, images_per_s, trial_seconds, node_id`, and `test_acc` at the last (unless final_test is off).
- A checkpoint with every report: `last.pt` (the payload: a real torch file holding a full training state,
  `model`, `optimizer`, `rng`, so retention and MLflow's weights-only upload treat it as a trial's),
  `statistics.csv` (the reports so far) and `trial_seconds.txt`.
- Resumes from `tune.get_checkpoint()` after its last report; refuses a checkpoint that holds weights only
  (retention rewrote it), as train.pretrain refuses one.
- Settings (`SyntheticSettings`): seconds per epoch; an lr above which the loss diverges at epoch 1 (one last
  report at CHANCE val_acc, no checkpoint); a flag file that, while it exists, makes pair `fail_pair` raise.

The curve has a known optimum (lr near 1e-3, λ near 1/128, larger feature_dim slightly better, hsic a little
above barlow), rises with the epochs and carries seeded noise, so a searcher that learns finds it faster than
chance. This module imports Ray and the standard library only: every trial actor imports its trainable's
module when it starts, and torch costs each start about 5 s of CPU (6.9 s against 1.5 s on the 2-core sandbox,
docs/scale.md), which the benchmark, whose trials last seconds, would pay hundreds of times. The payload is
built once, on the driver (`synthetic_trainable`).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from sslsearch.search.trial_config import FINAL_TEST, PAIR, trial_value

CHANCE = 10.0  # val_acc (%) of a diverged trial: ten balanced classes


@dataclass(frozen=True)
class SyntheticSettings:
    epoch_seconds: float = 0.0        # sleep per epoch
    diverge_lr: float = math.inf      # a trial with a larger lr diverges at epoch 1
    fail_flag: str | None = None      # while this file exists, trials of pair `fail_pair` raise at their first epoch
    fail_pair: int = 0
    hold_flag: str | None = None      # while this file exists, the trial of pair `hold_pair` with loss `hold_loss`
    hold_pair: int = 0                # waits before its first epoch (after reporting epoch 0): a test can kill a sweep
    hold_loss: str = "barlow"         # that cannot have finished, while the other slots go on
    checkpoint_bytes: int = 1024      # size of the model weights in each report's last.pt


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


def synthetic_trial(config: dict, *, settings: SyntheticSettings, payload: bytes) -> None:
    """Ray Tune function trainable with the reporting contract of `trainable.run_trial`; pass it to a sweep as
    `synthetic_trainable(settings)`, which supplies the checkpoint payload."""
    epochs, eval_every = int(trial_value(config, "epochs")), int(trial_value(config, "eval_every"))
    started, seconds_before, rows = time.perf_counter(), 0.0, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        rows, seconds_before = _restore(checkpoint, payload)
    epoch = rows[-1]["epoch"] if rows else 0

    def report(metrics: dict, with_checkpoint: bool = True) -> None:
        metrics.update(trial_seconds=seconds_before + time.perf_counter() - started,
                       node_id=ray.get_runtime_context().get_node_id())
        if not with_checkpoint:
            tune.report(metrics)
            return
        rows.append({"epoch": metrics["epoch"], "val_acc": metrics["val_acc"]})
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "last.pt").write_bytes(payload)
            (Path(folder) / "statistics.csv").write_text(
                "epoch,val_acc\n" + "".join(f"{r['epoch']},{r['val_acc']!r}\n" for r in rows))
            (Path(folder) / "trial_seconds.txt").write_text(repr(metrics["trial_seconds"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def flagged(flag: str | None, pair: int) -> bool:
        """A test's flag file exists and names this trial's pair."""
        return bool(flag) and Path(flag).exists() and config.get(PAIR) == pair

    if checkpoint is None:
        acc = synthetic_val_acc(config, 0)
        report({"epoch": 0, "loss": None, "val_acc": acc, "knn_acc": acc, "images_per_s": None})
    while flagged(settings.hold_flag, settings.hold_pair) and trial_value(config, "loss", "barlow") == settings.hold_loss:
        time.sleep(0.05)
    while epoch < epochs:
        epoch += 1
        time.sleep(settings.epoch_seconds)
        if flagged(settings.fail_flag, settings.fail_pair):
            raise RuntimeError(f"injected failure in epoch {epoch} (while {settings.fail_flag} exists)")
        if float(trial_value(config, "lr", 1e-3)) > settings.diverge_lr:
            report({"epoch": epoch, "loss": float("nan"), "val_acc": CHANCE, "knn_acc": CHANCE, "diverged": True},
                   with_checkpoint=False)
            return
        if epoch % eval_every == 0 or epoch == epochs:
            acc = synthetic_val_acc(config, epoch)
            metrics = {"epoch": epoch, "loss": 1.0 / epoch, "val_acc": acc, "knn_acc": acc - 1.0, "images_per_s": 1000.0}
            if epoch == epochs and config.get(FINAL_TEST, True):
                metrics["test_acc"] = acc - 0.5
            report(metrics)


def _restore(checkpoint: tune.Checkpoint, payload: bytes) -> tuple[list[dict], float]:
    """(the reports so far, seconds trained so far) from a checkpoint this trial wrote; RuntimeError for one whose
    last.pt holds weights only."""
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        lines = (folder / "statistics.csv").read_text().split()[1:]
        rows = [{"epoch": int(e), "val_acc": float(v)} for e, v in (line.split(",") for line in lines)]
        seconds = folder / "trial_seconds.txt"
        last = (folder / "last.pt").read_bytes()
        if last == payload:   # what this trial writes: a full training state
            return rows, float(seconds.read_text())
        # Rewritten (weights only, by retention), or written by the synthetic trial of an older sslsearch, which
        # kept its seconds in last.pt: only then is torch imported.
        import io

        import torch

        state = torch.load(io.BytesIO(last), weights_only=True)
        if "optimizer" not in state:
            raise RuntimeError(f"{checkpoint.path}/last.pt holds weights only: it cannot be resumed")
        return rows, float(seconds.read_text()) if seconds.is_file() else float(state.get("trial_seconds", 0.0))


def checkpoint_payload(size: int) -> bytes:
    """A full training state of about `size` bytes of weights, as a torch file: incompressible bytes, like
    trained weights, with an optimiser state and an RNG state (what retention drops for weights only)."""
    import io

    import torch

    buffer = io.BytesIO()
    weights = torch.frombuffer(bytearray(random.Random(size).randbytes(max(1, size))), dtype=torch.uint8)
    torch.save({"model": {"weights": weights}, "optimizer": {"step": torch.zeros(1)}, "rng": torch.zeros(4)}, buffer)
    return buffer.getvalue()


def synthetic_trainable(settings: SyntheticSettings = SyntheticSettings()):
    """`synthetic_trial` with `settings` and its payload, for `run_sweep(trainable=...)` / `resume_sweep`."""
    return tune.with_parameters(synthetic_trial, settings=settings, payload=checkpoint_payload(settings.checkpoint_bytes))
