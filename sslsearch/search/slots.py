"""Slot utilisation: how much of the sweep's slot-time trials spent training (on a GPU cluster, an idle slot
is an idle GPU).

Measured on the driver from Ray's trial events: a trial is busy from the moment Ray starts (or resumes)
it on an actor (`on_trial_start`) to its last report before it pauses or ends. The time a slot spends
without a training trial (an actor starting, a checkpoint saved after the last report, a twin waiting
at a rung with nothing else to run, the tail of the sweep) counts as idle.

    utilisation = busy slot-seconds / (slots × wall)

where wall runs from the first trial's start to the last trial's end: the time the sweep holds its slots.
What comes before (Ray and the first worker processes starting: seconds, paid once per session) is
reported on its own as `startup_seconds`.
"""

from __future__ import annotations

import time

from ray import tune


class SlotUse(tune.Callback):
    """Busy slot-seconds of this session's trials (O(1) per event); `utilization(slots)` at the end."""

    def __init__(self):
        self.setup()

    def setup(self, **info):
        # Per session: a resumed sweep's wall time covers this session only.
        self.session_started = time.monotonic()
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.busy = 0.0
        self._since: dict[str, float] = {}     # trial id → when Ray (re)started it
        self._last: dict[str, float] = {}      # trial id → its last report since then

    def _close(self, trial_id: str, at: float | None = None) -> None:
        since = self._since.pop(trial_id, None)
        last = self._last.pop(trial_id, None)
        end = at if at is not None else last
        if since is not None and end is not None:
            self.busy += max(0.0, end - since)
            self.last_end = max(end, self.last_end or end)

    def on_trial_start(self, iteration, trials, trial, **info):
        # A trial that starts again paused after its last report: close that stretch there.
        self._close(trial.trial_id)
        self._since[trial.trial_id] = time.monotonic()
        if self.first_start is None:
            self.first_start = self._since[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial.trial_id, time.monotonic())   # it was busy until it failed

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self._since):
            self._close(trial_id)

    @property
    def startup_seconds(self) -> float | None:
        """From the session's start to its first trial's start."""
        return None if self.first_start is None else self.first_start - self.session_started

    def utilization(self, slots: int) -> float | None:
        """busy slot-seconds / (slots × wall from the first trial's start to the last one's end); None if none ran."""
        if self.first_start is None or self.last_end is None or slots < 1:
            return None
        wall = self.last_end - self.first_start
        return self.busy / (slots * wall) if wall > 0 else None
