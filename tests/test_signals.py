"""SIGTERM and SIGINT as operators send them: every long-running command stops in good order, exit 130.

Schedulers (Slurm, Kubernetes) stop jobs with SIGTERM; a script that starts a command with `&` makes it ignore
SIGINT (POSIX shells do so for asynchronous commands), so SIGTERM is the only polite stop there. Each test runs the
real command line in a child process, sends a real signal once the command is genuinely at work, and checks the
exit code, what it printed, the records it left and that no process outlives it."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from local_processes import kill_processes_mentioning, processes_mentioning
from sslsearch.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
SSLSEARCH = [sys.executable, "-m", "sslsearch.cli"]
# Two trials, a report each epoch; FIFO, so both run their full budget. Each stop comes at a session's first report,
# so 8 epochs (~1 s each on digits) leave far more work than a stop takes to be seen.
TINY = ["--set", "pretrain.epochs=8", "--set", "pretrain.eval_every=1", "--set", "search.num_samples=2",
        "--set", "scheduler.type=fifo"]


class Command:
    """`sslsearch ARGV` started as a terminal would (own process group, SIGINT handled) or, with `background`, as a
    shell script's `ARGV &` is (SIGINT ignored, inherited from bash); output to a file, exit code kept."""

    def __init__(self, argv: list[str], folder: Path, env: dict, background: bool):
        self.log = folder / f"out-{time.monotonic_ns()}.txt"
        if background:
            script = '"$@" > "$LOG" 2>&1 & echo $!; wait $!; echo "exit $?"'
            self.shell = subprocess.Popen(["bash", "-c", script, "bash", *SSLSEARCH, *argv], cwd=folder,
                                          env={**env, "LOG": str(self.log)}, stdout=subprocess.PIPE, text=True,
                                          start_new_session=True)
            self.pid = int(self.shell.stdout.readline())
        else:
            with self.log.open("w") as out:
                self.shell = subprocess.Popen([*SSLSEARCH, *argv], cwd=folder, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.shell.pid
        self.background = background

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, ready, what: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.shell.poll() is None, f"ended before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s:\n{self.output()[-3000:]}"
            time.sleep(0.5)

    def stop(self, signum: int, timeout_s: float = 180) -> int:
        """Send `signum` to the command; its exit code (the test fails if it does not end within `timeout_s`)."""
        os.kill(self.pid, signum)
        try:
            if self.background:
                tail = self.shell.communicate(timeout=timeout_s)[0].strip().splitlines()
                return int(tail[-1].split()[-1])
            return self.shell.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout_s} s after {signal.Signals(signum).name}:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.shell.poll() is None:
            with_pid = [self.pid] + ([self.shell.pid] if self.background else [])
            for pid in with_pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.shell.wait()


def _private_env(tmp_path: Path) -> tuple[dict, str]:
    # A short private Ray temp root (socket paths stay under 107 characters) that also marks every process this
    # test starts (Ray's and the web servers': they inherit the environment), so leftovers can be found.
    root = Path("/tmp") / f"sg{os.getpid()}{tmp_path.name[-6:]}"
    root.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(root), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return env, str(root)


def _reported(folder: Path) -> bool:
    """A trial of the sweep (or stage) in `folder` has written a report: training is under way."""
    return any(p.stat().st_size for p in folder.glob("trial_*/result.json"))


def _runs(storage: Path, name: str) -> tuple[list, list]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sslsearch")
    runs = client.search_runs([experiment.experiment_id], f"tags.`sslsearch.sweep` = '{name}'")
    parents = [r for r in runs if r.data.tags["sslsearch.role"] == "sweep"]
    return parents, [r for r in runs if r.data.tags["sslsearch.role"] == "trial"]


