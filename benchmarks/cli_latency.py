"""How long `sslsearch` takes to answer `--help` and to refuse bad input (docs/benchmarks.md).

Each case runs `python -m sslsearch.cli ARGS` in a fresh process (what a user waits for), `--repeat`
times, interleaved with the same case on `--baseline` (another checkout, e.g. the previous commit)
so both see the same machine load; the median wall time of each is reported with their ratio.

    python benchmarks/cli_latency.py --repeat 5 --baseline /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cases(scratch: Path) -> list[tuple[str, list[str]]]:
    with socket.socket() as s:  # a port where nothing listens: a dead tracking server
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    return [
        ("--help", ["--help"]),
        ("pretrain --help", ["pretrain", "--help"]),
        ("unknown flag", ["leaderboard", "--sweep", "x"]),
        ("pretrain --loss simclr", ["pretrain", "--loss", "simclr"]),
        ("sweep --set pretrain.epoch=3", ["sweep", "--set", "pretrain.epoch=3", "--storage", str(scratch)]),
        ("sweep, dead tracking server", ["sweep", "--tracking-uri", dead, "--storage", str(scratch)]),
        ("leaderboard, no records", ["leaderboard", "nosuch", "--storage", str(scratch)]),
        ("resume nosuch", ["resume", "nosuch", "--storage", str(scratch)]),
        ("linear, no checkpoint", ["linear", "--checkpoint", str(scratch / "none.pt")]),
    ]


def run_once(checkout: Path, argv: list[str]) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sslsearch.cli", *argv], cwd=checkout, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - started, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case (default: 5)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time side by side")
    args = parser.parse_args()
    print(f"{'case':32} {'this (s)':>9} {'baseline (s)':>13} {'ratio':>7}  exit", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, argv in cases(Path(scratch)):
            times: dict[str, list[float]] = {"this": [], "baseline": []}
            codes = set()
            for _ in range(args.repeat):
                for label, checkout in (("this", ROOT), ("baseline", args.baseline)):
                    if checkout is not None:
                        seconds, code = run_once(checkout, argv)
                        times[label].append(seconds)
                        if label == "this":
                            codes.add(code)
            this = statistics.median(times["this"])
            base = statistics.median(times["baseline"]) if times["baseline"] else float("nan")
            ratio = f"{base / this:6.1f}x" if times["baseline"] else "      -"
            print(f"{name:32} {this:9.2f} {base:13.2f} {ratio}  {sorted(codes)}", flush=True)
    print(f"median of {args.repeat} runs each, interleaved; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
