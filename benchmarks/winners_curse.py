"""The winner's curse on digits: how far a sweep's winner's search-time val_acc is above its confirmed score.

Runs `--sweeps` real paired digits sweeps through the CLI (each with its own search seed), then
`sslsearch confirm --top 1 --seeds N` on each, and prints per sweep and loss the rank-1
configuration's search-time val_acc (one run, selected as the best of many), its confirmed mean
over N fresh seeds, and the gap. The sweep is reduced from the embedded default so that it runs
in minutes on a 2-core CPU (see --samples, --epochs).

    .venv/bin/python benchmarks/winners_curse.py [--sweeps 3] [--samples 8] [--epochs 8] [--seeds 3] [--storage DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def sslsearch(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "sslsearch.cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"sslsearch {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8, help="trials per sweep (pairs × 2)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--storage", default=None, help="keep the records here (default: a temporary folder)")
    args = parser.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="winners-curse-")
    gaps = []
    print(f"{args.sweeps} sweeps of {args.samples} trials, up to {args.epochs} epochs (ASHA, grace 2); confirm --top 1 "
          f"--seeds {args.seeds}; records in {storage}")
    print("sweep  loss    search val_acc  confirmed mean ± 95% t (seeds)  gap")
    for i in range(args.sweeps):
        name = f"curse-{i}"
        if not (Path(storage) / name / "sslsearch-sweep.json").is_file():  # run again, it continues where it stopped
            sslsearch("sweep", "--name", name, "--storage", storage, "--set", f"search.num_samples={args.samples}",
                      "--set", f"pretrain.epochs={args.epochs}", "--set", f"search.seed={1000 * i}")
        sslsearch("confirm", name, "--storage", storage, "--top", "1", "--seeds", str(args.seeds))
        board = json.loads(sslsearch("leaderboard", name, "--storage", storage, "--format", "json"))
        for row in board["confirmed"]:
            gap = row["search_val_acc"] - row["val_acc_mean"]
            gaps.append(gap)
            half = (row["ci_high"] - row["ci_low"]) / 2 if row["ci_low"] is not None else float("nan")
            print(f"{name}  {row['loss']:6s}  {row['search_val_acc']:14.2f}  {row['val_acc_mean']:8.2f} ± {half:.2f} "
                  f"({row['seeds']})          {gap:+.2f}")
    gaps = np.array(gaps)
    print(f"gap (search − confirmed) over {gaps.size} winners: mean {gaps.mean():+.2f} points, "
          f"min {gaps.min():+.2f}, max {gaps.max():+.2f}")


if __name__ == "__main__":
    main()
