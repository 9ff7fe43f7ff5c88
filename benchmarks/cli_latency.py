"""How long `sslsearch` takes to answer `--help` and to refuse bad input (docs/benchmarks.md).

Each case runs `python -m sslsearch.cli ARGS` in a fresh process (what a user waits for), `--repeat`
times, interleaved with the same case on `--baseline` (another checkout, e.g. the previous commit)
so both see the same machine load; the median wall time of each is reported with their ratio.

The refusals that need records (an unknown sweep, an existing `--out`, a second sweep of one name,
`resume` of a finished sweep) run against `--records`, a storage folder holding a finished sweep
named `done`; without it, one is made first by a real two-trial sweep (about half a minute).

    python benchmarks/cli_latency.py --repeat 5 --baseline /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_records(folder: Path) -> None:
    """A storage folder with one finished sweep, `done`: two trials of two epochs on digits."""
    sweep = ["sweep", "--name", "done", "--storage", str(folder), "--set", "pretrain.epochs=2", "--set",
             "pretrain.eval_every=1", "--set", "search.num_samples=2", "--set", "scheduler.grace_period=1"]
    print(f"making the records: sslsearch {' '.join(sweep)}", flush=True)
    subprocess.run([sys.executable, "-m", "sslsearch.cli", *sweep], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL, check=True, timeout=900)


def cases(scratch: Path, records: Path) -> list[tuple[str, list[str]]]:
    with socket.socket() as s:  # a port where nothing listens: a dead tracking server
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    (scratch / "exported").mkdir()
    (scratch / "exported" / "backbone.pt").write_text("an earlier export")
    (scratch / "model_card.json").write_text(json.dumps({"not": "a checkpoint"}))
    records_ = ["--storage", str(records)]
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
        ("linear, not a checkpoint", ["linear", "--checkpoint", str(scratch / "model_card.json")]),
        ("confirm, empty folder", ["confirm", "--storage", str(scratch / "empty")]),
        ("confirm nosuch", ["confirm", "nosuch", *records_]),
        ("leaderboard nosuch", ["leaderboard", "nosuch", *records_]),
        ("report nosuch", ["report", "nosuch", "--out", str(scratch / "report.html"), *records_]),
        ("export nosuch", ["export", "nosuch", "--out", str(scratch / "new-export"), *records_]),
        ("export, --out exists", ["export", "done", "--out", str(scratch / "exported"), *records_]),
        ("sweep --name of a finished sweep", ["sweep", "--name", "done", *records_]),
        ("sweep --name of a running sweep", ["sweep", "--name", "running", *records_]),
        ("resume of a finished sweep", ["resume", "done", *records_]),
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
    parser.add_argument("--records", type=Path, default=None,
                        help="a storage folder holding a finished sweep named `done` (default: make one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        records = args.records
        if records is None:
            records = Path(scratch) / "records"
            make_records(records)
        # A sweep that runs: its folder, and its lock held as `sweep` holds it (an flock) while this benchmark runs.
        running = records / "running"
        shutil.rmtree(running, ignore_errors=True)
        running.mkdir()
        shutil.copy(records / "done" / "sslsearch-sweep.json", running)
        lock = os.open(running / "sslsearch.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(lock, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                   "heartbeat": time.time()}).encode())
        print(f"{'case':34} {'this (s)':>9} {'baseline (s)':>13} {'ratio':>7}  exit", flush=True)
        for name, argv in cases(Path(scratch), records):
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
            print(f"{name:34} {this:9.2f} {base:13.2f} {ratio}  {sorted(codes)}", flush=True)
        os.close(lock)
        shutil.rmtree(running, ignore_errors=True)
    print(f"median of {args.repeat} runs each, interleaved; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
