"""One trial = pretrain + probe, reported to Ray Tune.

Every report interval the trial reports `epoch, loss, val_acc, knn_acc, images_per_s` with a
checkpoint; it resumes from `tune.get_checkpoint()`; the last report also carries `test_acc`,
measured once. The objective is `val_acc`, never test accuracy.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
import ray
from ray import tune

from sslsearch.data import ImageData
from sslsearch.train import PretrainConfig, pretrain, save_weights_only

COMPLETE = "complete"  # marks the checkpoint of a trial's final report (weights only)
REPORTED = ("epoch", "loss", "val_acc", "knn_acc", "images_per_s", "test_acc")

# Loaded data sets, kept for the next trial that runs in this worker process (Tune reuses actors).
_DATA: dict[tuple, ImageData] = {}


def trial_config(config: dict) -> PretrainConfig:
    """The trial's PretrainConfig: the experiment's settings with the sampled values on top."""
    sampled = {k: v for k, v in config.items() if k not in ("base", "final_test", "cpus", "pair")}
    return PretrainConfig.from_dict({**config["base"], **sampled})


def _data_for(config: PretrainConfig) -> ImageData:
    key = (config.dataset, config.data_dir, config.val_fraction, config.split_seed, config.image_size)
    if key not in _DATA:
        _DATA.clear()  # one data set at a time: they can be gigabytes
        _DATA[key] = config.load_data()
    return _DATA[key]


def run_trial(config: dict) -> None:
    """Ray Tune function trainable."""
    pretrain_config = trial_config(config)
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    # Each trial owns a scratch folder; what must survive goes into Tune checkpoints.
    scratch = Path(tempfile.mkdtemp(prefix="sslsearch-trial-"))
    resume, seconds_before = None, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restored = Path(checkpoint.to_directory(str(scratch / "restored")))
        if (restored / COMPLETE).exists():  # retried after its final report: nothing left to run
            shutil.rmtree(scratch, ignore_errors=True)
            return
        resume = restored / "last.pt"
        seconds_before = float((restored / "trial_seconds.txt").read_text())
    started = time.perf_counter()

    def report(row: dict, checkpoint_path: Path | None) -> None:
        metrics = {"epoch": row["epoch"], "loss": row["train_loss"], "val_acc": row["val_acc"],
                   "knn_acc": row["knn_acc"], "images_per_s": row["images_per_s"],
                   "trial_seconds": seconds_before + time.perf_counter() - started,
                   # Which Ray node ran this report: shows where trials were placed on a cluster.
                   "node_id": ray.get_runtime_context().get_node_id()}
        if row.get("test_acc") is not None:
            metrics["test_acc"] = row["test_acc"]
        with tempfile.TemporaryDirectory(dir=scratch) as folder:
            if row["epoch"] >= pretrain_config.epochs:
                # The final report: the trial never resumes from it, so weights only (a third of
                # the full state of an Adam or LARS run).
                save_weights_only(checkpoint_path, Path(folder) / "last.pt")
                (Path(folder) / COMPLETE).write_text("")
            else:
                shutil.copy2(checkpoint_path, Path(folder) / "last.pt")  # full state: resume needs it
            shutil.copy2(checkpoint_path.with_name("statistics.csv"), Path(folder) / "statistics.csv")
            (Path(folder) / "trial_seconds.txt").write_text(repr(metrics["trial_seconds"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        pretrain(pretrain_config, out_dir=scratch / "run", resume=resume, data=_data_for(pretrain_config),
                 on_report=report, progress=False, final_test=bool(config.get("final_test", True)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
