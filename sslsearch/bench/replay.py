"""The search replayed on a table of real learning curves (`sslsearch bench search --replay`).

A tabular benchmark in the manner of LCBench / HPOBench and Syne Tune's simulator backend: the sweep's
own `SweepSearcher` (Optuna) and scheduler (`PairedASHA`, or FIFO) make every decision, exactly as in a
sweep; only the trials are replaced by the table (sslsearch.bench.replay_table): a proposed configuration
is the nearest design point (in log λ, log lr and the feature_dim index), its seed one of the table's
seeds, and each report is that run's recorded val_acc. Time is simulated (every epoch takes one unit),
and `ReplayController` plays the part of Ray's TuneController towards scheduler and searcher with Ray's
call order (tune_controller.py, ray 2.60): searcher asked first, then the scheduler's choice of trial
to run, then pending trials in order; a STOP reaches the searcher as `on_trial_complete` with that
report; a paused or pending trial stopped is `on_trial_remove` + `on_trial_complete(None)`.
tests/test_replay.py checks that a real Tuner over `replay_trainable` makes the same decisions.

Per method and seed it records the anytime curve: after each report, the epochs spent by all trials
and the regret of the sweep's pick at that moment (the best final report of the trials ended so far,
as the sweep summary ranks them): the table's best configuration mean minus the mean, over the table's
seeds, of the picked configuration's final val_acc.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sslsearch.bench.replay_table import NOT_RECORDED, load_table
from sslsearch.errors import InputError
from sslsearch.presets import REPLAY_TABLE
from sslsearch.search.asha import PairedASHA
from sslsearch.search.experiment import Experiment
from sslsearch.search.proposals import DEFAULT_PROPOSALS, ProposalSettings
from sslsearch.search.space import SearchSpace, parse_search_space
from sslsearch.search.sweep import METRIC, SweepSearcher, make_scheduler
from sslsearch.search.trial_config import trial_value

DEFAULT_TABLE = REPLAY_TABLE
REFERENCE = "random+fifo"
TOLERANCE = 0.5        # val_acc points from the table's best


@dataclass(frozen=True)
class Method:
    """A sampler and a scheduler type, as a sweep would run them, and how its configuration study proposes."""

    name: str
    sampler: str                       # tpe, random, gp: make_sampler's names
    scheduler: str                     # asha or fifo
    # None: the searcher before issue 19 (TPE samples the sweep's study, Optuna's startup of 10 finished trials)
    proposals: ProposalSettings | None = DEFAULT_PROPOSALS


METHODS = {m.name: m for m in (
    Method("random+fifo", "random", "fifo"),
    Method("random+asha", "random", "asha"),
    Method("tpe+fifo", "tpe", "fifo"),
    Method("tpe+asha", "tpe", "asha"),
    Method("tpe+asha old", "tpe", "asha", None),
    Method("tpe+fifo old", "tpe", "fifo", None),
    # TPE settings compared on the replay (docs/sweeps.md, "How TPE steers"); the sweep's own are DEFAULT_PROPOSALS.
    Method("tpe+asha startup=4", "tpe", "asha", ProposalSettings(startup=4)),   # half: the default before the new table
    Method("tpe+asha startup=6", "tpe", "asha", ProposalSettings(startup=6)),
    Method("tpe+asha univariate", "tpe", "asha", ProposalSettings(multivariate=False)),
    Method("tpe+asha hyperopt gamma", "tpe", "asha", ProposalSettings(gamma="hyperopt")),
    Method("tpe+asha quarter gamma", "tpe", "asha", ProposalSettings(gamma="quarter")),
    Method("tpe+asha no liar", "tpe", "asha", ProposalSettings(constant_liar=False)),
    Method("tpe+asha twins=max", "tpe", "asha", ProposalSettings(twins="max")),
    Method("tpe+asha twins=mean", "tpe", "asha", ProposalSettings(twins="mean")),
)}
DEFAULT_METHODS = ("random+fifo", "random+asha", "tpe+fifo", "tpe+asha", "tpe+asha old")


class Table:
    """The replay table with nearest-design-point lookup (log λ, log lr, feature_dim index, each scaled to [0, 1]).

    Its pretraining settings and search space are the ones recorded in its metadata (the experiment it was built
    from); `check` and `check_space` refuse an experiment or a space that differs from them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        arrays, self.meta = load_table(self.path)
        self.space = parse_search_space(self.meta["space"], f"{self.path.name} (its recorded search space)")
        whole = arrays["done"].all(axis=(1, 2))     # configurations with every loss and seed recorded
        if whole.sum() < 2:
            raise InputError(f"{path} holds fewer than 2 complete configurations")
        self.lmbda, self.lr = arrays["lmbda"][whole], arrays["lr"][whole]
        self.feature_dim = arrays["feature_dim"][whole]
        self.val_acc = arrays["val_acc"][whole]              # (configs, losses, seeds, reports)
        self.diverged_epoch = arrays["diverged_epoch"][whole]
        self.epochs = [int(e) for e in arrays["epochs"]]
        self.losses = [str(loss) for loss in arrays["losses"]]
        self.seeds = self.val_acc.shape[2]
        self.chance = float(self.meta["chance_val_acc"])
        self._points = self._scaled(self.lmbda, self.lr, self.feature_dim)
        final = np.where(self.diverged_epoch > 0, self.chance, self.val_acc[..., -1])
        self.true_mean = final.mean(axis=2)                  # (configs, losses): what a configuration is worth
        self.best = float(self.true_mean.max())

    def _scaled(self, lmbda, lr, feature_dim) -> np.ndarray:
        space = self.meta["space"]

        def unit(x, name):
            low, high = space[name]["low"], space[name]["high"]
            return (np.log(np.asarray(x, dtype=float)) - math.log(low)) / (math.log(high) - math.log(low))

        widths = space["feature_dim"]["values"]
        index = np.searchsorted(widths, np.asarray(feature_dim)) / (len(widths) - 1)
        return np.stack([unit(lmbda, "lmbda"), unit(lr, "lr"), index], axis=-1)

    def lookup(self, config: dict) -> int:
        """The design point nearest to a trial's configuration."""
        point = self._scaled([config["lmbda"]], [config["lr"]], [config["feature_dim"]])[0]
        return int(np.argmin(((self._points - point) ** 2).sum(axis=1)))

    def reports(self, config: dict, max_epochs: int) -> list[dict]:
        """The results a trial of this configuration reports, as trainable.run_trial reports them."""
        c, loss, seed = self.lookup(config), self.losses.index(config["loss"]), int(config["seed"]) % self.seeds
        diverged = int(self.diverged_epoch[c, loss, seed])
        out = []
        for epoch, value in zip(self.epochs, self.val_acc[c, loss, seed]):
            if epoch > max_epochs:
                break
            if diverged and epoch >= diverged:   # run_trial's last report of a diverged run: chance, at that epoch
                out.append({"epoch": diverged, METRIC: self.chance, "diverged": True})
                break
            out.append({"epoch": epoch, METRIC: float(value)})
        return out

    def overrides(self) -> list[str]:
        """`--set` overrides that give an experiment the table's recorded val split, epochs and report interval."""
        base = self.meta["base"]
        return [f"pretrain.{key}={base[key]}" for key in ("val_fraction", "epochs", "eval_every")]

    def check(self, experiment: Experiment) -> None:
        """Refuse (one line) an experiment whose pretraining settings the table did not record (fewer epochs are
        allowed: the table's reports are cut there)."""
        base = self.meta["base"]
        wanted = {k: v for k, v in experiment.pretrain.to_dict().items() if k not in NOT_RECORDED and k in base}
        differ = [f"{k} {base[k]} (experiment: {v})" for k, v in wanted.items() if k != "epochs" and base[k] != v]
        if experiment.pretrain.epochs > base["epochs"]:
            differ.append(f"epochs {base['epochs']} (experiment: {experiment.pretrain.epochs})")
        if differ:
            raise InputError(f"the replay table {self.path} was recorded with {', '.join(differ)}; "
                             "replay an experiment with the table's settings or build a table for it")

    def check_space(self, space: SearchSpace) -> None:
        """Refuse (one line) a search space other than the one the table's design covers."""
        recorded = {p.name: p for p in self.space.parameters}
        given = {p.name: p for p in space.parameters}
        differ = [f"{name}: {self._shown(recorded.get(name))} (replay: {self._shown(given.get(name))})"
                  for name in [*recorded, *(n for n in given if n not in recorded)] if recorded.get(name) != given.get(name)]
        if differ:
            raise InputError(f"the replay table {self.path} was recorded over another search space: {'; '.join(differ)}; "
                             "replay with the table's space or build a table for this one")

    @staticmethod
    def _shown(parameter) -> str:
        if parameter is None:
            return "absent"
        if parameter.distribution == "choice":
            return f"choice {list(parameter.values)}"
        return f"{parameter.distribution} [{parameter.low:g}, {parameter.high:g}]"


