"""Which loss and which settings win, and how sure we are: leaderboards read back from MLflow.

Everything here reads the MLflow records that the tracking callback writes (experiment
`sslsearch`; a parent run per sweep, a child run per trial), never Ray's folders, so it works
after those are deleted and across several sweeps.

Rules, decided once:
- Two stages. The sweep's own trials (`search`) explore; the `confirm` stage (sslsearch.search.confirm,
  child runs tagged `sslsearch.stage=confirm`) re-runs the top configurations with fresh seeds.
- Only finished search trials are ranked: `completed` and `stopped early` (by ASHA or the time
  budget, at their last reported epoch) that reported after epoch 0 (epoch 0 is the random
  initialisation: a trial with only that report is never ranked, nor exported). Errored, diverged
  and still-running trials are counted, not ranked.
- Ranking is by `val_acc`, the trial's final report (the value Optuna and ASHA saw). Ties go to
  more epochs trained, then less wall time (`trial_seconds`), then the trial id. `test_acc` is
  shown, never used to choose.
- Confirmed configurations are ranked by their mean `val_acc` over seeds, with a 95 % t-interval
  over seeds and `test_acc` mean ± sd.
- Paired comparisons (hsic − barlow): on the confirmed runs when there are any (pair = the k-th
  configuration of each loss, same fresh seed), else on the sweep's twin trials (same λ, lr,
  feature_dim, seed; compared at the *last epoch both trials evaluated*, so a pair where ASHA stopped
  one trial early is compared at equal training). Pairs with an errored or running trial, a missing
  partner, or no common evaluated epoch after epoch 0 are left out (and counted).
- Statistics (see `paired_statistics`): n; below MIN_PAIRS no difference is called ("not enough
  pairs"); a t-interval on the paired differences (exact coverage for normal differences, where the
  percentile bootstrap undercovers at n ≈ 8) and the exact Wilcoxon signed-rank test's p-value.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sslsearch.errors import InputError
from sslsearch.records.query import recorded_experiment_id, records_client, search_all_runs
from sslsearch.records.schema import (
    LOSS,
    OUTCOME,
    PAIR,
    ROLE,
    STAGE,
    SWEEP,
    SWEEP_PATH,
    SWEEP_ROLE,
    TRIAL_ID,
    TRIAL_ROLE,
    VERDICT,
    VERDICT_STAGE,
    runs_filter,
)
from sslsearch.records.store import sqlite_path
from sslsearch.search.folder import STUDY_FILE
from sslsearch.search.outcomes import FINISHED, OUTCOMES
from sslsearch.search.trial_config import BASE, logged_value
from sslsearch.search.trial_config import PAIR as PAIR_KEY

LOSSES = ("barlow", "hsic")
STAGES = ("search", "confirm")
# A confirmation seed that diverged is a result about the configuration: it counts, at its (chance) val_acc.
CONFIRM_COUNTED = ("completed", "diverged")
# Pairs needed before a difference is called: an exact two-sided paired test (sign or signed-rank)
# cannot reach p < 0.05 with fewer, whatever the data (its smallest p-value is 2 / 2^n: 0.0625 at n = 5,
# 0.031 at n = 6). Below this, an interval would only dress up noise.
MIN_PAIRS = 6
LEVEL = 0.95
FORMATS = ("table", "csv", "json", "markdown")
# Ranking: (column, ascending). The first key is the objective; the rest only break ties.
RANK_ORDER = (("val_acc", False), ("epochs", False), ("trial_seconds", True), ("trial_id", True), ("sweep", True))
TRIAL_COLUMNS = ("sweep", "stage", "trial_id", "run_id", "loss", "lmbda", "lr", "feature_dim", "seed", "pair", "val_acc",
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

NEWEST_FIRST = ["attributes.start_time DESC"]


def sweep_runs(client, experiment_id: str) -> dict[str, object]:
    """Parent run of every sweep, most recently started first (name → Run)."""
    runs: dict[str, object] = {}
    for run in search_all_runs(client, experiment_id, f"tags.`{ROLE}` = '{SWEEP_ROLE}'", NEWEST_FIRST):
        # Newest first. A (never expected) duplicate parent run: keep the oldest, the one the
        # tracking callback continues; the sweep keeps the place of its newest start.
        runs[run.data.tags.get(SWEEP) or run.info.run_name] = run
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
    stage = tags.get(STAGE) or "search"
    pair = tags.get(PAIR)
    if pair is None and stage == "confirm":
        pair = params.get(PAIR_KEY)  # a confirm trial always has its pair number (its config's `pair`)
    return {
        "sweep": tags.get(SWEEP),
        "stage": stage,
        "trial_id": tags.get(TRIAL_ID) or run.info.run_name,
        "run_id": run.info.run_id,
        "loss": tags.get(LOSS) or logged_value(params, "loss"),
        "lmbda": _number(logged_value(params, "lmbda")),
        "lr": _number(logged_value(params, "lr")),
        "feature_dim": _number(logged_value(params, "feature_dim"), int),
        "seed": _number(logged_value(params, "seed"), int),
        "pair": _number(pair, int),
        "val_acc": val_acc if val_acc is not None and math.isfinite(val_acc) else None,
        "best_val_acc": max(pretrained) if pretrained else None,
        "test_acc": metrics.get("test_acc"),
        "knn_acc": metrics.get("knn_acc"),
        "epochs": epochs,
        "trial_seconds": metrics.get("trial_seconds"),
        # A trial without an outcome tag has not been closed by the tracking callback yet.
        "outcome": tags.get(OUTCOME) or "running",
        "dataset": params.get(f"{BASE}.dataset"),
        "max_epochs": _number(params.get(f"{BASE}.epochs"), int),
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
    client = records_client(tracking_uri)
    experiment_id = recorded_experiment_id(client, tracking_uri)
    parents = sweep_runs(client, experiment_id)
    if not parents:
        raise InputError(f"no sweeps recorded at {tracking_uri}; run `sslsearch sweep` first")

    def rows_of(name: str) -> list[dict]:
        runs = search_all_runs(client, experiment_id, runs_filter(name, TRIAL_ROLE), NEWEST_FIRST)
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
    if any(_rankable(r) for r in rows):
        return
    if counts["errored"] == len(rows):
        raise InputError(f"all {len(rows)} trials of sweep {name!r} errored; nothing to rank (see the trials' logs in MLflow)")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    raise InputError(f"sweep {name!r} has no finished trial with a val_acc after epoch 0 yet ({summary})")


def _rankable(row) -> bool:
    """A finished search trial whose final val_acc comes after epoch 0 (epoch 0: the untrained network)."""
    return (row["stage"] == "search" and row["outcome"] in FINISHED and row["val_acc"] is not None
            and row["best_val_acc"] is not None and (row["epochs"] or 0) >= 1)


# --------------------------------------------------------------------------------------------
# Ranking and comparing
# --------------------------------------------------------------------------------------------

def rank_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Finished search trials that reported after epoch 0, in ranking order (RANK_ORDER), `rank` 1, 2, … per loss."""
    stage = trials["stage"] if "stage" in trials else pd.Series("search", index=trials.index)
    best = trials["best_val_acc"] if "best_val_acc" in trials else trials["val_acc"]
    epochs = pd.to_numeric(trials["epochs"], errors="coerce").fillna(0)
    finished = trials[(stage == "search") & trials["outcome"].isin(FINISHED) & trials["val_acc"].notna() & best.notna()
                      & (epochs >= 1)]
    ordered = finished.sort_values([c for c, _ in RANK_ORDER], ascending=[a for _, a in RANK_ORDER],
                                   kind="mergesort", na_position="last").copy()
    ordered.insert(0, "rank", ordered.groupby("loss").cumcount() + 1)
    return ordered.reset_index(drop=True)


