"""Which loss and which settings win, and how sure we are: leaderboards read back from MLflow.

Everything here reads the MLflow records that the tracking callback writes (experiment
`sslsearch`; a parent run per sweep, a child run per trial), never Ray's folders, so it works
after those are deleted and across several sweeps.

Rules, decided once:
- Only finished trials are ranked: `completed` and `stopped early` (by ASHA or the time budget,
  at their last reported epoch). Errored and still-running trials are counted, not ranked.
- Ranking is by `val_acc`, the trial's final report (the value Optuna and ASHA saw). Ties go to
  more epochs trained, then less wall time (`trial_seconds`), then the trial id. `test_acc` is
  shown, never used to choose.
- Head-to-head per loss: best and median final `val_acc` over the ranked trials.
- Paired sweeps (the two trials of a pair share λ, lr, feature_dim and seed and differ only in the
  loss): the difference hsic − barlow is taken at the *last epoch both trials evaluated*, read from
  the `val_acc` metric histories, so a pair where ASHA stopped one trial early is compared at equal
  training, not a short trial against a long one. Pairs with an errored or running trial, a missing
  partner, or no common evaluated epoch after epoch 0 are left out (and counted). The 95 % interval
  of the mean difference is a seeded percentile bootstrap over pairs; the win rate counts ties half.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sslsearch.errors import InputError

EXPERIMENT = "sslsearch"
LOSSES = ("barlow", "hsic")
FINISHED = ("completed", "stopped early")
OUTCOMES = ("completed", "stopped early", "errored", "running")
# sslsearch.search.STUDY_FILE; not imported from there because search imports Ray.
STUDY_FILE = "optuna-study.journal"
FORMATS = ("table", "csv", "json", "markdown")
# Ranking: (column, ascending). The first key is the objective; the rest only break ties.
RANK_ORDER = (("val_acc", False), ("epochs", False), ("trial_seconds", True), ("trial_id", True), ("sweep", True))
TRIAL_COLUMNS = ("sweep", "trial_id", "run_id", "loss", "lmbda", "lr", "feature_dim", "seed", "pair", "val_acc",
                 "best_val_acc", "test_acc", "knn_acc", "epochs", "trial_seconds", "outcome", "dataset", "max_epochs",
                 "parent_run_id", "history")
# What the tables show, and what CSV / JSON rows hold.
SHOWN = (("rank", "rank"), ("trial_id", "trial"), ("lmbda", "λ"), ("lr", "lr"), ("feature_dim", "feature_dim"),
         ("val_acc", "val_acc"), ("test_acc", "test_acc"), ("epochs", "epochs"), ("trial_seconds", "wall_s"),
         ("outcome", "outcome"))
ROW_COLUMNS = ("sweep", "loss", "rank", "trial_id", "run_id", "lmbda", "lr", "feature_dim", "seed", "pair", "val_acc",
               "best_val_acc", "test_acc", "knn_acc", "epochs", "trial_seconds", "outcome")


# --------------------------------------------------------------------------------------------
# Reading MLflow
# --------------------------------------------------------------------------------------------

def mlflow_client(tracking_uri: str):
    """An MlflowClient for `tracking_uri`; InputError when a SQLite store does not exist.

    (Opening a missing SQLite file would silently create an empty store.)
    """
    from sslsearch.store import require_records

    require_records(tracking_uri)
    from mlflow import MlflowClient  # after the check: importing MLflow takes seconds

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _search_runs(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_id(client, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise InputError(f"no sslsearch records at {tracking_uri} (no MLflow experiment {EXPERIMENT!r}); run a sweep first")
    return experiment.experiment_id


def sweep_runs(client, experiment_id: str) -> dict[str, object]:
    """Parent run of every sweep, most recently started first (name → Run)."""
    runs: dict[str, object] = {}
    for run in _search_runs(client, experiment_id, "tags.`sslsearch.role` = 'sweep'"):
        # Newest first. A (never expected) duplicate parent run: keep the oldest, the one the
        # tracking callback continues; the sweep keeps the place of its newest start.
        runs[run.data.tags.get("sslsearch.sweep") or run.info.run_name] = run
    return runs


def _number(text, kind=float):
    """A param or tag (MLflow keeps them as strings) as a number; None when absent or not a number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if kind is int else value


