"""One writer per sweep: a lock file in the sweep's folder, and the sweep folder created atomically, locked.

`sweep`, `resume` and `sync` each hold `<sweep>/sslsearch.lock` while they write. On one machine the
lock is an OS lock (`flock`), which the kernel drops when its holder dies, however it dies; so a
lock left by a killed process is never mistaken for a live one. The file also names the holder
(pid, host, start time) and a heartbeat refreshed every HEARTBEAT_S, so a writer on another host
of a shared file system is refused while its heartbeat is fresh and taken over once it is stale.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

from sslsearch.errors import InputError, shown_path
from sslsearch.search.folder import (
    LOCK_FILE,
    OUTBOX_FILE,
    RAY_EXPERIMENT_STATE,
    RAY_PICKLED_STATES,
    RAY_TUNER_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    ray_state_saved,
)

HEARTBEAT_S = 10.0
STALE_S = 6 * HEARTBEAT_S  # a holder on another host that has not beaten for this long is gone


def claim_sweep_folder(path: Path, name: str) -> SweepLock:
    """Create the sweep's folder with its lock held (the caller releases it); InputError if the name is taken.

    The folder is made under a temporary name, locked, then renamed into place: the name check and the
    creation are one rename, and no other process ever sees the new folder unlocked, so a second
    `sweep --name X` started at the same moment is told that X runs, not that it can be resumed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{name}.claim-{os.getpid()}-{threading.get_ident()}"
    staging.mkdir()
    lock = SweepLock(staging, name, "start")
    try:
        lock.acquire()
        os.rename(staging, path)  # (onto an empty folder it succeeds: an empty folder holds no sweep)
    except BaseException as error:
        lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise InputError(name_taken(path, name)) from None
        raise
    lock.path = path / LOCK_FILE  # the open file, and so the lock, moved with the folder
    return lock


def abandon_claim(lock: SweepLock) -> None:
    """Release a claimed sweep folder, and remove it if Ray never saved a sweep there (refused, or stopped before
    Ray's first save: nothing `resume` could continue), so that the name is free again and nothing half-made is left.
    What a sweep writes before that save goes with it; anything else keeps the folder."""
    folder = lock.path.parent
    started = ray_state_saved(folder)
    if not started:
        for name in (SWEEP_FILE, STUDY_FILE, RAY_TUNER_FILE):
            (folder / name).unlink(missing_ok=True)
        lock.path.unlink(missing_ok=True)
    lock.release()
    if not started:
        try:
            folder.rmdir()
        except OSError:  # something else was written there: leave it
            pass


def writer(folder: Path) -> dict | None:
    """The process that writes the sweep in `folder` now (its lock file's pid, host, started, heartbeat), or None.

    Read, never locked (taking the lock even for a moment could make a real `sweep` or `resume` fail). A
    holder on this host counts while its pid lives, one elsewhere while its heartbeat is fresh; `release`
    empties the file, a killed holder leaves its pid behind.
    """
    try:
        holder = json.loads((folder / LOCK_FILE).read_bytes() or b"{}")
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or "pid" not in holder:
        return None
    if holder.get("host") != socket.gethostname():
        return holder if time.time() - float(holder.get("heartbeat", 0)) < STALE_S else None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError, TypeError, OverflowError):  # alive (another user's), or unreadable
        pass
    return holder


def describe_writer(holder: dict | None) -> str:
    """"pid 123 on host (started 2026-12-04 16:20:01, last heartbeat 3 s ago)", for refusals."""
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}, last heartbeat "
            f"{time.time() - holder.get('heartbeat', 0):.0f} s ago)")


def refuse_while_starting(folder: Path, name: str) -> None:
    """For a command that did not find sweep `name` (no sweep file, or no state Ray can restore): InputError if a live
    process holds its folder, i.e. the sweep is in its first seconds (the name is claimed before Ray and MLflow load,
    the files come later). Without this, `sync`, `resume` and `confirm` called a starting sweep unknown."""
    holder = writer(folder) if folder.is_dir() else None
    if holder is not None:
        raise InputError(f"sweep {name!r} is starting ({describe_writer(holder)}); try again once it has started, "
                         "or ended")


def name_taken(path: Path, name: str) -> str:
    """Why a new sweep cannot be named `name`, whose folder `path` exists: it runs, it can be resumed, or the
    folder holds no sweep."""
    holder = writer(path)
    if holder is not None:
        return f"sweep {name!r} is running now ({describe_writer(holder)}); wait for it to end or choose another --name"
    if (path / SWEEP_FILE).exists():
        return (f"a sweep named {name!r} already exists in {path.parent}; resume it with `sslsearch resume {name}` "
                "or choose another --name")
    return f"{path} exists and holds no sweep; remove it or choose another --name"