def t_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (nan, nan for fewer than 2 values).

    For paired differences this is the paired t-interval: exact coverage when the differences are
    normal, and close to it for moderately skewed ones at n ≈ 8, where the percentile bootstrap is
    too narrow (tests/test_leaderboard.py measures both).
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def wilcoxon_exact(differences) -> tuple[float, float, int]:
    """Exact two-sided Wilcoxon signed-rank test of "median difference 0": (W+, p-value, n used).

    Zero differences are dropped (Wilcoxon's rule); tied |differences| get mid-ranks, and the null
    distribution is enumerated for those very ranks (all 2^n sign patterns, counted by dynamic
    programming over the doubled ranks, which are integers), so the p-value is exact with ties too.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return 0.0, 1.0, 0
    from scipy.stats import rankdata

    doubled = np.rint(2 * rankdata(np.abs(d))).astype(int)   # mid-ranks are multiples of 0.5
    total = int(doubled.sum())
    counts = [0] * (total + 1)                              # counts[s]: sign patterns with 2·W+ = s
    counts[0] = 1
    for r in doubled:
        for s in range(total, r - 1, -1):
            counts[s] += counts[s - r]
    observed = int(doubled[d > 0].sum())
    # Two-sided: patterns at least as far from the centre (total / 2) as the observed one.
    extreme = sum(c for s, c in enumerate(counts) if abs(2 * s - total) >= abs(2 * observed - total))
    return observed / 2, min(1.0, extreme / 2 ** n), n


def paired_statistics(differences, level: float = LEVEL) -> dict:
    """n, mean, win count and — from MIN_PAIRS pairs on — the t-interval and the exact Wilcoxon p-value."""
    d = np.asarray(differences, dtype=float)
    wins = float((d > 0).sum() + 0.5 * (d == 0).sum())
    result = {"pairs": int(d.size), "min_pairs": MIN_PAIRS, "enough_pairs": bool(d.size >= MIN_PAIRS),
              "mean_difference": float(d.mean()) if d.size else None,
              "sd_difference": float(d.std(ddof=1)) if d.size > 1 else None,
              "hsic_wins": wins, "hsic_win_rate": wins / d.size if d.size else None,
              "level": level, "interval": "paired t", "ci_low": None, "ci_high": None,
              "test": "Wilcoxon signed-rank, exact, two-sided", "w_plus": None, "p_value": None, "nonzero_pairs": None}
    if d.size >= MIN_PAIRS:
        low, high = t_interval(d, level)
        w_plus, p, used = wilcoxon_exact(d)
        result.update(ci_low=low, ci_high=high, w_plus=w_plus, p_value=p, nonzero_pairs=used)
    return result


def paired_differences(trials: pd.DataFrame, stage: str = "search") -> tuple[pd.DataFrame, dict[str, int]]:
    """hsic − barlow `val_acc` per comparable pair of `stage`, at the last epoch both evaluated; and why pairs were left out."""
    rows, excluded = [], {}
    # A diverged trial is a result about its configuration (at chance-level val_acc), so its pair counts.
    counted = (*FINISHED, "diverged") if stage == "search" else CONFIRM_COUNTED

    def leave_out(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    stages = trials["stage"] if "stage" in trials else pd.Series("search", index=trials.index)
    paired = trials[trials["pair"].notna() & (stages == stage)]
    for (sweep, pair), group in paired.groupby(["sweep", "pair"], sort=True):
        by_loss = {row["loss"]: row for _, row in group.iterrows()}
        if set(by_loss) != set(LOSSES) or len(group) != 2:
            leave_out("without its partner")
            continue
        barlow, hsic = by_loss["barlow"], by_loss["hsic"]
        if barlow["outcome"] not in counted or hsic["outcome"] not in counted:
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


# What a paired number means, in one sentence per stage (printed under it).
PAIRS_MEANING = {
    "search": "pairs: the sweep's twin trials (same λ, lr, feature_dim and seed; only the loss differs). TPE chose these "
              "settings, drawn toward where either loss did well, so this describes the settings the sweep visited, "
              "not a random sample of the search space.",
    "confirm": "pairs: the k-th best barlow and the k-th best hsic configuration of the sweep, run with the same fresh "
               "seed. This measures how reliably the tuned configurations differ across seeds (tuned against tuned, "
               "selected on the same val split), not how the losses compare over all settings.",
}

CONFIRMED_COLUMNS = ("sweep", "loss", "rank", "lmbda", "lr", "feature_dim", "seeds", "val_acc_mean", "val_acc_sd",
                     "ci_low", "ci_high", "test_acc_mean", "test_acc_sd", "not_counted", "search_trial", "search_rank",
                     "search_val_acc", "search_epochs", "seed_val_acc", "trials")


def confirmed_configurations(trials: pd.DataFrame, ranked: pd.DataFrame) -> pd.DataFrame:
    """One row per confirmed configuration (loss, λ, lr, feature_dim): mean val_acc over its seeds with a
    t-interval, test_acc mean ± sd, and the search trial it came from with its search-time val_acc;
    ranked by the mean within each loss (ties: more seeds, then the better search rank)."""
    if "stage" not in trials:
        return pd.DataFrame(columns=list(CONFIRMED_COLUMNS))
    confirm = trials[trials["stage"] == "confirm"]
    rows = []
    for (sweep, loss, lmbda, lr, dim), group in confirm.groupby(["sweep", "loss", "lmbda", "lr", "feature_dim"], sort=True):
        counted = group[group["outcome"].isin(CONFIRM_COUNTED) & group["val_acc"].notna()]
        val, test = counted["val_acc"].to_numpy(float), counted["test_acc"].dropna().to_numpy(float)
        low, high = t_interval(val)
        source = ranked[(ranked["sweep"] == sweep) & (ranked["loss"] == loss) & (ranked["lmbda"] == lmbda)
                        & (ranked["lr"] == lr) & (ranked["feature_dim"] == dim)].head(1)
        src = source.iloc[0] if len(source) else None
        rows.append({"sweep": sweep, "loss": loss, "lmbda": lmbda, "lr": lr, "feature_dim": int(dim), "seeds": int(val.size),
                     "val_acc_mean": float(val.mean()) if val.size else None,
                     "val_acc_sd": float(val.std(ddof=1)) if val.size > 1 else None,
                     "ci_low": low if val.size > 1 else None, "ci_high": high if val.size > 1 else None,
                     "test_acc_mean": float(test.mean()) if test.size else None,
                     "test_acc_sd": float(test.std(ddof=1)) if test.size > 1 else None,
                     "not_counted": int(len(group) - len(counted)),
                     "search_trial": None if src is None else src["trial_id"],
                     "search_rank": None if src is None else int(src["rank"]),
                     "search_val_acc": None if src is None else float(src["val_acc"]),
                     "search_epochs": None if src is None else int(src["epochs"]),
                     "seed_val_acc": {int(r["seed"]): float(r["val_acc"]) for _, r in counted.iterrows()},
                     "trials": list(counted["trial_id"])})
    table = pd.DataFrame(rows, columns=[c for c in CONFIRMED_COLUMNS if c != "rank"])
    table = table[table["seeds"] > 0]
    table = table.sort_values(["val_acc_mean", "seeds", "search_rank"], ascending=[False, False, True], kind="mergesort",
                              na_position="last")
    table.insert(2, "rank", table.groupby("loss").cumcount() + 1)
    return table.reset_index(drop=True)


def head_to_head(ranked: pd.DataFrame, pairs: pd.DataFrame, excluded: dict[str, int], *,
                 confirmed: pd.DataFrame | None = None, confirmed_pairs: pd.DataFrame | None = None,
                 confirmed_excluded: dict[str, int] | None = None) -> dict:
    """Best and median val_acc per loss; paired statistics for the search pairs and, when the sweep
    was confirmed, the best confirmed configuration per loss and the paired statistics of the confirmed runs."""
    variants = {}
    for loss, group in ranked.groupby("loss", sort=True):
        variants[loss] = {"trials": int(len(group)), "best_val_acc": float(group["val_acc"].max()),
                          "median_val_acc": float(group["val_acc"].median()), "best_trial": group.iloc[0]["trial_id"]}
    result = {"metric": "val_acc", "variants": variants, "paired": None, "confirmed": None}
    if len(pairs) or excluded:
        d = pairs["difference"].to_numpy(dtype=float)
        result["paired"] = {"stage": "search", "difference": "hsic - barlow", "compared_at": "last epoch both trials evaluated",
                            "excluded": dict(sorted(excluded.items())), "meaning": PAIRS_MEANING["search"],
                            **paired_statistics(d)}
    if confirmed is not None and len(confirmed):
        best = {loss: group.iloc[0] for loss, group in confirmed.groupby("loss", sort=True)}
        result["confirmed"] = {
            "best": {loss: {"lmbda": float(r["lmbda"]), "lr": float(r["lr"]), "feature_dim": int(r["feature_dim"]),
                            "seeds": int(r["seeds"]), "val_acc_mean": json_value(r["val_acc_mean"]),
                            "ci_low": json_value(r["ci_low"]), "ci_high": json_value(r["ci_high"]),
                            "test_acc_mean": json_value(r["test_acc_mean"]), "test_acc_sd": json_value(r["test_acc_sd"]),
                            "search_trial": r["search_trial"], "search_val_acc": json_value(r["search_val_acc"])}
                     for loss, r in best.items()},
            "paired": None}
        if confirmed_pairs is not None and (len(confirmed_pairs) or confirmed_excluded):
            d = confirmed_pairs["difference"].to_numpy(dtype=float)
            result["confirmed"]["paired"] = {"stage": "confirm", "difference": "hsic - barlow",
                                             "compared_at": "final report (full budget)",
                                             "excluded": dict(sorted((confirmed_excluded or {}).items())),
                                             "meaning": PAIRS_MEANING["confirm"], **paired_statistics(d)}
    return result


@dataclass
class Leaderboard:
    """Everything the leaderboard shows, for one sweep or several pooled ones."""

    sweeps: list[str]
    trials: pd.DataFrame            # every trial, every outcome, both stages
    ranked: pd.DataFrame            # finished search trials in ranking order, `rank` within each loss
    pairs: pd.DataFrame             # the compared search pairs (empty for unpaired sweeps)
    head_to_head: dict
    top: int | None = 10            # rows per loss in the tables; None: all
    counts: dict = field(default_factory=dict)
    confirmed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CONFIRMED_COLUMNS)))
    confirmed_pairs: pd.DataFrame | None = None

    def top_rows(self, loss: str) -> pd.DataFrame:
        rows = self.ranked[self.ranked["loss"] == loss]
        return rows if self.top is None else rows.head(self.top)

    @property
    def verdict(self) -> dict | None:
        """The paired comparison that answers "which loss": the confirmed one if the sweep was confirmed."""
        confirmed = self.head_to_head.get("confirmed")
        if confirmed and confirmed.get("paired"):
            return confirmed["paired"]
        return self.head_to_head.get("paired")


def build_leaderboard(trials: pd.DataFrame, *, top: int | None = 10) -> Leaderboard:
    """Rank and compare the trials of `load_trials`. Sweeps on different data sets are refused (not comparable)."""
    if top is not None and top < 1:
        raise InputError(f"--top must be ≥ 1, got {top}")
    datasets = dict(trials[["sweep", "dataset"]].dropna().drop_duplicates().itertuples(index=False))
    if len(set(datasets.values())) > 1:
        listing = ", ".join(f"{s} ({d})" for s, d in datasets.items())
        raise InputError(f"the sweeps pretrain on different data sets and cannot share a leaderboard: {listing}; "
                         "show them one at a time")
    ranked = rank_trials(trials)
    pairs, excluded = paired_differences(trials, "search")
    confirmed = confirmed_configurations(trials, ranked)
    confirmed_pairs, confirmed_excluded = paired_differences(trials, "confirm")
    search = trials[trials["stage"] == "search"] if "stage" in trials else trials
    counts = {o: int((search["outcome"] == o).sum()) for o in OUTCOMES}
    return Leaderboard(sweeps=list(dict.fromkeys(trials["sweep"])), trials=trials, ranked=ranked, pairs=pairs,
                       head_to_head=head_to_head(ranked, pairs, excluded, confirmed=confirmed, confirmed_pairs=confirmed_pairs,
                                                 confirmed_excluded=confirmed_excluded),
                       top=top, counts=counts, confirmed=confirmed, confirmed_pairs=confirmed_pairs)


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


def _stage_counts(trials: pd.DataFrame, stage: str) -> tuple[int, str]:
    part = trials[trials["stage"] == stage] if "stage" in trials else (trials if stage == "search" else trials.iloc[:0])
    counts = ", ".join(f"{int((part['outcome'] == o).sum())} {o}" for o in OUTCOMES if (part["outcome"] == o).any())
    return len(part), counts


def _summary_lines(board: Leaderboard) -> list[str]:
    t = board.trials
    dataset = t["dataset"].dropna().iloc[0] if t["dataset"].notna().any() else "?"
    epochs = t["max_epochs"].dropna()
    budget = f", up to {int(epochs.max())} epochs" if len(epochs) else ""
    n, counts = _stage_counts(t, "search")
    lines = [f"sweep {', '.join(board.sweeps)} ({dataset}{budget}): {n} trials ({counts})"]
    n_confirm, confirm_counts = _stage_counts(t, "confirm")
    if n_confirm:
        lines.append(f"confirmation: {n_confirm} trials ({confirm_counts}), full budget, fresh seeds")
    return lines + ["ranked by val_acc (final report; only trials that reported after epoch 0); ties: more epochs, "
                    "then less wall time, then trial id. test_acc is shown, never used to choose."]


def _paired_line(title: str, p: dict) -> list[str]:
    left_out = ", ".join(f"{n} {'pair' if n == 1 else 'pairs'} {reason}" for reason, n in p["excluded"].items())
    left_out = f"; left out: {left_out}" if left_out else ""
    if not p["pairs"]:
        return [f"{title}: no comparable pair{left_out}"]
    wins = f"hsic wins {p['hsic_wins']:g}/{p['pairs']} (ties count half)"
    if not p["enough_pairs"]:
        return [f"{title}: n = {p['pairs']} {'pair' if p['pairs'] == 1 else 'pairs'} — not enough pairs to call a "
                f"difference (need ≥ {p['min_pairs']}: with fewer, no exact two-sided test can reach p < 0.05); "
                f"mean {p['mean_difference']:+.2f} points, {wins}, descriptive only{left_out}", f"  {p['meaning']}"]
    return [f"{title}: n = {p['pairs']} pairs, mean {p['mean_difference']:+.2f} points, "
            f"{100 * p['level']:.0f}% t-interval [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}], "
            f"exact Wilcoxon signed-rank p = {p['p_value']:.3g} ({p['nonzero_pairs']} non-zero), {wins}{left_out}",
            f"  {p['meaning']}"]


def _head_to_head_lines(board: Leaderboard, markdown: bool) -> list[str]:
    h2h = board.head_to_head
    headers = ["loss", "trials", "best val_acc", "median val_acc", "best trial"]
    rows = [[loss, str(v["trials"]), f"{v['best_val_acc']:.2f}", f"{v['median_val_acc']:.2f}", v["best_trial"]]
            for loss, v in h2h["variants"].items()]
    table = (_markdown_table if markdown else _text_table)(headers, rows, [False, True, True, True, False])
    lines = ["search stage (one run per configuration; the best of many noisy runs is biased upward):", *table]
    lines += [""] if markdown else []  # a line right after a Markdown table would become one of its rows
    p = h2h["paired"]
    if p is None:
        lines.append("search pairs: none (the sweep did not run paired configurations)")
    else:
        lines += _paired_line("search pairs (hsic − barlow val_acc at the last epoch both evaluated)", p)
    confirmed = h2h.get("confirmed")
    if confirmed is None:
        sweep = board.sweeps[0] if len(board.sweeps) == 1 else "SWEEP"
        lines.append(f"not confirmed: re-measure the top configurations with fresh seeds before trusting a winner: "
                     f"sslsearch confirm {sweep} --top 2 --seeds 3")
        return lines
    lines.append("confirmed (best configuration per loss, mean over seeds):")
    for loss, b in confirmed["best"].items():
        lines.append(f"  {loss}: val_acc {_mean_interval(b['val_acc_mean'], b['ci_low'], b['ci_high'], b['seeds'])}, "
                     f"test_acc {_mean_sd(b['test_acc_mean'], b['test_acc_sd'])} (λ={b['lmbda']:.4g}, lr={b['lr']:.4g}, "
                     f"feature_dim={b['feature_dim']}; search-time val_acc {_cell('val_acc', b['search_val_acc'])})")
    if confirmed["paired"] is None:
        lines.append("confirmed pairs: none (only one loss was confirmed)")
    else:
        lines += _paired_line("confirmed pairs (hsic − barlow final val_acc)", confirmed["paired"])
    return lines


def _mean_interval(mean, low, high, n) -> str:
    if mean is None:
        return "-"
    if low is None:
        return f"{mean:.2f} ({n} seed{'s' * (n != 1)}, no interval)"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def _mean_sd(mean, sd) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f} sd"


CONFIRMED_SHOWN = ("rank", "λ", "lr", "feature_dim", "seeds", "val_acc (mean ± 95% t)", "test_acc (mean ± sd)",
                   "search trial", "search val_acc")


def _confirmed_lines(board: Leaderboard, markdown: bool) -> list[str]:
    lines = []
    for loss, group in board.confirmed.groupby("loss", sort=True):
        title = f"{loss}: confirmed configurations (ranked by mean val_acc over seeds)"
        lines += ["", f"## {title}" if markdown else title]
        cells = [[str(r["rank"]), _cell("lmbda", r["lmbda"]), _cell("lr", r["lr"]), str(r["feature_dim"]),
                  str(r["seeds"]) + (f" (+{r['not_counted']} failed)" if r["not_counted"] else ""),
                  _mean_interval(json_value(r["val_acc_mean"]), json_value(r["ci_low"]), json_value(r["ci_high"]), r["seeds"]),
                  _mean_sd(json_value(r["test_acc_mean"]), json_value(r["test_acc_sd"])),
                  f"{r['search_trial']} (#{r['search_rank']})" if r["search_trial"] else "-",
                  _cell("val_acc", r["search_val_acc"])] for _, r in group.iterrows()]
        numeric = [True, True, True, True, True, True, True, False, True]
        lines += (_markdown_table if markdown else _text_table)(list(CONFIRMED_SHOWN), cells, numeric)
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
            "confirmed": [{k: json_value(v) for k, v in r.items()} for r in board.confirmed.to_dict("records")],
            "head_to_head": board.head_to_head,
            "pairs": [{k: json_value(v) for k, v in r.items()} for r in board.pairs.to_dict("records")],
            "confirmed_pairs": [] if board.confirmed_pairs is None else
            [{k: json_value(v) for k, v in r.items()} for r in board.confirmed_pairs.to_dict("records")],
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
    lines += _confirmed_lines(board, markdown)
    lines += ["", "## head-to-head (val_acc)" if markdown else "head-to-head (val_acc)"]
    lines += _head_to_head_lines(board, markdown)
    return "\n".join(lines)


def log_verdict(board: Leaderboard, tracking_uri: str) -> list[str]:
    """Put the answer on the sweep's MLflow parent run, so the runs view shows it without opening a child:
    metrics `confirmed.val_acc_mean.<loss>` (and test_acc), `verdict.pairs`, `verdict.mean_difference`,
    `verdict.ci_low`, `verdict.ci_high`, `verdict.p_value` (NaN below MIN_PAIRS: a stale figure is
    overwritten), tags `sslsearch.verdict` (one line) and `sslsearch.verdict_stage`, and the leaderboard
    as `leaderboard/leaderboard.md` and `.json`. Only for a single sweep; returns what it logged."""
    from mlflow.entities import Metric, RunTag

    if len(board.sweeps) != 1:
        return []
    parent = board.trials["parent_run_id"].iloc[0]
    client = records_client(tracking_uri)
    now = int(time.time() * 1000)
    metrics = {}
    confirmed = board.head_to_head.get("confirmed") or {}
    for loss, best in (confirmed.get("best") or {}).items():
        metrics[f"confirmed.val_acc_mean.{loss}"] = best["val_acc_mean"]
        metrics[f"confirmed.test_acc_mean.{loss}"] = best["test_acc_mean"]
    verdict = board.verdict
    if verdict is not None:
        called = verdict["enough_pairs"]  # below MIN_PAIRS even the mean is left out of the runs view
        metrics.update({"verdict.pairs": verdict["pairs"],
                        "verdict.mean_difference": verdict["mean_difference"] if called else None,
                        "verdict.ci_low": verdict["ci_low"], "verdict.ci_high": verdict["ci_high"],
                        "verdict.p_value": verdict["p_value"]})
    tags = {VERDICT: _verdict_sentence(verdict), VERDICT_STAGE: verdict["stage"] if verdict else "none"}
    client.log_batch(parent, metrics=[Metric(k, math.nan if v is None else float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_text(parent, format_leaderboard(board, "markdown"), "leaderboard/leaderboard.md")
    client.log_text(parent, format_leaderboard(board, "json"), "leaderboard/leaderboard.json")
    return sorted(metrics)


def _verdict_sentence(p: dict | None) -> str:
    if p is None or not p["pairs"]:
        return "no paired comparison"
    where = "confirmed runs" if p["stage"] == "confirm" else "search trials (unconfirmed)"
    if not p["enough_pairs"]:
        return f"not enough pairs (n={p['pairs']}, need {p['min_pairs']}) on the {where}"
    return (f"hsic − barlow {p['mean_difference']:+.2f} points, 95% t [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}], "
            f"Wilcoxon p={p['p_value']:.3g}, n={p['pairs']} ({where})")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

COLOURS = {"barlow": "tab:blue", "hsic": "tab:orange"}


def _study_path(client, sweep: str, parent_run_id: str, tracking_uri: str, storage: str | os.PathLike | None) -> Path | None:
    """Where the sweep's Optuna journal is: under `storage` if given, else the sweep folder the
    parent run names (tag `sslsearch.sweep_path`), else next to a `sqlite:///<storage>/mlflow.db`."""
    if storage is not None:
        return Path(storage) / sweep / STUDY_FILE
    sweep_path = client.get_run(parent_run_id).data.tags.get(SWEEP_PATH)
    if sweep_path and "://" not in sweep_path:
        return Path(sweep_path) / STUDY_FILE
    if (store := sqlite_path(tracking_uri)) is not None:
        return store.parent / sweep / STUDY_FILE
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


def best_report_curve(client, trials: pd.DataFrame) -> pd.DataFrame:
    """The sweep's best val_acc reported so far (any epoch) against the epochs it had trained so far, per loss.
    (Not `bench search`'s anytime curve, which counts finished trials' final val_acc: sslsearch.bench.search.)

    Every val_acc report of every trial (any outcome: all of them cost epochs), in the order MLflow
    timestamped them; a trial's report at epoch e adds the epochs since its previous report. The best
    is over reports after epoch 0 at any epoch (a trial's best report, not its final one, which is what
    the ranking uses). Columns: loss, epochs (cumulative, whole sweep), best_val_acc.
    """
    reports = []
    for _, trial in trials.iterrows():
        for metric in client.get_metric_history(trial["run_id"], "val_acc"):
            reports.append((metric.timestamp, trial["run_id"], trial["loss"], metric.step, metric.value,
                            trial["outcome"] in FINISHED))
    reports.sort()
    reached: dict[str, int] = {}
    best: dict[str, float] = {}
    epochs, rows = 0, []
    for _, run_id, loss, step, value, counts in reports:
        epochs += max(0, step - reached.get(run_id, 0))  # a resumed trial re-reports an epoch at no new cost
        reached[run_id] = max(reached.get(run_id, 0), step)
        # (an errored or diverged trial costs its epochs but is never the best)
        if counts and step >= 1 and math.isfinite(value) and value > best.get(loss, -math.inf):
            best[loss] = value
        if loss in best:
            rows.append({"loss": loss, "epochs": epochs, "best_val_acc": best[loss]})
    return pd.DataFrame(rows, columns=["loss", "epochs", "best_val_acc"])


def _plot_best_report(board: Leaderboard, client, path: Path) -> None:
    from matplotlib.figure import Figure

    curve = best_report_curve(client, board.trials)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for loss, group in curve.groupby("loss", sort=True):
        ax.step(group["epochs"], group["best_val_acc"], where="post", color=COLOURS.get(loss), label=loss)
    ax.set_xlabel("epochs trained by the whole sweep so far")
    ax.set_ylabel("best val_acc (%) reported so far, any epoch")
    ax.set_title(f"best report so far — {', '.join(board.sweeps)}", fontsize="medium")
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


def importance_groups(trials: list, names: list[str]) -> tuple[dict[str, tuple[list, list[str]]], list[str]]:
    """Which completed Optuna trials and parameters importances may be computed on, and why not otherwise.

    Paired sweeps: one group per loss, so each pair gives one trial to each (twins share every other
    parameter: together they would count one configuration twice and make the split between
    parameters meaningless). A group is refused with fewer completed trials than 2 × its parameters,
    or when two of its parameters are collinear in those trials (|Spearman ρ| ≥ 0.999). Returns
    ({label: (trials, parameters)}, refusal notes).
    """
    from scipy.stats import spearmanr

    completed = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    # Paired: some pair number is shared by two trials (an unpaired sweep numbers every trial apart).
    numbers = [t.user_attrs["pair"] for t in trials if "pair" in t.user_attrs]
    paired = len(numbers) != len(set(numbers)) and "loss" in names
    if paired:
        groups = {}
        for loss in LOSSES:
            seen, chosen = set(), []
            for t in completed:
                if t.params.get("loss") == loss and t.user_attrs.get("pair") not in seen:
                    seen.add(t.user_attrs.get("pair"))
                    chosen.append(t)
            groups[loss] = chosen
    else:
        groups = {"all": completed}
    usable, notes = {}, []
    for label, group in groups.items():
        params = [n for n in names if not (paired and n == "loss")
                  and len({repr(t.params.get(n)) for t in group}) > 1]
        wanted = [n for n in names if not (paired and n == "loss")]
        if len(group) < 2 * len(wanted):
            notes.append(f"{len(group)} completed {'' if label == 'all' else label + ' '}trial(s) for {len(wanted)} "
                         f"parameters (need ≥ {2 * len(wanted)}: two per parameter)")
            continue
        codes = {n: _codes([t.params.get(n) for t in group]) for n in params}
        collinear = next(((a, b) for i, a in enumerate(params) for b in params[i + 1:]
                          if abs(spearmanr(codes[a], codes[b]).statistic) >= 0.999), None)
        if collinear:
            notes.append(f"{collinear[0]} and {collinear[1]} are collinear in the {len(group)} completed "
                         f"{'' if label == 'all' else label + ' '}trials: how importance splits between them is meaningless")
            continue
        usable[label] = (group, params)
    return usable, notes


def _codes(values: list) -> list[float]:
    """Numbers as they are; categories (e.g. loss names) as their index in sorted order."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    order = sorted({repr(v) for v in values})
    return [float(order.index(repr(v))) for v in values]


