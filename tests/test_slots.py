"""Slot utilisation from Ray's trial events: a trial is busy from its (re)start to its last report before it
pauses or ends; wall runs from the first start to the last end."""

import pytest

from sslsearch.search import slots
from sslsearch.search.slots import SlotUse


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_a_paused_twin_is_idle_from_its_pause_to_its_restart(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(slots.time, "monotonic", lambda: clock[0])
    use = SlotUse()
    a, b = _Trial("a"), _Trial("b")

    def at(t, event, trial=None):
        clock[0] = t
        {"start": lambda: use.on_trial_start(0, [], trial), "report": lambda: use.on_trial_result(0, [], trial, {}),
         "complete": lambda: use.on_trial_complete(0, [], trial), "end": lambda: use.on_experiment_end([])}[event]()

    at(1, "start", a)
    at(1, "start", b)
    at(3, "report", a)      # a pauses at its rung after this report
    at(5, "report", b)
    at(6, "start", a)       # a resumes: its pause (3 to 6) was idle
    at(9, "report", a)
    at(9, "complete", a)
    at(9, "report", b)
    at(10, "complete", b)   # ended right after its last report, at 9
    at(12, "end")
    assert use.busy == pytest.approx((3 - 1) + (9 - 6) + (9 - 1))
    assert use.utilization(2) == pytest.approx(13 / (2 * (9 - 1)))
    assert use.startup_seconds == pytest.approx(1.0)


def test_no_trial_no_figure():
    assert SlotUse().utilization(2) is None