class ReplayController:
    """What PairedASHA and SweepSearcher see of Ray's TuneController, with its call order (module docstring)."""

    def __init__(self, searcher: SweepSearcher, scheduler: TrialScheduler):
        self.searcher, self.scheduler = searcher, scheduler
        self.trials: list[Trial] = []
        self.decisions: list[tuple[str, int, str]] = []    # (trial id, epoch, decision), for the cross-check
        self.on_end = None   # called with a waiting trial the scheduler stops (a paused twin whose pair was stopped)

    def get_trials(self) -> list[Trial]:
        return self.trials

    def stop_trial(self, trial: Trial) -> None:
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
            if self.on_end is not None and trial.last_result:   # it ended with its last report: the summary ranks it
                trial.set_status(Trial.TERMINATED)
                self.on_end(trial)
        elif trial.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        trial.set_status(Trial.TERMINATED)


@dataclass
class ReplayRun:
    """One replayed sweep: its anytime curve and what it chose."""

    method: str
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)   # (epochs spent, regret of the pick) at each change
    epochs: int = 0
    configurations: list[tuple[int, str]] = field(default_factory=list)   # (design point, loss) per trial, in order
    params: list[dict] = field(default_factory=list)       # each trial's sampled values, in order
    last_epochs: list[int] = field(default_factory=list)   # the epoch each trial ended at, in order
    decisions: list[tuple[str, int, str]] = field(default_factory=list)

    def regret_at(self, epochs: int) -> float:
        """The regret of the pick once `epochs` epochs were spent (inf before any trial ended)."""
        regret = math.inf
        for spent, value in self.curve:
            if spent > epochs:
                break
            regret = value
        return regret

    def epochs_to(self, tolerance: float) -> float:
        """Epochs spent until the pick was within `tolerance` of the table's best (inf if never)."""
        return next((spent for spent, value in self.curve if value <= tolerance), math.inf)


