"""Which sweep a command acts on, and its refusals before any heavy import: unknown sweeps, a second
sweep of one name (running, finished or interrupted), an existing --out, nothing to confirm, several
sweeps to choose from, a file that is no checkpoint. Each refusal runs the real command line in a fresh
process and checks that torch, Ray, MLflow and Optuna were never imported (what makes it answer in well
under a second; benchmarks/cli_latency.py times the same cases)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sslsearch.errors import InputError
from sslsearch.records import catalog
from sslsearch.search.folder import RAY_TUNER_FILE, STUDY_FILE, SWEEP_FILE
from sslsearch.search.sweeplock import abandon_claim, claim_sweep_folder

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas")
TINY = ["--set", "pretrain.epochs=2", "--set", "pretrain.eval_every=1", "--set", "search.num_samples=2",
        "--set", "scheduler.grace_period=1"]
# main() in a fresh interpreter, then the heavy modules it imported, on stderr's last line.
PROBE = ("import sys\nfrom sslsearch.cli import main\n"
         "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as done:\n    rc = done.code\n"
         f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules), 'RC', rc, file=sys.stderr)\n")


def light(*argv, cwd=None) -> tuple[int, str, list[str]]:
    """Run `sslsearch ARGV` in a fresh process: (exit code, stdout, stderr lines); asserts nothing heavy was imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=120, check=False)
    *lines, last = done.stderr.strip().splitlines()
    heavy, code = re.fullmatch(r"HEAVY (\S*) RC (\S+)", last).groups()
    assert heavy == "", f"imported {heavy}: {done.stderr}"
    return int(code), done.stdout, lines


def refused(*argv, cwd=None) -> str:
    """The one line `sslsearch ARGV` refuses with (exit code 2), checked as `light`."""
    code, out, lines = light(*argv, cwd=cwd)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sslsearch: error: "), (code, out, lines)
    return lines[0].removeprefix("sslsearch: error: ")


def write_sweep_file(folder: Path, name: str, num_samples: int = 2, ray_saved: bool = False) -> None:
    """The sweep file run_sweep writes; with `ray_saved`, also stand-ins for Ray's first save (its Tuner and an
    experiment state that holds no trial yet), which make the sweep one `resume` can continue."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SWEEP_FILE).write_text(json.dumps({"name": name, "experiment": {"search": {"num_samples": num_samples},
                                                                              "tracking": {"uri": None}}}))
    if ray_saved:
        (folder / RAY_TUNER_FILE).write_bytes(b"")
        (folder / "experiment_state-0000.json").write_text("{}")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A storage folder whose SQLite store was written by the tracking callback itself (hooks replayed with
    fake trials, as in test_tracking): sweep `old` with finished trials, then `fresh`, whose only trial
    stopped at epoch 0 (nothing to rank or confirm); each with its sweep folder."""
    from sslsearch.records.tracking import MlflowTracking
    from sslsearch.search.space import load_search_space
    from test_tracking import FakeTrial, tiny

    storage = tmp_path_factory.mktemp("records")
    experiment = tiny()
    for sweep, reports in (("old", (40.0, 81.0, 90.5)), ("fresh", (40.0,))):
        write_sweep_file(storage / sweep, sweep, ray_saved=True)
        tracking = MlflowTracking(experiment, load_search_space(experiment.space_path()), sweep=sweep, storage=str(storage))
        tracking.setup()
        for trial_id, loss in ((f"{sweep}01", "barlow"), (f"{sweep}02", "hsic")):
            trial = FakeTrial(trial_id, storage / sweep, loss)
            tracking.on_trial_start(0, [], trial)
            for epoch, val_acc in enumerate(reports):
                trial.report(tracking, epoch, val_acc)
            tracking.on_trial_complete(0, [], trial)
        tracking.on_experiment_end([])
        time.sleep(0.05)  # `fresh` starts after `old`
    return storage


def test_the_store_is_read_as_mlflow_reads_it(records):
    """The SQLite reader's answers against MLflow's own: the same sweeps, newest first, and the one the
    leaderboard picks by default (the latest with a finished trial)."""
    from sslsearch.analysis.leaderboard import load_trials
    from sslsearch.records.store import default_tracking_uri

    uri = default_tracking_uri(str(records))
    assert catalog.recorded_sweeps(uri) == ["fresh", "old"]
    assert catalog.rankable_sweeps(uri) == ["old"]
    assert list(load_trials(uri, None)["sweep"].unique()) == ["old"]
    assert catalog.recorded_sweeps(f"sqlite:///{records / 'none.db'}") is None  # no store: MLflow decides
    (records / "not-a-store.db").write_text("plain text")
    assert catalog.recorded_sweeps(f"sqlite:///{records / 'not-a-store.db'}") is None


