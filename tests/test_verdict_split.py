"""The verdict is computed on the test split, and no selection step reads it.

Selection reads `val_acc` only: ASHA's rungs and the searcher (the sweep's metric), the ranking, the
choice of settings to confirm and the confirmed ranking. The test split is evaluated once, at a trial's
last epoch, for reporting — and for the verdict, which compares the confirmed runs' `test_acc`.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from sslsearch.analysis.leaderboard import build_leaderboard, confirmed_configurations, rank_trials
from sslsearch.method.data import load_dataset
from sslsearch.method.train import PretrainConfig, pretrain
from sslsearch.search.asha import PairedASHA
from sslsearch.search.confirm import plan_confirmation, rank_search_rows
from sslsearch.search.outcomes import METRIC


@pytest.mark.slow
def test_what_training_reports_before_its_last_epoch_does_not_depend_on_the_test_split():
    """The same trial with the test labels scrambled: every val_acc (all that ASHA, the searcher and the ranking
    read) is identical; test_acc exists only in the last report, and it moves."""
    data = load_dataset("digits")
    scrambled = dataclasses.replace(data, test_labels=data.test_labels[torch.randperm(len(data.test_labels),
                                                                                      generator=torch.Generator().manual_seed(0))])
    config = PretrainConfig(dataset="digits", epochs=2, eval_every=1, batch_size=128, feature_dim=32, seed=3, device="cpu")
    runs = [pretrain(config, data=d, progress=False, final_test=True).history for d in (data, scrambled)]
    for history in runs:
        assert [r.get("test_acc") is not None for r in history] == [False] * (len(history) - 1) + [True]
    assert [r["val_acc"] for r in runs[0]] == [r["val_acc"] for r in runs[1]]
    assert runs[0][-1]["test_acc"] != runs[1][-1]["test_acc"]


def _trials(test_acc):
    rows = []
    for i, (loss, val, lmbda, stage, seed) in enumerate([
            ("barlow", 90.0, 0.01, "search", 0), ("hsic", 91.0, 0.01, "search", 0), ("barlow", 88.0, 0.1, "search", 1),
            ("hsic", 92.0, 0.1, "search", 1), *[(loss, 89.0 + j % 3, 0.1, "confirm", 10 + j // 2)
                                                for j, loss in enumerate(["barlow", "hsic"] * 6)]]):
        rows.append({"sweep": "s", "stage": stage, "trial_id": f"t{i}", "run_id": f"r{i}", "loss": loss, "lmbda": lmbda,
                     "lr": 1e-3, "feature_dim": 64, "seed": seed, "pair": seed if stage == "search" else i, "val_acc": val,
                     "best_val_acc": val, "test_acc": test_acc[i], "knn_acc": None, "epochs": 4, "trial_seconds": 10.0,
                     "outcome": "completed", "dataset": "digits", "max_epochs": 4, "parent_run_id": "p",
                     "history": {0: 10.0, 4: val}})
    trials = pd.DataFrame(rows)
    trials["pair"] = trials["pair"].astype("Int64")
    return trials


def test_ranking_confirmation_choice_and_confirmed_ranking_ignore_test_acc_and_the_verdict_reads_it():
    rng = np.random.default_rng(0)
    boards = [build_leaderboard(_trials(list(rng.uniform(0, 100, 16)))) for _ in range(5)]
    for board in boards[1:]:
        assert list(board.ranked["trial_id"]) == list(boards[0].ranked["trial_id"])
        confirmed = confirmed_configurations(board.trials, rank_trials(board.trials))
        assert list(confirmed["search_trial"]) == list(boards[0].confirmed["search_trial"])
    # What confirm ranks on has no test_acc at all (search_ranking builds these rows from val_acc).
    rows = [{"trial_id": r["trial_id"], "loss": r["loss"], "params": {"loss": r["loss"], "lmbda": r["lmbda"]},
             "seed": r["seed"], "val_acc": r["val_acc"], "epoch": r["epochs"], "trial_seconds": r["trial_seconds"]}
            for _, r in boards[0].ranked.iterrows()]
    plan = plan_confirmation(rank_search_rows(rows), {0, 1}, top=1, seeds=6)
    assert plan["configurations"][0]["params"]["lmbda"] == 0.01   # twins 90, 91 (mean 90.5) against 88, 92 (90)
    # The verdict is on test_acc: it changes with it.
    assert len({b.verdict.statistics["mean_difference"] for b in boards}) == len(boards)
    assert {b.verdict.metric for b in boards} == {"test_acc"}


class _Trial:
    def __init__(self, trial_id, pair):
        self.trial_id, self.config, self.status = trial_id, {"pair": pair}, "RUNNING"


class _Controller:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = "TERMINATED"


@pytest.mark.parametrize("paired", [False, True])
def test_asha_decides_the_same_whatever_test_acc_a_report_carries(paired):
    assert METRIC == "val_acc"
    decisions = []
    for test_acc in (0.0, 100.0, float("nan")):
        asha = PairedASHA(metric=METRIC, max_epochs=8, eval_every=2, grace_period=2, reduction_factor=2, paired=paired)
        trials = [_Trial(f"t{i}", i // 2) for i in range(8)]
        controller = _Controller(trials)
        made = []
        for epoch in (2, 4, 8):
            for i, trial in enumerate(trials):
                if trial.status in ("RUNNING", "PAUSED"):
                    made.append(asha.on_trial_result(controller, trial, {"epoch": epoch, METRIC: 50.0 + (i * 7) % 11,
                                                                         "test_acc": test_acc}))
                    trial.status = {"STOP": "TERMINATED", "PAUSE": "PAUSED"}.get(made[-1], "RUNNING")
                    if trial.status == "PAUSED" and trial.trial_id not in asha.waiting:
                        trial.status = "RUNNING"
            for trial in trials:
                if trial.status == "PAUSED" and trial.trial_id not in asha.waiting:
                    trial.status = "RUNNING"
        decisions.append((made, [t.status for t in trials]))
    assert decisions[0] == decisions[1] == decisions[2]
    assert "STOP" in decisions[0][0]   # ASHA did decide something
