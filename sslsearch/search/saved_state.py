"""The sweep's saved state survives a full disk: an intact copy of Ray's experiment state, used by `resume`.

Ray saves the sweep's state (trials, searcher, callbacks such as the ASHA rungs) in a staging folder,
then copies it into the sweep's storage folder over the previous copy, in place. When the disk fills
during that copy, the storage keeps a truncated `experiment_state-*.json`, and `Tuner.restore`, unable
to read it, logs "Failed to restore the run state" and silently starts the experiment again with no
trials — a resumed sweep that has forgotten its trials (found by tests/test_faults.py's full-disk test).

`IntactStateCopy` (a Tune callback) keeps, in `<sweep>/intact-state/`, the newest copy of those files
that was complete when read: files are copied one by one (temporary file, fsync, rename), so a disk
that fills during the copy leaves the previous intact file in place. `recover_saved_state`, called by
`resume` before Ray reads anything, checks the newest saved state; if it is damaged, it moves the
damaged files aside (`damaged-state-<session>/`, nothing is deleted) and puts the intact copy in their
place, or refuses with one line when there is none.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import ray.cloudpickle as cloudpickle
from ray import tune

from sslsearch.errors import InputError, error_line, shown_path
from sslsearch.search.folder import RAY_EXPERIMENT_STATE, RAY_PICKLED_STATES
from sslsearch.search.framework import RESTORE_FAILED_LOG

INTACT_FOLDER = "intact-state"
# The files of one save of Ray's state (TuneController; SearchGenerator or BasicVariantGenerator, Searcher,
# CallbackList). Ray restores each from the newest file of its pattern.
STATE_PATTERNS = (RAY_EXPERIMENT_STATE, *RAY_PICKLED_STATES)


def newest_state_files(folder: Path) -> dict[str, Path]:
    """Pattern → the newest file of it in `folder` (as Ray picks it: the greatest name)."""
    names = os.listdir(folder) if folder.is_dir() else []
    newest = {}
    for pattern in STATE_PATTERNS:
        matching = fnmatch.filter(names, pattern)
        if matching:
            newest[pattern] = folder / max(matching)
    return newest


def _complete(pattern: str, data: bytes) -> bool:
    """Cheap check, run at each of Ray's saves: the JSON object is closed; a pickle ends with its STOP opcode.
    (Parsing Ray's state, 27 MB at 1,000 trials, at every save cost as much CPU as Ray's saves: docs/scale.md.
    `resume` loads the copy fully before it uses it.)"""
    if pattern == RAY_EXPERIMENT_STATE:
        return data.lstrip().startswith(b"{") and data.rstrip().endswith(b"}")
    return data.endswith(b".")


def _readable(pattern: str, path: Path) -> bool:
    """Full check, run once by `resume`: the file loads as Ray will load it."""
    try:
        data = path.read_bytes()
        if pattern == RAY_EXPERIMENT_STATE:
            json.loads(data)
        else:
            cloudpickle.loads(data)
    except Exception:  # noqa: BLE001 — any failure to load means Ray could not load it either
        return False
    return True


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class IntactStateCopy(tune.Callback):
    """Copies Ray's newest saved state into `<sweep>/intact-state/` whenever it has changed and is complete.

    Checked at each of Ray's saves and at most every `every_s` seconds from the Tune loop's hooks; each check
    is a directory listing and a stat, and a copy (the size of Ray's state) only when Ray has saved anew.
    """

    def __init__(self, sweep_folder: str, every_s: float = 5.0):
        self.folder = sweep_folder
        self.every_s = every_s
        self._checked = -float("inf")
        self._copied: dict[str, tuple[int, int]] = {}   # name → (size, mtime_ns) of the copy's source

    def _copy(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.every_s:
            return
        self._checked = now
        folder = Path(self.folder)
        intact = folder / INTACT_FOLDER
        try:
            for pattern, source in newest_state_files(folder).items():
                stat = source.stat()
                key = (stat.st_size, stat.st_mtime_ns)
                if self._copied.get(source.name) == key:
                    continue
                data = source.read_bytes()
                if len(data) != stat.st_size or not _complete(pattern, data):
                    continue   # Ray is writing it now, or the disk cut it short: keep the previous copy
                intact.mkdir(exist_ok=True)
                _write_atomically(intact / source.name, data)
                for old in fnmatch.filter(os.listdir(intact), pattern):
                    if old != source.name:
                        (intact / old).unlink(missing_ok=True)
                self._copied[source.name] = key
        except OSError:
            pass   # a full disk: the previous intact copy stays; the sweep itself reports the error

    def get_state(self) -> None:
        # Called as Ray saves its state anew (into its staging folder): the storage still holds the previous save,
        # which `CheckpointRetention` (after this callback in the list) is about to act on, so the copy is at
        # least as new as what a resume from it expects of the trials' checkpoints. Nothing to save of our own.
        self._copy(force=True)
        return None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._copy()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._copy()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._copy()

    def on_experiment_end(self, trials, **info):
        self._copy(force=True)

    def __getstate__(self):
        # Ray pickles callbacks into tuner.pkl: a restored copy starts its own bookkeeping.
        return {"folder": self.folder, "every_s": self.every_s}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["every_s"])


class NoIntactState(InputError):
    """Ray's saved state is damaged and no intact copy of it exists (the disk filled before the first copy)."""


def recover_saved_state(folder: Path, name: str) -> None:
    """Before `resume`: if Ray's newest saved state is damaged, put the intact copy in its place (the
    damaged files moved to `damaged-state-<session>/`); NoIntactState when no intact copy exists."""
    newest = newest_state_files(folder)
    damaged = [path for pattern, path in newest.items() if not _readable(pattern, path)]
    if RAY_EXPERIMENT_STATE not in newest or not damaged:
        return
    intact = folder / INTACT_FOLDER
    copies = newest_state_files(intact)
    if RAY_EXPERIMENT_STATE not in copies or not all(_readable(pattern, path) for pattern, path in copies.items()):
        raise NoIntactState(f"sweep {name} cannot be resumed: Ray's saved state {damaged[0].name} in {folder} is damaged "
                            "(cut short, e.g. by a full disk) and no intact copy of it exists; start a new sweep")
    aside = _set_aside(folder, newest)
    for path in copies.values():
        shutil.copy2(path, folder / path.name)
    saved = time.strftime("%H:%M:%S", time.localtime(copies[RAY_EXPERIMENT_STATE].stat().st_mtime))
    print(f"warning: sweep {name}'s saved state {damaged[0].name} was cut short (a full disk?); resuming from its "
          f"last intact copy, saved at {saved} (damaged files kept in {aside})", file=sys.stderr, flush=True)


def _set_aside(folder: Path, newest: dict[str, Path], *also: str) -> Path:
    """Move the files of Ray's newest save (and the files named `also`) to `damaged-state-<session>/`; that folder."""
    prefix, suffix = RAY_EXPERIMENT_STATE.split("*")
    session = newest[RAY_EXPERIMENT_STATE].name[len(prefix):-len(suffix)]
    aside = folder / f"damaged-state-{session}"
    aside.mkdir(exist_ok=True)
    for path in newest.values():
        if path.name.endswith(f"-{session}{path.suffix}"):
            os.replace(path, aside / path.name)
    for name in also:
        if (folder / name).exists():
            os.replace(folder / name, aside / name)
    return aside


def set_aside_saved_state(folder: Path) -> Path:
    """Move Ray's damaged saved state of the experiment in `folder`, and its tuner.pkl, to `damaged-state-<session>/`
    (nothing is deleted), so that it is no longer restorable: its caller starts the experiment again."""
    return _set_aside(folder, newest_state_files(folder), "tuner.pkl", "trainable.pkl")


class RestoreFailed(InputError):
    """Ray could not restore a saved experiment (and would have started it over with no trials). `cause`: Ray's
    error, one line."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause


@contextlib.contextmanager
def refusing_a_failed_restore(what: str, path: str):
    """Run the body (a Tuner's fit) so that, if Ray cannot restore the saved state it resumes, RestoreFailed stops it
    before anything runs or is written. Ray catches its own error, logs RESTORE_FAILED_LOG and starts the experiment
    over with no trials: a sweep ran its search again from the start, a confirmation stage raised KeyError (CI of
    2026-12-07). `recover_saved_state` catches the damage it knows (a file cut short); this catches the rest. The
    check is a filter on Ray's logger: it runs inside Ray's `except` block, where the error is at hand, and what it
    raises leaves TuneController's constructor (callbacks not set up, no step, no save). `what`: "sweep NAME" or "the
    confirmation stage of sweep NAME"."""
    logger = logging.getLogger(RESTORE_FAILED_LOG[0])

    def refuse(record: logging.LogRecord) -> bool:
        if record.getMessage() == RESTORE_FAILED_LOG[1]:
            error = sys.exc_info()[1]
            cause = error_line(error) if error is not None else "no reason given"
            raise RestoreFailed(f"{what} cannot be resumed: Ray could not restore its saved state in {shown_path(path)} "
                                f"({cause}) and would start it over with no trials; nothing was run and its files are "
                                "as they were", cause)
        return True

    logger.addFilter(refuse)
    try:
        yield
    finally:
        logger.removeFilter(refuse)
