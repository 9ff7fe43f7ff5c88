"""This machine's processes, as tests see them: the live processes whose command line or environment mention a
marker (a test's private Ray temp folder), to check none is left behind or to kill them. (A free port, a server
started and stopped: sslsearch.processes.)"""

import contextlib
import os
import signal

import psutil


def processes_mentioning(marker: str) -> list[str]:
    """'PID: command line' of every live (not zombie) process but this one that mentions `marker`."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and (marker in cmdline or any(
                    marker in f"{k}={v}" for k, v in proc.environ().items())):
                found.append(f"{proc.pid}: {cmdline[:120]}")
    return found


def kill_processes_mentioning(marker: str) -> None:
    """SIGKILL them: one test's Ray cluster only (never `ray stop`, which stops every Ray here)."""
    for line in processes_mentioning(marker):
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except OSError:
            pass
