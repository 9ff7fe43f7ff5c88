"""A stopped command leaves no process behind: orphans that ignore SIGTERM, and a real sweep stopped as Ray starts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from local_processes import kill_processes_mentioning, processes_mentioning
from sslsearch.processes import _sigterm_as_ctrl_c, ctrl_c_held, reaping, stop_descendants

# A child that starts a grandchild ignoring SIGTERM (as ray::DashboardAgent does), then exits: the
# grandchild is orphaned before anyone can ask its parent about it.
ORPHAN_MAKER = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
grandchild.stdout.readline()
print(grandchild.pid, flush=True)
"""


@pytest.mark.slow
def test_orphans_that_ignore_sigterm_are_stopped_and_older_processes_kept(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # there before: not ours to stop
    try:
        with reaping():
            maker = subprocess.run([sys.executable, "-c", ORPHAN_MAKER], check=True, capture_output=True, text=True,
                                   timeout=60)
            orphan = psutil.Process(int(maker.stdout.split()[-1]))
            assert orphan.is_running() and orphan.ppid() == os.getpid()  # re-parented to us, the subreaper
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.slow
def test_a_sweep_stopped_while_ray_starts_leaves_no_process(tmp_path):
    # A private Ray temp root marks this sweep's processes (see test_sweep._private_ray_env).
    root = Path("/tmp") / f"rq{os.getpid()}"
    root.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(root), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    driver = subprocess.Popen([sys.executable, "-m", "sslsearch.cli", "sweep", "--name", "early", "--storage", str(tmp_path)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        # Stop it as soon as Ray has started some of its processes, before the agents are up.
        while not any("raylet" in p or "gcs_server" in p for p in processes_mentioning(str(root))):
            assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=120)[0]
        assert driver.returncode == 130, output
        assert "Traceback" not in output, output
        time.sleep(1)
        assert processes_mentioning(str(root)) == []
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_processes_mentioning(str(root))  # never leave them to the next test, even when failing


# A parent with a Python SIGTERM handler (as Ray's driver has after ray.init) forks a child whose at-fork hook
# is slow (filelock ≥ 4.3 registers one; Ray starts its processes with a preexec_fn, so Python runs between
# fork and exec). A SIGTERM in that window runs the parent's handler inside the hook, and Python prints
# "Exception ignored ... Traceback" on the terminal the child still shares.
FORK_IN_A_HOOK = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
def slow_hook():
    os.write(1, b"forked\\n")
    time.sleep(1.0)
os.register_at_fork(after_in_child=slow_hook)
child = os.fork()
if child == 0:
    os.execvp("sleep", ["sleep", "600"])
os.waitpid(child, 0)
"""


@pytest.mark.slow
def test_a_child_between_fork_and_exec_is_stopped_after_it_execs_and_prints_nothing():
    parent = subprocess.Popen([sys.executable, "-c", FORK_IN_A_HOOK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout.readline() == "forked\n"  # the child is in its at-fork hook now
        (child,) = psutil.Process(parent.pid).children()
        assert stop_descendants(parent.pid) >= 1
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        parent.wait(timeout=60)
        errors = parent.stderr.read()
        assert "Traceback" not in errors and "Exception ignored" not in errors, errors
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# The driver's own side of a stop during ray.init: after each fork Python runs the parent's at-fork hooks (logging's
# _releaseLock); a Ctrl-C whose KeyboardInterrupt is raised inside one is printed and dropped (CI of 2026-12-06:
# the sweep ran on). Here the hook sends the SIGINT itself and then runs bytecode, so the handler runs in the hook.
CTRL_C_IN_A_HOOK = """
import contextlib, os, signal, sys
from sslsearch.processes import ctrl_c_held
def hook():
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):
        pass
os.register_at_fork(after_in_parent=hook)
body = ctrl_c_held() if sys.argv[1] == "held" else contextlib.nullcontext()
try:
    with body:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        print("body ended", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("ran on", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("body", ["plain", "held"])
def test_a_ctrl_c_during_a_fork_is_held_until_ray_init_returns_not_lost(body):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_HOOK, body], capture_output=True, text=True, env=env,
                          timeout=60)
    if body == "plain":   # the hazard is real: the interrupt is printed as ignored and the program runs on
        assert (done.returncode, done.stdout) == (0, "body ended\nran on\n")
        assert "Exception ignored" in done.stderr and "KeyboardInterrupt" in done.stderr
    else:                 # ctrl_c_held (connect_ray's ray.init): raised once the body has returned, nothing printed
        assert (done.returncode, done.stdout, done.stderr) == (130, "body ended\ninterrupted\n", "")


def test_ctrl_c_held_raises_at_once_on_a_second_ctrl_c_and_puts_the_handlers_back():
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in `sslsearch sweep`, under reaping
    before_term = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c_held():
                signal.raise_signal(signal.SIGINT)      # held
                signal.raise_signal(signal.SIGTERM)     # the second: raised here, inside the body
                pytest.fail("the second Ctrl-C did not raise at once")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is _sigterm_as_ctrl_c
        with ctrl_c_held():                             # nothing sent: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, before_int)
        signal.signal(signal.SIGTERM, before_term)
