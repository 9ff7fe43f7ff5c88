"""Ray's per-trial result files (result.json, progress.csv), kept whole across a twin's pause.

When Ray restarts a paused trial, its JsonLoggerCallback and CSVLoggerCallback (`log_trial_start` →
`_restore_from_remote`, ray 2.60) copy the trial's file from the sweep's storage over the driver's own
copy. The storage copy is only as new as Ray's last sync of the driver's files, so the reports since then
are lost: in paired ASHA sweeps, typically the report at which a twin paused (1–6 of 16 trials per sweep,
measured in issue 19). These subclasses restore from storage only when the driver has no copy of its own
(a sweep resumed in a new Ray session or on another machine); Ray adds its default loggers only when
none of their type is given, so these replace them.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


class _KeepDriverCopy:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return   # the driver's own file holds every report; the synced one may lack the newest
        super()._restore_from_remote(file_name, trial)


class ResultJsonLog(_KeepDriverCopy, JsonLoggerCallback):
    """Ray's result.json logger, without the stale restore at a trial's restart."""


class ProgressCsvLog(_KeepDriverCopy, CSVLoggerCallback):
    """Ray's progress.csv logger, without the stale restore at a trial's restart."""


def trial_loggers() -> list:
    """The per-trial loggers a sweep passes to Ray (its TensorBoard logger stays Ray's default)."""
    return [ResultJsonLog(), ProgressCsvLog()]
