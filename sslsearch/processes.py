"""Processes a command starts: servers (started in a session of their own, polled until they answer, stopped
with their whole group), the process tree and its CPU time, and stopping everything a command started, so
that no process outlives it.

A local Ray instance runs a dozen processes under the driver (gcs_server, raylet, workers and the
`ray::DashboardAgent` / `ray::RuntimeEnvAgent` agents, which ignore SIGTERM); a Ctrl-C in the first
seconds of a sweep, before `ray.shutdown` can run, used to leave the agents behind. The MLflow UI runs
uvicorn and a pool of huey workers. `reaping()` makes this process the Linux "child subreaper", so
processes whose parent dies are re-parented to us rather than to init, and on the way out stops every
descendant: SIGTERM, then SIGKILL for those that ignore it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
STOP_GRACE_S = 5.0
EXEC_WAIT_S = 5.0  # how long a stop waits for a child caught between fork and exec to exec


def become_subreaper() -> bool:
    """Orphaned descendants become our children (Linux); False where the kernel has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_server(command: list[str], *, stdout, env: dict | None = None) -> subprocess.Popen:
    """Start a server in a session of its own: a terminal's Ctrl-C reaches only its caller, and `stop_server`
    stops its workers with it (MLflow's server runs uvicorn and a pool of job workers)."""
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answers(process: subprocess.Popen, url: str, timeout_s: float, poll_s: float = 0.25) -> str | None:
    """Poll `url` until it answers; None once it does, else why not ("exited with code 1", "did not answer
    within 180 s")."""
    deadline = time.monotonic() + timeout_s
    while not answers(url):
        if process.poll() is not None:
            return f"exited with code {process.returncode} before it answered"
        if time.monotonic() > deadline:
            return f"did not answer within {timeout_s:.0f} s"
        time.sleep(poll_s)
    return None


