"""One tie-break rule for every ranking of trials: the sweep summary, checkpoint retention (top_k), the leaderboard
and export all order by the final val_acc, then more epochs, then the smaller trial id (outcomes.ranking_key)."""

import types

import pandas as pd

from sslsearch.analysis.leaderboard import rank_trials
from sslsearch.search.outcomes import ranking_key
from sslsearch.search.retention import ranked
from sslsearch.search.sweep import SweepSummary, TrialSummary

# Three tied trials listed in an order that is neither by id nor by wall time: the later, slower, smaller id wins.
TIED = [("c3", 12.0), ("b2", 30.0), ("a1", 45.0)]   # (trial id, trial_seconds)


def _summary() -> SweepSummary:
    trials = [TrialSummary(trial_id=i, loss="barlow", params={}, epoch=4, val_acc=90.0, test_acc=None,
                           outcome="completed", trial_seconds=s, checkpoint=None) for i, s in TIED]
    return SweepSummary("s", "/nowhere", trials, wall_seconds=1.0, concurrency=1)


def test_ties_are_broken_by_the_trial_id_in_every_ranking():
    summary_best = _summary().best_per_loss()["barlow"].trial_id
    retained = ranked([types.SimpleNamespace(trial_id=i, last_result={"val_acc": 90.0, "epoch": 4}) for i, _ in TIED], 1)
    board = rank_trials(pd.DataFrame({"sweep": "s", "loss": "barlow", "trial_id": [i for i, _ in TIED],
                                      "val_acc": 90.0, "best_val_acc": 90.0, "epochs": 4,
                                      "trial_seconds": [s for _, s in TIED], "outcome": "completed"}))
    assert summary_best == "a1"
    assert retained == {"a1"}
    assert list(board["trial_id"]) == ["a1", "b2", "c3"]   # export takes the first ranked row that has a checkpoint


def test_the_key_puts_val_acc_before_epochs_before_the_id():
    keys = sorted([ranking_key(90.0, 4, "z"), ranking_key(91.0, 2, "y"), ranking_key(90.0, 6, "x"), ranking_key(90.0, 4, "a")])
    assert keys == [ranking_key(91.0, 2, "y"), ranking_key(90.0, 6, "x"), ranking_key(90.0, 4, "a"),
                    ranking_key(90.0, 4, "z")]
