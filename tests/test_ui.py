"""`sslsearch ui` and `sslsearch dashboard`: real servers on loopback, real signals, every child process checked."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sslsearch.cli import main
from sslsearch.errors import InputError
from sslsearch.processes import free_port
from sslsearch.records.ui import check_port, mlflow_ui, optuna_dashboard

SSLSEARCH = [sys.executable, "-m", "sslsearch.cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONUNBUFFERED": "1",
       "MLFLOW_DISABLE_TELEMETRY": "true"}


def write_study(storage: Path, sweep: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its handler would outlive pytest's captured stderr
    (storage / sweep).mkdir(parents=True)
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage / sweep / "optuna-study.journal")))
    study = optuna.create_study(storage=journal, study_name=sweep, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lmbda", 1e-3, 1, log=True), n_trials=3)


@pytest.mark.slow
def test_a_busy_port_is_one_line_and_exit_2_before_anything_starts(tmp_path, capsys):
    (tmp_path / "mlflow.db").touch()
    write_study(tmp_path, "s1")
    capsys.readouterr()  # Optuna's own log of the study above
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port("127.0.0.1", port)
        for command in (["ui"], ["dashboard"]):
            started = time.monotonic()
            code = main([*command, "--storage", str(tmp_path), "--port", str(port)])
            err = capsys.readouterr().err.strip()
            assert code == 2 and err == f"sslsearch: error: port {port} on 127.0.0.1 is in use; stop what listens there " \
                                        "or pass another --port", err
            assert time.monotonic() - started < 5
    check_port("127.0.0.1", port)  # free again
    with pytest.raises(InputError, match="--port must be in 1–65535"):
        check_port("127.0.0.1", 70000)


@pytest.mark.slow
def test_commands_serve_the_store_on_loopback(tmp_path):
    with pytest.raises(InputError, match="no MLflow records"):
        mlflow_ui(str(tmp_path))
    (tmp_path / "mlflow.db").touch()
    server = mlflow_ui(str(tmp_path), port=5001)
    command = server.command
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert command[command.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "5001"] and server.url == "http://127.0.0.1:5001/"
    with pytest.raises(InputError, match="no sweep with an Optuna study"):
        optuna_dashboard(str(tmp_path), None)
    write_study(tmp_path, "older")
    time.sleep(0.05)
    write_study(tmp_path, "newer")
    assert "newer" in optuna_dashboard(str(tmp_path), None).what  # the most recently written study
    with pytest.raises(InputError, match="no Optuna study for sweep 'nosuch'.*sweeps with one: newer, older"):
        optuna_dashboard(str(tmp_path), "nosuch")


def serve_then_stop(argv: list[str], stop: int, ready_path: str, while_up=None) -> dict:
    """Run `sslsearch ARGV`; once it prints its URL, check the server answers, note its process tree,
    call `while_up(url)` if given, then send `stop`."""
    process = subprocess.Popen([*SSLSEARCH, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = process.stdout.readline()  # blocks until the URL is printed
        assert line, process.stderr.read()
        url = line.split(": ", 1)[1].split()[0]
        base = url.split("/", 3)[:3]
        with urllib.request.urlopen("/".join(base) + ready_path, timeout=10) as response:
            answered, body = response.status, response.read().decode()
        tree = psutil.Process(process.pid).children(recursive=True)
        seen = while_up(url) if while_up is not None else None
        process.send_signal(stop)
        code = process.wait(timeout=60)
        time.sleep(0.5)
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        return {"url": url, "answered": answered, "body": body, "seen": seen, "tree": tree, "alive": alive, "code": code,
                "stdout": line + process.stdout.read(), "stderr": process.stderr.read()}
    finally:
        if process.poll() is None:  # a failed check: stop the server's whole tree, not only the command
            from sslsearch.processes import stop_descendants

            stop_descendants(process.pid, grace_s=2)
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A store written by the tracking callback itself (hooks replayed with fake trials, as in test_tracking)."""
    from test_tracking import FakeTrial, tiny

    from sslsearch.records.tracking import MlflowTracking
    from sslsearch.search.space import load_search_space

    folder = tmp_path_factory.mktemp("ui-store")
    experiment = tiny()
    tracking = MlflowTracking(experiment, load_search_space(experiment.space_path()), sweep="ui-demo", storage=str(folder))
    tracking.setup()
    for trial_id, loss, finals in (("aaaa0001", "barlow", (81.0, 90.5)), ("bbbb0002", "hsic", (84.0, 92.25))):
        trial = FakeTrial(trial_id, folder, loss)
        tracking.on_trial_start(0, [], trial)
        trial.report(tracking, 0, 40.0), trial.report(tracking, 1, finals[0]), trial.report(tracking, 2, finals[1])
        tracking.on_trial_complete(0, [], trial)
    tracking.on_experiment_end([])
    return folder


