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
  more epochs trained, then the smaller trial id (sslsearch.search.outcomes.RANK_ORDER, one rule
  everywhere; pooled sweeps then by sweep name). Wall time never breaks a tie: it differs from run
  to run. `test_acc` is shown, never used to choose.
- Confirmed configurations are ranked by their mean `val_acc` over seeds, with a 95 % t-interval
  over seeds (inside [0, 100]) and `test_acc` mean and interval.
- The verdict (sslsearch.analysis.verdict) comes from the confirm stage when there is one: seed
  blocks, hsic − barlow `test_acc`, the test split that no selection step read. Without one, the
  search stage's twin trials (same λ, lr, feature_dim, seed) that *both ran the full budget*, on
  `val_acc` at that epoch, labelled "search stage only"; the same comparison at each report epoch
  (every pair that reached it) is shown beside it, with its epochs. Pairs with an errored or
  running trial, a missing partner, or a twin stopped before the full budget are left out (and counted).
- Statistics: sslsearch.analysis.stats (exact Wilcoxon signed-rank, gated on non-zero differences;
  paired t-interval inside the possible range).
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

from sslsearch.analysis.stats import ACCURACY, paired_statistics, t_interval
from sslsearch.analysis.verdict import CONFIRM_COUNTED, Verdict, confirm_verdict, search_verdict
from sslsearch.errors import InputError, first_line
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
    runs_filter,
)
from sslsearch.records.store import sqlite_path
from sslsearch.search.folder import STUDY_FILE
from sslsearch.search.outcomes import FINISHED, OUTCOMES
from sslsearch.search.outcomes import RANK_ORDER as TRIAL_ORDER
from sslsearch.search.trial_config import BASE, logged_value
from sslsearch.search.trial_config import PAIR as PAIR_KEY

LOSSES = ("barlow", "hsic")
STAGES = ("search", "confirm")
FORMATS = ("table", "csv", "json", "markdown")
# Ranking: (column, ascending). The first key is the objective; the rest only break ties.
RANK_ORDER = (*TRIAL_ORDER, ("sweep", True))   # one tie-break rule everywhere (outcomes.RANK_ORDER); pooled sweeps last
# How each key of a ranking order reads in the leaderboard's header. The header's sentence is built from the order that
# ranks (`ranking_words`), so it cannot state a tie-break the ranking does not use; a key missing here still reads
# as its column and direction.
RANK_WORDS = {("val_acc", False): "val_acc", ("epochs", False): "more epochs", ("trial_id", True): "the smaller trial id",
              ("sweep", True): "the sweep name"}
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
        rows = _one_row_per_trial([_trial_row(client, run, parents[name].info.run_id) for run in runs])
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


def _one_row_per_trial(rows: list[dict]) -> list[dict]:
    """A trial with two runs (a stopped driver's, before `sync` merged them) counts once: the run that got furthest,
    the older one on a tie, as `sync` keeps it. `rows`: newest run first."""
    kept: dict[tuple, dict] = {}
    for row in reversed(rows):
        key = (row["stage"], row["trial_id"])
        if key not in kept or (row["epochs"] or 0) > (kept[key]["epochs"] or 0):
            kept[key] = row
    return list(kept.values())


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


def _twins(trials: pd.DataFrame, excluded: dict[str, int]):
    """(sweep, pair, barlow row, hsic row) for every search pair with both twins counted; the rest counted in `excluded`."""
    stages = trials["stage"] if "stage" in trials else pd.Series("search", index=trials.index)
    paired = trials[trials["pair"].notna() & (stages == "search")]
    # A diverged trial is a result about its configuration (at chance-level val_acc), so its pair counts.
    counted = (*FINISHED, "diverged")
    for (sweep, pair), group in paired.groupby(["sweep", "pair"], sort=True):
        by_loss = {row["loss"]: row for _, row in group.iterrows()}
        if set(by_loss) != set(LOSSES) or len(group) != 2:
            excluded["without its partner"] = excluded.get("without its partner", 0) + 1
        elif by_loss["barlow"]["outcome"] not in counted or by_loss["hsic"]["outcome"] not in counted:
            excluded["with an errored or running trial"] = excluded.get("with an errored or running trial", 0) + 1
        else:
            yield sweep, int(pair), by_loss["barlow"], by_loss["hsic"]


