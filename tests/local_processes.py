"""This machine's processes, as tests see them: a free loopback port, and the live processes whose command line or
environment mention a marker (a test's private Ray temp folder), to check none is left behind or to kill them."""

import os
import signal
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(marker: str) -> list[str]:
    """'PID: command line' of every live (not zombie) process but this one that mentions `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if (marker in cmdline or marker in environ) and state != "Z":
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def kill_processes_mentioning(marker: str) -> None:
    """SIGKILL them: one test's Ray cluster only (never `ray stop`, which stops every Ray here)."""
    for line in processes_mentioning(marker):
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except OSError:
            pass
