"""Sweep overhead: wall time of a sweep against the trials' own time divided by the concurrency.

Runs a real sweep on the embedded digits data with FIFO scheduling (no early stopping, so every
trial runs its full length) and trials long enough to matter (default 30 epochs, about 30 s each on
one core), then prints the figures the sweep summary prints. Goal: ≤ 10 % for trials of ≥ 30 s.

    .venv/bin/python benchmarks/sweep_overhead.py [--epochs 30] [--trials 4]
"""

import argparse
import tempfile

from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    experiment = load_experiment(None, [f"pretrain.epochs={args.epochs}", "pretrain.eval_every=5",
                                        f"search.num_samples={args.trials}", "scheduler.type=fifo"])
    space = load_search_space(experiment.space_path())
    with tempfile.TemporaryDirectory() as storage:
        summary = run_sweep(experiment, space, name="overhead", storage=storage, quiet=True)
    seconds = [t.trial_seconds for t in summary.trials]
    print(f"{len(seconds)} trials of {args.epochs} epochs, {min(seconds):.0f}–{max(seconds):.0f} s each, "
          f"concurrency {summary.concurrency}")
    print(f"wall {summary.wall_seconds:.1f} s, trials' own time / concurrency "
          f"{sum(seconds) / summary.concurrency:.1f} s, overhead {100 * summary.overhead:.1f} %")


if __name__ == "__main__":
    main()