def method_experiment(experiment: Experiment, method: Method, seed: int) -> Experiment:
    return dataclasses.replace(experiment, search=dataclasses.replace(experiment.search, sampler=method.sampler, seed=seed),
                               scheduler=dataclasses.replace(experiment.scheduler, type=method.scheduler))


def replay_sweep(table: Table, experiment: Experiment, space: SearchSpace, method: Method, seed: int) -> ReplayRun:
    """One sweep of `experiment` with `method`, its trials replayed from `table` in simulated time."""
    experiment = method_experiment(experiment, method, seed)
    search, max_epochs = experiment.search, experiment.pretrain.epochs
    scheduler = make_scheduler(experiment)
    searcher = SweepSearcher(space, max_epochs=max_epochs, sampler=method.sampler, seed=seed,
                             paired=search.paired, study_name=f"replay-{method.name}-{seed}", study_path=None,
                             scheduler=scheduler if isinstance(scheduler, PairedASHA) else None,
                             num_samples=search.num_samples, proposals=method.proposals)
    slots = search.max_concurrent
    searcher.set_max_concurrency(slots)
    controller = ReplayController(searcher, scheduler)
    run = ReplayRun(method.name, seed)
    reports: dict[str, list[dict]] = {}
    position: dict[str, int] = {}       # trial id → index of its next report
    trained: dict[str, int] = {}        # trial id → epochs trained
    events: list[tuple[float, int, str]] = []   # (time, creation order, trial id): the next report of each running trial
    order: dict[str, int] = {}
    now, best_pick = 0.0, (-math.inf, None)

    def start(trial: Trial) -> None:
        trial.set_status(Trial.RUNNING)
        i = position[trial.trial_id]
        previous = reports[trial.trial_id][i - 1]["epoch"] if i else 0
        heapq.heappush(events, (now + reports[trial.trial_id][i]["epoch"] - previous, order[trial.trial_id], trial.trial_id))

    def ended(trial: Trial) -> None:
        nonlocal best_pick
        result = trial.last_result or {}
        value = result.get(METRIC)
        # The sweep summary's ranking: trained (epoch > 0), not diverged, best final report.
        if value is not None and result.get("epoch", 0) > 0 and not result.get("diverged") and value > best_pick[0]:
            best_pick = (value, (table.lookup(trial.config), table.losses.index(trial.config["loss"])))
            c, loss = best_pick[1]
            run.curve.append((sum(trained.values()), table.best - float(table.true_mean[c, loss])))

    controller.on_end = ended
    while True:
        while len(controller.trials) < search.num_samples:   # Ray asks the searcher first
            trial_id = f"{len(controller.trials):05d}"
            config = searcher.suggest(trial_id)
            if config is None:
                break
            trial = Trial("replay", config={**config, "base": {}}, trial_id=trial_id, stub=True)
            reports[trial_id], position[trial_id], trained[trial_id] = table.reports(config, max_epochs), 0, 0
            order[trial_id] = len(controller.trials)
            controller.trials.append(trial)
            run.configurations.append((table.lookup(config), config["loss"]))
            run.params.append({k: config[k] for k in ("lmbda", "lr", "feature_dim", "loss", "seed")})
            scheduler.on_trial_add(controller, trial)
        running = sum(t.status == Trial.RUNNING for t in controller.trials)
        while running < slots:   # then the scheduler's choice, then pending trials in order
            chosen = scheduler.choose_trial_to_run(controller)
            if chosen is None:
                chosen = next((t for t in controller.trials if t.status == Trial.PENDING), None)
            if chosen is None:
                break
            start(chosen)
            running += 1
        if not events:
            break
        now, _, trial_id = heapq.heappop(events)
        trial = controller.trials[order[trial_id]]
        result = reports[trial_id][position[trial_id]]
        position[trial_id] += 1
        trained[trial_id] = result["epoch"]
        trial.run_metadata.last_result = dict(result)   # (what Trial.update_last_result stores)
        decision = scheduler.on_trial_result(controller, trial, result)
        run.decisions.append((trial_id, result["epoch"], decision))
        last = position[trial_id] == len(reports[trial_id])
        if decision == TrialScheduler.STOP:
            controller.stop_trial(trial)
            ended(trial)
            continue
        searcher.on_trial_result(trial_id, result)
        if last:   # the trainable returned: Ray completes the trial with its last result
            controller.stop_trial(trial)
            ended(trial)
        elif decision == TrialScheduler.PAUSE:
            trial.set_status(Trial.PAUSED)
        else:
            start(trial)
    run.epochs = sum(trained.values())
    run.last_epochs = [trained[t.trial_id] for t in controller.trials]
    return run


