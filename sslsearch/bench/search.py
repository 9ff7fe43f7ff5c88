"""What the search is worth: searchers and schedulers compared on one problem (`sslsearch bench search`).

Each method (sampler + scheduler) runs real sweeps — the real Tuner, SweepSearcher and PairedASHA,
real trials — on the same experiment and search space, the same number of trials, once per search
seed. Per method it reports the best final val_acc (the leaderboard's ranking: a trial's last
report), the epochs trained (the compute), the wall time, and the anytime curve: the best final
val_acc of the trials finished so far against the epochs trained so far by all trials. The headline
is how many of random + FIFO's epochs TPE + ASHA needs to come within 0.5 points of random + FIFO's
best (per seed, the same seed's random + FIFO run).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

from ray import tune

from sslsearch.errors import InputError
from sslsearch.search.experiment import Experiment
from sslsearch.search.outcomes import METRIC
from sslsearch.search.space import SearchSpace
from sslsearch.search.sweep import run_sweep

METHODS = {"tpe+asha": ("tpe", "asha"), "random+asha": ("random", "asha"),
           "random+fifo": ("random", "fifo"), "tpe+fifo": ("tpe", "fifo")}
REFERENCE = "random+fifo"     # every trial to its full budget, no learning: the baseline
TOLERANCE = 0.5               # val_acc points: "as good as the baseline's best"


class AnytimeRecorder(tune.Callback):
    """On the driver, in arrival order: epochs trained by every report, and each finished trial's final val_acc.

    In a paired sweep a result counts once its pair has ended (both twins finish at the same epoch, but in either
    order): otherwise the curve, and the headline, would depend on which twin happened to finish first."""

    def __init__(self, paired: bool = False):
        self.paired = paired
        self.epochs: dict[str, int] = {}
        # (seconds, epochs trained so far, finished trial's val_acc, its pair or None)
        self.events: list[tuple[float, int, float | None, int | None]] = []
        self.start = time.monotonic()

    def _trained(self) -> int:
        return sum(self.epochs.values())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs[trial.trial_id] = max(self.epochs.get(trial.trial_id, 0), int(result.get("epoch", 0)))
        self.events.append((time.monotonic() - self.start, self._trained(), None, None))

    def on_trial_complete(self, iteration, trials, trial, **info):
        value = (trial.last_result or {}).get(METRIC)
        pair = trial.config.get("pair") if self.paired else None
        if value is not None and math.isfinite(value):
            self.events.append((time.monotonic() - self.start, self._trained(), float(value), pair))

    def curve(self) -> list[tuple[int, float]]:
        """(epochs trained, best final val_acc so far) at each finished trial (paired: pair) that raised the best."""
        points, best, waiting = [], -math.inf, {}
        for _, epochs, value, pair in self.events:
            if value is None:
                continue
            if pair is not None and pair not in waiting:
                waiting[pair] = value    # its twin has not finished yet
                continue
            value = max(value, waiting.pop(pair, -math.inf))
            if value > best:
                best = value
                points.append((epochs, best))
        return points


def _method_experiment(experiment: Experiment, method: str, seed: int) -> Experiment:
    sampler, scheduler = METHODS[method]
    return dataclasses.replace(experiment, search=dataclasses.replace(experiment.search, sampler=sampler, seed=seed),
                               scheduler=dataclasses.replace(experiment.scheduler, type=scheduler))


def bench_search(experiment: Experiment, space: SearchSpace, *, methods: tuple[str, ...] = tuple(METHODS),
                 seeds: tuple[int, ...] = (0, 1, 2), storage: str | None = None, trainable=None, progress=print) -> dict:
    """Run every method once per seed (`trainable`: run_sweep's); per-run figures, anytime curves and per-method
    aggregates."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="sslsearch-bench-search-") as scratch:
        root = Path(storage or scratch).resolve()
        runs = []
        for seed in seeds:
            for method in methods:
                recorder = AnytimeRecorder(paired=experiment.search.paired)
                summary = run_sweep(_method_experiment(experiment, method, seed), space, name=f"{method}-seed{seed}",
                                    storage=str(root), callbacks=[recorder], quiet=True, trainable=trainable)
                finals = [t.val_acc for t in summary.trials if t.rankable]
                run = {"method": method, "seed": seed, "best": max(finals) if finals else None,
                       "epochs": recorder._trained(), "wall_s": summary.wall_seconds, "trials": len(summary.trials),
                       "outcomes": {o: sum(t.outcome == o for t in summary.trials) for o in
                                    sorted({t.outcome for t in summary.trials})},
                       "curve": recorder.curve()}
                runs.append(run)
                best = "none (no trial ranked)" if run["best"] is None else f"{run['best']:.2f}"
                progress(f"{method:12s} seed {seed}: best {best}, {run['epochs']} epochs, "
                         f"{run['wall_s']:.0f} s")
    return {"experiment": experiment.to_dict(), "methods": list(methods), "seeds": list(seeds), "runs": runs,
            "summary": summarize_methods(runs, methods)}


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """Epochs trained when the best final val_acc first reached `target`; None if it never did."""
    return next((epochs for epochs, best in curve if best >= target), None)


def summarize_methods(runs: list[dict], methods) -> dict:
    """Per method: best val_acc mean / sd / min / max over seeds, mean epochs and wall time, and
    the share of the same seed's random + FIFO epochs it needed to get within TOLERANCE of that run's best."""
    reference = {r["seed"]: r for r in runs if r["method"] == REFERENCE}
    out = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method and r["best"] is not None]
        if not mine:
            continue
        bests = [r["best"] for r in mine]
        shares = []
        for r in mine:
            ref = reference.get(r["seed"])
            if ref is None or ref["best"] is None:
                continue
            needed = epochs_to_reach(r["curve"], ref["best"] - TOLERANCE)
            shares.append(None if needed is None else needed / ref["epochs"])
        reached = [s for s in shares if s is not None]
        out[method] = {"n": len(mine), "best_mean": statistics.fmean(bests),
                       "best_sd": statistics.stdev(bests) if len(bests) > 1 else 0.0,
                       "best_min": min(bests), "best_max": max(bests),
                       "epochs_mean": statistics.fmean(r["epochs"] for r in mine),
                       "wall_mean": statistics.fmean(r["wall_s"] for r in mine),
                       "reached": f"{len(reached)}/{len(shares)}",
                       "share_mean": statistics.fmean(reached) if reached else None}
    return out