def screenshots_dir(tmp_path_factory) -> Path:
    """Kept with pytest's temporary folders (the last three sessions); the path is printed."""
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.mark.slow
def test_mlflow_ui_opens_on_the_runs_with_metrics_and_stops_with_every_child(sweep_store, tmp_path_factory):
    stop = signal.SIGTERM  # (Ctrl-C: the dashboard test; both servers share one life cycle, sslsearch.records.ui.serve)
    from browser import find_browser, open_page
    from mlflow import MlflowClient

    experiment_id = MlflowClient(f"sqlite:///{sweep_store / 'mlflow.db'}").get_experiment_by_name("sslsearch").experiment_id
    port = free_port()
    pages = {}

    def look(url):
        # In a real browser: the runs and the charts the printed URL leads to, not MLflow 3's GenAI overview.
        if find_browser() is None:
            return None
        probe = "document.body.innerText"
        ready = "document.body.innerText.includes('best_val_acc_hsic')"
        for view, address in (("runs", url), ("charts", f"{url}&compareRunsMode=CHART")):
            pages[view] = open_page(address, probe, width=2200, height=900, ready_js=ready, ready_timeout_s=120,
                                    settle_s=2, full_page=False)
            shot = screenshots_dir(tmp_path_factory) / f"mlflow-ui-{view}.png"
            shot.write_bytes(pages[view].screenshot)
            print(f"screenshot: {shot}")
        return pages

    done = serve_then_stop(["ui", "--storage", str(sweep_store), "--port", str(port)], stop, "/health", look)
    assert done["url"] == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert done["answered"] == 200  # at the moment the URL was printed
    assert find_browser() is not None, "no Chromium: apt-get install chromium"
    runs, charts = pages["runs"], pages["charts"]
    assert "ui-demo" in runs.probe and "matching runs" in runs.probe  # the runs table, with the sweep's run
    assert "Detect Issues" not in runs.probe and "Latency" not in runs.probe  # not the GenAI traces overview
    assert "Model metrics\n(2)" in charts.probe  # the parent run's best_val_acc_barlow / _hsic charts
    assert len(done["tree"]) >= 2, done["tree"]  # the server and its workers (uvicorn, huey)
    assert done["alive"] == [] and done["code"] == 130  # interrupted, as every command
    assert "Traceback" not in done["stderr"] and "DeprecationWarning" not in done["stderr"], done["stderr"][-3000:]
    check_port("127.0.0.1", port)  # nothing listens any more


@pytest.mark.slow
def test_optuna_dashboard_serves_the_sweep_study_and_stops(tmp_path):
    import json

    write_study(tmp_path, "mine")
    port = free_port()
    done = serve_then_stop(["dashboard", "mine", "--storage", str(tmp_path), "--port", str(port)], signal.SIGINT,
                           "/api/studies")  # Ctrl-C
    assert done["url"] == f"http://127.0.0.1:{port}/dashboard/studies/0" and done["answered"] == 200
    studies = json.loads(done["body"])["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in studies] == [(0, "mine")]  # the id the printed URL opens
    assert done["alive"] == [] and done["code"] == 130  # interrupted, as every command
    assert "Traceback" not in done["stderr"], done["stderr"][-3000:]
    check_port("127.0.0.1", port)
