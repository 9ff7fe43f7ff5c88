"""The verdict's statistics: exact Wilcoxon, the gate on non-zero differences, intervals inside [0, 100]."""

import math

import numpy as np
import pytest

from sslsearch.analysis.stats import (
    MIN_NONZERO,
    paired_statistics,
    smallest_p,
    t_interval,
    wilcoxon_exact,
)


def test_min_nonzero_is_where_an_exact_test_can_first_reject():
    # Every pair agreeing is the most extreme data there is: its exact two-sided p-value is 2 / 2^n.
    below, at = wilcoxon_exact(np.arange(1.0, MIN_NONZERO))[1], wilcoxon_exact(np.arange(1.0, MIN_NONZERO + 1))[1]
    assert below == pytest.approx(2 / 2 ** (MIN_NONZERO - 1)) and below > 0.05
    assert at == pytest.approx(2 / 2 ** MIN_NONZERO) and at < 0.05


def test_smallest_p_is_the_all_signs_agreeing_p_value_with_ties_too():
    rng = np.random.default_rng(1)
    for m in range(1, 12):
        assert smallest_p(m) == pytest.approx(min(1.0, 2 / 2 ** m))
        # No data reaches below it: all agreeing, with or without tied magnitudes, gives exactly it.
        assert wilcoxon_exact(rng.integers(1, 4, m).astype(float))[1] == pytest.approx(smallest_p(m))
        assert wilcoxon_exact(np.ones(m))[1] == pytest.approx(smallest_p(m))
    assert smallest_p(0) == 1.0


def test_five_nonzero_differences_plus_zeros_are_refused():
    # The review's case: a 6-pair gate that counted zeros let p = 0.0625 through.
    for zeros in (1, 3, 10):
        s = paired_statistics([0.35] * 5 + [0.0] * zeros)
        assert s["pairs"] == 5 + zeros and s["nonzero_pairs"] == 5 and s["zero_pairs"] == zeros
        assert not s["enough_pairs"] and not s["called"] and s["leader"] is None
        assert s["p_value"] == pytest.approx(0.0625) and s["smallest_p"] == pytest.approx(0.0625)
    six = paired_statistics([0.35] * 6 + [0.0] * 4)
    assert six["enough_pairs"] and six["called"] and six["leader"] == "hsic" and six["p_value"] == pytest.approx(1 / 32)
    assert paired_statistics([-0.35] * 6)["leader"] == "barlow"


def test_exact_wilcoxon_matches_scipy_and_handles_ties_and_zeros():
    from scipy import stats

    rng = np.random.default_rng(3)
    for n in (6, 8, 11):
        d = rng.normal(0.4, 1.0, n)
        w, p, used = wilcoxon_exact(d)
        expected = stats.wilcoxon(d, method="exact")
        assert used == n and p == pytest.approx(expected.pvalue, rel=1e-12)
        assert w == pytest.approx(np.sum(stats.rankdata(np.abs(d))[d > 0]))
    # Ties and zeros, by hand: d = (0, 1, 1, -2): the zero is dropped, ranks 1.5, 1.5, 3; W+ = 3.
    # The 8 sign patterns give W+ ∈ {0, 1.5, 1.5, 3, 3, 4.5, 4.5, 6}; |W+ − 3| ≥ 0 for all: p = 1.
    assert wilcoxon_exact([0.0, 1.0, 1.0, -2.0]) == (3.0, 1.0, 3)
    # d = (1, 1, 2): W+ = 6, only the all-positive and all-negative patterns are as extreme: p = 2/8.
    assert wilcoxon_exact([1.0, 1.0, 2.0]) == (6.0, 0.25, 3)
    assert wilcoxon_exact([0.0, 0.0]) == (0.0, 1.0, 0)


def test_exact_wilcoxon_equals_brute_force_enumeration_of_sign_flips():
    from itertools import product

    from scipy.stats import rankdata

    rng = np.random.default_rng(11)
    for _ in range(20):
        d = rng.choice([-2.0, -1.0, 0.0, 1.0, 1.5, 3.0], size=int(rng.integers(3, 9)))
        nz = d[d != 0]
        ranks = rankdata(np.abs(nz))
        observed = ranks[nz > 0].sum()
        centre = ranks.sum() / 2
        flips = [sum(r for r, s in zip(ranks, signs) if s) for signs in product((0, 1), repeat=nz.size)]
        expected = sum(abs(w - centre) >= abs(observed - centre) - 1e-9 for w in flips) / 2 ** nz.size if nz.size else 1.0
        assert wilcoxon_exact(d)[1] == pytest.approx(expected)


def test_t_interval_covers_the_known_difference_at_n_8():
    """1000 simulated experiments of 8 paired differences with a known mean: the 95 % t-interval must
    cover it at least 93 % of the time. The percentile bootstrap, on the same data, does not."""
    rng = np.random.default_rng(20261130)
    true_mean, n, runs = 0.7, 8, 1000
    t_cover = boot_cover = 0
    for _ in range(runs):
        d = true_mean + rng.normal(0.0, 1.5, n)
        low, high = t_interval(d)
        t_cover += low <= true_mean <= high
        means = d[rng.integers(0, n, size=(2000, n))].mean(axis=1)
        b_low, b_high = np.quantile(means, [0.025, 0.975])
        boot_cover += b_low <= true_mean <= b_high
    assert t_cover / runs >= 0.93, t_cover
    assert boot_cover < t_cover and boot_cover / runs < 0.93, (boot_cover, t_cover)
    assert all(math.isnan(x) for x in t_interval([1.0]))  # one value: no interval


def test_intervals_never_leave_the_possible_range_and_keep_their_coverage():
    # The docs' old figure: 3 seeds at 98.26 ± 3.77 read up to 102 %.
    low, high = t_interval([100.0, 100.0, 94.8], bounds=(0.0, 100.0))
    assert high == 100.0 and low < 98.26
    unclipped = t_interval([100.0, 100.0, 94.8])
    assert unclipped[1] > 100.0 and unclipped[0] == low
    s = paired_statistics([99.0, 98.0, 99.5, -5.0, 99.9, 100.0])
    assert -100.0 <= s["ci_low"] <= s["ci_high"] <= 100.0
    # Coverage of accuracies near the ceiling: intersecting never loses a covered case.
    rng = np.random.default_rng(5)
    covered = clipped_covered = 0
    truth = None
    for _ in range(2000):
        x = np.minimum(100.0, 99.0 + rng.normal(0, 1.0, 4))
        if truth is None:   # drawn after the first sample, as before: the same random stream, the same figures
            truth = np.mean(np.minimum(100.0, 99.0 + rng.normal(0, 1.0, 200000)))
        a, b = t_interval(x)
        c, e = t_interval(x, bounds=(0.0, 100.0))
        covered += a <= truth <= b
        clipped_covered += c <= truth <= e
        assert 0.0 <= c <= e <= 100.0
    assert clipped_covered == covered