def stop_server(process: subprocess.Popen, grace_s: float = 30.0, *, kill: bool = False) -> None:
    """SIGTERM the server's process group (`kill`: SIGKILL at once, a fault rather than a shutdown), then
    SIGKILL what is left after `grace_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tree_cpu_seconds(root_pid: int | None = None, *, reaped: bool = False) -> float:
    """User + system CPU seconds of a process (default: this one) and its live descendants; `reaped`: with
    the descendants that ended and were waited for (e.g. Ray's trial actors, counted by the raylet)."""
    import psutil

    try:
        root = psutil.Process(root_pid or os.getpid())
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system + ((times.children_user + times.children_system) if reaped else 0.0)
    return total


def descendants(root_pid: int | None = None) -> set[tuple[int, float]]:
    """(pid, start time) of every descendant of `root_pid` (default: this process); the start time tells a
    reused pid apart."""
    import psutil

    found = set()
    for proc in psutil.Process(root_pid or os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.add((proc.pid, proc.create_time()))
    return found


def stop_descendants(root_pid: int | None = None, grace_s: float = STOP_GRACE_S, *,
                     keep: set[tuple[int, float]] = frozenset()) -> int:
    """SIGTERM every descendant of `root_pid` (default: this process) except those in `keep`, SIGKILL those
    alive after `grace_s`; repeated while new orphans appear. Returns how many were stopped."""
    import psutil

    stopped = 0
    root = psutil.Process(root_pid or os.getpid())
    for _ in range(5):  # a parent stopped mid-spawn may leave a new orphan: look again
        try:
            tree = []
            for proc in root.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if (proc.pid, proc.create_time()) not in keep:
                        tree.append(proc)
        except psutil.NoSuchProcess:
            return stopped
        if not tree:
            break
        _wait_for_exec(tree)
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        stopped += len(tree)
    return stopped


def _between_fork_and_exec(proc) -> bool:
    """A copy of its parent that has not run exec yet: the same program and command line, started moments ago."""
    import psutil

    try:
        parent = proc.parent()
        return (parent is not None and time.time() - proc.create_time() < 2 * EXEC_WAIT_S
                and proc.exe() == parent.exe() and proc.cmdline() == parent.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _wait_for_exec(tree, timeout_s: float = EXEC_WAIT_S) -> None:
    """Wait (at most `timeout_s`) until no process in `tree` is between fork and exec.

    Such a child runs its parent's Python (at-fork hooks, e.g. filelock's; Ray's `preexec_fn`) with its parent's
    signal handlers and terminal: a SIGTERM there runs the driver's handler (Ray's `sys.exit`) inside the hook,
    Python prints "Exception ignored ... Traceback" on the user's terminal, and the child then execs anyway. Once
    it has exec'd, it is the program it was started as, and stops as that program does."""
    deadline = time.monotonic() + timeout_s
    while any(_between_fork_and_exec(proc) for proc in tree) and time.monotonic() < deadline:
        time.sleep(0.02)


INTERRUPTED = 130  # the exit code after Ctrl-C or SIGTERM, as a shell reports Ctrl-C (docs/reliability.md)


def _sigterm_as_ctrl_c(signum, frame):
    """SIGTERM (what Slurm, Kubernetes and `kill` send) takes the path of Ctrl-C, without going through SIGINT:
    a command started by a script with `&` inherits SIGINT ignored, and SIGTERM must still stop it."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _sigterm_as_ctrl_c:
        handler(signal.SIGINT, frame)   # Ray Tune's during a sweep: stop the loop, save the state, return
    else:
        raise KeyboardInterrupt         # SIGINT ignored or default: stop as Python's Ctrl-C does


@contextlib.contextmanager
def ctrl_c_held():
    """Run the body (`ray.init`) with a first Ctrl-C held until the body returns, then raised as KeyboardInterrupt;
    a second Ctrl-C raises at once (a `ray.init` that hangs can still be stopped). SIGTERM, which takes Ctrl-C's
    path under `reaping`, is held the same way.

    `ray.init` forks Ray's processes, and after each fork Python runs the driver's at-fork hooks (logging's
    `_releaseLock`, filelock's). A KeyboardInterrupt raised inside one is printed ("Exception ignored in: <function
    _releaseLock>" and a traceback) and dropped, and the sweep ran on as if it had never been stopped (CI of
    2026-12-06, `test_a_sweep_stopped_while_ray_starts_leaves_no_process`). A handler that only records the signal
    cannot be dropped. Handlers someone else chose (SIGINT ignored, a library's own) are left alone."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        if held:
            raise KeyboardInterrupt   # the second one: at once
        held.append(signum)

    replaced = {}
    for signum, ours in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _sigterm_as_ctrl_c)):
        if signal.getsignal(signum) is ours:
            replaced[signum] = ours
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
    if held:
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_kept():
    """Run the body (`ray.init`), then give SIGTERM back to the Python handler it had, if it had one.

    `ray.init` takes SIGTERM twice. A local head node sets a Python handler that stops Ray's processes and
    exits 1 (ray._private.node: `_register_shutdown_hooks`); the CoreWorker installs Abseil's failure-signal
    handler over it at the C level (`install_failure_signal_handler`, on unless RAY_DISABLE_FAILURE_SIGNAL_HANDLER),
    which prints "*** SIGTERM received ***" and aborts (exit 134): no summary, no resume hint, runs left RUNNING.
    Setting a handler from Python again re-installs it with sigaction; Abseil keeps SIGSEGV, SIGABRT and the rest.
    Where nobody here had chosen a handler, Ray's own Python one is put back in force (a clean exit 1)."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        after = signal.getsignal(signal.SIGTERM) if main else None
        chosen = before if callable(before) else after
        if chosen is not None:
            signal.signal(signal.SIGTERM, chosen)


@contextlib.contextmanager
def sigint_restored():
    """Run the body, then put back the SIGINT handler it found. Ray Tune's `fit` installs its own and leaves it
    installed when no signal came: a Ctrl-C or SIGTERM after the sweep (the summary, the reconcile, a
    confirmation stage) would only set an event nobody reads any more."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def reaping(*, sigterm_as_ctrl_c: bool = True):
    """Run the body with SIGTERM as Ctrl-C (KeyboardInterrupt); then shut Ray down if the body started it, and stop
    every process it left under us. (Processes and a Ray instance that were there before are left alone: the CLI is
    also called in-process.)"""
    ray = sys.modules.get("ray")
    ray_was_up = ray is not None and ray.is_initialized()
    before = descendants()
    become_subreaper()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c) if sigterm_as_ctrl_c else None
    try:
        yield
    finally:
        # A second Ctrl-C while cleaning up must not leave half the processes running.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized() and not ray_was_up:
                with contextlib.suppress(Exception):
                    ray.shutdown()
            stop_descendants(keep=before)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
