"""One trial = pretrain + probe, reported to Ray Tune.

Every report interval the trial reports `epoch, loss, val_acc, knn_acc, images_per_s` with a
checkpoint; it resumes from `tune.get_checkpoint()`; the last report also carries `test_acc`,
measured once. The objective is `val_acc`, never test accuracy. A trial whose loss diverges ends
with one last report, `diverged: True` at chance-level val_acc (no checkpoint).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from sslsearch.errors import error_line
from sslsearch.method.data import ImageData, load_run_data
from sslsearch.method.train import PretrainConfig, TrainingDiverged, pretrain
from sslsearch.search.trial_config import CPUS, FINAL_TEST, trial_settings

COMPLETE = "complete"  # marks the checkpoint of a trial's final report: a retry has nothing left to run
REPORTED = ("epoch", "loss", "val_acc", "knn_acc", "images_per_s", "test_acc")
FALLBACK = "checkpoint_fallback"  # in the first report after restoring from an older checkpoint: the line(s) saying why

# Loaded data sets, kept for the next trial that runs in this worker process (Tune reuses actors).
_DATA: dict[tuple, ImageData] = {}


def trial_config(config: dict) -> PretrainConfig:
    """The trial's PretrainConfig: the experiment's settings with the sampled values on top."""
    return PretrainConfig.from_dict(trial_settings(config))


def _data_for(config: PretrainConfig) -> ImageData:
    key = (config.dataset, config.data_dir, config.val_fraction, config.split_seed, config.image_size)
    if key not in _DATA:
        _DATA.clear()  # one data set at a time: they can be gigabytes
        _DATA[key] = load_run_data(config)
    return _DATA[key]


def chance_accuracy(labels: torch.Tensor) -> float:
    """val_acc (%) of always answering the most frequent class: what a diverged network scores."""
    return 100.0 * torch.bincount(labels).max().item() / max(1, labels.numel())


def _older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints Ray kept (sweeps keep two), newest first; local storage only."""
    here = Path(checkpoint.path)
    if "://" in str(checkpoint.path) or not here.parent.is_dir():
        return []
    older = sorted((p for p in here.parent.glob("checkpoint_*") if p.is_dir() and p.name < here.name), reverse=True)
    return [tune.Checkpoint(str(p)) for p in older]


def restore(checkpoint: tune.Checkpoint, scratch: Path, notes: list[str] | None = None) -> tuple[Path, float]:
    """(last.pt, seconds trained so far) from the newest intact checkpoint, starting at `checkpoint`. A broken one
    (cut short by a full disk or a crash) is named in one line (printed, and added to `notes`) and the previous one
    is used instead."""
    broken = []
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        folder = scratch / Path(candidate.path).name
        try:
            restored = Path(candidate.to_directory(str(folder)))
            torch.load(restored / "last.pt", map_location="cpu", weights_only=True)  # readable to the end
            return restored / "last.pt", float((restored / "trial_seconds.txt").read_text())
        except Exception as error:  # noqa: BLE001 — any way a file can be broken
            broken.append(f"{candidate.path}/last.pt")
            line = (f"sslsearch: checkpoint {candidate.path}/last.pt is unreadable ({error_line(error)}); "
                    "trying the previous one")
            print(line, file=sys.stderr, flush=True)
            if notes is not None:
                notes.append(line)
            shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"no intact checkpoint to resume from; broken: {', '.join(broken)}")


def run_trial(config: dict) -> None:
    """Ray Tune function trainable."""
    pretrain_config = trial_config(config)
    torch.set_num_threads(max(1, int(config.get(CPUS, 1))))
    # Each trial owns a scratch folder; what must survive goes into Tune checkpoints.
    scratch = Path(tempfile.mkdtemp(prefix="sslsearch-trial-"))
    resume, seconds_before = None, 0.0
    checkpoint = tune.get_checkpoint()
    notes: list[str] = []   # a fallback to an older checkpoint: the driver prints it (a worker's stderr stays in its log)
    if checkpoint is not None:
        resume, seconds_before = restore(checkpoint, scratch / "restored", notes)
        if (resume.parent / COMPLETE).exists():  # retried after its final report: nothing left to run
            shutil.rmtree(scratch, ignore_errors=True)
            return
    started = time.perf_counter()

    def report(row: dict, checkpoint_path: Path | None) -> None:
        metrics = {"epoch": row["epoch"], "loss": row["train_loss"], "val_acc": row["val_acc"],
                   "knn_acc": row["knn_acc"], "images_per_s": row["images_per_s"],
                   "trial_seconds": seconds_before + time.perf_counter() - started,
                   # Which Ray node ran this report: shows where trials were placed on a cluster.
                   "node_id": ray.get_runtime_context().get_node_id()}
        if row.get("test_acc") is not None:
            metrics["test_acc"] = row["test_acc"]
        if notes:
            metrics[FALLBACK] = "\n".join(notes)
            notes.clear()
        with tempfile.TemporaryDirectory(dir=scratch) as folder:
            # Full training state, even at the final report (a top_k trial can be continued from it): once Ray's
            # saved state records the trial as ended, the driver keeps what tracking.checkpoints says (retention.py).
            shutil.copy2(checkpoint_path, Path(folder) / "last.pt")
            if row["epoch"] >= pretrain_config.epochs:
                (Path(folder) / COMPLETE).write_text("")
            shutil.copy2(checkpoint_path.with_name("statistics.csv"), Path(folder) / "statistics.csv")
            (Path(folder) / "trial_seconds.txt").write_text(repr(metrics["trial_seconds"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    data = _data_for(pretrain_config)
    try:
        pretrain(pretrain_config, out_dir=scratch / "run", resume=resume, data=data,
                 on_report=report, progress=False, final_test=bool(config.get(FINAL_TEST, True)))
    except TrainingDiverged as diverged:
        # A result about the configuration, not a fault: the trial ends with the score of a network
        # that predicts one class, so the searcher learns to avoid the region (DESIGN.md, outcomes).
        chance = chance_accuracy(data.val_labels)
        tune.report({"epoch": diverged.epoch, "loss": float("nan"), "val_acc": chance, "knn_acc": chance, "diverged": True,
                     "trial_seconds": seconds_before + time.perf_counter() - started,
                     "node_id": ray.get_runtime_context().get_node_id()})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
