"""What a sweep keeps of its trials' checkpoints once they end (`tracking.checkpoints`), and the disk it uses.

While a trial can still run, Ray keeps its newest checkpoints as full training state (weights,
optimiser, RNG, history): resuming needs them, and nothing here touches them. Once Ray's *saved*
sweep state records the trial as TERMINATED (completed, stopped early, diverged, or cut by the
time budget), no `sslsearch resume` runs it again, and `CheckpointRetention` settles its folders
in Ray's storage. Per policy, for each ended trial:

| policy          | Ray's storage keeps `last.pt` of (weights only)          | MLflow keeps (weights only)
|-----------------|----------------------------------------------------------|--------------------------------
| `best_and_last` | its latest and its best checkpoint (val_acc after epoch 0) | `checkpoints/last.pt`, `best.pt`
| `best`          | its best checkpoint                                      | `checkpoints/best.pt`
| `top_k:N`       | as `best_and_last`; the N best ended trials (final       | as `best_and_last`
|                 | val_acc) keep their latest as full state, to continue    |
| `all`           | every checkpoint (Ray then keeps every report's)         | also `checkpoints/epoch_<N>.pt`
| `none`          | none                                                     | nothing

Every checkpoint folder keeps its `statistics.csv` and `trial_seconds.txt` (`sslsearch sync` uploads
the former). Errored trials keep their full state: `resume` runs them again from it. Ray's storage
only counts as "saved" once its experiment-state file there says so: a trial that ended after the
last save could be restarted by a resume, so it is settled at a later save (or at the sweep's end).
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
import torch
from ray import tune

from sslsearch.errors import error_line
from sslsearch.method.train import RESUME_ONLY, weights_only
from sslsearch.search.experiment import keeps_last, top_k
from sslsearch.search.folder import RAY_EXPERIMENT_STATE  # Ray's saved sweep state; the newest name is the newest
from sslsearch.search.outcomes import ranking_key

log = logging.getLogger(__name__)

LAST = "last.pt"                                  # the trial's checkpoint file in each of Ray's checkpoint folders


def best_checkpoint(trial) -> tuple | None:
    """(checkpoint, epoch, val_acc) of the best checkpoint Ray kept for the trial, if it says."""
    try:
        best = trial.run_metadata.checkpoint_manager.best_checkpoint_result
    except AttributeError:  # Ray's internals moved: then only the reports say which was best
        return None
    if best is None or not _number(best.metrics.get("val_acc")) or not _number(best.metrics.get("epoch")):
        return None
    return best.checkpoint, int(best.metrics["epoch"]), float(best.metrics["val_acc"])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _best_trained(trial) -> str | None:
    """Path of the kept checkpoint with the best val_acc after epoch 0 (a tie: the earlier epoch), as MLflow's
    best.pt is chosen; Ray's own best when its list cannot be read."""
    try:
        results = trial.run_metadata.checkpoint_manager._checkpoint_results
    except AttributeError:  # Ray's internals moved
        best = best_checkpoint(trial)
        return best[0].path if best is not None else None
    scored = [(float(r.metrics["val_acc"]), -int(r.metrics["epoch"]), r.checkpoint.path) for r in results
              if _number(r.metrics.get("val_acc")) and _number(r.metrics.get("epoch")) and r.metrics["epoch"] > 0]
    return max(scored)[2] if scored else None


