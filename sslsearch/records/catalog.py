"""Which sweeps exist, read without MLflow, Ray or torch: the sweep folders and the SQLite store's run names.

The command line answers "which sweep?" and refuses a wrong name from here in a fraction of a second,
before it imports what the command needs (MLflow alone takes seconds to import). Only the standard
library: the sweep folders (`<storage>/<name>/sslsearch-sweep.json`, Ray's saved trial statuses, the
writer's lock) and the MLflow SQLite store, opened read-only with sqlite3. A store this module cannot
read (a tracking server, another schema, a database locked for longer than a moment) gives None, and
the caller falls back to MLflow's own client.
"""

from __future__ import annotations

import glob
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sslsearch.errors import InputError, shown_path
from sslsearch.records.schema import EXPERIMENT_NAME, OUTCOME, ROLE, STAGE, SWEEP, SWEEP_ROLE, TRIAL_ROLE
from sslsearch.records.store import default_tracking_uri, sqlite_path
from sslsearch.search.folder import CONFIRM_DIR, OUTBOX_FILE, PLAN_FILE, RAY_EXPERIMENT_STATE, SWEEP_FILE, ray_state_saved
from sslsearch.search.outcomes import FINISHED
from sslsearch.search.sweeplock import describe_writer, name_taken, refuse_while_starting, writer


@dataclass(frozen=True)
class SweepFolder:
    """A sweep as its folder shows it: name, when it started, and who writes it now (None: nobody)."""

    name: str
    path: Path
    started: float
    writer: dict | None

    def __str__(self) -> str:
        return self.name


def sweep_folders(storage: str) -> list[SweepFolder]:
    """The sweeps in a local storage folder, oldest first (by the time their sweep file was written)."""
    if "://" in storage or not Path(storage).is_dir():
        return []
    found = []
    for path in Path(storage).glob(f"*/{SWEEP_FILE}"):
        try:
            started = path.stat().st_mtime
        except OSError:
            continue
        found.append(SweepFolder(path.parent.name, path.parent.resolve(), started, writer(path.parent)))
    return sorted(found, key=lambda s: (s.started, s.name))


def find_folder(storage: str, name: str) -> SweepFolder:
    """Sweep `name` of a local storage folder; InputError (listing the known sweeps) if there is none."""
    for sweep in sweep_folders(storage):
        if sweep.name == name:
            return sweep
    refuse_while_starting(Path(storage) / name, name)
    raise InputError(f"no sweep named {name!r} in {storage}; known sweeps: {known_text(sweep_folders(storage))}")


NEVER_SAVED = "was stopped before Ray first saved it: there is nothing to resume; remove its folder"


def check_resumable(sweep: SweepFolder) -> None:
    """InputError (one line) for a sweep stopped between its sweep file and Ray's first save: Ray cannot restore it."""
    if not ray_state_saved(sweep.path):
        raise InputError(f"sweep {sweep.name!r} {NEVER_SAVED} {shown_path(sweep.path)} and start it again")


def check_not_written(sweep: SweepFolder, action: str) -> None:
    """InputError (one line) while another process writes the sweep (`action`: what this command would do)."""
    if sweep.writer is not None:
        raise InputError(f"sweep {sweep.name!r} is being written by {describe_writer(sweep.writer)}; cannot {action} it "
                         "until that process ends")


def check_new_name(storage: str, name: str, tracking_uri: str | None) -> None:
    """InputError (one line) if a new sweep cannot be named `name` in a local `storage`: a sweep of that name
    runs, has finished, or can be resumed; its folder holds something else; or the SQLite store records it."""
    path = Path(storage) / name
    if path.exists() and writer(path) is None and (path / SWEEP_FILE).is_file():
        sweep = SweepFolder(name, path, 0.0, None)
        if finished(sweep):
            raise InputError(f"a sweep named {name!r} already exists in {storage} and has finished (its results: "
                             f"`sslsearch leaderboard {name}`); choose another --name")
        if not ray_state_saved(path):   # stopped (or killed) before Ray's first save: nothing for `resume`
            raise InputError(f"a sweep named {name!r} in {storage} {NEVER_SAVED} {shown_path(path)} or choose "
                             "another --name")
        raise InputError(f"a sweep named {name!r} already exists in {storage} and did not finish; continue it with "
                         f"`sslsearch resume {name}` or choose another --name")
    if path.exists():
        raise InputError(name_taken(path, name))
    recorded = recorded_sweeps(tracking_uri) if tracking_uri else None
    if recorded and name in recorded:
        raise InputError(f"the MLflow store {tracking_uri} already holds a sweep named {name!r}; choose another --name")