@pytest.mark.parametrize("argv,message", [
    (["leaderboard", "nosuch"], "unknown sweep 'nosuch'; known sweeps (newest first): fresh, old"),
    (["report", "old", "nosuch", "--out", "{tmp}/r.html"], "unknown sweep 'nosuch'; known sweeps (newest first)"),
    (["export", "nosuch", "--out", "{tmp}/new"], "unknown sweep 'nosuch'"),
    (["export", "old", "--out", "{tmp}/exported"], "export folder {tmp}/exported exists and is not empty; pass --force"),
    # --force replaces an earlier export only: never a folder holding anything else, such as the sweep store itself
    (["export", "old", "--out", "{tmp}/mine", "--force"],
     "export folder {tmp}/mine holds files an export did not write (notes.txt); --force replaces an earlier export only"),
    (["export", "old", "--out", "{records}", "--force"], "export folder {records} holds files an export did not write"),
    (["export", "old", "--out", "{tmp}/afile/sub"], "export folder {tmp}/afile/sub cannot be made: {tmp}/afile is a file"),
    (["export", "old", "--out", "{tmp}", "--force"], "export folder {tmp} is the current folder or holds it"),
    (["confirm", "nosuch"], "no sweep named 'nosuch' in {records}; known sweeps: fresh, old"),
    (["confirm"], "{records} holds 2 sweeps; name the one to confirm: sslsearch confirm SWEEP (newest first: fresh, old)"),
    (["confirm", "fresh"], "sweep 'fresh' has no finished trial that reported after epoch 0; nothing to confirm"),
    (["sweep", "--name", "old"], "a sweep named 'old' already exists in {records} and did not finish; continue it"),
    (["resume", "nosuch"], "no sweep named 'nosuch' in {records}; known sweeps: fresh, old"),
])
def test_refusals_that_read_the_records_import_nothing_heavy(records, tmp_path, argv, message):
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "backbone.pt").write_text("an earlier export")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "here").mkdir()
    before = sorted(p.relative_to(records) for p in Path(records).rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{records}", str(records)) for a in argv]
    line = refused(*argv, "--storage", records, cwd=tmp_path / "here")
    assert message.replace("{tmp}", str(tmp_path)).replace("{records}", str(records)) in line, line
    assert (tmp_path / "exported" / "backbone.pt").read_text() == "an earlier export"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and (tmp_path / "afile").read_text() == "a file"
    assert sorted(p.relative_to(records) for p in Path(records).rglob("*")) == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "r.html").exists()


def test_leaderboard_names_its_choice_on_the_first_line(records, capfd):
    from sslsearch.cli import main

    assert main(["leaderboard", "--storage", str(records), "--format", "json"]) == 0
    captured = capfd.readouterr()
    assert captured.err.splitlines()[0] == ("leaderboard: sweep old, the latest with a finished trial; 1 other sweep "
                                            "recorded (name a sweep to choose)")
    assert json.loads(captured.out)["sweeps"] == ["old"]


def test_confirm_in_an_empty_folder_and_linear_on_a_wrong_file_import_nothing_heavy(tmp_path):
    expected = f"no sweeps in {tmp_path / 'empty'}; run `sslsearch sweep` first"
    assert refused("confirm", "--storage", tmp_path / "empty") == expected
    assert not (tmp_path / "empty").exists()
    (tmp_path / "model_card.json").write_text("{}")
    line = refused("linear", "--checkpoint", tmp_path / "model_card.json")
    assert line.startswith(f"{tmp_path / 'model_card.json'} is not an sslsearch pretraining checkpoint")


