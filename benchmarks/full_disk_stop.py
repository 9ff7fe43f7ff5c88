"""How fast a full disk stops a sweep (docs/reliability.md): seconds from the disk filling to the exit code.

Mounts a 48 MB tmpfs as the sweep's storage (needs root), runs the two-trial sweep of tests/test_faults.py, fills the
tmpfs at the first report of epoch 1 (FillDisk, as the test does) and times from then to `_report_sweep`'s return.
With --confirm: the sweep runs whole (synthetic trials), then its confirmation stage (top 1, 1 seed: 2 synthetic
trials, as tests/test_faults.py's confirm test) is filled the same way, timed to `_report_confirm`'s return.

    sudo PYTHONPATH=. python benchmarks/full_disk_stop.py /tmp/fdm/run1 [--confirm]
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sslsearch import cli  # noqa: E402
from sslsearch.records.tracking import MlflowTracking  # noqa: E402
from sslsearch.search.experiment import load_experiment  # noqa: E402
from sslsearch.search.space import load_search_space  # noqa: E402
from sslsearch.search.sweep import run_sweep  # noqa: E402
from test_faults import TINY, FillDisk  # noqa: E402


class TimedFill(FillDisk):
    """FillDisk that writes, in its marker file, the monotonic time at which the disk was full."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        filled = self.marker.exists()
        super().on_trial_result(iteration, trials, trial, result, **info)
        if not filled and self.marker.exists():
            self.marker.write_text(repr(time.monotonic()))


def main(root: Path, confirm: bool = False) -> None:
    disk = root / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    try:
        experiment = load_experiment(None, TINY)
        space = load_search_space(experiment.space_path())
        storage = str(disk / "runs")
        tracking = MlflowTracking(experiment, space, sweep="full", storage=storage, flush_timeout_s=3)
        err = io.StringIO()
        if confirm:
            from sslsearch.search.confirm import STAGE, confirm_experiment, run_confirm
            from sslsearch.search.synthetic import synthetic_trainable

            trainable = synthetic_trainable()
            run_sweep(experiment, space, name="full", storage=storage, quiet=True, trainable=trainable,
                      callbacks=[tracking])
            staged = MlflowTracking(confirm_experiment("full", storage)[0], space, sweep="full", storage=storage,
                                    stage=STAGE, flush_timeout_s=3)
            with contextlib.redirect_stderr(err):
                code = cli._report_confirm(lambda: run_confirm(
                    "full", storage, top=1, seeds=1, quiet=True, trainable=trainable,
                    callbacks=[staged, TimedFill(disk, root / "filled")]))
        else:
            with contextlib.redirect_stderr(err):
                code = cli._report_sweep(lambda: run_sweep(experiment, space, name="full", storage=storage, quiet=True,
                                                           callbacks=[tracking, TimedFill(disk, root / "filled")]))
        seconds = time.monotonic() - float((root / "filled").read_text())
        print(f"exit {code}; {seconds:.1f} s from the disk filling to the exit; "
              f"{len(err.getvalue().splitlines())} line(s) of ours on stderr")
    finally:
        subprocess.run(["umount", "-l", str(disk)])


if __name__ == "__main__":
    main(Path(sys.argv[1]), confirm="--confirm" in sys.argv[2:])