PAIR_COLUMNS = ["sweep", "pair", "epoch", "barlow_trial", "hsic_trial", "barlow_val_acc", "hsic_val_acc", "difference"]


def _value_at(row, epoch: int) -> float | None:
    value = row["history"].get(epoch)
    return value if value is not None and math.isfinite(value) else None


def paired_differences(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """hsic − barlow `val_acc` of the search's twin pairs that both ran the full budget, at that epoch; and why
    the other pairs were left out. (Comparing at whatever epoch both reached mixes budgets: ASHA keeps the pairs
    that looked best, and a pair stopped at epoch 2 says little about epoch 16.)"""
    rows, excluded = [], {}
    for sweep, pair, barlow, hsic in _twins(trials, excluded):
        full = barlow["max_epochs"]
        b, h = (_value_at(barlow, full), _value_at(hsic, full)) if full is not None and not pd.isna(full) else (None, None)
        if b is None or h is None:
            reason = "stopped before the full budget"
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        rows.append({"sweep": sweep, "pair": pair, "epoch": int(full), "barlow_trial": barlow["trial_id"],
                     "hsic_trial": hsic["trial_id"], "barlow_val_acc": b, "hsic_val_acc": h, "difference": h - b})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), excluded


def paired_by_epoch(trials: pd.DataFrame) -> list[dict]:
    """The same comparison at every report epoch after 0, on every pair that reached it (fewer at each rung):
    [{epoch, pairs, mean_difference, p_value, ...}], so budgets are never mixed within a line."""
    by_epoch: dict[int, list[float]] = {}
    for _, _, barlow, hsic in _twins(trials, {}):
        for epoch in sorted(barlow["history"]):
            b, h = _value_at(barlow, epoch), _value_at(hsic, epoch)
            if epoch >= 1 and b is not None and h is not None:
                by_epoch.setdefault(int(epoch), []).append(h - b)
    return [{"epoch": epoch, **paired_statistics(d)} for epoch, d in sorted(by_epoch.items())]


CONFIRMED_COLUMNS = ("sweep", "loss", "rank", "lmbda", "lr", "feature_dim", "seeds", "val_acc_mean", "val_acc_sd",
                     "ci_low", "ci_high", "test_acc_mean", "test_acc_sd", "test_ci_low", "test_ci_high", "not_counted",
                     "search_trial", "search_rank", "search_val_acc", "search_epochs", "max_epochs", "seed_val_acc",
                     "seed_test_acc", "trials")