def test_a_sweep_that_runs_refuses_a_second_sweep_resume_and_confirm_of_its_name(tmp_path):
    """The holder is a real process holding the sweep's lock as `sweep` does (claim_sweep_folder)."""
    script = ("import sys, time\nfrom pathlib import Path\n"
              "from sslsearch.search.sweeplock import claim_sweep_folder\n"
              f"lock = claim_sweep_folder(Path({str(tmp_path / 'X')!r}), 'X')\n"
              f"Path({str(tmp_path / 'X' / SWEEP_FILE)!r}).write_text('{{}}')\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused("sweep", "--name", "X", "--storage", tmp_path)
        assert line.startswith(f"sweep 'X' is running now (pid {holder.pid} on ") and "choose another --name" in line
        for command in ("resume", "confirm"):
            line = refused(command, "X", "--storage", tmp_path)
            assert line.startswith(f"sweep 'X' is being written by pid {holder.pid} on ") and f"cannot {command} it" in line
    finally:
        holder.kill()
        holder.wait()
    assert catalog.sweep_folders(str(tmp_path))[0].writer is None  # a killed holder no longer counts


def test_a_claimed_folder_that_never_started_a_sweep_is_given_back(tmp_path):
    lock = claim_sweep_folder(tmp_path / "X", "X")
    with pytest.raises(InputError, match="sweep 'X' is running now"):
        claim_sweep_folder(tmp_path / "X", "X")
    abandon_claim(lock)
    assert list(tmp_path.iterdir()) == []  # the name is free again, nothing half-made is left
    lock = claim_sweep_folder(tmp_path / "X", "X")
    for name in (SWEEP_FILE, STUDY_FILE, RAY_TUNER_FILE):   # what a sweep writes before Ray's first save
        (tmp_path / "X" / name).write_text("{}")
    abandon_claim(lock)  # stopped before Ray saved it: nothing to resume, so nothing is kept and the name is free
    assert list(tmp_path.iterdir()) == []
    lock = claim_sweep_folder(tmp_path / "X", "X")
    for name in (SWEEP_FILE, STUDY_FILE, RAY_TUNER_FILE, "experiment_state-2026-12-07_13-00-00.json"):
        (tmp_path / "X" / name).write_text("{}")
    abandon_claim(lock)  # Ray saved the sweep: the folder stays, unlocked, for `resume`
    assert (tmp_path / "X" / SWEEP_FILE).is_file() and catalog.writer(tmp_path / "X") is None
    with pytest.raises(InputError, match="a sweep named 'X' already exists"):
        claim_sweep_folder(tmp_path / "X", "X")
    (tmp_path / "Y").write_text("a file")
    with pytest.raises(InputError, match="holds no sweep; remove it or choose another --name"):
        claim_sweep_folder(tmp_path / "Y", "Y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "Y"]


def test_a_sweep_stopped_before_rays_first_save_is_not_sent_to_resume(tmp_path):
    """Found by review: a sweep stopped between its sweep file and Ray's first save (a Ctrl-C while the searcher was
    built, or a SIGKILL) left a folder that `sweep --name` called unfinished, sending the user to `resume`, and that
    `resume` did not know ("no sweep named"): each command sent the user to the other."""
    write_sweep_file(tmp_path / "s", "s")
    line = refused("sweep", "--name", "s", "--storage", tmp_path)
    assert line == (f"a sweep named 's' in {tmp_path} was stopped before Ray first saved it: there is nothing to resume; "
                    f"remove its folder {tmp_path / 's'} or choose another --name"), line
    line = refused("resume", "s", "--storage", tmp_path)
    assert line == (f"sweep 's' was stopped before Ray first saved it: there is nothing to resume; remove its folder "
                    f"{tmp_path / 's'} and start it again"), line


def test_a_confirmation_started_with_other_settings_is_named_as_it_stands(tmp_path):
    write_sweep_file(tmp_path / "s", "s")
    plan = {"top": 2, "seeds": [5, 6, 7], "points": [{}] * 12, "configurations": []}
    (tmp_path / "s" / "confirm").mkdir()
    (tmp_path / "s" / "confirm" / "confirm-plan.json").write_text(json.dumps(plan))
    line = refused("confirm", "s", "--top", "3", "--storage", tmp_path)
    assert line == ("the confirmation of sweep 's' was started with --top 2 --seeds 3 and has not finished; continue it "
                    f"with `sslsearch confirm s --storage {tmp_path} --top 2 --seeds 3`")


# -- a real sweep ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_sweep_ends_with_next_steps_and_its_name_is_taken_at_once(tmp_path):
    """The issue's case on a fresh store: a second `sweep --name X` while X starts is refused at once (the
    first claimed the name before importing Ray or MLflow); the first ends with the commands to run next;
    `resume` then says in one line that it finished; Ray's saved statuses are read as Ray reads them."""
    storage = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, "-m", "sslsearch.cli", "sweep", "--name", "X", "--storage", storage, *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (storage / "X").is_dir() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        line = refused("sweep", "--name", "X", "--storage", storage, *TINY, cwd=tmp_path)
        assert line.startswith(f"sweep 'X' is running now (pid {first.pid} on "), line
        out, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
            first.wait(timeout=60)
    assert first.returncode == 0, err[-3000:]
    assert "Token authentication is enabled" not in err  # Ray's notice, nothing for the user to do
    steps = out[out.index("next, for sweep X:"):].splitlines()[1:]
    program = f"{sys.executable} -m sslsearch.cli"  # as it was started (no `sslsearch` on PATH runs this checkout)
    # (--storage is left out: it is ./runs, the default, from where the sweep was started)
    assert [s.split("  #")[0].strip() for s in steps] == [
        f"{program} confirm X", f"{program} leaderboard X", f"{program} report X --out report.html",
        f"{program} export X --out best/"]

    from ray import tune

    sweep = catalog.find_folder(str(storage), "X")
    assert catalog.trial_statuses(sweep.path) == [t.status for t in tune.ExperimentAnalysis(str(sweep.path)).trials]
    assert catalog.finished(sweep) and catalog.rankable_sweeps(f"sqlite:///{storage / 'mlflow.db'}") == ["X"]
    done = subprocess.run([sys.executable, "-m", "sslsearch.cli", "resume", "X", "--storage", storage],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == ("sweep X has finished: every trial ended (and its "
                                                                    "confirmation stage, if any); nothing to resume")
    assert "epoch" not in done.stdout and "sync X" not in done.stdout  # no trial ran; MLflow already equals Ray
    line = refused("sweep", "--name", "X", "--storage", storage, cwd=tmp_path)
    assert line == (f"a sweep named 'X' already exists in {storage} and has finished (its results: "
                    "`sslsearch leaderboard X`); choose another --name")

    # confirm: with one sweep in the folder it may be left unnamed, and says which it took; a line per report,
    # with the stage's trials finished and left (the sweep's live view), then the next steps.
    done = subprocess.run([sys.executable, "-m", "sslsearch.cli", "confirm", "--top", "1", "--seeds", "1",
                           "--storage", storage], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"confirm: sweep X, the only sweep in {storage}"
    reports = [line for line in lines if re.search(r"\] \w+ (barlow|hsic) .* epoch \d+ val_acc [\d.]+ \| running", line)]
    assert len(reports) == 2 * 3, done.stdout  # two trials (one per loss), reports at epochs 0, 1 and 2
    # Nothing has finished at the first report; later ones say 2 or 1 left, depending on which trial ends first
    # (both run at once: which report comes last is a matter of timing, so the test does not ask).
    assert ", left 2 |" in reports[0] and all(re.search(r", left [12] \|", r) for r in reports), reports
    assert f"{program} leaderboard X" in done.stdout and f"{program} confirm X" not in done.stdout


def test_suggested_commands_use_the_program_as_this_shell_finds_it(tmp_path, monkeypatch):
    from sslsearch.cli import _invocation

    program = tmp_path / ".venv" / "bin" / "sslsearch"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(program), "sweep"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert _invocation() == ".venv/bin/sslsearch"  # the environment is not active: `sslsearch` is not found
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")
    assert _invocation() == "sslsearch"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "sslsearch" / "cli.py")])  # python -m sslsearch.cli
    assert _invocation() == f"{sys.executable} -m sslsearch.cli"


def test_confirm_refuses_a_sweep_whose_search_has_not_finished(tmp_path):
    """Found by review: `confirm` ran on a sweep interrupted after 3 of 16 trials; it confirmed a ranking the rest of
    the search then changed, and the resumed search drew one of the stage's seeds. Now one line, naming the command
    that finishes the search with the --storage given, and nothing written."""
    storage = tmp_path / "my runs"
    write_sweep_file(storage / "cut", "cut", num_samples=3)
    state = {"trial_data": [[json.dumps({"status": status}), "{}"] for status in ("TERMINATED", "TERMINATED", "PENDING")]}
    (storage / "cut" / "experiment_state-2026-12-07_05-00-00.json").write_text(json.dumps(state))
    before = sorted(p.name for p in (storage / "cut").iterdir())
    line = refused("confirm", "cut", "--seeds", "2", "--storage", storage, cwd=tmp_path)
    assert line == (f"sweep 'cut' has not finished its search (2 of 3 trials ended); the confirmation stage needs its "
                    f"final ranking: finish it first with `sslsearch resume cut --storage '{storage}'`"), line
    assert sorted(p.name for p in (storage / "cut").iterdir()) == before


def test_a_sweep_in_its_first_seconds_is_named_as_starting_not_unknown(tmp_path, capsys):
    """Found by review: `sync`, `resume` or `confirm` run while a sweep started (its folder claimed and locked, its files
    not yet written) said "no sweep named 's3' ...; known sweeps: none". Here the folder is claimed as `sweep` claims it,
    by this live process, and nothing else is written."""
    from sslsearch.cli import main

    storage = tmp_path / "runs"
    claim = claim_sweep_folder(storage / "s3", "s3")
    try:
        for command in ("resume", "confirm"):
            line = refused(command, "s3", "--storage", storage)
            assert line.startswith(f"sweep 's3' is starting (pid {os.getpid()} on "), line
            assert line.endswith("try again once it has started, or ended"), line
        assert main(["sync", "s3", "--storage", str(storage)]) == 2   # (imports Ray: in this process)
        line = capsys.readouterr().err.strip()
        assert line.startswith(f"sslsearch: error: sweep 's3' is starting (pid {os.getpid()} on "), line
        assert sorted(p.name for p in (storage / "s3").iterdir()) == ["sslsearch.lock"]
    finally:
        abandon_claim(claim)
    line = refused("resume", "s3", "--storage", storage)   # released (or its holder killed): unknown again
    assert line.startswith("no sweep named 's3'"), line