def replay_trial(config: dict, table: str) -> None:
    """Ray Tune function trainable that reports a table's run (the cross-check of `replay_sweep`)."""
    for result in Table(table).reports(config, int(trial_value(config, "epochs"))):
        tune.report(result)


def replay_trainable(table: str | Path):
    """`replay_trial` over `table`, for `run_sweep(trainable=...)`."""
    return tune.with_parameters(replay_trial, table=str(Path(table).resolve()))


# -- the benchmark --------------------------------------------------------------------------------------------

def _interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds (independent replicates)."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return (finite[0] if finite else math.nan, math.nan, math.nan)
    mean, sd = statistics.fmean(finite), statistics.stdev(finite)
    from scipy import stats  # scikit-learn's dependency: always installed

    half = stats.t.ppf(0.975, len(finite) - 1) * sd / math.sqrt(len(finite))
    return mean, mean - half, mean + half


def bench_replay(experiment: Experiment, space: SearchSpace, *, table: str | Path = DEFAULT_TABLE,
                 methods: tuple[Method, ...] = tuple(METHODS.values()), seeds: int = 50, progress=None) -> dict:
    """Replay every method once per seed; per method: anytime regret with 95 % intervals, the paired difference to
    random+FIFO at equal epochs, and the epochs to come within TOLERANCE of the table's best."""
    if not Path(table).is_file():
        raise InputError(f"replay table not found: {table}; build one with python -m sslsearch.bench.replay_table")
    table = Table(table)
    table.check(experiment)
    table.check_space(space)
    if REFERENCE not in {m.name for m in methods}:
        methods = (METHODS[REFERENCE], *methods)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    runs: dict[str, list[ReplayRun]] = {}
    for method in methods:
        runs[method.name] = [replay_sweep(table, experiment, space, method, seed) for seed in range(seeds)]
        if progress:
            progress(f"replayed {method.name}: {seeds} seeds in {time.monotonic() - started:.0f} s")
    budget = max(r.epochs for r in runs[REFERENCE])
    step = experiment.pretrain.eval_every
    grid = list(range(step, budget + 1, step))
    result = {"table": str(table.path), "table_meta": table.meta, "seeds": seeds, "budget_epochs": budget,
              "table_best": table.best, "configurations": int(table.true_mean.shape[0]), "grid": grid,
              "losses": len(table.losses), "table_seeds": table.seeds,
              "seconds": time.monotonic() - started, "methods": {}}
    reference = runs[REFERENCE]
    for name, method_runs in runs.items():
        regret = [_interval([r.regret_at(e) for r in method_runs]) for e in grid]
        difference = [_interval([r.regret_at(e) - ref.regret_at(e) for r, ref in zip(method_runs, reference)
                                 if math.isfinite(r.regret_at(e)) and math.isfinite(ref.regret_at(e))]) for e in grid]
        to_tolerance = [r.epochs_to(TOLERANCE) for r in method_runs]
        ratios = [a / b for a, b in zip(to_tolerance, (ref.epochs_to(TOLERANCE) for ref in reference))
                  if math.isfinite(a) and math.isfinite(b)]
        result["methods"][name] = {
            "regret": regret, "difference_to_reference": difference,
            "epochs_spent": _interval([r.epochs for r in method_runs]),
            "final_regret": _interval([r.regret_at(budget) for r in method_runs]),
            "epochs_to_tolerance_median": statistics.median(to_tolerance),
            "reached_tolerance": sum(math.isfinite(v) for v in to_tolerance),
            "epochs_ratio_to_reference_median": statistics.median(ratios) if ratios else math.nan,
            "both_reached_tolerance": len(ratios),
        }
    return result