def known_text(sweeps) -> str:
    """The sweeps' names, newest first, for a refusal (the first ten and a count of the rest)."""
    names = [str(s) for s in reversed(list(sweeps))]
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") if names else "none"


def trial_statuses(folder: Path) -> list[str] | None:
    """Each trial's status as Ray last saved the run in `folder` (the newest experiment_state file); None if unreadable."""
    states = sorted(glob.glob(str(folder / RAY_EXPERIMENT_STATE)))
    if not states:
        return None
    try:
        with open(states[-1], "rb") as f:
            saved = json.load(f)
        return [json.loads(state)["status"] for state, _ in saved["trial_data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ended(statuses: list[str] | None, expected: int) -> bool:
    return statuses is not None and len(statuses) >= expected and all(s == "TERMINATED" for s in statuses)


def confirm_stage(sweep: SweepFolder) -> tuple[dict, bool] | None:
    """The sweep's confirmation plan and whether every trial of it ended; None if `confirm` never started for it."""
    try:
        plan = json.loads((sweep.path / CONFIRM_DIR / PLAN_FILE).read_text())
        points = len(plan["points"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {}, False
    return plan, _ended(trial_statuses(sweep.path / CONFIRM_DIR), points)


def _samples(sweep: SweepFolder) -> int | None:
    """The sweep's search budget in trials (num_samples); None if its sweep file cannot be read."""
    try:
        return int(json.loads((sweep.path / SWEEP_FILE).read_text())["experiment"]["search"]["num_samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished(sweep: SweepFolder) -> bool:
    """Nothing left for `resume`: every sampled trial ended normally, every record reached MLflow, and a
    confirmation stage, if one was started, ended too. (`resume` retries an errored trial: not finished.)"""
    samples = _samples(sweep)
    if samples is None or not _ended(trial_statuses(sweep.path), samples) or (sweep.path / OUTBOX_FILE).exists():
        return False
    stage = confirm_stage(sweep)
    return stage is None or (stage[1] and not (sweep.path / CONFIRM_DIR / OUTBOX_FILE).exists())


def sweep_tracking_uri(sweep: SweepFolder, storage: str) -> str:
    """Where the sweep's MLflow records are: its experiment's tracking URI, else the storage folder's SQLite store."""
    try:
        uri = json.loads((sweep.path / SWEEP_FILE).read_text())["experiment"]["tracking"]["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        uri = None
    return uri or default_tracking_uri(storage)


def check_confirmable(sweep: SweepFolder, storage: str, top: int, seeds: int, tracking_uri: str | None,
                      design: str | None = None, where: str = "") -> None:
    """InputError (one line) if `confirm --top top --seeds seeds [--design design]` cannot run on the sweep: its stage
    was started with other settings (one stage per sweep), its search has not finished, or it has no finished trial
    to confirm. `where`: the options a command it names needs to find the same sweep (--storage ...)."""
    stage = confirm_stage(sweep)
    if stage is not None:
        plan, ended = stage
        if plan and (plan["top"], len(plan["seeds"]), design or plan.get("design")) != (top, seeds, plan.get("design")):
            settings = f"--top {plan['top']} --seeds {len(plan['seeds'])}" + (
                f" --design {plan['design']}" if plan.get("design") else "")
            if ended:
                raise InputError(f"sweep {sweep.name!r} was confirmed with {settings} and that stage has finished (a "
                                 f"sweep has one); its results: `sslsearch leaderboard {sweep.name}`")
            raise InputError(f"the confirmation of sweep {sweep.name!r} was started with {settings} and has not "
                             f"finished; continue it with `sslsearch confirm {sweep.name}{where} {settings}`")
        return
    samples, statuses = _samples(sweep), trial_statuses(sweep.path)
    if samples is not None and statuses is not None and not _ended(statuses, samples):
        # The stage confirms the search's final ranking, on seeds no search trial uses: a search continued after it
        # would change the one and could draw the other (found by review: a resumed search then used a confirm seed).
        done = sum(status == "TERMINATED" for status in statuses)
        raise InputError(f"sweep {sweep.name!r} has not finished its search ({done} of {samples} trials ended); the "
                         "confirmation stage needs its final ranking: finish it first with "
                         f"`sslsearch resume {sweep.name}{where}`")
    if (sweep.path / OUTBOX_FILE).exists():  # MLflow lacks some of the sweep's records: Ray's decide, later
        return
    uri = tracking_uri or sweep_tracking_uri(sweep, storage)
    recorded, rankable = recorded_sweeps(uri), rankable_sweeps(uri)
    if recorded and sweep.name in recorded and rankable is not None and sweep.name not in rankable:
        raise InputError(f"sweep {sweep.name!r} has no finished trial that reported after epoch 0; nothing to confirm")


def _open_readonly(uri: str) -> sqlite3.Connection | None:
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    try:
        # mode=ro: never create or migrate the store; a short timeout: a writer holds the lock for moments only.
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.5)
    except sqlite3.Error:
        return None


_SWEEPS = f"""
SELECT name.value, MAX(r.start_time) FROM runs r
JOIN experiments e ON e.experiment_id = r.experiment_id AND e.name = ? AND e.lifecycle_stage = 'active'
JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = '{ROLE}' AND role.value = '{SWEEP_ROLE}'
JOIN tags name ON name.run_uuid = r.run_uuid AND name.key = '{SWEEP}'
WHERE r.lifecycle_stage = 'active' GROUP BY name.value ORDER BY MAX(r.start_time) DESC, name.value
"""

# Sweeps with a finished search trial that reported after epoch 0: what the leaderboard can rank.
_RANKABLE = f"""
SELECT DISTINCT name.value FROM runs r
JOIN experiments e ON e.experiment_id = r.experiment_id AND e.name = ?
JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = '{ROLE}' AND role.value = '{TRIAL_ROLE}'
JOIN tags name ON name.run_uuid = r.run_uuid AND name.key = '{SWEEP}'
JOIN tags outcome ON outcome.run_uuid = r.run_uuid AND outcome.key = '{OUTCOME}'
JOIN latest_metrics epoch ON epoch.run_uuid = r.run_uuid AND epoch.key = 'epoch' AND epoch.value >= 1
LEFT JOIN tags stage ON stage.run_uuid = r.run_uuid AND stage.key = '{STAGE}'
WHERE r.lifecycle_stage = 'active' AND outcome.value IN ({", ".join("?" * len(FINISHED))})
  AND COALESCE(stage.value, 'search') = 'search'
"""


def recorded_sweeps(uri: str) -> list[str] | None:
    """Names of the sweeps recorded in a SQLite store, most recently started first; None when this cannot say
    (not SQLite, no store, or a schema or lock this reader does not handle: ask MLflow then)."""
    connection = _open_readonly(uri)
    if connection is None:
        return None
    try:
        return [name for name, _ in connection.execute(_SWEEPS, (EXPERIMENT_NAME,))]
    except sqlite3.Error:
        return None
    finally:
        connection.close()


def rankable_sweeps(uri: str) -> list[str] | None:
    """Recorded sweeps with a finished search trial past epoch 0, most recently started first; None as above."""
    connection = _open_readonly(uri)
    if connection is None:
        return None
    try:
        rankable = {name for (name,) in connection.execute(_RANKABLE, (EXPERIMENT_NAME, *FINISHED))}
        return [name for name, _ in connection.execute(_SWEEPS, (EXPERIMENT_NAME,)) if name in rankable]
    except sqlite3.Error:
        return None
    finally:
        connection.close()