def _assert_stopped_in_good_order(command: Command, code: int, hint: str, storage: Path, marker: str) -> None:
    output = command.output()
    assert code == 130, output[-3000:]
    assert re.search(hint, output, re.MULTILINE), (hint, output[-3000:])
    assert "SIGTERM received" not in output and "Traceback" not in output, output[-3000:]
    parents, trials = _runs(storage, "t")
    assert [p.info.status for p in parents] == ["KILLED"]   # the sweep is not over
    assert trials and all(r.info.status != "RUNNING" for r in trials), [(r.info.status, r.data.tags) for r in trials]
    assert (storage / "t" / "sslsearch.lock").read_text() == ""   # released: no holder named
    time.sleep(1)
    assert processes_mentioning(marker) == []


@pytest.mark.slow
def test_sweep_resume_and_confirm_stop_in_good_order_on_sigterm_and_sigint(tmp_path):
    """sweep (started with `&`, SIGTERM), resume (from a terminal, SIGINT), resume to the end, confirm (`&`, SIGTERM)."""
    env, marker = _private_env(tmp_path)
    storage = tmp_path / "runs"
    try:
        sweep = Command(["sweep", "--name", "t", "--storage", str(storage), *TINY], tmp_path, env, background=True)
        sweep.wait_for(lambda: _reported(storage / "t"), "first report")
        code = sweep.stop(signal.SIGTERM)
        # The hint is a command this shell can run as printed: the program as invoked (the storage is ./runs of the
        # working folder, the default, so no --storage; test_cli checks one given).
        program, where = r"\S+ -m sslsearch\.cli", ""
        _assert_stopped_in_good_order(sweep, code, f"continue with: {program} resume t{where}$", storage, marker)
        assert "2 running" in sweep.output()   # the summary, counting the unfinished trials

        resume = Command(["resume", "t", "--storage", str(storage)], tmp_path, env, background=False)
        before = {p: p.stat().st_size for p in (storage / "t").glob("trial_*/result.json")}
        resume.wait_for(lambda: any(p.stat().st_size > before.get(p, 0)
                                    for p in (storage / "t").glob("trial_*/result.json")), "a report after resuming")
        code = resume.stop(signal.SIGINT)
        _assert_stopped_in_good_order(resume, code, f"continue with: {program} resume t{where}$", storage, marker)

        finish = Command(["resume", "t", "--storage", str(storage)], tmp_path, env, background=False)
        assert finish.shell.wait(timeout=600) == 0, finish.output()[-3000:]

        confirm = Command(["confirm", "t", "--top", "1", "--seeds", "1", "--storage", str(storage)], tmp_path, env,
                          background=True)
        confirm.wait_for(lambda: _reported(storage / "t" / "confirm"), "first report of the confirmation stage")
        code = confirm.stop(signal.SIGTERM)
        # --seeds 1 is not the default: without it the command would be refused (the stage was started with 1 seed)
        _assert_stopped_in_good_order(confirm, code, f"continue with: {program} confirm t{where} --seeds 1 "
                                      rf"\(or {program} resume t{where}\)$", storage, marker)
    finally:
        for command in [c for c in locals().values() if isinstance(c, Command)]:
            command.kill()
        kill_processes_mentioning(marker)


