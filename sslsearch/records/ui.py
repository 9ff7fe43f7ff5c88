"""The web UIs over a sweep's records: the MLflow UI (`sslsearch ui`) and optuna-dashboard (`sslsearch dashboard`).

Both are served as a child process tree with the same life cycle:
- a busy port is refused before anything starts (one line, exit 2), instead of the server
  burying `[Errno 98]` in its log and exiting 0;
- the URL is printed once the server answers, not while it is still importing (~25 s for MLflow), and for
  MLflow it is always the sweeps' runs page, on a view that shows the verdict and best val_acc per loss;
- Ctrl-C or SIGTERM stops the server and every process it started (MLflow runs uvicorn and a pool
  of huey job workers), and nothing prints a traceback.
Only the standard library and psutil at import time: `sslsearch ui --help` and its refusals stay fast.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from sslsearch.errors import InputError
from sslsearch.method.config import LOSSES
from sslsearch.processes import INTERRUPTED, reaping, start_server, wait_until_answers
from sslsearch.records.catalog import recorded_sweeps
from sslsearch.records.schema import EXPERIMENT_NAME, SUMMARY_METRIC, VERDICT
from sslsearch.records.store import artifact_root, default_tracking_uri, sqlite_path
from sslsearch.search.folder import STUDY_FILE

READY_TIMEOUT_S = 180.0              # MLflow's server imports for ~25 s on a busy 2-core machine


@dataclass(frozen=True)
class Server:
    """A web server to start: its command, what to call it, and where it answers once ready."""

    what: str
    command: list[str]
    host: str
    port: int
    ready_path: str    # GET here answers 200 once the server serves
    open_path: str = "/"
    # Asked once the server answers, with the deadline to answer by: the page to open, from what the server
    # knows (e.g. an experiment's id); InputError if it cannot say.
    locate: Callable[[Server, float], str] | None = None
    chosen: str | None = None  # what was chosen for the user (e.g. the latest sweep): said first, on stderr

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.open_path}"

    def probe_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        return f"http://{host}:{self.port}{self.ready_path}"


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1): reachable from this machine only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_port(host: str, port: int) -> None:
    """InputError (one line) if `port` is outside 1–65535 or something already listens on host:port."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port must be in 1–65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT by a server that just stopped is free to use; only a
        # listening socket makes the bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use; stop what listens there or pass another --port") from None
            if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
                raise InputError(f"--host {host} is not an address of this machine; use 127.0.0.1 (default) or 0.0.0.0") from None
            raise InputError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def mlflow_ui(storage: str, host: str = "127.0.0.1", port: int = 5000) -> Server:
    """The MLflow UI over the SQLite store of `storage` (loopback by default)."""
    uri = default_tracking_uri(storage)
    if not sqlite_path(uri).is_file():
        raise InputError(f"no MLflow records in {Path(storage).resolve()}: run a sweep there first")
    if recorded_sweeps(uri) == []:  # (None: a store this reader cannot read; the server will say)
        raise InputError(f"no sweeps recorded in {sqlite_path(uri)}: run a sweep there first")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifact_root(uri), "--host", host, "--port", str(port)]
    return Server("MLflow UI", command, host, port, ready_path="/health", locate=_sweeps_page)