def _plot_importances(sweep: str, study_path: Path, path: Path) -> list[str]:
    """Optuna's parameter importances of the sweep's study (per loss for paired sweeps); notes on what was refused."""
    import optuna
    from matplotlib.figure import Figure

    if not study_path.is_file():
        return [f"importances for {sweep}: skipped, no Optuna study file at {study_path}"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_path)))
    try:
        study = optuna.load_study(study_name=sweep, storage=storage)
    except KeyError:
        return [f"importances for {sweep}: skipped, {study_path} holds no study named {sweep!r}"]
    trials = study.get_trials(deepcopy=False)
    names = sorted({n for t in trials for n in t.distributions})
    groups, refused = importance_groups(trials, names)
    notes = [f"importances for {sweep}: skipped, {note}" for note in refused]
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # Optuna's default, named for the plot title
    results = {}
    for label, (group, params) in groups.items():
        subset = optuna.create_study(direction="maximize")
        subset.add_trials(group)
        try:
            results[label] = (optuna.importance.get_param_importances(subset, evaluator=evaluator, params=params), len(group))
        except (ValueError, RuntimeError) as error:
            notes.append(f"importances for {sweep} ({label}): skipped, Optuna could not compute them: "
                         f"{str(error).splitlines()[0]}")
    if not results:
        return notes
    fig = Figure(figsize=(6.4 * len(results), 0.5 * max(len(r) for r, _ in results.values()) + 1.8), layout="constrained")
    for ax, (label, (importances, n)) in zip(fig.subplots(1, len(results), squeeze=False)[0], results.items()):
        shown = list(importances)[::-1]
        ax.barh(shown, [importances[p] for p in shown], color=COLOURS.get(label, "tab:green"))
        ax.set_xlabel("importance for val_acc (normalised)")
        ax.set_title(f"{label}: {n} completed trials" + (", one per pair" if label in LOSSES else ""), fontsize="small")
    # The sweep's default name (experiment-date-time) plus the evaluator overflow one line.
    fig.suptitle(f"{sweep}: hyperparameter importances\n({type(evaluator).__name__})", fontsize="small")
    fig.savefig(path, dpi=120)
    return notes