def confirmed_configurations(trials: pd.DataFrame, ranked: pd.DataFrame) -> pd.DataFrame:
    """One row per confirmed configuration (loss, λ, lr, feature_dim): mean val_acc and test_acc over its seeds with
    t-intervals inside [0, 100], and the search trial it came from with its search-time val_acc and epochs;
    ranked by the mean val_acc within each loss (ties: more seeds, then the better search rank)."""
    if "stage" not in trials:
        return pd.DataFrame(columns=list(CONFIRMED_COLUMNS))
    confirm = trials[trials["stage"] == "confirm"]
    rows = []
    for (sweep, loss, lmbda, lr, dim), group in confirm.groupby(["sweep", "loss", "lmbda", "lr", "feature_dim"], sort=True):
        counted = group[group["outcome"].isin(CONFIRM_COUNTED) & group["val_acc"].notna()]
        # A diverged seed counts at its chance-level val_acc on test too, as the verdict counts it (it has no test_acc).
        test = counted["test_acc"].fillna(counted["val_acc"].where(counted["outcome"] == "diverged"))
        val, test = counted["val_acc"].to_numpy(float), test.dropna().to_numpy(float)
        low, high = t_interval(val, bounds=ACCURACY)
        test_low, test_high = t_interval(test, bounds=ACCURACY)
        source = ranked[(ranked["sweep"] == sweep) & (ranked["loss"] == loss) & (ranked["lmbda"] == lmbda)
                        & (ranked["lr"] == lr) & (ranked["feature_dim"] == dim)].head(1)
        src = source.iloc[0] if len(source) else None
        rows.append({"sweep": sweep, "loss": loss, "lmbda": lmbda, "lr": lr, "feature_dim": int(dim), "seeds": int(val.size),
                     "val_acc_mean": float(val.mean()) if val.size else None,
                     "val_acc_sd": float(val.std(ddof=1)) if val.size > 1 else None,
                     "ci_low": json_value(low), "ci_high": json_value(high),
                     "test_acc_mean": float(test.mean()) if test.size else None,
                     "test_acc_sd": float(test.std(ddof=1)) if test.size > 1 else None,
                     "test_ci_low": json_value(test_low), "test_ci_high": json_value(test_high),
                     "not_counted": int(len(group) - len(counted)),
                     "search_trial": None if src is None else src["trial_id"],
                     "search_rank": None if src is None else int(src["rank"]),
                     "search_val_acc": None if src is None else float(src["val_acc"]),
                     "search_epochs": None if src is None else int(src["epochs"]),
                     "max_epochs": json_value(group["max_epochs"].max()),
                     "seed_val_acc": {int(r["seed"]): float(r["val_acc"]) for _, r in counted.iterrows()},
                     "seed_test_acc": {int(r["seed"]): float(r["test_acc"]) for _, r in counted.iterrows()
                                       if r["test_acc"] is not None and math.isfinite(r["test_acc"])},
                     "trials": list(counted["trial_id"])})
    table = pd.DataFrame(rows, columns=[c for c in CONFIRMED_COLUMNS if c != "rank"])
    table = table[table["seeds"] > 0]
    table = table.sort_values(["val_acc_mean", "seeds", "search_rank"], ascending=[False, False, True], kind="mergesort",
                              na_position="last")
    table.insert(2, "rank", table.groupby("loss").cumcount() + 1)
    return table.reset_index(drop=True)


def confirmed_runs(trials: pd.DataFrame) -> list[dict]:
    """The confirm stage's runs as `block_differences` takes them: loss, rank, seed (block: sweep and seed), outcome,
    test_acc, val_acc. Rank k is the k-th setting when both losses ran the same settings (the shared design), else
    the k-th configuration of each loss by its search-time rank."""
    if "stage" not in trials:
        return []
    confirm = trials[trials["stage"] == "confirm"]
    runs = []
    for sweep, group in confirm.groupby("sweep", sort=True):
        settings = {loss: sorted({(r["lmbda"], r["lr"], r["feature_dim"]) for _, r in g.iterrows()}, key=repr)
                    for loss, g in group.groupby("loss")}
        shared = len(settings) == 2 and settings.get("barlow") == settings.get("hsic")
        order = {}
        for loss, keys in settings.items():
            if shared:   # the plan's order: setting k's runs have pair numbers k · seeds + j, both losses alike
                first = group.groupby(["lmbda", "lr", "feature_dim"])["pair"].min()
                ranked_keys = sorted(keys, key=lambda key: (first.get(key, float("inf")), repr(key)))
                order.update({(loss, key): k + 1 for k, key in enumerate(ranked_keys)})
            else:   # per-loss: the k-th configuration of each loss by its pair number (k · seeds + j)
                pairs = group[group["loss"] == loss].groupby(["lmbda", "lr", "feature_dim"])["pair"].min()
                for k, (key, _) in enumerate(sorted(pairs.items(), key=lambda item: (item[1], repr(item[0])))):
                    order[(loss, key)] = k + 1
        for _, r in group.iterrows():
            runs.append({"loss": r["loss"], "rank": order[(r["loss"], (r["lmbda"], r["lr"], r["feature_dim"]))],
                         "seed": (sweep, r["seed"]), "outcome": r["outcome"],
                         "test_acc": json_value(r["test_acc"]), "val_acc": json_value(r["val_acc"])})
    return runs


