"""What refusing tests/test_input_corpus.py's malformed inputs costs (docs/reliability.md): per case, the CPU time
(user + system) of the refused `python -m sslsearch.cli` process, its wall time, and the peak resident memory of
any case. CPU time is what a quiet machine waits; wall time is what this machine's load added.

    python benchmarks/input_corpus.py
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_input_corpus as corpus  # noqa: E402  (the cases live with their test)


def run_case(files: dict, args: list) -> tuple[int, float, float]:
    """(exit code, CPU seconds, wall seconds) of one case in a fresh process and fresh folders."""
    with tempfile.TemporaryDirectory() as scratch:
        inputs, work, tmp, home = (Path(scratch) / n for n in ("in", "work", "tmp", "home"))
        for folder in (inputs, work, tmp, home):
            folder.mkdir()
        corpus._make(inputs, files)
        argv = corpus.command_line(args, inputs, work)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "HOME": str(home)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "sslsearch.cli", *argv], cwd=work, env=env, capture_output=True)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return done.returncode, cpu, wall


def main() -> None:
    rows = [(case, *run_case(files, args)) for case, files, args, _ in corpus.CASES]
    cpu, wall = [r[2] for r in rows], [r[3] for r in rows]
    print(f"{len(rows)} cases, {sum(r[1] == 2 for r in rows)} refused with exit code 2")
    print(f"CPU s per case: median {statistics.median(cpu):.2f}, max {max(cpu):.2f} ({max(rows, key=lambda r: r[2])[0]})")
    print(f"wall s per case: median {statistics.median(wall):.2f}, max {max(wall):.2f} ({max(rows, key=lambda r: r[3])[0]})")
    print(f"peak resident memory of any case: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
