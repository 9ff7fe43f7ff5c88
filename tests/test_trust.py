"""What sslsearch and Ray unpickle from a sweep folder must be the user's own (issue 22, item 3); a local sweep's Ray
listens on loopback only; `ui`/`dashboard` say so when they listen beyond it.

Crafted pickles here create a marker file when unpickled: a refusal must come before any of them is read.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from sslsearch.errors import InputError
from sslsearch.processes import free_port
from sslsearch.search.experiment import load_experiment
from sslsearch.search.sweeplock import check_owned, unpickled_paths

REPO = Path(__file__).resolve().parent.parent
STRANGER = 12345   # a uid that is neither root nor the tests' user
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")


class _Crafted:
    """Unpickling it creates `marker`: what a crafted file would do with os.system instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# One file of each kind Ray or sslsearch unpickles from a sweep folder (as ray 2.x names them).
PICKLED = ("tuner.pkl", "trainable.pkl", "searcher-state-2026-12-04_16-00-00.pkl",
           "callback-states-2026-12-04_16-00-00.pkl", "search_gen_state-2026-12-04_16-00-00.json",
           "basic-variant-state-2026-12-04_16-00-00.json")
STATE = "experiment_state-2026-12-04_16-00-00.json"


def _sweep(storage: Path, marker: Path, name: str = "s") -> Path:
    """A sweep folder with every kind of file Ray restores, each crafted to create `marker` if it is ever read."""
    folder = storage / name
    (folder / "intact-state").mkdir(parents=True)
    (folder / "trial_aaaa0001").mkdir()
    storage.chmod(0o755)
    experiment = load_experiment(None)
    (folder / "sslsearch-sweep.json").write_text(json.dumps(
        {"experiment": experiment.to_dict(), "experiment_source": None, "space": {}, "space_source": None,
         "storage": str(storage), "name": name}))
    crafted = pickle.dumps(_Crafted(marker))
    for name_ in PICKLED:
        (folder / name_).write_bytes(crafted)
    # The experiment state embeds pickles as CLOUDPICKLE_FALLBACK blobs, which Ray's decoder unpickles.
    state = json.dumps({"trial_data": [], "runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": crafted.hex()}})
    (folder / STATE).write_text(state)
    (folder / "intact-state" / STATE).write_text(state)
    (folder / "intact-state" / PICKLED[2]).write_bytes(crafted)
    (folder / "trial_aaaa0001" / "error.pkl").write_bytes(crafted)
    (folder / "mlflow-outbox.jsonl").write_text("")
    return folder


def test_every_file_ray_unpickles_is_listed(tmp_path):
    folder = _sweep(tmp_path / "runs", tmp_path / "ran")
    listed = {str(p.relative_to(folder)) for p in unpickled_paths(folder)}
    assert listed == {".", *PICKLED, STATE, "intact-state", f"intact-state/{STATE}", f"intact-state/{PICKLED[2]}",
                      "trial_aaaa0001", "trial_aaaa0001/error.pkl", "mlflow-outbox.jsonl"}
    check_owned(folder)   # the user's own, written with the usual umask: accepted


@as_root
@pytest.mark.parametrize("item", [*PICKLED, STATE, f"intact-state/{STATE}", f"intact-state/{PICKLED[2]}", "intact-state",
                                  "trial_aaaa0001/error.pkl", "trial_aaaa0001", "mlflow-outbox.jsonl", "."])
def test_a_file_or_folder_another_user_owns_is_refused_naming_it(item, tmp_path):
    folder = _sweep(tmp_path / "runs", tmp_path / "ran")
    os.chown(folder / item, STRANGER, STRANGER)
    with pytest.raises(InputError, match=f"{str(folder / item).rstrip('/.')}.? belongs to uid {STRANGER}, not you") as refused:
        check_owned(folder, "sync")
    assert "sync unpickles it" in str(refused.value) and "copy the sweep folder" in str(refused.value)


