"""How TPE steers, measured on the replay: each method's regret against random + FIFO and against the old default.

Replays every method (sslsearch.bench.replay.METHODS: the sweep's own SweepSearcher and PairedASHA over the
shipped table of real learning curves) once per seed and prints, per method, at a few budgets of epochs spent
(half, three quarters and all of random + FIFO's), the regret of the sweep's pick and the paired difference
(same seed) to random + FIFO, to "tpe+asha old" (the searcher before issue 19) and to "tpe+asha" (the default),
each as the mean and its 95 % t-interval over seeds. Negative is better. Seeds are independent replays, so the interval is
over seeds.

    python benchmarks/replay_compare.py [--seeds 200] [--first-seed 0] [--methods "tpe+asha twins=max,..."] [--table PATH]
"""

import argparse
import math
import sys
import time

import optuna

from sslsearch.bench.replay import DEFAULT_TABLE, METHODS, REFERENCE, Table, _interval, replay_sweep
from sslsearch.errors import InputError
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space

OLD = "tpe+asha old"
DEFAULT = "tpe+asha"   # the sweep's default: TPE with DEFAULT_PROPOSALS, ASHA


def _cell(values: list[float]) -> str:
    mean, low, high = _interval(values)
    if math.isnan(low):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def compare(table: Table, names: list[str], seeds: int, overrides: list[str], first_seed: int = 0) -> str:
    experiment = load_experiment(None, [*table.overrides(), *overrides])
    table.check(experiment)
    space = load_search_space(experiment.space_path())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    runs = {name: [replay_sweep(table, experiment, space, METHODS[name], seed) for seed in range(first_seed, first_seed + seeds)]
            for name in dict.fromkeys([REFERENCE, OLD, DEFAULT, *names])}
    budget = max(r.epochs for r in runs[REFERENCE])
    step = experiment.pretrain.eval_every
    marks = sorted({max(step, step * round(budget * f / step)) for f in (0.5, 0.75, 1.0)})
    lines = [(f"{seeds} seeds per method (search seeds {first_seed}–{first_seed + seeds - 1}) on {table.path.name} "
              f"({table.true_mean.shape[0]} configurations); {experiment.search.num_samples} trials, "
              f"{experiment.search.max_concurrent} slots; regret in val_acc points, mean [95 % t-interval over seeds]; "
              "differences paired by seed at equal epochs spent (negative: better)")]
    for name, method_runs in runs.items():
        spent = sum(r.epochs for r in method_runs) / len(method_runs)
        lines.append(f"{name} (epochs spent {spent:.0f}, within 0.5 of the best: "
                     f"{sum(math.isfinite(r.epochs_to(0.5)) for r in method_runs)}/{seeds} seeds)")
        for epochs in marks:
            regret = [r.regret_at(epochs) for r in method_runs]
            cells = [f"  @{epochs:<4} regret {_cell(regret)}"]
            for other in (REFERENCE, OLD, DEFAULT):
                if other != name:
                    paired = [a - b.regret_at(epochs) for a, b in zip(regret, runs[other])
                              if math.isfinite(a) and math.isfinite(b.regret_at(epochs))]
                    cells.append(f"vs {other} {_cell(paired)}")
            lines.append("; ".join(cells))
    lines.append(f"({time.monotonic() - started:.0f} s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m not in (REFERENCE, OLD, DEFAULT)),
                        help="comma-separated names from sslsearch.bench.replay.METHODS (default: all)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="replay search seeds first-seed … first-seed + seeds − 1 (fresh seeds confirm a choice)")
    parser.add_argument("--table", default=str(DEFAULT_TABLE))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="experiment override, e.g. search.num_samples=32")
    args = parser.parse_args()
    try:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if args.seeds < 2:
            raise InputError(f"--seeds must be at least 2 (an interval needs two), got {args.seeds}")
        if args.first_seed < 0:
            raise InputError(f"--first-seed must be ≥ 0, got {args.first_seed}")
        print(compare(Table(args.table), names, args.seeds, args.overrides, args.first_seed))
    except (InputError, FileNotFoundError) as error:
        print(f"replay_compare: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