class SweepLock:
    """`with SweepLock(folder, name):` — InputError (one line) if another process writes the sweep."""

    def __init__(self, folder: str | Path, name: str, action: str = "write"):
        self.path = Path(folder) / LOCK_FILE
        self.name, self.action = name, action
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> SweepLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> SweepLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise InputError(self._refusal(holder)) from None
        holder = _read(fd)
        # flock does not reach across hosts on every shared file system: trust a fresh heartbeat from elsewhere.
        if holder and holder.get("host") != socket.gethostname() and time.time() - holder.get("heartbeat", 0) < STALE_S:
            os.close(fd)
            raise InputError(self._refusal(holder))
        self._fd = fd
        self._write(started=time.time())
        self._beat = threading.Thread(target=self._heartbeat, name=f"sslsearch-lock-{self.name}", daemon=True)
        self._beat.start()
        return self

    def _refusal(self, holder: dict) -> str:
        who = describe_writer(holder)
        return (f"sweep {self.name!r} is being written by {who}; cannot {self.action} it until that process ends "
                f"(lock: {self.path})")

    def _write(self, started: float | None = None) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started or self._started,
                "heartbeat": time.time()}
        self._started = info["started"]
        data = json.dumps(info).encode()
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # disk full or folder gone: the OS lock still holds on this host
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            os.ftruncate(self._fd, 0)  # empty: no holder (the file stays; removing it would race a newcomer)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# Files Ray or sslsearch unpickles (or replays) from a Ray experiment folder (a sweep, or its confirm/ stage):
# tuner.pkl and trainable.pkl (Tuner.restore), Ray's saved state (search.folder: the experiment state, whose JSON may
# embed CLOUDPICKLE_FALLBACK blobs that TuneController and ExperimentAnalysis decode, and the search generator's,
# searcher's and callbacks' pickles), each trial's error.pkl (ResultGrid), the copies in intact-state/
# (sslsearch.search.saved_state loads them, then puts them in Ray's place), and the MLflow outbox, whose records
# `sync` and `resume` replay (they name files to upload).
TRUSTED_PATTERNS = ("tuner.pkl", "trainable.pkl", RAY_EXPERIMENT_STATE, *RAY_PICKLED_STATES, OUTBOX_FILE)
TRIAL_PICKLES = ("error.pkl",)
NESTED = ("intact-state", "confirm")   # folders of the same kind of files inside a sweep folder


def unpickled_paths(folder: Path) -> list[Path]:
    """Every path in the Ray experiment folder `folder` whose contents can run code when read: the folders
    holding such files (whoever can write a folder can replace its files) and the files."""
    paths = [folder]
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return paths
    for entry in entries:
        here = Path(entry.path)
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in TRUSTED_PATTERNS):
            paths.append(here)
        elif entry.name in NESTED or entry.name.startswith("trial_"):
            if entry.is_symlink():
                paths.append(here)   # a link where a folder belongs: refused by check_owned
            elif entry.name in NESTED and entry.is_dir():
                paths += unpickled_paths(here)
            elif entry.is_dir():
                paths += [here, *(here / name for name in TRIAL_PICKLES if os.path.lexists(here / name))]
    return paths


def check_owned(path: Path, action: str = "resume") -> None:
    """InputError (one line) unless every file `action` (resume, sync, confirm) lets Ray or sslsearch unpickle from
    the sweep folder `path`, and every folder holding one, is a plain file or folder (not a symbolic link) owned by
    this user or root that others cannot write. A crafted pickle there runs code as whoever reads it."""
    uid = os.getuid()
    parent = path.parent.lstat()
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        # Others may rename the sweep folder away and put their own in its place (a sticky /tmp forbids it).
        raise InputError(f"the storage folder {shown_path(path.parent)} is writable by everyone without the sticky bit, "
                         f"so anyone can swap sweep {path.name!r} for their own; {action} unpickles what it holds: "
                         f"chmod o-w {shown_path(path.parent)} (or chmod +t)")
    for item in unpickled_paths(path):
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise InputError(f"{shown_path(item)} is a symbolic link (to {shown_path(os.readlink(item), 80)}); {action} "
                             "unpickles what it points to, so the sweep must hold the file itself: replace the link with "
                             "a copy of its target if you trust it (cp -r --remove-destination \"$(realpath LINK)\" LINK)")
        if info.st_uid not in (uid, 0):
            raise InputError(f"{shown_path(item)} belongs to uid {info.st_uid}, not you (uid {uid}) or root; {action} "
                             "unpickles it, so it must be yours: if you trust it, copy the sweep folder (cp -r) and "
                             "use the copy")
        if info.st_mode & 0o002:  # (group-writable is left alone: with per-user groups, as umask 002 gives, it is you)
            raise InputError(f"{shown_path(item)} is writable by everyone (mode {info.st_mode & 0o777:o}); {action} "
                             f"unpickles it, so others must not write it: chmod o-w {shown_path(item)}")


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