def _counts(trials: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per stage: trials and each outcome (search trials + confirmation runs = every child run)."""
    stages = trials["stage"] if "stage" in trials else pd.Series("search", index=trials.index)
    counts = {}
    for stage in STAGES:
        part = trials[stages == stage]
        if stage == "search" or len(part):
            counts[stage] = {"trials": len(part), **{o: int((part["outcome"] == o).sum()) for o in OUTCOMES}}
    return counts


def _best(ranked: pd.DataFrame, confirmed: pd.DataFrame, stage: str) -> dict:
    """What the headline shows per loss: the confirmed rank-1 (test_acc over seeds), else the search-stage best."""
    best = {}
    if stage == "confirm":
        for loss, group in confirmed.groupby("loss", sort=True):
            r = group.iloc[0]
            interval = _mean_interval(json_value(r["test_acc_mean"]), json_value(r["test_ci_low"]),
                                      json_value(r["test_ci_high"]), r["seeds"])
            test = f"test_acc {interval}" if json_value(r["test_acc_mean"]) is not None else "test_acc -"
            best[loss] = {"stage": "confirm", "value": json_value(r["test_acc_mean"]), "metric": "test_acc",
                          "ci_low": json_value(r["test_ci_low"]), "ci_high": json_value(r["test_ci_high"]),
                          "seeds": int(r["seeds"]), "val_acc_mean": json_value(r["val_acc_mean"]),
                          "lmbda": float(r["lmbda"]), "lr": float(r["lr"]), "feature_dim": int(r["feature_dim"]),
                          "text": f"confirmed rank-1 (λ={r['lmbda']:.4g}, lr={r['lr']:.4g}, "
                                  f"feature_dim={int(r['feature_dim'])}): "
                                  f"{test} over {int(r['seeds'])} seeds, val_acc mean {_cell('val_acc', r['val_acc_mean'])}"}
    else:
        for loss, group in ranked.groupby("loss", sort=True):
            r = group.iloc[0]
            best[loss] = {"stage": "search", "value": float(r["val_acc"]), "metric": "val_acc", "epochs": int(r["epochs"]),
                          "trial": r["trial_id"], "lmbda": float(r["lmbda"]), "lr": float(r["lr"]),
                          "feature_dim": int(r["feature_dim"]),
                          "text": f"search-stage best val_acc {r['val_acc']:.2f} (trial {r['trial_id']}, {int(r['epochs'])} "
                                  "epochs; one run, the best of many: biased upward)"}
    return best


def board_verdict(trials: pd.DataFrame, ranked: pd.DataFrame, confirmed: pd.DataFrame, pairs: pd.DataFrame,
                  excluded: dict[str, int]) -> Verdict:
    """The verdict of a (single or pooled) board: from the confirm stage if there is one, else the search stage."""
    names = list(dict.fromkeys(trials["sweep"]))
    sweep = names[0] if len(names) == 1 else "SWEEP"   # pooled sweeps: the commands it suggests name no one sweep
    counts = _counts(trials)
    epochs = json_value(trials["max_epochs"].max()) if "max_epochs" in trials and trials["max_epochs"].notna().any() else None
    if len(confirmed):
        top = int(confirmed.groupby("loss").size().max())
        return confirm_verdict(sweep, confirmed_runs(trials), top=top, epochs=epochs,
                               best=_best(ranked, confirmed, "confirm"), counts=counts)
    return search_verdict(sweep, pairs["difference"].to_numpy(dtype=float), excluded, epochs=epochs,
                          best=_best(ranked, confirmed, "search"), counts=counts)


def head_to_head(ranked: pd.DataFrame, pairs: pd.DataFrame, excluded: dict[str, int], by_epoch: list[dict]) -> dict:
    """Best and median val_acc per loss in the search stage; the search pairs at the full budget and at each epoch."""
    variants = {}
    for loss, group in ranked.groupby("loss", sort=True):
        variants[loss] = {"trials": int(len(group)), "best_val_acc": float(group["val_acc"].max()),
                          "median_val_acc": float(group["val_acc"].median()), "best_trial": group.iloc[0]["trial_id"]}
    result = {"metric": "val_acc", "variants": variants, "paired": None, "paired_by_epoch": by_epoch}
    if len(pairs) or excluded:
        result["paired"] = {"stage": "search", "difference": "hsic - barlow", "compared_at": "the full budget (both twins)",
                            "epochs": sorted({int(e) for e in pairs["epoch"]}), "excluded": dict(sorted(excluded.items())),
                            "meaning": PAIRS_MEANING, **paired_statistics(pairs["difference"].to_numpy(dtype=float))}
    return result


# What a search pair means (printed under it).
PAIRS_MEANING = ("pairs: the sweep's twin trials (same λ, lr, feature_dim and seed; only the loss differs), both at the "
                 "full budget. The sampler chose these settings (and ASHA, if on, these pairs) on the same val split: "
                 "indicative only.")


@dataclass
class Leaderboard:
    """Everything the leaderboard shows, for one sweep or several pooled ones."""

    sweeps: list[str]
    trials: pd.DataFrame            # every trial, every outcome, both stages
    ranked: pd.DataFrame            # finished search trials in ranking order, `rank` within each loss
    pairs: pd.DataFrame             # the compared search pairs, full budget (empty for unpaired sweeps)
    head_to_head: dict
    verdict: Verdict
    top: int | None = 10            # rows per loss in the tables; None: all
    counts: dict = field(default_factory=dict)   # per stage: trials and outcomes
    confirmed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CONFIRMED_COLUMNS)))

    def top_rows(self, loss: str) -> pd.DataFrame:
        rows = self.ranked[self.ranked["loss"] == loss]
        return rows if self.top is None else rows.head(self.top)


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
    pairs, excluded = paired_differences(trials)
    confirmed = confirmed_configurations(trials, ranked)
    return Leaderboard(sweeps=list(dict.fromkeys(trials["sweep"])), trials=trials, ranked=ranked, pairs=pairs,
                       head_to_head=head_to_head(ranked, pairs, excluded, paired_by_epoch(trials)),
                       verdict=board_verdict(trials, ranked, confirmed, pairs, excluded),
                       top=top, counts=_counts(trials), confirmed=confirmed)


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
    # The sweep key only separates pooled sweeps: one sweep's header leaves it out.
    order = RANK_ORDER if len(board.sweeps) > 1 else TRIAL_ORDER
    return [f"sweep {', '.join(board.sweeps)} ({dataset}{budget}): {count_line(board.counts)}",
            f"{ranking_words(order)}. test_acc is shown, never used to choose."]


def _key_words(key: tuple[str, bool]) -> str:
    return RANK_WORDS.get(key) or f"the {'smaller' if key[1] else 'larger'} {key[0]}"


def tie_break_words(order: tuple = RANK_ORDER) -> str:
    """'more epochs, then the smaller trial id': the tie-breaking keys of `order` in words (the model card's)."""
    return ", then ".join(_key_words(key) for key in order[1:])


def ranking_words(order: tuple = RANK_ORDER) -> str:
    """'ranked by val_acc (final report; …); ties: more epochs, then the smaller trial id': `order` (the one that
    ranks, (column, ascending) pairs) in words, so the leaderboard and the report say what `rank_trials` does."""
    return (f"ranked by {_key_words(order[0])} (final report; only trials that reported after epoch 0)"
            + (f"; ties: {tie_break_words(order)}" if len(order) > 1 else ""))


def count_line(counts: dict) -> str:
    """'16 search trials (6 completed, 10 stopped early) + 16 confirmation runs (16 completed)': the parts add up."""
    names = {"search": ("search trial", "search trials"), "confirm": ("confirmation run", "confirmation runs")}
    parts = []
    for stage, c in counts.items():
        outcomes = ", ".join(f"{c[o]} {o}" for o in OUTCOMES if c.get(o))
        parts.append(f"{c['trials']} {names[stage][c['trials'] != 1]}" + (f" ({outcomes})" if outcomes else ""))
    return " + ".join(parts)


def _paired_line(title: str, p: dict) -> list[str]:
    left_out = ", ".join(f"{n} {'pair' if n == 1 else 'pairs'} {reason}" for reason, n in p["excluded"].items())
    left_out = f"; left out: {left_out}" if left_out else ""
    if not p["pairs"]:
        return [f"{title}: no comparable pair{left_out}"]
    return [f"{title}: {_statistics_text(p)}{left_out}", f"  {p['meaning']}"]


def _statistics_text(p: dict) -> str:
    """n, mean, interval, p and the smallest p reachable, in one phrase."""
    text = f"n = {p['pairs']}, mean {p['mean_difference']:+.2f} points"
    if p["ci_low"] is not None:
        text += f", {100 * p['level']:.0f}% t [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
    if p["p_value"] is not None:
        text += f", exact Wilcoxon p = {p['p_value']:.3g}"
    text += f" ({p['nonzero_pairs']} non-zero: p ≥ {p['smallest_p']:.3g}"
    return text + (")" if p["enough_pairs"] else f"; not called below {p['min_nonzero']} non-zero)")


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
        return lines
    lines += _paired_line("search pairs at the full budget (hsic − barlow val_acc)", p)
    for e in h2h["paired_by_epoch"]:
        lines.append(f"  at epoch {e['epoch']} (every pair that reached it): {_statistics_text(e)}")
    return lines


def _mean_interval(mean, low, high, n) -> str:
    n = int(n)
    if mean is None:
        return "-"
    if low is None:
        return f"{mean:.2f} ({n} seed{'s' * (n != 1)}, no interval)"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


CONFIRMED_SHOWN = ("rank", "λ", "lr", "feature_dim", "seeds", "val_acc (mean, 95% t)", "test_acc (mean, 95% t)",
                   "search trial", "search val_acc (same budget)")


def _search_figure(r) -> str:
    """The search-time val_acc beside the confirmed mean only at the same budget (the winner's curse at equal epochs)."""
    if json_value(r["search_val_acc"]) is None:
        return "-"
    if json_value(r["max_epochs"]) is not None and r["search_epochs"] is not None and r["search_epochs"] < r["max_epochs"]:
        return f"stopped at epoch {r['search_epochs']}"
    return _cell("val_acc", r["search_val_acc"])


def _confirmed_lines(board: Leaderboard, markdown: bool) -> list[str]:
    lines = []
    for loss, group in board.confirmed.groupby("loss", sort=True):
        title = f"{loss}: confirmed configurations (ranked by mean val_acc over seeds)"
        lines += ["", f"## {title}" if markdown else title]
        cells = [[str(r["rank"]), _cell("lmbda", r["lmbda"]), _cell("lr", r["lr"]), str(r["feature_dim"]),
                  str(r["seeds"]) + (f" (+{r['not_counted']} failed)" if r["not_counted"] else ""),
                  _mean_interval(json_value(r["val_acc_mean"]), json_value(r["ci_low"]), json_value(r["ci_high"]), r["seeds"]),
                  _mean_interval(json_value(r["test_acc_mean"]), json_value(r["test_ci_low"]), json_value(r["test_ci_high"]),
                                 r["seeds"]),
                  f"{r['search_trial']} (#{r['search_rank']})" if r["search_trial"] else "-",
                  _search_figure(r)] for _, r in group.iterrows()]
        numeric = [True, True, True, True, True, True, True, False, True]
        lines += (_markdown_table if markdown else _text_table)(list(CONFIRMED_SHOWN), cells, numeric)
    return lines


def _rows(board: Leaderboard) -> pd.DataFrame:
    tops = [board.top_rows(loss) for loss in sorted(board.ranked["loss"].unique())]
    return pd.concat(tops)[list(ROW_COLUMNS)] if tops else pd.DataFrame(columns=list(ROW_COLUMNS))


def format_leaderboard(board: Leaderboard, fmt: str = "table", *, verdict: bool = True) -> str:
    """The leaderboard as `table` (terminal: the verdict last), `markdown` (the verdict first), `json` (everything)
    or `csv` (the ranked rows only). `verdict=False`: tables without the verdict (the report shows it its own way)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _rows(board).to_csv(index=False).rstrip("\n")
    if fmt == "json":
        rows = _rows(board)
        document = {
            "sweeps": board.sweeps,
            "verdict": board.verdict.to_dict(),
            "counts": board.counts,
            "ranking": {"metric": "val_acc", "order": [f"{c} {'asc' if a else 'desc'}" for c, a in RANK_ORDER],
                        "ranked_outcomes": list(FINISHED), "top": board.top},
            "variants": {loss: [{k: json_value(v) for k, v in r.items()} for r in g.to_dict("records")]
                         for loss, g in rows.groupby("loss", sort=True)},
            "confirmed": [{k: json_value(v) for k, v in r.items()} for r in board.confirmed.to_dict("records")],
            "head_to_head": board.head_to_head,
            "pairs": [{k: json_value(v) for k, v in r.items()} for r in board.pairs.to_dict("records")],
        }
        return json.dumps(document, indent=2, allow_nan=False, default=json_value)
    markdown = fmt == "markdown"
    shown = _shown(board)
    lines = ([board.verdict.markdown(heading=False), ""] if markdown and verdict else []) + _summary_lines(board)
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
    if not markdown and verdict:
        lines += ["", *board.verdict.lines()]
    return "\n".join(lines)


VERDICT_FILE = "verdict.md"


def log_verdict(board: Leaderboard, tracking_uri: str) -> list[str]:
    """Put the answer on the sweep's MLflow parent run, so the runs view shows it without opening a child: the
    verdict's tags (`sslsearch.verdict`: its sentence; `sslsearch.verdict_stage`) and metrics (`verdict.*`, NaN where
    there is none, so a stale figure is overwritten), `best.<metric>.<loss>` (what the headline shows), the verdict
    as `verdict.md` and the leaderboard as `leaderboard/leaderboard.md` and `.json`. Only for a single sweep;
    returns the metric names it logged."""
    from mlflow.entities import Metric, RunTag

    if len(board.sweeps) != 1:
        return []
    parent = board.trials["parent_run_id"].iloc[0]
    client = records_client(tracking_uri)
    now = int(time.time() * 1000)
    verdict = board.verdict
    metrics = dict(verdict.mlflow_metrics())
    for loss, best in verdict.best.items():
        metrics[f"best.{best['stage']}.{best['metric']}.{loss}"] = math.nan if best["value"] is None else best["value"]
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in verdict.mlflow_tags().items()])
    client.log_text(parent, verdict.markdown(), VERDICT_FILE)
    client.log_text(parent, format_leaderboard(board, "markdown"), "leaderboard/leaderboard.md")
    client.log_text(parent, format_leaderboard(board, "json"), "leaderboard/leaderboard.json")
    return sorted(metrics)


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
            # optuna-dashboard shows importances for the same study from 2 completed trials on, pooling
            # both losses: say why these are absent, in the note the report and `leaderboard --plots` show.
            notes.append(f"{len(group)} completed {'' if label == 'all' else label + ' '}trial(s) for {len(wanted)} "
                         f"parameters (need ≥ {2 * len(wanted)}: two per parameter; optuna-dashboard shows importances "
                         "from 2 completed trials on, with both losses pooled, so a pair's twins count one "
                         "configuration twice)" if paired else
                         f"{len(group)} completed trial(s) for {len(wanted)} parameters (need ≥ {2 * len(wanted)}: two "
                         "per parameter; optuna-dashboard shows importances from 2 completed trials on)")
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
                         f"{first_line(error)}")
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot make the plots folder {out} ({error.strerror or first_line(error)}); "
                         "give another --plots") from None
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