@pytest.mark.parametrize("item", [*PICKLED, STATE, f"intact-state/{PICKLED[2]}", "intact-state", "trial_aaaa0001/error.pkl"])
def test_a_file_everyone_can_write_is_refused_with_chmod(item, tmp_path):
    folder = _sweep(tmp_path / "runs", tmp_path / "ran")
    (folder / item).chmod(0o777 if (folder / item).is_dir() else 0o666)
    with pytest.raises(InputError, match=f"is writable by everyone .*: chmod o-w {folder / item}$"):
        check_owned(folder)


@pytest.mark.parametrize("item", ["searcher-state-2026-12-04_16-00-00.pkl", "intact-state", "trial_aaaa0001"])
def test_a_symbolic_link_is_refused_with_a_fix_that_works_for_links(item, tmp_path):
    folder = _sweep(tmp_path / "runs", tmp_path / "ran")
    target = tmp_path / "elsewhere"
    os.replace(folder / item, target)
    (folder / item).symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link .*replace the link with a copy of its target") as refused:
        check_owned(folder)
    assert "chmod" not in str(refused.value)


def test_a_storage_folder_anyone_can_swap_sweeps_in_is_refused_unless_sticky(tmp_path):
    folder = _sweep(tmp_path / "runs", tmp_path / "ran")
    folder.parent.chmod(0o777)
    with pytest.raises(InputError, match="writable by everyone without the sticky bit"):
        check_owned(folder)
    folder.parent.chmod(0o1777)   # as /tmp: others cannot rename what they do not own
    check_owned(folder)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sslsearch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@as_root
@pytest.mark.parametrize("command, item", [("sync", "searcher-state-2026-12-04_16-00-00.pkl"),
                                           ("resume", f"intact-state/{STATE}"),
                                           ("confirm", "trial_aaaa0001/error.pkl"),
                                           ("sync", STATE)])
def test_sync_resume_and_confirm_refuse_a_crafted_foreign_file_before_reading_anything(command, item, tmp_path):
    marker = tmp_path / "ran"
    folder = _sweep(tmp_path / "runs", marker)
    os.chown(folder / item, STRANGER, STRANGER)
    done = _cli(command, "s", "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{folder / item} belongs to uid {STRANGER}" in lines[0], done.stderr[-2000:]
    assert not marker.exists()   # nothing was unpickled
    assert not (tmp_path / "runs" / "mlflow.db").exists()   # nor written


def _listening(pids: set[int]) -> list[str]:
    import psutil

    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [f"{c.laddr.ip}:{c.laddr.port}" for c in connections if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.slow
def test_a_local_sweeps_ray_listens_on_loopback_only():
    """Ray's GCS, raylet, the driver and the workers of a local instance (connect_ray) listen on 127.0.0.1 only."""
    script = """
import os, sys, ray, psutil
sys.path.insert(0, sys.argv[1])
from test_trust import _listening
from sslsearch.search.sweep import connect_ray
connect_ray(None, num_cpus=1)
ray.get(ray.remote(lambda: os.getpid()).remote())   # a worker too
me = psutil.Process()
print(" ".join(_listening({me.pid, *(p.pid for p in me.children(recursive=True))})))
ray.shutdown()
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "tests")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = done.stdout.split()
    assert len(addresses) >= 4, done.stdout   # GCS, raylet (2), driver, worker
    assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses), addresses


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_a_server_bound_beyond_loopback_gets_one_warning_line(host, warned, capfd):
    from sslsearch.records.ui import Server, serve

    port = free_port()
    # A real server process that answers the readiness probe, then exits: serve() returns its exit code.
    command = [sys.executable, "-c", "import http.server as h, sys; "
               f"s = h.HTTPServer(({host!r}, {port}), h.SimpleHTTPRequestHandler); s.handle_request()"]
    assert serve(Server("test server", command, host, port, ready_path="/"), out=sys.stdout) == 0
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (1 if warned else 0), err
    if warned:
        assert "test server listens on 0.0.0.0, beyond this machine" in warnings[0] and "--host 127.0.0.1" in warnings[0]
