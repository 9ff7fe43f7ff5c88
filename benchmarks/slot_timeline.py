"""Where a sweep's slots stand idle: run one sweep (default: the embedded default, experiments/digits.yaml)
through `run_sweep`, log every trial start, report and end as Ray's callbacks see them, and print the slot
utilisation the sweep computes, the same figure recomputed from the log, and the longest idle stretches.

A trial is busy from its (re)start to its last report before it pauses or ends (sslsearch/search/slots.py);
a stretch is idle where fewer trials are busy than the sweep has slots. Used for docs/sweeps.md, "Slot
utilisation".

    python benchmarks/slot_timeline.py --storage /tmp/timeline/runs [--name timeline] [--mlflow] [--experiment PATH] [--events]

--mlflow records to MLflow as `sslsearch sweep` does (the default tracking store under --storage); without it
the sweep records nothing there, which leaves the driver's own costs out.
"""

import argparse
import sys
import time
from pathlib import Path

from ray import tune

from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep


class EventLog(tune.Callback):
    """(seconds since it was made, event, trial id, pair, loss) for every start, report and end."""

    def __init__(self):
        self.started = time.monotonic()
        self.events: list[tuple[float, str, str, object, object]] = []

    def _log(self, event: str, trial) -> None:
        self.events.append((time.monotonic() - self.started, event, trial.trial_id, trial.config.get("pair"),
                            trial.config.get("loss")))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._log("start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._log(f"report{result.get('epoch')}", trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log("end", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._log("error", trial)


def busy_stretches(events) -> list[tuple[float, float]]:
    """Each trial's (start, last report) stretches, as SlotUse counts them."""
    stretches, since, last = [], {}, {}
    for at, event, trial_id, _, _ in events:
        if event == "start":
            if trial_id in since and trial_id in last:
                stretches.append((since[trial_id], last.pop(trial_id)))
            since[trial_id] = at
        elif event.startswith("report"):
            last[trial_id] = at
        elif event == "error" and trial_id in since:
            stretches.append((since.pop(trial_id), at))
            last.pop(trial_id, None)
        elif event == "end" and trial_id in since and trial_id in last:
            stretches.append((since.pop(trial_id), last.pop(trial_id)))
    stretches.extend((since[t], last[t]) for t in since if t in last)
    return stretches


def idle_stretches(stretches, slots: int) -> tuple[float, float, list[tuple[float, float, int]]]:
    """(busy slot-seconds, wall, [(from, to, idle slots)]) between the first start and the last busy moment."""
    first, end = min(s for s, _ in stretches), max(e for _, e in stretches)
    changes = sorted([(s, 1) for s, _ in stretches] + [(e, -1) for _, e in stretches])
    idle, busy_now, previous = [], 0, first
    for at, change in changes:
        if busy_now < slots and at > previous:
            idle.append((previous, at, slots - busy_now))
        busy_now += change
        previous = at
    return sum(e - s for s, e in stretches), end - first, idle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="a folder for the sweep (absolute or relative)")
    parser.add_argument("--name", default="timeline")
    parser.add_argument("--experiment", default=None, help="experiment file (default: experiments/digits.yaml)")
    parser.add_argument("--mlflow", action="store_true", help="record to MLflow, as `sslsearch sweep` does")
    parser.add_argument("--events", action="store_true", help="print every logged event")
    parser.add_argument("--top", type=int, default=5, help="idle stretches to print (default: 5)")
    args = parser.parse_args(argv)
    storage = str(Path(args.storage).resolve())
    experiment = load_experiment(args.experiment)
    space = load_search_space(experiment.space_path())
    log = EventLog()
    callbacks = [log]
    if args.mlflow:
        from sslsearch.records.tracking import MlflowTracking

        callbacks.append(MlflowTracking(experiment, space, sweep=args.name, storage=storage))
    summary = run_sweep(experiment, space, name=args.name, storage=storage, callbacks=callbacks, quiet=True)
    slots = experiment.search.max_concurrent
    if args.events:
        for at, event, trial_id, pair, loss in log.events:
            print(f"{at:8.2f} {event:8} {trial_id} pair {pair} {loss}")
    busy, wall, idle = idle_stretches(busy_stretches(log.events), slots)
    print(f"sweep {args.name}: {len(summary.trials)} trials, {slots} slots, tracking {'MLflow' if args.mlflow else 'none'}")
    print(f"slot utilisation (the sweep's SlotUse): {100 * summary.slot_utilization:.1f}%")
    print(f"from the event log: busy {busy:.2f} slot-s over {wall:.2f} s of wall: {100 * busy / (slots * wall):.1f}%; "
          f"idle {sum((e - s) * n for s, e, n in idle):.2f} slot-s in {len(idle)} stretches")
    for start, end, n in sorted(idle, key=lambda x: -(x[1] - x[0]) * x[2])[:args.top]:
        print(f"  idle {end - start:5.2f} s × {n} slot(s) from {start:.2f} s to {end:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