def saved_as_ended(fs: pyarrow.fs.FileSystem, sweep_fs_path: str) -> set[str]:
    """Ids of the trials that Ray's newest saved sweep state in storage records as TERMINATED (read as plain JSON,
    nothing unpickled); empty if there is none yet or it is being rewritten."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(sweep_fs_path, allow_not_found=True))
        names = [i.base_name for i in infos
                 if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(i.base_name, RAY_EXPERIMENT_STATE)]
        if not names:
            return set()
        with fs.open_input_stream(f"{sweep_fs_path}/{max(names)}") as stream:
            state = json.loads(stream.readall())
        return {trial["trial_id"] for trial in (json.loads(entry[0]) for entry in state.get("trial_data", []))
                if trial.get("status") == "TERMINATED"}
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # mid-copy, or Ray changed its layout: next time
        return set()


def ranked(trials: list, count: int) -> set[str]:
    """Ids of the `count` best trials by their final report, in the one ranking order (outcomes.ranking_key); a
    diverged trial or one that never trained past epoch 0 is not ranked."""
    scored = []
    for trial in trials:
        result = trial.last_result or {}
        value, epoch = result.get("val_acc"), int(result.get("epoch", 0) or 0)
        if _number(value) and math.isfinite(value) and epoch > 0 and not result.get("diverged"):
            scored.append((ranking_key(value, epoch, trial.trial_id), trial.trial_id))
    return {trial_id for _, trial_id in sorted(scored)[:count]}


def _shrink(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    """Rewrite the checkpoint file at `path` weights only (atomically: a reader sees the old file or the new one);
    False if it already was."""
    with fs.open_input_stream(path) as stream:
        checkpoint = torch.load(io.BytesIO(stream.readall()), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not set(RESUME_ONLY) & set(checkpoint):
        return False
    buffer = io.BytesIO()
    torch.save(weights_only(checkpoint), buffer)
    with fs.open_output_stream(f"{path}.tmp") as stream:
        stream.write(buffer.getvalue())
    fs.move(f"{path}.tmp", path)
    return True


def settle_trial(trial, policy: str, keep_full: bool) -> None:
    """Apply `policy` to an ended trial's checkpoint folders in Ray's storage (see the module docstring);
    `keep_full`: its latest checkpoint stays full training state (a top-K trial)."""
    fs, trial_path = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    folders = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
                     if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    latest = trial.checkpoint.path if trial.checkpoint is not None else None
    best_path = _best_trained(trial)
    if policy == "all":
        weights = set(folders)
    elif policy == "none":
        weights = set()
    else:
        weights = {best_path, latest} if keeps_last(policy) else {best_path}
    for folder in folders:
        path = f"{folder}/{LAST}"
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File or (keep_full and folder == latest):
            continue
        if folder in weights:
            _shrink(fs, path)
        else:
            fs.delete_file(path)


def settle_orphans(trials: list) -> int:
    """Rewrite weights only the checkpoints of trial folders that none of `trials` owns: a trial created and
    checkpointed by a driver killed before Ray saved the sweep's state, which the resumed sweep replaced by a new
    trial. Nothing resumes it, so its training state is dead weight. The number of files rewritten."""
    storage = trials[0].storage
    fs = storage.storage_filesystem
    owned = {t.storage.trial_fs_path.rstrip("/") for t in trials}
    rewritten = 0
    for folder in fs.get_file_info(pyarrow.fs.FileSelector(storage.experiment_fs_path, allow_not_found=True)):
        if (folder.type != pyarrow.fs.FileType.Directory or not folder.base_name.startswith("trial_")
                or folder.path.rstrip("/") in owned):
            continue
        for checkpoint in fs.get_file_info(pyarrow.fs.FileSelector(folder.path, allow_not_found=True)):
            path = f"{checkpoint.path}/{LAST}"
            if (checkpoint.type == pyarrow.fs.FileType.Directory and checkpoint.base_name.startswith("checkpoint_")
                    and fs.get_file_info(path).type == pyarrow.fs.FileType.File):
                rewritten += _shrink(fs, path)
    return rewritten


class CheckpointRetention(tune.Callback):
    """Ray Tune callback: settles the checkpoints of each trial once Ray's saved sweep state records it as ended.

    It works at each save of the sweep's state (`get_state`) and at the sweep's end, on the driver; a
    failure is logged in one line and never stops the sweep (the checkpoints then simply stay as they were)."""

    # Each pass reads Ray's saved state whole (27 MB at 1,000 trials): at most one pass per EVERY_S seconds, else it
    # costs as much CPU as Ray's own saves (docs/scale.md). Ended trials keep their checkpoints that much longer.
    EVERY_S = 30.0

    def __init__(self, policy: str):
        self.policy = policy
        self._last_pass = -math.inf
        self.settled: dict[str, bool] = {}  # trial id → settled with its latest checkpoint kept full (top_k)
        self._trials: list = []             # Ray's list of the sweep's trials, from the last hook that passed it
        self._waiting = False               # a trial ended that is not settled yet
        self._restore_points_checked = False  # this session's restored trials checked (at its first step)

    # Ray pickles callbacks into the sweep folder (tuner.pkl): settings only; `settled` travels in get_state.
    def __getstate__(self) -> dict:
        return {"policy": self.policy}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["policy"])

    def get_state(self) -> dict:
        # Called as Ray saves the sweep's state: what an earlier save recorded as ended is settled now.
        if time.monotonic() - self._last_pass >= self.EVERY_S:
            self._settle()
        return {"settled": dict(self.settled)}

    def set_state(self, state: dict) -> None:
        self.settled = dict(state.get("settled", {}))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trials, self._waiting = trials, True

    def on_step_begin(self, iteration, trials, **info):
        # Once, before Ray starts (and restores) any trial of this session: a resumed trial's checkpoint must exist.
        # Ray loads a restored sweep's trials before its first step; trials it adds later have no saved state.
        if self._restore_points_checked:
            return
        self._restore_points_checked = True
        for trial in trials:
            if trial.status == "TERMINATED":
                continue
            try:
                repaired = repair_restore_point(trial)
            except Exception as error:  # noqa: BLE001 — as in _settle: Ray restores (or fails) as before
                repaired = f"trial {trial.trial_id}: could not check its saved checkpoint ({type(error).__name__})"
            if repaired:
                log.warning("%s", repaired)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        forget_gone_checkpoints(trial)

    def on_experiment_end(self, trials, **info):
        # After Ray's last save: trials ended by the time budget (no per-trial hook) and earlier sessions' too.
        self._trials, self._waiting = trials, True
        self._settle()
        if trials:
            try:
                settle_orphans(trials)
            except Exception as error:  # noqa: BLE001 — as in _settle
                log.warning("could not settle the checkpoints of orphan trial folders (%s); they stay as they are",
                            error_line(error))

    def _settle(self) -> None:
        if not self._waiting or not self._trials:
            return
        self._last_pass = time.monotonic()
        try:
            storage = self._trials[0].storage
            ended_ids = saved_as_ended(storage.storage_filesystem, storage.experiment_fs_path)
            ended = [t for t in self._trials if t.trial_id in ended_ids]
            full = ranked(ended, top_k(self.policy))
            for trial in ended:
                keep_full = trial.trial_id in full
                if trial.trial_id in self.settled and (self.settled[trial.trial_id] == keep_full
                                                       or not self.settled[trial.trial_id]):
                    continue  # (full state, once dropped, is not coming back)
                settle_trial(trial, self.policy, keep_full)
                self.settled[trial.trial_id] = keep_full
            self._waiting = any(t.status == "TERMINATED" and t.trial_id not in self.settled for t in self._trials)
        except Exception as error:  # noqa: BLE001 — keeping checkpoints is never worth a stopped sweep
            log.warning("could not settle the checkpoints of ended trials (%s); they stay as they are",
                        error_line(error))


def forget_gone_checkpoints(trial) -> int:
    """Drop from Ray's list of the trial's kept checkpoints those whose folder is gone; how many.

    After a hard kill, Ray's saved state can still list a checkpoint that Ray itself deleted (num_to_keep) after
    that save. Registering the next checkpoint would delete it again: FileNotFoundError, logged as a 1.8 kB
    "Error handling checkpoint" ERROR per trial, and the rest of Ray's checkpoint handling skipped. Callbacks'
    on_checkpoint runs just before that registration. Local storage only (a remote listing costs a request)."""
    try:
        manager = trial.run_metadata.checkpoint_manager
        results = manager._checkpoint_results
    except AttributeError:  # Ray's internals moved: Ray logs its error as before
        return 0
    kept = [r for r in results if _exists(r.checkpoint, ask_remote=False)]
    if len(kept) != len(results):
        manager._checkpoint_results = kept
    return len(results) - len(kept)


def _exists(checkpoint, *, ask_remote: bool = True) -> bool:
    """Whether the checkpoint's folder is there; on remote storage without `ask_remote`, assumed so (no request)."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path).is_dir()
    return not ask_remote or checkpoint.filesystem.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.Directory


