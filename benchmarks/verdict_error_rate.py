"""The verdict's false-positive rate and power: the whole pipeline (search with PairedASHA, confirm's choice
of settings and seed blocks, the exact test and its gate) simulated on synthetic losses (sslsearch.bench.verdict).

    .venv/bin/python benchmarks/verdict_error_rate.py [--sweeps 2000] [--seeds 8] [--top 1] [--design shared]
"""

import argparse
import json
import platform
import time

from sslsearch.bench.verdict import error_rates, format_error_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=2000, help="simulated sweeps per scenario (default: 2000)")
    parser.add_argument("--seeds", type=int, default=8, help="confirmation seeds (default: 8, confirm's default)")
    parser.add_argument("--top", type=int, default=1, help="confirmed settings (default: 1, confirm's default)")
    parser.add_argument("--design", default="shared", choices=("shared", "per-loss"))
    parser.add_argument("--seed", type=int, default=0, help="the simulation's random seed")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{args.sweeps} simulated sweeps per scenario; confirm --top {args.top} --seeds {args.seeds} --design {args.design}; "
          f"α = 0.05; {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = error_rates(sweeps=args.sweeps, seeds=args.seeds, top=args.top, design=args.design, seed=args.seed)
    print(format_error_rates(results))
    print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
