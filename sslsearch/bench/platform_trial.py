"""The trainable of `sslsearch bench platform`: reports and checkpoints like trainable.run_trial, trains nothing.

A module of its own that imports only Ray Tune and the standard library: every trial actor imports its
trainable's module when it starts, and bench_platform's imports (Optuna, MLflow, torch) cost each
actor start about 5 s of CPU more (6.9 s against 1.5 s on the 2-core sandbox, docs/scale.md) — a cost
a real sweep pays once per actor and the benchmark, whose trials last seconds, would pay hundreds of
times. The checkpoint file is written once by the driver (a real torch file, `bench_platform.payload_file`)
and copied by the trials.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import ray
from ray import tune


def synthetic_val_acc(config: dict, epoch: int, rng: random.Random) -> float:
    """A learning curve whose ceiling depends smoothly on λ, lr and feature_dim (so TPE and ASHA
    have a signal to follow); chance level (10 %) at epoch 0."""
    lmbda, lr = config.get("lmbda", 0.005), config.get("lr", 1e-3)
    quality = (1 - 0.08 * math.log10(lmbda / 5e-3) ** 2 - 0.12 * math.log10(lr / 1e-3) ** 2
               + 0.01 * math.log2(config.get("feature_dim", 128) / 128) + 0.01 * (config.get("loss") == "hsic"))
    ceiling = 10 + 80 * min(1.0, max(0.0, quality))
    epochs = config["base"]["epochs"]
    return 10 + (ceiling - 10) * (1 - math.exp(-3 * epoch / epochs)) + (rng.gauss(0, 0.5) if epoch else 0.0)


def synthetic_trial(config: dict) -> None:
    """Ray Tune function trainable: the report schedule of train.pretrain (epoch 0, then every
    eval_every epochs and the last), a sleep of `report_seconds` per interval, a checkpoint folder
    (last.pt, a copy of the `payload` file; statistics.csv; trial_seconds.txt) with every report. Like
    trainable.run_trial it resumes from `tune.get_checkpoint()`: a twin that ASHA paused at a rung
    continues after its last report instead of training (and reporting) again from epoch 0."""
    base, bench = config["base"], config["bench"]
    epochs, every = base["epochs"], base["eval_every"]
    seed = f"{config.get('seed')}-{config.get('loss')}-{config.get('lmbda')}-{config.get('lr')}"
    started, seconds_before = time.perf_counter(), 0.0
    rows = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            lines = (Path(folder) / "statistics.csv").read_text().split()[1:]
            rows = [{"epoch": int(e), "val_acc": float(v)} for e, v in (line.split(",") for line in lines)]
            seconds_before = float((Path(folder) / "trial_seconds.txt").read_text())
    done = rows[-1]["epoch"] if rows else -1
    for epoch in [e for e in range(epochs + 1) if (e % every == 0 or e == epochs) and e > done]:
        if epoch:
            time.sleep(bench["report_seconds"] * (epoch - rows[-1]["epoch"]) / every)
        acc = synthetic_val_acc(config, epoch, random.Random(f"{seed}-{epoch}"))
        metrics = {"epoch": epoch, "loss": 100.0 / (1 + epoch), "val_acc": acc, "knn_acc": acc - 2,
                   "images_per_s": 0.0, "trial_seconds": seconds_before + time.perf_counter() - started,
                   "node_id": ray.get_runtime_context().get_node_id()}
        if epoch == epochs and config.get("final_test", True):
            metrics["test_acc"] = acc - 1
        rows.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            shutil.copyfile(bench["payload"], Path(folder) / "last.pt")
            (Path(folder) / "statistics.csv").write_text(
                "epoch,val_acc\n" + "".join(f"{r['epoch']},{r['val_acc']!r}\n" for r in rows))
            (Path(folder) / "trial_seconds.txt").write_text(repr(metrics["trial_seconds"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
