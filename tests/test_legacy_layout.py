"""A sweep started with the flat layout (before the folder move) resumes with today's code.

Ray pickles the sweep's objects by module path: `tuner.pkl` and the searcher's state name
`sslsearch.asha.PairedASHA`, `sslsearch.search.SweepSearcher`, ... (sslsearch.legacy_paths). This test
runs the last flat-layout commit's own code from `git archive`, SIGKILLs its driver mid-sweep, and
resumes the sweep with the code of this tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslsearch.search.experiment import load_experiment
from sslsearch.search.sweep import resume_sweep
from sslsearch.search.synthetic import SyntheticSettings, synthetic_trainable

ROOT = Path(__file__).resolve().parent.parent
FLAT_LAYOUT_COMMIT = "3366b9e"   # the last commit of the flat layout (sslsearch/*.py)
OVERRIDES = ["pretrain.epochs=6", "pretrain.eval_every=1", "search.num_samples=6", "scheduler.grace_period=1",
             "scheduler.reduction_factor=2", "search.sampler=random"]


def _old_tree(tmp_path: Path) -> Path:
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{FLAT_LAYOUT_COMMIT}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"this checkout lacks commit {FLAT_LAYOUT_COMMIT} (a shallow clone?)")
    tree = tmp_path / "flat"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", FLAT_LAYOUT_COMMIT, "sslsearch", "search_spaces",
                              "experiments"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _killed_whole(driver: subprocess.Popen, sweep_dir: Path) -> bool:
    """SIGKILL the driver's group at a moment its saved state is whole: stop it (SIGSTOP), check Ray's newest state
    files are complete, then kill; else let it go on (False). A kill that lands while Ray rewrites its state in place
    leaves it cut short (the fresh-clone CI of 2026-12-07 read an empty experiment state here); that case is
    `recover_saved_state`'s, tested in test_faults, not this test's."""
    from sslsearch.search.folder import RAY_EXPERIMENT_STATE
    from sslsearch.search.saved_state import _complete, newest_state_files

    os.killpg(driver.pid, signal.SIGSTOP)
    newest = newest_state_files(sweep_dir)
    if RAY_EXPERIMENT_STATE in newest and all(_complete(pattern, path.read_bytes()) for pattern, path in newest.items()):
        os.killpg(driver.pid, signal.SIGKILL)
        return True
    os.killpg(driver.pid, signal.SIGCONT)
    return False


@pytest.mark.slow
def test_a_sweep_interrupted_with_the_flat_layout_resumes_with_this_one(ray_session, tmp_path):
    from local_processes import kill_processes_mentioning
    from test_sweep import _private_ray_env

    tree = _old_tree(tmp_path)
    env, marker = _private_ray_env(tmp_path)
    env["PYTHONPATH"] = str(tree)
    script = ("from sslsearch.config import load_experiment; from sslsearch.space import load_search_space; "
              "from sslsearch.search import run_sweep; from sslsearch.synthetic import synthetic_trial; "
              f"e = load_experiment(None, {OVERRIDES!r}); "
              f"run_sweep(e, load_search_space(e.space_path()), name='flat', storage={str(tmp_path / 's')!r}, "
              "quiet=True, trainable=synthetic_trial, synthetic={'epoch_seconds': 0.3})")
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True, cwd=tree,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sweep_dir, deadline = tmp_path / "s" / "flat", time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill once some trials reported and Ray saved its state: mid-sweep
            time.sleep(0.5)
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            reports = [len(p.read_text().splitlines()) for p in sweep_dir.glob("trial_*/result.json")]
            if sum(reports) >= 6 and list(sweep_dir.glob("searcher-state-*.pkl")) and _killed_whole(driver, sweep_dir):
                break
        else:
            pytest.fail("the flat-layout sweep never got going")
        driver.wait()
    finally:
        kill_processes_mentioning(marker)

    # The saved state really names the old paths, so the resume below goes through the aliases.
    saved = b"".join(p.read_bytes() for p in [sweep_dir / "tuner.pkl", *sweep_dir.glob("searcher-state-*.pkl")])
    assert b"sslsearch.asha" in saved and b"sslsearch.search" in saved and b"sslsearch.search.asha" not in saved
    state = json.loads(max(sweep_dir.glob("experiment_state-*.json")).read_text())
    assert state["trial_data"], "Ray saved no trials before the kill"

    # (The flat layout's synthetic trial took its settings from the trial config; today's takes them as a parameter.)
    resumed = resume_sweep("flat", str(tmp_path / "s"), trainable=synthetic_trainable(SyntheticSettings(epoch_seconds=0.3)))
    planned = load_experiment(None, OVERRIDES).search.num_samples   # trials (a pair is two of them)
    assert len(resumed.trials) == planned
    assert {t.outcome for t in resumed.trials} <= {"completed", "stopped early"}
    assert len({(t.pair, t.loss) for t in resumed.trials}) == planned