@pytest.mark.slow
def test_a_second_ctrl_c_still_names_the_command_that_continues(tmp_path):
    """A second Ctrl-C while Ray stops the sweep (Ray's handler gives SIGINT back after the first) raised
    KeyboardInterrupt through Tuner.fit: the command printed only 'sslsearch: interrupted', no summary and no
    resume hint. It names the command now, and that command finishes the sweep."""
    env, marker = _private_env(tmp_path)
    storage = tmp_path / "runs"
    program = r"\S+ -m sslsearch\.cli"
    try:
        # 4 epochs, not 8: the first signal comes at the first report (epoch 0), and the resume below runs the rest.
        sweep = Command(["sweep", "--name", "t", "--storage", str(storage), *TINY, "--set", "pretrain.epochs=4"],
                        tmp_path, env, background=False)
        sweep.wait_for(lambda: _reported(storage / "t"), "first report")
        os.kill(sweep.pid, signal.SIGINT)
        # Ray's handler has run once it logs this line, and has put the default one back: the next SIGINT raises.
        # The driver is frozen at once (SIGSTOP), so that the second SIGINT is pending when it goes on, wherever
        # Ray's stop then is; only a stop already over when frozen (its summary printed) would miss the point.
        deadline = time.monotonic() + 300
        while "Stop signal received" not in sweep.output():
            assert sweep.shell.poll() is None and time.monotonic() < deadline, sweep.output()[-3000:]
            time.sleep(0.02)
        os.kill(sweep.pid, signal.SIGSTOP)
        if "interrupted with" in sweep.output():
            os.kill(sweep.pid, signal.SIGCONT)
            pytest.skip("Ray's stop was over before the second Ctrl-C (the summary printed): nothing to test this time")
        os.kill(sweep.pid, signal.SIGINT)
        os.kill(sweep.pid, signal.SIGCONT)
        code = sweep.shell.wait(timeout=180)
        output = sweep.output()
        assert code == 130, output[-3000:]
        # (./runs, the default storage: no --storage in the command)
        assert re.search(rf"^sslsearch: interrupted; continue with: {program} resume t$", output, re.MULTILINE), output[-3000:]
        assert "interrupted with" not in output, output[-3000:]   # no summary: the second Ctrl-C cut the stop short
        assert "Traceback" not in output, output[-3000:]
        time.sleep(1)
        assert processes_mentioning(marker) == []

        finish = Command(["resume", "t", "--storage", str(storage)], tmp_path, env, background=False)
        assert finish.shell.wait(timeout=600) == 0, finish.output()[-3000:]
        parents, trials = _runs(storage, "t")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]
    finally:
        for command in [c for c in locals().values() if isinstance(c, Command)]:
            command.kill()
        kill_processes_mentioning(marker)


@pytest.mark.slow
@pytest.mark.parametrize("signum, background", [(signal.SIGTERM, True), (signal.SIGINT, False)],
                         ids=["SIGTERM-script-&", "SIGINT-terminal"])
def test_pretrain_stops_with_its_resume_hint(tmp_path, signum, background):
    env, marker = _private_env(tmp_path)
    out = tmp_path / "pre"
    command = Command(["pretrain", "--dataset", "digits", "--data-dir", str(tmp_path / "data"), "--epochs", "1000",
                       "--eval-every", "1", "--out", str(out), "--quiet", "--device", "cpu"], tmp_path, env, background)
    try:
        command.wait_for(lambda: (out / "last.pt").is_file(), "the first checkpoint")
        code = command.stop(signum)
        output = command.output()
        assert code == 130, output
        assert f"continue with the same options and --out {out} --resume" in output, output
        assert "Traceback" not in output, output
    finally:
        command.kill()
        kill_processes_mentioning(marker)


def _store_with_a_sweep(storage: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    client.create_run(client.create_experiment("sslsearch"), tags={"sslsearch.role": "sweep", "sslsearch.sweep": "t"})


@pytest.mark.slow
@pytest.mark.parametrize("server", ["ui", "dashboard"])
def test_web_uis_started_from_a_script_stop_on_sigterm(tmp_path, server):
    """`sslsearch ui &` in a script ignores SIGINT; SIGTERM must still stop it and every process it started."""
    from test_ui import write_study

    env, marker = _private_env(tmp_path)
    storage = tmp_path / "runs"
    storage.mkdir()
    if server == "ui":
        _store_with_a_sweep(storage)
    else:
        write_study(storage, "t")
    port = free_port()
    command = Command([server, "--storage", str(storage), "--port", str(port)], tmp_path, env, background=True)
    try:
        command.wait_for(lambda: "(Ctrl-C to stop)" in command.output(), "the server's URL", timeout_s=240)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        code = command.stop(signal.SIGTERM, timeout_s=60)
        assert code == 130, command.output()[-3000:]
        assert "Traceback" not in command.output(), command.output()[-3000:]
        time.sleep(1)
        assert processes_mentioning(marker) == []
    finally:
        command.kill()
        kill_processes_mentioning(marker)