def format_bench_search(result: dict) -> str:
    lines = [f"{'method':12s} {'n':>2s} {'best val_acc (mean ± sd, min–max)':>36s} {'epochs':>7s} {'wall s':>7s}  "
             f"within {TOLERANCE} of {REFERENCE}'s best: seeds, mean share of its epochs"]
    for method, s in result["summary"].items():
        share = f"{100 * s['share_mean']:.0f} %" if s["share_mean"] is not None else "—"
        lines.append(f"{method:12s} {s['n']:2d} {s['best_mean']:13.2f} ± {s['best_sd']:4.2f} ({s['best_min']:.2f}–"
                     f"{s['best_max']:.2f}) {s['epochs_mean']:7.0f} {s['wall_mean']:7.0f}  {s['reached']}, {share}")
    return "\n".join(lines)


def plot_anytime(result: dict, path: str | Path) -> Path:
    """All methods' anytime curves on one axis (one line per seed), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"tpe+asha": "tab:blue", "random+asha": "tab:orange", "random+fifo": "tab:green", "tpe+fifo": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in result["methods"]:
        for i, run in enumerate(r for r in result["runs"] if r["method"] == method):
            if not run["curve"]:
                continue
            xs = [e for e, _ in run["curve"]] + [run["epochs"]]
            ys = [b for _, b in run["curve"]] + [run["curve"][-1][1]]
            ax.step(xs, ys, where="post", color=colours.get(method), alpha=0.8, lw=1.4,
                    label=method if i == 0 else None)
    ax.set_xlabel("epochs trained by all trials so far (compute)")
    ax.set_ylabel("best final val_acc of finished trials (%)")
    ax.set_title(f"anytime performance, {len(result['seeds'])} search seed(s) per method")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
