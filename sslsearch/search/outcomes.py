"""What a trial's records mean, named once and free of Ray: the objective (metric and mode) and the
outcomes a trial can end with. The search, the records and the analysis all read them from here
(docs/architecture.md: this module sits below everything that uses it; the sweep folder's file
names live in search/folder.py)."""

from __future__ import annotations

# The objective: ASHA, Optuna, retention, the summaries and the leaderboard all read it from here.
METRIC, MODE = "val_acc", "max"
OUTCOMES = ("completed", "stopped early", "diverged", "errored", "running")
FINISHED = ("completed", "stopped early")   # ran without error or divergence, to its budget or ASHA's stop


def trial_outcome(last_epoch: int, max_epochs: int | None, errored: bool = False, diverged: bool = False) -> str:
    """A finished trial's outcome: errored (infrastructure or bug), diverged (NaN/inf loss: a result
    about the configuration), completed (reached its last epoch), or stopped early by ASHA or the
    time budget. The searcher, the sweep summary and the MLflow records all use this."""
    if errored:
        return "errored"
    if diverged:
        return "diverged"
    return "completed" if max_epochs is not None and last_epoch >= max_epochs else "stopped early"


def result_outcome(result: dict | None, max_epochs: int | None, errored: bool = False) -> str:
    """`trial_outcome` of a trial whose last Ray result is `result`."""
    result = result or {}
    return trial_outcome(int(result.get("epoch", 0) or 0), max_epochs, errored=errored, diverged=bool(result.get("diverged")))


# The one order of every ranking of trials (the sweep summary, retention's top_k, the leaderboard, export, tests):
# the higher final val_acc, then more epochs, then the smaller trial id. Wall time never breaks a tie: it differs
# from run to run, so two equal trials would swap places (and a test would flake).
RANK_ORDER = (("val_acc", False), ("epochs", False), ("trial_id", True))   # (column, ascending)


def ranking_key(val_acc: float, epochs: int, trial_id: str) -> tuple:
    """RANK_ORDER as a sort key: `sorted(trials, key=...)` puts the best trial first."""
    return (-float(val_acc), -int(epochs), str(trial_id))
