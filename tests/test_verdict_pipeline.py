"""The verdict's error rate, measured on the whole pipeline (sslsearch.bench.verdict): a small version of
benchmarks/verdict_error_rate.py, and the checks that it runs the real selection steps."""

import math

import numpy as np
import pytest

from sslsearch.bench.verdict import SD_RUN, error_rates, simulate_pipeline, simulate_search


def test_the_simulated_search_runs_pairedasha_rungs_on_pairs():
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(20):
        ranking, _ = simulate_search(rng, pairs=8, epochs=16, eval_every=2, grace=2, factor=2, effect=0.0,
                                     sd={"barlow": SD_RUN, "hsic": SD_RUN})
        by_pair = {}
        for row in ranking:
            by_pair.setdefault(row["trial_id"].split("-")[0], set()).add(row["epoch"])
        assert all(len(e) == 1 for e in by_pair.values())   # twins always stop together: equal budgets
        epochs += [e.pop() for e in by_pair.values()]
    # ASHA stops at its rungs (2, 4, 8) and lets some pairs run the full budget.
    assert set(epochs) <= {2, 4, 8, 16} and {2, 16} <= set(epochs)
    assert epochs.count(16) < len(epochs) / 2


def test_confirmation_blocks_give_n_equal_to_the_seeds_whatever_top_is():
    rng = np.random.default_rng(1)
    for top in (1, 2, 3):
        result = simulate_pipeline(rng, effect=0.5, sd={"barlow": SD_RUN, "hsic": SD_RUN}, seeds=7, top=top)
        assert result["n"] == 7


@pytest.mark.slow
def test_false_positives_stay_within_alpha_and_a_large_effect_is_found():
    """600 simulated sweeps per scenario (about a minute on 2 cores); the docs' table uses 2000."""
    results = {r["scenario"]: r for r in error_rates(sweeps=600, seeds=8, seed=7)}
    for name, r in results.items():
        if r["effect"] == 0:
            assert r["rate"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / r["sweeps"]), (name, r)
            assert abs(r["mean_true_difference"]) < 1e-9   # the shared design compares the same settings
    assert results["hsic +1.0 point"]["rate"] > 0.9 and results["hsic +1.0 point"]["called_hsic"] == \
        results["hsic +1.0 point"]["called"]


@pytest.mark.slow
def test_tuned_against_tuned_calls_false_differences_more_often():
    """Why `shared` is the default: with each loss's own rank-1, the two chosen configurations differ in truth."""
    null = [("equal losses, hsic twice as noisy", 0.0, SD_RUN, 2 * SD_RUN)]
    shared = error_rates(sweeps=600, seeds=8, design="shared", scenarios=null, seed=3)[0]
    per_loss = error_rates(sweeps=600, seeds=8, design="per-loss", scenarios=null, seed=3)[0]
    assert per_loss["rate"] > shared["rate"] + 0.04 and per_loss["rate"] > 0.08