def write_plots(board: Leaderboard, out_dir: str | os.PathLike, tracking_uri: str, *, storage: str | os.PathLike | None = None,
                log: bool = True) -> dict:
    """Write val_acc against λ and lr, learning curves, the best report so far and importances (PNG) to `out_dir`,
    each file named after the sweep(s) so the next sweep's plots do not replace them; log them to each
    sweep's parent run.

    `storage` is the sweep storage folder holding `<sweep>/optuna-study.journal` (default: the
    sweep folder recorded on the parent run, else the folder of a `sqlite:///<storage>/mlflow.db`
    tracking URI). Returns {"files": [...], "notes": [...]}.
    """
    client = records_client(tracking_uri)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    label = "+".join(board.sweeps)
    files, notes = [out / f"val_acc_vs_lmbda-{label}.png", out / f"val_acc_vs_lr-{label}.png",
                    out / f"learning_curves-{label}.png", out / f"best_report-{label}.png"], []
    _plot_val_acc_vs(board, "lmbda", files[0])
    _plot_val_acc_vs(board, "lr", files[1])
    _plot_learning_curves(board, files[2])
    _plot_best_report(board, client, files[3])
    parents = dict(board.trials[["sweep", "parent_run_id"]].drop_duplicates().itertuples(index=False))
    for sweep in board.sweeps:
        study = _study_path(client, sweep, parents[sweep], tracking_uri, storage)
        if study is None:
            notes.append(f"importances for {sweep}: skipped, the sweep's storage folder is unknown (pass storage)")
            continue
        image = out / f"importances-{sweep}.png"
        image.unlink(missing_ok=True)
        notes += _plot_importances(sweep, study, image)
        if image.is_file():
            files.append(image)
    if log:
        for parent in dict.fromkeys(parents.values()):
            for file in files:
                client.log_artifact(parent, str(file), artifact_path="leaderboard")
    return {"files": [str(f) for f in files], "notes": notes}