def repair_restore_point(trial) -> str | None:
    """If the checkpoint a restored trial would resume from is gone, point the trial at the newest one Ray still
    lists (or at none: it then starts again from epoch 0); a line saying so, or None if nothing was wrong.

    Ray deletes a trial's checkpoints beyond `num_to_keep` as soon as a new one registers, and ranks them by
    val_acc, not age: the checkpoint before the newest can be the worst and go at once, while Ray's saved sweep
    state still names it as the latest (Ray forces a save only after num_to_keep new checkpoints). A driver
    killed in between resumes that trial from a folder that no longer exists: Ray's restore fails on every retry
    and the trial ends ERROR. From the older checkpoint the trial repeats a few epochs, and their reports are
    recorded once, as after any resume."""
    try:
        manager = trial.run_metadata.checkpoint_manager
        latest = manager._latest_checkpoint_result
    except AttributeError:  # Ray's internals moved: Ray restores (or fails) as before
        return None
    if latest is None or _exists(latest.checkpoint):
        return None
    manager._checkpoint_results = [r for r in manager._checkpoint_results if r is not latest and _exists(r.checkpoint)]
    kept = [r for r in manager._checkpoint_results if _number(r.metrics.get("training_iteration"))]
    manager._latest_checkpoint_result = max(kept, key=lambda r: r.metrics["training_iteration"], default=None)
    gone = Path(latest.checkpoint.path).name
    if manager._latest_checkpoint_result is None:
        return f"trial {trial.trial_id}: its saved checkpoint {gone} is gone (Ray deleted it after its last save); " \
               "it starts again from epoch 0"
    now = manager._latest_checkpoint_result
    return (f"trial {trial.trial_id}: its saved checkpoint {gone} is gone (Ray deleted it after its last save); it "
            f"resumes from {Path(now.checkpoint.path).name} (epoch {now.metrics.get('epoch', '?')})")


@dataclass(frozen=True)
class DiskUse:
    """Bytes of a sweep's folder (Ray's storage) and of its trials' checkpoint folders within it."""
    total: int
    checkpoints: int


def disk_use(sweep_path: str) -> DiskUse | None:
    """Apparent size (as `du -sb`) of a local sweep folder and of the `trial_*/checkpoint_*` folders in it
    (a confirmation stage's, under confirm/, included); None for remote storage."""
    if "://" in sweep_path or not Path(sweep_path).is_dir():
        return None
    total = checkpoints = 0
    root = Path(sweep_path)
    for folder, _, files in os.walk(root):
        parts = Path(folder).relative_to(root).parts
        in_checkpoint = any(p.startswith("checkpoint_") for p in parts)
        for name in files:
            try:
                size = os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while walking (a trial's temporary file)
                continue
            total += size
            checkpoints += size if in_checkpoint else 0
    return DiskUse(total, checkpoints)


def size_text(size: int) -> str:
    """'12.3 MB': bytes in decimal units (as `du --si`), one decimal."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
