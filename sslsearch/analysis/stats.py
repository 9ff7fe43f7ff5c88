"""The statistics behind a verdict: a paired t-interval kept inside the possible range, the exact
Wilcoxon signed-rank test, and the gate that says when a difference may be called at all.

Plain numpy/scipy on lists of numbers: no records, no Ray, so the simulation of the whole pipeline
(sslsearch.bench.verdict) calls exactly these functions.

- The gate counts **non-zero** differences. The signed-rank test drops zeros, so n pairs with z
  zeros are a test on n − z; with m non-zero differences the smallest two-sided p-value any data can
  give is 2 / 2^m (every sign agreeing), which is below 0.05 only from m = 6 on. Below that the
  difference is not called, whatever the data, and the output says so with that smallest p.
- The interval is Student's t on the mean difference (exact coverage for normal differences; the
  percentile bootstrap undercovers at n ≈ 8: tests/test_stats.py measures both), intersected with
  the range the quantity can take ([0, 100] for an accuracy, [−100, 100] for a difference of two).
  The true value always lies in that range, so the intersection covers it exactly when the
  t-interval does: the coverage is unchanged and no bound reads above 100 %.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
ALPHA = 0.05
# Non-zero paired differences needed before a difference is called: the smallest exact two-sided
# p-value of the signed-rank (or sign) test on m non-zero differences is 2 / 2^m: 0.0625 at m = 5,
# 0.031 at m = 6.
MIN_NONZERO = 6
ACCURACY = (0.0, 100.0)          # an accuracy in %
DIFFERENCE = (-100.0, 100.0)     # a difference of two accuracies, in points


def smallest_p(nonzero: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give on `nonzero` non-zero differences: 2 / 2^m."""
    return 1.0 if nonzero < 1 else min(1.0, 2.0 / 2 ** nonzero)


def t_interval(values, level: float = LEVEL, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student-t interval of the mean of `values`, intersected with `bounds` (nan, nan below 2 values).

    Intersecting with the range the true mean must lie in keeps the coverage exactly (module docstring).
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return (math.nan, math.nan)
    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


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


def paired_statistics(differences, level: float = LEVEL, alpha: float = ALPHA) -> dict:
    """Everything a verdict states about paired differences (hsic − barlow, in points).

    n, the non-zero count and the smallest p it allows, mean and sd, the t-interval (from 2 pairs on,
    inside [−100, 100]), the exact Wilcoxon p-value (from 1 non-zero pair on), and `called`: a
    difference is called only with ≥ MIN_NONZERO non-zero differences and p < alpha; `leader` is then
    the loss the signed ranks favour.
    """
    d = np.asarray(differences, dtype=float)
    nonzero = int((d != 0).sum())
    wins = float((d > 0).sum() + 0.5 * (d == 0).sum())
    low, high = t_interval(d, level, DIFFERENCE)
    w_plus, p, _ = wilcoxon_exact(d)
    enough = nonzero >= MIN_NONZERO
    called = bool(enough and p < alpha)
    centre = (nonzero * (nonzero + 1)) / 4           # W+ expected under no difference (no ties)
    return {"pairs": int(d.size), "nonzero_pairs": nonzero, "zero_pairs": int(d.size) - nonzero,
            "min_nonzero": MIN_NONZERO, "enough_pairs": bool(enough), "smallest_p": smallest_p(nonzero),
            "mean_difference": float(d.mean()) if d.size else None,
            "sd_difference": float(d.std(ddof=1)) if d.size > 1 else None,
            "hsic_wins": wins, "hsic_win_rate": wins / d.size if d.size else None,
            "level": level, "alpha": alpha, "interval": "paired t, intersected with [−100, 100]",
            "ci_low": None if math.isnan(low) else low, "ci_high": None if math.isnan(high) else high,
            "test": "Wilcoxon signed-rank, exact, two-sided", "w_plus": w_plus if nonzero else None,
            "p_value": p if nonzero else None, "called": called,
            "leader": (("hsic" if w_plus > centre else "barlow") if called else None)}