def _history(client, run_id: str, key: str) -> dict[int, float]:
    """step → value; a step logged twice (a resumed trial) keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run_id, key):
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


def _trial_row(client, run, parent_run_id: str) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    history = _history(client, run.info.run_id, "val_acc")
    pretrained = [v for e, v in history.items() if e >= 1 and math.isfinite(v)]
    epochs = _number(metrics.get("epoch"), int)
    if epochs is None:
        epochs = max(history, default=0)
    val_acc = metrics.get("val_acc")
    return {
        "sweep": tags.get("sslsearch.sweep"),
        "trial_id": tags.get("sslsearch.trial_id") or run.info.run_name,
        "run_id": run.info.run_id,
        "loss": tags.get("sslsearch.loss") or params.get("loss") or params.get("base.loss"),
        "lmbda": _number(params.get("lmbda", params.get("base.lmbda"))),
        "lr": _number(params.get("lr", params.get("base.lr"))),
        "feature_dim": _number(params.get("feature_dim", params.get("base.feature_dim")), int),
        "seed": _number(params.get("seed", params.get("base.seed")), int),
        "pair": _number(tags.get("sslsearch.pair"), int),
        "val_acc": val_acc if val_acc is not None and math.isfinite(val_acc) else None,
        "best_val_acc": max(pretrained) if pretrained else None,
        "test_acc": metrics.get("test_acc"),
        "knn_acc": metrics.get("knn_acc"),
        "epochs": epochs,
        "trial_seconds": metrics.get("trial_seconds"),
        # A trial without an outcome tag has not been closed by the tracking callback yet.
        "outcome": tags.get("sslsearch.outcome") or "running",
        "dataset": params.get("base.dataset"),
        "max_epochs": _number(params.get("base.epochs"), int),
        "parent_run_id": parent_run_id,
        "history": history,
    }


def load_trials(tracking_uri: str, sweeps: list[str] | None = None) -> pd.DataFrame:
    """One row per trial of the named sweeps (None or empty: the most recently started sweep that
    has a finished trial, so that a sweep still running or killed early does not hide the others).

    Columns: TRIAL_COLUMNS; `val_acc` is the final report, `best_val_acc` the best report after
    epoch 0, `history` maps epoch → val_acc. InputError for an unknown sweep, a sweep without
    trials, or one without a finished trial (every trial errored, or none has finished yet).
    """
    client = mlflow_client(tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri)
    parents = sweep_runs(client, experiment_id)
    if not parents:
        raise InputError(f"no sweeps recorded at {tracking_uri}; run `sslsearch sweep` first")

    def rows_of(name: str) -> list[dict]:
        # A recorded sweep name holds no quotes (the tracking callback refuses them).
        runs = _search_runs(client, experiment_id, f"tags.`sslsearch.role` = 'trial' and tags.`sslsearch.sweep` = '{name}'")
        rows = [_trial_row(client, run, parents[name].info.run_id) for run in runs]
        _check_rankable(name, rows)
        return rows

    rows = []
    if sweeps:
        names = list(dict.fromkeys(sweeps))
        unknown = [n for n in names if n not in parents]
        if unknown:
            raise InputError(f"unknown sweep {', '.join(map(repr, unknown))}; known sweeps: {', '.join(parents)}")
        for name in names:
            rows += rows_of(name)
    else:
        latest_error = None
        for name in parents:  # most recently started first
            try:
                rows = rows_of(name)
                break
            except InputError as error:
                latest_error = latest_error or error
        else:
            raise InputError(f"{latest_error}; no other sweep has a finished trial either") from None
    trials = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    trials["pair"] = trials["pair"].astype("Int64")
    return trials.sort_values(["sweep", "trial_id"], kind="mergesort").reset_index(drop=True)


def _check_rankable(name: str, rows: list[dict]) -> None:
    if not rows:
        raise InputError(f"sweep {name!r} has no trials recorded")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    if any(r["outcome"] in FINISHED and r["val_acc"] is not None for r in rows):
        return
    if counts["errored"] == len(rows):
        raise InputError(f"all {len(rows)} trials of sweep {name!r} errored; nothing to rank (see the trials' logs in MLflow)")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    raise InputError(f"sweep {name!r} has no finished trial with a val_acc yet ({summary})")


# --------------------------------------------------------------------------------------------
# Ranking and comparing
# --------------------------------------------------------------------------------------------

def rank_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Finished trials in ranking order (RANK_ORDER), with `rank` 1, 2, … within each loss."""
    finished = trials[trials["outcome"].isin(FINISHED) & trials["val_acc"].notna()]
    ordered = finished.sort_values([c for c, _ in RANK_ORDER], ascending=[a for _, a in RANK_ORDER],
                                   kind="mergesort", na_position="last").copy()
    ordered.insert(0, "rank", ordered.groupby("loss").cumcount() + 1)
    return ordered.reset_index(drop=True)