def format_replay(result: dict) -> str:
    """The benchmark's table: per method, regret at a few budgets, the paired difference, epochs to tolerance."""
    meta = result["table_meta"]
    grid = result["grid"]
    marks = sorted({grid[max(0, round(len(grid) * f) - 1)] for f in (0.25, 0.5, 1.0)})
    lines = [(f"replay of {result['seeds']} seeds per method on {result['table']} ({result['configurations']} "
              f"configurations × {result['losses']} losses × {result['table_seeds']} seeds, recorded "
              f"{meta.get('started')} on {meta.get('machine')}); table best {result['table_best']:.2f}; regret = table "
              f"best − true mean of the sweep's pick (val_acc points; mean [95 % interval] over seeds, one seed = one "
              f"replayed sweep)")]
    for name, m in result["methods"].items():
        cells = []
        for e in marks:
            i = grid.index(e)
            mean, low, high = m["regret"][i]
            dmean, dlow, dhigh = m["difference_to_reference"][i]
            diff = "" if name == REFERENCE else f", vs {REFERENCE} {dmean:+.2f} [{dlow:+.2f}, {dhigh:+.2f}]"
            cells.append(f"@{e} epochs {mean:.2f} [{low:.2f}, {high:.2f}]{diff}")
        spent = m["epochs_spent"][0]
        lines.append(f"  {name:<12} epochs spent {spent:.0f}; " + "; ".join(cells))
        ratio, both = m["epochs_ratio_to_reference_median"], m.get("both_reached_tolerance", 0)
        median = m["epochs_to_tolerance_median"]
        when = f"after {median:.0f} epochs" if math.isfinite(median) else "never"
        versus = ("" if name == REFERENCE else
                  f", {100 * ratio:.0f}% of {REFERENCE}'s epochs (median ratio over the {both} seeds where both got there)"
                  if both else f"; no seed where both it and {REFERENCE} got there")
        lines.append(f"  {'':<12} within {TOLERANCE} of the best: {when} (the median seed; {m['reached_tolerance']}/"
                     f"{result['seeds']} seeds got there){versus}")
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)


def plot_replay(result: dict, path: str | Path) -> Path:
    """Mean regret against epochs spent per method, with its 95 % band over seeds, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = result["grid"]
    for name, m in result["methods"].items():
        mean = [r[0] for r in m["regret"]]
        low = [r[1] for r in m["regret"]]
        high = [r[2] for r in m["regret"]]
        line, = ax.step(grid, mean, where="post", lw=1.6, label=name)
        ax.fill_between(grid, low, high, step="post", alpha=0.15, color=line.get_color())
    ax.axhline(TOLERANCE, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("epochs spent by all trials so far")
    ax.set_ylabel("regret of the sweep's pick (val_acc points)")
    ax.set_title(f"replay: {result['seeds']} seeds per method, {result['configurations']} configurations")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
