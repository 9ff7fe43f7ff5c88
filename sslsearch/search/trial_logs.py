"""Ray's per-trial result files (result.json, progress.csv), kept whole across a twin's pause; no TensorBoard files.

When Ray restarts a paused trial, its JsonLoggerCallback and CSVLoggerCallback (`log_trial_start` →
`_restore_from_remote`, ray 2.60) copy the trial's file from the sweep's storage over the driver's own
copy. The storage copy is only as new as Ray's last sync of the driver's files, so the reports since then
are lost: in paired ASHA sweeps, typically the report at which a twin paused (1–6 of 16 trials per sweep,
measured in issue 19). These subclasses restore from storage only when the driver has no copy of its own
(a sweep resumed in a new Ray session or on another machine); Ray adds its default loggers only when
none of their type is given, so these replace them.

Ray would still add its TensorBoard logger, which nothing in sslsearch reads (MLflow holds every report):
a writer thread per running trial and 5-6 ms of the driver's CPU per report (docs/scale.md, "What to change
beyond that"). `own_loggers_only` leaves it out while a sweep's Tuner fits in this process; a user who wants
Ray's TensorBoard files sets TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0. (Through Ray Client, `ray://`, the fit runs
on the cluster, where Ray still adds it.)
"""

from __future__ import annotations

import contextlib
import os
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


AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"   # Ray's switch for its default loggers, read as a Tuner fits


def trial_loggers() -> list:
    """The per-trial loggers a sweep passes to Ray: result.json and progress.csv."""
    return [ResultJsonLog(), ProgressCsvLog()]


@contextlib.contextmanager
def ray_default_loggers(switch: str):
    """Ray's switch for its default loggers set to `switch` ("1": none of them; "0": each type the callbacks lack)
    for the block, then put back as it was."""
    before = os.environ.get(AUTO_LOGGERS)
    os.environ[AUTO_LOGGERS] = switch
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(AUTO_LOGGERS, None)
        else:
            os.environ[AUTO_LOGGERS] = before


def own_loggers_only(callbacks: list):
    """While a Tuner with these callbacks fits: if they hold both of the sweep's loggers, Ray adds none of its own
    (no TensorBoard writer). The environment is put back afterwards; a value the user set is left alone."""
    ours = {type(c) for c in callbacks} >= {ResultJsonLog, ProgressCsvLog}
    return ray_default_loggers("1") if ours and AUTO_LOGGERS not in os.environ else contextlib.nullcontext()
