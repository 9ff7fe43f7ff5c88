"""`sslsearch ui` and `sslsearch dashboard`: real servers on loopback, real signals, every child process checked."""

import os
import re
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
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage / sweep / "optuna-study.journal")))
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
    from sslsearch.records.tracking import MlflowTracking
    from sslsearch.search.space import load_search_space
    from test_tracking import FakeTrial, tiny

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
    assert main(["leaderboard", "ui-demo", "--storage", str(folder)]) == 0  # logs the verdict on the sweep's run
    return folder


def screenshots_dir(tmp_path_factory) -> Path:
    """Kept with pytest's temporary folders (the last three sessions); the path is printed."""
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


# Per column header: shown (whole) inside the runs table's visible width and the window; and the page's text.
ANSWER_PROBE = """(() => {
  const grid = document.querySelector('.ag-root-wrapper'), box = grid ? grid.getBoundingClientRect() : null;
  const shown = {};
  for (const name of ['sslsearch.verdict', 'best_val_acc_barlow', 'best_val_acc_hsic', 'Source', 'Dataset']) {
    const header = [...document.querySelectorAll('.ag-header-cell')].find(e => (e.innerText || '').trim() === name
      || (e.querySelector('[title]') || {}).title === name || (e.getAttribute('col-id') || '').includes('`' + name + '`'));
    const r = header ? header.getBoundingClientRect() : null;
    shown[name] = Boolean(r && box && r.width > 0 && r.left >= box.left && r.right <= box.right + 1
                          && r.right <= window.innerWidth);
  }
  return {shown: shown, text: document.body.innerText};
})()"""


@pytest.mark.slow
def test_mlflow_ui_opens_on_the_runs_with_metrics_and_stops_with_every_child(sweep_store, tmp_path_factory):
    stop = signal.SIGTERM  # (Ctrl-C: the dashboard test; both servers share one life cycle, sslsearch.records.ui.serve)
    from mlflow import MlflowClient

    from browser import find_browser, open_page

    experiment_id = MlflowClient(f"sqlite:///{sweep_store / 'mlflow.db'}").get_experiment_by_name("sslsearch").experiment_id
    port = free_port()
    pages = {}

    def look(url):
        # In a real browser: the runs and the charts the printed URL leads to, not MLflow 3's GenAI overview.
        if find_browser() is None:
            return None
        # Each view's own sign that it has rendered (the charts' titles are hidden at 1280 px, so waiting for them
        # would wait out the whole timeout: their section's heading is the sign).
        ready = {"runs": "document.body.innerText.includes('best_val_acc_hsic')",
                 "charts": r"/Model metrics\s*\(\d+\)/.test(document.body.innerText)"}
        for view, address in (("runs", url), ("charts", f"{url}&compareRunsMode=CHART")):
            pages[view] = open_page(address, ANSWER_PROBE, width=1280, height=800, ready_js=ready[view], ready_timeout_s=120,
                                    settle_s=2, full_page=False)
            shot = screenshots_dir(tmp_path_factory) / f"mlflow-ui-{view}.png"
            shot.write_bytes(pages[view].screenshot)
            print(f"screenshot: {shot}")
        return pages

    done = serve_then_stop(["ui", "--storage", str(sweep_store), "--port", str(port)], stop, "/health", look)
    assert done["url"] == (f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                           "&viewStateShareKey=sslsearch-answer")
    assert done["answered"] == 200  # at the moment the URL was printed
    assert find_browser() is not None, "no Chromium: apt-get install chromium"
    runs, charts = pages["runs"], pages["charts"]
    text = runs.probe["text"]
    assert "ui-demo" in text and "matching runs" in text  # the runs table, with the sweep's run
    assert "Detect Issues" not in text and "Latency" not in text  # not the GenAI traces overview
    # At 1280 px, without scrolling: the verdict and the best val_acc per loss, inside the table's visible part
    # (MLflow's default Source / Dataset columns make way for them), and the sweep's verdict in its row.
    for column in ("sslsearch.verdict", "best_val_acc_barlow", "best_val_acc_hsic"):
        assert runs.probe["shown"][column], (column, runs.probe)
    assert runs.probe["shown"]["Source"] is False and runs.probe["shown"]["Dataset"] is False, runs.probe
    assert "Search stage only" in text  # the sweep's verdict, which leads with its stage (no confirmation yet)
    charts_text = charts.probe["text"]  # the parent run's charts: best_val_acc_barlow / _hsic (and the verdict's)
    # The charts of the parent run's metrics. Their titles (best_val_acc_barlow / _hsic) show only where the cards are
    # wide enough: at 1280 px, with MLflow's assistant panel open on a first visit, they are not; the section is.
    charted = re.search(r"Model metrics\s*\((\d+)\)", charts_text)
    assert charted and int(charted.group(1)) >= 2, charts_text[:2000]
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


def test_the_runs_page_is_asked_until_the_api_answers_and_never_replaced_by_another_page():
    """A loaded MLflow server answers /health before its REST API answers in time: the URL waits for the API
    (here: two 503s, then the answer), writes the answer view, and is never the experiments list instead."""
    import http.server
    import json
    import threading

    from sslsearch.records.ui import VIEW_TAG, Server, _sweeps_page, answer_view

    calls, tags = [], {}

    class Api(http.server.BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            calls.append(self.path)
            if len(calls) <= 2:
                self._reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE"})
            elif self.server.has_experiment:
                self._reply(200, {"experiment": {"experiment_id": "7", "name": "sslsearch"}})
            else:
                self._reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            tags[body["key"]] = (body["experiment_id"], json.loads(body["value"]))
            self._reply(200, {})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.has_experiment = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mlflow = Server("MLflow UI", [], "127.0.0.1", server.server_address[1], ready_path="/health")
        page = _sweeps_page(mlflow, time.monotonic() + 60)
        assert page == "/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=sslsearch-answer"
        assert len(calls) == 3 and tags == {VIEW_TAG: ("7", answer_view())}
        calls.clear()
        with pytest.raises(InputError, match="answered /health but not its REST API"):
            _sweeps_page(mlflow, time.monotonic())  # the deadline has passed: an error, not a fallback page
        calls.clear()
        server.has_experiment = False
        with pytest.raises(InputError, match="holds no sslsearch experiment"):
            _sweeps_page(mlflow, time.monotonic() + 60)
    finally:
        server.shutdown()
        server.server_close()
