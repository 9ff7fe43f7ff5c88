"""The verdict: which loss is ahead, how sure that is, and where the figure comes from — one object,
shown the same way in the terminal, the report, the MLflow parent run and the export card.

Where it comes from, in order of preference:
- **confirm stage** (`sslsearch confirm`): the rank-1 configuration of each loss (by the sweep's
  ranking on `val_acc`), re-run with fresh seeds. Seed j is one block: both losses' configurations
  run with it (same initialisation seed, data order and augmentation draws), and different blocks
  share nothing, so n = the number of complete seed blocks. With `--top K > 1`, a block's
  difference is the mean of its K hsic runs minus the mean of its K barlow runs (never K × seeds
  pairs). The difference is `test_acc`: the test split is read by no selection step (search,
  ASHA, the sampler and the choice of configurations to confirm all read `val_acc` only; test data
  is evaluated once, at a trial's last epoch), so the verdict is measured on data that chose nothing.
- **search stage only**: the sweep's twin trials (same λ, lr, feature_dim, seed; only the loss
  differs) that both ran the full budget, compared on `val_acc` at that epoch — the split that chose
  them, after ASHA kept the pairs that looked best: indicative, biased, and labelled so, with the
  command that confirms it.

The statistics are sslsearch.analysis.stats': the exact Wilcoxon signed-rank test, gated on
non-zero differences, and a paired t-interval kept inside [−100, 100].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sslsearch.analysis.stats import ALPHA, MIN_NONZERO, paired_statistics
from sslsearch.records.schema import VERDICT, VERDICT_STAGE

LOSSES = ("barlow", "hsic")
# A confirmation run that diverged is a result about its configuration: it counts, at the chance-level
# score its last report carries (diverged runs report no test_acc, so their val_acc stands in).
CONFIRM_COUNTED = ("completed", "diverged")


def block_differences(runs, score: str = "test_acc") -> tuple[list[dict], dict[str, int]]:
    """hsic − barlow per seed block of confirmation runs, and why blocks were left out.

    `runs`: dicts with loss, rank (k, 1-based within the loss), seed, outcome, test_acc, val_acc.
    A block counts only when every rank of both losses has a counted run in it; its difference is the
    mean over ranks of hsic minus the mean over ranks of barlow (so n = blocks, whatever K is).
    """
    runs = list(runs)
    ranks = {loss: sorted({r["rank"] for r in runs if r["loss"] == loss}) for loss in LOSSES}
    blocks, excluded = {}, {}
    for r in runs:
        blocks.setdefault(r["seed"], []).append(r)
    out = []
    for seed in sorted(blocks):
        cells: dict[tuple[str, int], float] = {}
        for r in blocks[seed]:
            value = r.get(score)
            if r["outcome"] == "diverged" and (value is None or not math.isfinite(value)):
                value = r.get("val_acc")
            if r["outcome"] in CONFIRM_COUNTED and value is not None and math.isfinite(value):
                cells[(r["loss"], r["rank"])] = float(value)
        if not ranks["barlow"] or not ranks["hsic"] or any((loss, k) not in cells for loss in LOSSES for k in ranks[loss]):
            excluded["incomplete (a run errored, is running or is missing)"] = \
                excluded.get("incomplete (a run errored, is running or is missing)", 0) + 1
            continue
        means = {loss: sum(cells[(loss, k)] for k in ranks[loss]) / len(ranks[loss]) for loss in LOSSES}
        out.append({"seed": seed, "barlow": means["barlow"], "hsic": means["hsic"], "difference": means["hsic"] - means["barlow"],
                    "per_rank": {k: cells[("hsic", k)] - cells[("barlow", k)] for k in ranks["hsic"] if k in ranks["barlow"]}})
    return out, excluded


@dataclass(frozen=True)
class Verdict:
    """The answer to "which loss", with its evidence. `stage`: confirm or search."""

    sweep: str
    stage: str
    sentence: str
    split: str | None = None          # test (confirm) or val (search)
    metric: str | None = None         # test_acc or val_acc
    unit: str = ""                    # what one of the n is
    epochs: int | None = None         # the budget every compared run had
    top: int | None = None            # confirmed configurations per loss
    statistics: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)      # per loss: what the headline shows
    counts: dict = field(default_factory=dict)    # per stage: trials and outcomes
    next_step: str | None = None
    per_rank: dict = field(default_factory=dict)  # with --top K > 1: rank k → its statistics on the same blocks

    @property
    def blocks(self) -> int:
        return int(self.statistics.get("pairs", 0))

    @property
    def called(self) -> bool:
        return bool(self.statistics.get("called"))

    @property
    def leader(self) -> str | None:
        return self.statistics.get("leader")

    def to_dict(self) -> dict:
        """JSON-ready (the card's `verdict`, the leaderboard's JSON)."""
        return {"sweep": self.sweep, "stage": self.stage, "sentence": self.sentence, "split": self.split,
                "metric": self.metric, "unit": self.unit, "epochs": self.epochs, "top": self.top,
                "statistics": dict(self.statistics), "excluded": dict(self.excluded), "best": self.best,
                "counts": self.counts, "next_step": self.next_step, "per_rank": {str(k): v for k, v in self.per_rank.items()}}

    def lines(self) -> list[str]:
        """The terminal form: the sentence first, then what it rests on, then what to run next."""
        lines = [f"verdict ({_stage_words(self.stage)}): {self.sentence}"]
        s = self.statistics
        if s.get("pairs"):
            zeros = f", {s['zero_pairs']} of them zero" if s["zero_pairs"] else ""
            lines.append(f"  n = {s['pairs']} {self.unit}{zeros}; {s['nonzero_pairs']} non-zero "
                         f"difference{'s' * (s['nonzero_pairs'] != 1)}, so the "
                         f"smallest p the exact test can reach is {_p(s['smallest_p'])}"
                         + ("" if s["enough_pairs"] else f" (a difference is called only from {MIN_NONZERO} non-zero on)"))
            if s.get("ci_low") is not None:
                lines.append(f"  interval: {100 * s['level']:.0f}% paired t on the mean difference, intersected with "
                             "[−100, 100] (the true difference lies there, so the coverage is unchanged); "
                             f"test: exact two-sided Wilcoxon signed-rank, zeros dropped, α = {s['alpha']:g}")
        for k, r in self.per_rank.items():
            lines.append(f"  setting {k} alone, same blocks: HSIC − Barlow = {_points(r['mean_difference'])} points, "
                         f"n = {r['pairs']}" + (f", exact Wilcoxon p = {_p(r['p_value'])}" if r["p_value"] is not None else ""))
        if self.excluded:
            lines.append("  left out: " + ", ".join(f"{n} {k}" for k, n in self.excluded.items()))
        for loss, b in self.best.items():
            lines.append(f"  {loss}: {b['text']}")
        if self.next_step:
            lines.append(f"  next: {self.next_step}")
        return lines

    def markdown(self, heading: bool = True) -> str:
        """verdict.md (and the top of the leaderboard's Markdown): the same lines, as Markdown."""
        lines = ([f"# Verdict: {self.sweep}", ""] if heading else []) + [f"**{self.sentence}**", "",
                                                                          f"Stage: {_stage_words(self.stage)}.", ""]
        lines += [f"- {line.strip()}" for line in self.lines()[1:]]
        return "\n".join(lines) + "\n"

    def mlflow_tags(self) -> dict[str, str]:
        return {VERDICT: self.sentence, VERDICT_STAGE: self.stage}

    def mlflow_metrics(self) -> dict[str, float]:
        """Numbers for the runs table; NaN where there is none (so a stale figure is overwritten)."""
        s = self.statistics
        values = {"verdict.n": s.get("pairs"), "verdict.nonzero": s.get("nonzero_pairs"),
                  "verdict.mean_difference": s.get("mean_difference"), "verdict.ci_low": s.get("ci_low"),
                  "verdict.ci_high": s.get("ci_high"), "verdict.p_value": s.get("p_value"),
                  "verdict.smallest_p": s.get("smallest_p"), "verdict.called": float(self.called) if s else None}
        return {k: math.nan if v is None else float(v) for k, v in values.items()}


def _stage_words(stage: str) -> str:
    return {"confirm": "confirm stage", "search": "search stage only"}[stage]


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _points(x: float) -> str:
    return f"{x:+.2f}"


def sentence(stats: dict, *, stage: str, unit: str, metric: str, sweep: str, epochs: int | None = None) -> str:
    """The quotable sentence: the claim, HSIC − Barlow with its interval, n and its unit, p, and where it comes from."""
    n = stats.get("pairs", 0)
    if stage == "search":
        lead = f"Search stage only — run `sslsearch confirm {sweep}`"
        if not n:
            return f"{lead}: no twin pairs that both ran the full budget to compare."
    elif not n:
        return "No complete seed block to compare yet (confirm stage)."
    interval = f" [{_points(stats['ci_low'])}, {_points(stats['ci_high'])}]" if stats.get("ci_low") is not None else ""
    unit = unit if n != 1 else unit.replace("seeds", "seed").replace("pairs", "pair")
    budget = f" at {epochs} epochs" if stage == "search" and epochs else ""
    figure = f"HSIC − Barlow = {_points(stats['mean_difference'])} points{interval} {metric}{budget}, n = {n} {unit}"
    p = stats.get("p_value")
    test = f"exact Wilcoxon p = {_p(p)}" if p is not None else "every difference zero"
    if stage == "search":
        return f"{lead}: {figure}, {test} (indicative only: measured on the val split that chose these settings)."
    where = "confirmed on the test split, which no selection step saw"
    if not stats["enough_pairs"]:
        return (f"Too few non-zero differences to tell HSIC and Barlow apart: {figure}, {stats['nonzero_pairs']} non-zero, "
                f"so p cannot go below {_p(stats['smallest_p'])}; {where}.")
    if stats["called"]:
        ahead, behind = ("HSIC", "Barlow") if stats["leader"] == "hsic" else ("Barlow", "HSIC")
        return f"{ahead} beats {behind}: {figure}, {test}; {where}."
    return f"No evidence that HSIC and Barlow differ: {figure}, {test}; {where}."


def confirm_verdict(sweep: str, runs, *, top: int | None, epochs: int | None, best: dict | None = None,
                    counts: dict | None = None, alpha: float = ALPHA) -> Verdict:
    """The verdict of a confirmation stage from its runs (see `block_differences`)."""
    blocks, excluded = block_differences(runs)
    stats = paired_statistics([b["difference"] for b in blocks], alpha=alpha)
    ranks = sorted({k for b in blocks for k in b["per_rank"]})
    per_rank = {k: paired_statistics([b["per_rank"][k] for b in blocks], alpha=alpha) for k in ranks} if len(ranks) > 1 else {}
    unit = "seeds" if (top or 1) == 1 else f"seeds (each: the mean of the top {top} per loss)"
    return Verdict(sweep=sweep, stage="confirm", split="test", metric="test_acc", unit=unit, epochs=epochs, top=top,
                   statistics=stats, excluded=excluded, best=best or {}, counts=counts or {},
                   sentence=sentence(stats, stage="confirm", unit=unit, metric="test_acc", sweep=sweep), per_rank=per_rank,
                   next_step=f"sslsearch export {sweep} --out DIR" if sweep else None)


def search_verdict(sweep: str, differences, excluded: dict[str, int], *, epochs: int | None, best: dict | None = None,
                   counts: dict | None = None) -> Verdict:
    """The search stage's indicative comparison: twin pairs that both ran the full budget, val_acc at that epoch."""
    stats = paired_statistics(list(differences))
    unit = "twin pairs at the full budget"
    return Verdict(sweep=sweep, stage="search", split="val", metric="val_acc", unit=unit, epochs=epochs,
                   statistics=stats, excluded=excluded, best=best or {}, counts=counts or {},
                   sentence=sentence(stats, stage="search", unit=unit, metric="val_acc", sweep=sweep, epochs=epochs),
                   next_step=f"sslsearch confirm {sweep}")