# MLflow 3.17's UI picks GenAI or model-training views from its own switch (the URL's `workflowType`,
# else the browser's last choice, GenAI by default), not from the experiment's `mlflow.experimentKind`
# tag: the printed URL asks for model training and opens the sweeps' experiment, on its runs.
EXPERIMENT_PAGE = "/#/experiments/{id}/runs?workflowType=machine_learning&viewStateShareKey={view}"
# The runs table's columns are no URL parameter, but a "shared view" is: the UI applies the experiment tag
# `mlflow.sharedViewState.<key>` named by the URL's `viewStateShareKey`, a JSON of the search facets and the
# table's state (mlflow/server/js: ExperimentViewRuns). Ours puts the answer first: the verdict and the best
# val_acc per loss in place of the default Source / Models / Dataset columns, narrow enough to be seen at
# 1280 px even while MLflow's Assistant panel (open on a browser's first visit) takes a third of the width.
VIEW_KEY = "sslsearch-answer"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def answer_view() -> dict:
    """The runs table the printed URL opens (MLflow's column keys are "<type>.`<name>`"), newest sweep first."""
    verdict, *best = [f"tags.`{VERDICT}`", *(f"metrics.`{SUMMARY_METRIC.format(loss=loss)}`" for loss in LOSSES)]
    widths = {verdict: 110, **{column: 85 for column in best}}  # pixels; a cell shows its whole text on hover
    return {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": [verdict, *best], "columnOrder": [verdict, *best], "columnWidths": widths}


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _sweeps_page(server: Server, deadline: float) -> str:
    """The runs page of the `sslsearch` experiment, opened on the answer view (saved as the experiment's tag).

    Asked again until `deadline`: a loaded server answers /health well before its REST API answers in
    time (70-90 s seen on a busy 2-core machine), and the page it prints must be the runs page, not a
    fallback. InputError if the API never answers or the store holds no sweep."""
    base = server.probe_url().rsplit(server.ready_path, 1)[0]
    while True:
        try:
            found = _api(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT_NAME}")
            experiment_id = found["experiment"]["experiment_id"]
            _api(base, "/api/2.0/mlflow/experiments/set-experiment-tag",
                 {"experiment_id": experiment_id, "key": VIEW_TAG, "value": json.dumps(answer_view())})
            return EXPERIMENT_PAGE.format(id=experiment_id, view=VIEW_KEY)
        except urllib.error.HTTPError as error:
            if error.code == 404:  # RESOURCE_DOES_NOT_EXIST
                raise InputError("the MLflow store holds no sslsearch experiment: run a sweep first") from None
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            reason = str(getattr(error, "reason", None) or error)
        if time.monotonic() > deadline:
            raise InputError(f"{server.what} answered /health but not its REST API within {READY_TIMEOUT_S:.0f} s "
                             f"({reason})")
        time.sleep(1.0)


def sweep_study(storage: str, sweep: str | None) -> tuple[str, Path]:
    """The sweep's name and its Optuna journal (None: the most recently written one in `storage`)."""
    folder = Path(storage).resolve()
    journals = sorted(folder.glob(f"*/{STUDY_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    if sweep is None:
        if not journals:
            raise InputError(f"no sweep with an Optuna study in {folder}: run a sweep there first")
        return journals[0].parent.name, journals[0]
    path = folder / sweep / STUDY_FILE
    if not path.is_file():
        known = ", ".join(p.parent.name for p in journals) or "none"
        raise InputError(f"no Optuna study for sweep {sweep!r} in {folder}; sweeps with one: {known}")
    return sweep, path


def optuna_dashboard(storage: str, sweep: str | None, host: str = "127.0.0.1", port: int = 8080) -> Server:
    """optuna-dashboard over one sweep's study (the `dashboard` extra)."""
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is None:
        raise InputError("optuna-dashboard is not installed; install the extra: pip install -e '.[dashboard]'")
    name, journal = sweep_study(storage, sweep)
    command = [sys.executable, "-m", "optuna_dashboard._cli", str(journal), "--storage-class", "JournalFileStorage",
               "--host", host, "--port", str(port), "--quiet"]
    # One study per journal, so it is study 0; the dashboard's own study URLs are by id.
    chosen = None if sweep is not None else (f"dashboard: sweep {name}, the most recently written Optuna study in "
                                             f"{Path(storage).resolve()} (name a sweep to choose)")
    return Server(f"optuna-dashboard (sweep {name})", command, host, port, ready_path="/api/meta",
                  open_path="/dashboard/studies/0", chosen=chosen)


def serve(server: Server, *, out=sys.stdout) -> int:
    """Start `server`, print its URL once it answers, and run until it exits, Ctrl-C or SIGTERM.

    Returns the exit code for the command line: 130 after Ctrl-C or SIGTERM (as every command), the server's
    own code if it stops by itself. The server's log goes to stderr; Python deprecation warnings are silenced there
    (Starlette's and others' are about the server's code, not the user's).
    """
    check_port(server.host, server.port)
    if server.chosen:  # before the seconds the server takes to answer
        print(server.chosen, file=sys.stderr, flush=True)
    if not is_loopback(server.host):
        print(f"warning: {server.what} listens on {server.host}, beyond this machine, and has no login: whoever reaches "
              f"port {server.port} can read and change the sweeps' records; use --host 127.0.0.1 and an SSH tunnel "
              "unless every machine on that network is trusted", file=sys.stderr, flush=True)
    # Deprecation notices about the servers' own code (Starlette's is a UserWarning) are not the user's to act on.
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,"
                                           "ignore:starlette.middleware.wsgi is deprecated"}
    with reaping():  # on the way out, SIGTERM/SIGKILL the server and everything it started
        # Its own session: the terminal's Ctrl-C reaches only us, and we stop the whole tree in order.
        process = start_server(server.command, stdout=sys.stderr, env=env)
        try:
            failed = wait_until_answers(process, server.probe_url(), READY_TIMEOUT_S)
            if failed is not None:
                print(f"sslsearch: error: {server.what} {failed}", file=sys.stderr)
                return 1
            if server.locate is not None:
                try:
                    server = replace(server, open_path=server.locate(server, time.monotonic() + READY_TIMEOUT_S))
                except InputError as error:
                    print(f"sslsearch: error: {error}", file=sys.stderr)
                    return 1
            print(f"{server.what}: {server.url}  (Ctrl-C to stop)", file=out, flush=True)
            return process.wait()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (reaping turns it into one)
            return INTERRUPTED