def bootstrap_interval(values, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (seeded: the same input gives the same interval)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # 1000 resamples at a time bounds memory for many pairs
        stop = min(start + 1000, resamples)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_differences(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """hsic − barlow `val_acc` per comparable pair, at the last epoch both evaluated; and the reasons pairs were left out."""
    rows, excluded = [], {}

    def leave_out(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    paired = trials[trials["pair"].notna()]
    for (sweep, pair), group in paired.groupby(["sweep", "pair"], sort=True):
        by_loss = {row["loss"]: row for _, row in group.iterrows()}
        if set(by_loss) != set(LOSSES) or len(group) != 2:
            leave_out("without its partner")
            continue
        barlow, hsic = by_loss["barlow"], by_loss["hsic"]
        if barlow["outcome"] not in FINISHED or hsic["outcome"] not in FINISHED:
            leave_out("with an errored or running trial")
            continue
        common = [e for e in barlow["history"] if e >= 1 and e in hsic["history"]
                  and math.isfinite(barlow["history"][e]) and math.isfinite(hsic["history"][e])]
        if not common:
            leave_out("without a common evaluated epoch")
            continue
        epoch = max(common)
        b, h = barlow["history"][epoch], hsic["history"][epoch]
        rows.append({"sweep": sweep, "pair": int(pair), "epoch": epoch, "barlow_trial": barlow["trial_id"],
                     "hsic_trial": hsic["trial_id"], "barlow_val_acc": b, "hsic_val_acc": h, "difference": h - b})
    columns = ["sweep", "pair", "epoch", "barlow_trial", "hsic_trial", "barlow_val_acc", "hsic_val_acc", "difference"]
    return pd.DataFrame(rows, columns=columns), excluded


def head_to_head(ranked: pd.DataFrame, pairs: pd.DataFrame, excluded: dict[str, int], *,
                 resamples: int = 10_000, seed: int = 0) -> dict:
    """Best and median val_acc per loss; for paired sweeps the mean difference, its interval and the win rate."""
    variants = {}
    for loss, group in ranked.groupby("loss", sort=True):
        variants[loss] = {"trials": int(len(group)), "best_val_acc": float(group["val_acc"].max()),
                          "median_val_acc": float(group["val_acc"].median()), "best_trial": group.iloc[0]["trial_id"]}
    result = {"variants": variants, "paired": None}
    if len(pairs) or excluded:
        d = pairs["difference"].to_numpy(dtype=float)
        low, high = bootstrap_interval(d, resamples=resamples, seed=seed)
        result["paired"] = {
            "difference": "hsic - barlow", "compared_at": "last epoch both trials evaluated",
            "pairs": int(d.size), "excluded": dict(sorted(excluded.items())),
            "mean_difference": float(d.mean()) if d.size else None,
            "ci_low": low if d.size else None, "ci_high": high if d.size else None,
            "level": 0.95, "resamples": resamples, "seed": seed,
            "hsic_wins": float((d > 0).sum() + 0.5 * (d == 0).sum()),
            "hsic_win_rate": float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size) if d.size else None,
        }
    return result


@dataclass
class Leaderboard:
    """Everything the leaderboard shows, for one sweep or several pooled ones."""

    sweeps: list[str]
    trials: pd.DataFrame            # every trial, every outcome
    ranked: pd.DataFrame            # finished trials in ranking order, `rank` within each loss
    pairs: pd.DataFrame             # the compared pairs (empty for unpaired sweeps)
    head_to_head: dict
    top: int | None = 10            # rows per loss in the tables; None: all
    counts: dict = field(default_factory=dict)

    def top_rows(self, loss: str) -> pd.DataFrame:
        rows = self.ranked[self.ranked["loss"] == loss]
        return rows if self.top is None else rows.head(self.top)


def build_leaderboard(trials: pd.DataFrame, *, top: int | None = 10, resamples: int = 10_000, seed: int = 0) -> Leaderboard:
    """Rank and compare the trials of `load_trials`. Sweeps on different data sets are refused (not comparable)."""
    if top is not None and top < 1:
        raise InputError(f"--top must be ≥ 1, got {top}")
    datasets = dict(trials[["sweep", "dataset"]].dropna().drop_duplicates().itertuples(index=False))
    if len(set(datasets.values())) > 1:
        listing = ", ".join(f"{s} ({d})" for s, d in datasets.items())
        raise InputError(f"the sweeps pretrain on different data sets and cannot share a leaderboard: {listing}; "
                         "show them one at a time")
    ranked = rank_trials(trials)
    pairs, excluded = paired_differences(trials)
    counts = {o: int((trials["outcome"] == o).sum()) for o in OUTCOMES}
    return Leaderboard(sweeps=list(dict.fromkeys(trials["sweep"])), trials=trials, ranked=ranked, pairs=pairs,
                       head_to_head=head_to_head(ranked, pairs, excluded, resamples=resamples, seed=seed),
                       top=top, counts=counts)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

def json_value(value):
    """JSON-ready: NaN/NA → None, numpy scalars → Python."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    return value


def _cell(column: str, value) -> str:
    value = json_value(value)
    if value is None:
        return "-"
    if column in ("lmbda", "lr"):
        return f"{value:.4g}"
    if column in ("val_acc", "test_acc", "best_val_acc", "knn_acc"):
        return f"{value:.2f}"
    if column == "trial_seconds":
        return f"{value:.0f}"
    return str(value)


def _text_table(headers: list[str], rows: list[list[str]], numeric: list[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def _markdown_table(headers: list[str], rows: list[list[str]], numeric: list[bool]) -> list[str]:
    rule = ["---:" if n else "---" for n in numeric]
    return ["| " + " | ".join(cells) + " |" for cells in [headers, rule, *rows]]


def _shown(board: Leaderboard) -> list[tuple[str, str]]:
    shown = list(SHOWN)
    if len(board.sweeps) > 1:
        shown.insert(1, ("sweep", "sweep"))
    return shown


def _summary_lines(board: Leaderboard) -> list[str]:
    t = board.trials
    dataset = t["dataset"].dropna().iloc[0] if t["dataset"].notna().any() else "?"
    epochs = t["max_epochs"].dropna()
    budget = f", up to {int(epochs.max())} epochs" if len(epochs) else ""
    counts = ", ".join(f"{v} {k}" for k, v in board.counts.items() if v)
    return [f"sweep {', '.join(board.sweeps)} ({dataset}{budget}): {len(t)} trials ({counts})",
            "ranked by val_acc (final report); ties: more epochs, then less wall time, then trial id. "
            "test_acc is shown, never used to choose."]


def _head_to_head_lines(board: Leaderboard, markdown: bool) -> list[str]:
    h2h = board.head_to_head
    headers = ["loss", "trials", "best val_acc", "median val_acc", "best trial"]
    rows = [[loss, str(v["trials"]), f"{v['best_val_acc']:.2f}", f"{v['median_val_acc']:.2f}", v["best_trial"]]
            for loss, v in h2h["variants"].items()]
    table = (_markdown_table if markdown else _text_table)(headers, rows, [False, True, True, True, False])
    lines = table + ([""] if markdown else [])  # a line right after a Markdown table would become one of its rows
    p = h2h["paired"]
    if p is None:
        lines.append("paired comparison: none (the sweep did not run paired configurations)")
        return lines
    left_out = ", ".join(f"{n} {'pair' if n == 1 else 'pairs'} {reason}" for reason, n in p["excluded"].items())
    left_out = f"; left out: {left_out}" if left_out else ""
    if not p["pairs"]:
        lines.append(f"paired comparison: no comparable pair{left_out}")
        return lines
    lines.append(f"paired (hsic − barlow val_acc at the last epoch both evaluated): {p['pairs']} pairs, "
                 f"mean {p['mean_difference']:+.2f} points, 95% bootstrap interval [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}], "
                 f"hsic wins {p['hsic_wins']:g}/{p['pairs']} ({100 * p['hsic_win_rate']:.0f}%, ties count half){left_out}")
    return lines


def _rows(board: Leaderboard) -> pd.DataFrame:
    tops = [board.top_rows(loss) for loss in sorted(board.ranked["loss"].unique())]
    return pd.concat(tops)[list(ROW_COLUMNS)] if tops else pd.DataFrame(columns=list(ROW_COLUMNS))


def format_leaderboard(board: Leaderboard, fmt: str = "table") -> str:
    """The leaderboard as `table` (terminal), `markdown`, `json` (everything) or `csv` (the ranked rows only)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _rows(board).to_csv(index=False).rstrip("\n")
    if fmt == "json":
        rows = _rows(board)
        document = {
            "sweeps": board.sweeps,
            "counts": board.counts,
            "ranking": {"metric": "val_acc", "order": [f"{c} {'asc' if a else 'desc'}" for c, a in RANK_ORDER],
                        "ranked_outcomes": list(FINISHED), "top": board.top},
            "variants": {loss: [{k: json_value(v) for k, v in r.items()} for r in g.to_dict("records")]
                         for loss, g in rows.groupby("loss", sort=True)},
            "head_to_head": board.head_to_head,
            "pairs": [{k: json_value(v) for k, v in r.items()} for r in board.pairs.to_dict("records")],
        }
        return json.dumps(document, indent=2, allow_nan=False, default=json_value)
    markdown = fmt == "markdown"
    shown = _shown(board)
    lines = _summary_lines(board)
    for loss in sorted(board.ranked["loss"].unique()):
        rows = board.top_rows(loss)
        total = int((board.ranked["loss"] == loss).sum())
        title = f"{loss} (top {len(rows)} of {total} ranked)"
        lines += ["", f"## {title}" if markdown else title]
        cells = [[_cell(c, r[c]) for c, _ in shown] for _, r in rows.iterrows()]
        numeric = [c not in ("trial_id", "sweep", "outcome") for c, _ in shown]
        lines += (_markdown_table if markdown else _text_table)([h for _, h in shown], cells, numeric)
    lines += ["", "## head-to-head (val_acc)" if markdown else "head-to-head (val_acc)"]
    lines += _head_to_head_lines(board, markdown)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

COLOURS = {"barlow": "tab:blue", "hsic": "tab:orange"}


def _study_path(client, sweep: str, parent_run_id: str, tracking_uri: str, storage: str | os.PathLike | None) -> Path | None:
    """Where the sweep's Optuna journal is: under `storage` if given, else the sweep folder the
    parent run names (tag `sslsearch.sweep_path`), else next to a `sqlite:///<storage>/mlflow.db`."""
    if storage is not None:
        return Path(storage) / sweep / STUDY_FILE
    sweep_path = client.get_run(parent_run_id).data.tags.get("sslsearch.sweep_path")
    if sweep_path and "://" not in sweep_path:
        return Path(sweep_path) / STUDY_FILE
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / sweep / STUDY_FILE
    return None


PLOTTED_PARAMETERS = {"lmbda": "λ (off-diagonal weight)", "lr": "learning rate"}


def _plot_val_acc_vs(board: Leaderboard, parameter: str, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for loss, group in board.ranked.groupby("loss", sort=True):
        group = group[group[parameter] > 0]  # a log axis has no place for 0
        for outcome, filled in (("completed", True), ("stopped early", False)):
            part = group[group["outcome"] == outcome]
            if len(part):
                ax.scatter(part[parameter], part["val_acc"], label=f"{loss} ({outcome})", color=COLOURS.get(loss),
                           facecolors=COLOURS.get(loss) if filled else "none", s=36)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a range under a decade
    ax.set_xlabel(PLOTTED_PARAMETERS[parameter])
    ax.set_ylabel("val_acc (%) at the final report")
    name = "λ" if parameter == "lmbda" else parameter
    ax.set_title(f"val_acc against {name} — {', '.join(board.sweeps)}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def anytime_curve(client, trials: pd.DataFrame) -> pd.DataFrame:
    """The sweep's best val_acc so far against the epochs it had trained so far, per loss.

    Every val_acc report of every trial (any outcome: all of them cost epochs), in the order MLflow
    timestamped them; a trial's report at epoch e adds the epochs since its previous report. The best
    is over reports after epoch 0 at any epoch (a trial's best report, not its final one, which is what
    the ranking uses). Columns: loss, epochs (cumulative, whole sweep), best_val_acc.
    """
    reports = []
    for _, trial in trials.iterrows():
        for metric in client.get_metric_history(trial["run_id"], "val_acc"):
            reports.append((metric.timestamp, trial["run_id"], trial["loss"], metric.step, metric.value))
    reports.sort()
    reached: dict[str, int] = {}
    best: dict[str, float] = {}
    epochs, rows = 0, []
    for _, run_id, loss, step, value in reports:
        epochs += max(0, step - reached.get(run_id, 0))  # a resumed trial re-reports an epoch at no new cost
        reached[run_id] = max(reached.get(run_id, 0), step)
        if step >= 1 and math.isfinite(value) and value > best.get(loss, -math.inf):
            best[loss] = value
        if loss in best:
            rows.append({"loss": loss, "epochs": epochs, "best_val_acc": best[loss]})
    return pd.DataFrame(rows, columns=["loss", "epochs", "best_val_acc"])


def _plot_anytime(board: Leaderboard, client, path: Path) -> None:
    from matplotlib.figure import Figure

    curve = anytime_curve(client, board.trials)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for loss, group in curve.groupby("loss", sort=True):
        ax.step(group["epochs"], group["best_val_acc"], where="post", color=COLOURS.get(loss), label=loss)
    ax.set_xlabel("epochs trained by the whole sweep so far")
    ax.set_ylabel("best val_acc (%) reported so far, any epoch")
    ax.set_title(f"anytime performance — {', '.join(board.sweeps)}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def _plot_learning_curves(board: Leaderboard, path: Path, per_loss: int = 3) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")
    for loss in sorted(board.ranked["loss"].unique()):
        for i, (_, row) in enumerate(board.ranked[board.ranked["loss"] == loss].head(per_loss).iterrows()):
            epochs = sorted(row["history"])
            ax.plot(epochs, [row["history"][e] for e in epochs], styles[i % len(styles)], marker=".",
                    color=COLOURS.get(loss), label=f"{loss} #{row['rank']} λ={row['lmbda']:.3g} lr={row['lr']:.3g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = random initialisation)")
    ax.set_ylabel("val_acc (%)")
    ax.set_title(f"learning curves of the top {per_loss} trials per loss — {', '.join(board.sweeps)}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=120)


def _plot_importances(sweep: str, study_path: Path, path: Path) -> str | None:
    """Optuna's parameter importances of the sweep's study; returns a note instead when not possible."""
    import optuna
    from matplotlib.figure import Figure

    if not study_path.is_file():
        return f"importances for {sweep}: skipped, no Optuna study file at {study_path}"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_path)))
    try:
        study = optuna.load_study(study_name=sweep, storage=storage)
    except KeyError:
        return f"importances for {sweep}: skipped, {study_path} holds no study named {sweep!r}"
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return f"importances for {sweep}: skipped, {len(completed)} completed trial(s) in the study (need at least 2)"
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # Optuna's default, named for the plot title
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as error:
        return f"importances for {sweep}: skipped, Optuna could not compute them: {str(error).splitlines()[0]}"
    names = list(importances)[::-1]
    fig = Figure(figsize=(6.4, 0.5 * len(names) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance for val_acc (normalised)")
    # Two lines: a sweep's default name (experiment-date-time) plus the evaluator overflow one.
    ax.set_title(f"{sweep}: hyperparameter importances\n({type(evaluator).__name__}, {len(completed)} completed trials)",
                 fontsize="small")
    fig.savefig(path, dpi=120)
    return None


def write_plots(board: Leaderboard, out_dir: str | os.PathLike, tracking_uri: str, *, storage: str | os.PathLike | None = None,
                log: bool = True) -> dict:
    """Write val_acc against λ and lr, learning curves, the anytime curve and importances (PNG) to `out_dir`,
    each file named after the sweep(s) so the next sweep's plots do not replace them; log them to each
    sweep's parent run.

    `storage` is the sweep storage folder holding `<sweep>/optuna-study.journal` (default: the
    sweep folder recorded on the parent run, else the folder of a `sqlite:///<storage>/mlflow.db`
    tracking URI). Returns {"files": [...], "notes": [...]}.
    """
    client = mlflow_client(tracking_uri)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    label = "+".join(board.sweeps)
    files, notes = [out / f"val_acc_vs_lmbda-{label}.png", out / f"val_acc_vs_lr-{label}.png",
                    out / f"learning_curves-{label}.png", out / f"anytime-{label}.png"], []
    _plot_val_acc_vs(board, "lmbda", files[0])
    _plot_val_acc_vs(board, "lr", files[1])
    _plot_learning_curves(board, files[2])
    _plot_anytime(board, client, files[3])
    parents = dict(board.trials[["sweep", "parent_run_id"]].drop_duplicates().itertuples(index=False))
    for sweep in board.sweeps:
        study = _study_path(client, sweep, parents[sweep], tracking_uri, storage)
        if study is None:
            notes.append(f"importances for {sweep}: skipped, the sweep's storage folder is unknown (pass storage)")
            continue
        note = _plot_importances(sweep, study, out / f"importances-{sweep}.png")
        if note is None:
            files.append(out / f"importances-{sweep}.png")
        else:
            notes.append(note)
    if log:
        for parent in dict.fromkeys(parents.values()):
            for file in files:
                client.log_artifact(parent, str(file), artifact_path="leaderboard")
    return {"files": [str(f) for f in files], "notes": notes}
