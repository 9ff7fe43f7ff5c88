"""The replay table's builder takes its setting from the experiment file the sweep runs, and `--resume` continues a
table built with that setting (its `done` mask) and refuses any other. No training here (the tables are written by
hand, as the builder writes them), except in the slow test of a build stopped by SIGTERM or Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from sslsearch.bench.replay_table import (
    _empty_table,
    experiment_setting,
    load_table,
    main,
    remaining_tasks,
    report_epochs,
    sobol_design,
    write_table,
)
from sslsearch.errors import InputError
from sslsearch.search.experiment import load_experiment


def _write(path, setting, *, configs=2, seeds=2, done=()):
    """A table of `setting` with the runs `done` (configuration, loss, seed) recorded, as build_table writes one."""
    table = _empty_table(sobol_design(setting, configs, 0), setting.losses, seeds,
                         report_epochs(setting.base["epochs"], setting.base["eval_every"]))
    for at in done:
        table["val_acc"][at] = 50.0
        table["done"][at] = True
    meta = {"format": 2, "experiment": setting.experiment, "base": setting.base, "space": setting.space,
            "design_seed": 0, "chance_val_acc": 10.0, "wall_seconds": 1.0, "sessions": []}
    write_table(table, meta, path)


def test_the_setting_is_the_embedded_sweeps_own():
    setting, experiment = experiment_setting(), load_experiment(None)
    assert setting.experiment == "experiments/digits.yaml"
    assert {k: setting.base[k] for k in ("val_fraction", "epochs", "eval_every", "batch_size", "optimizer")} == {
        k: getattr(experiment.pretrain, k) for k in ("val_fraction", "epochs", "eval_every", "batch_size", "optimizer")}
    assert set(setting.space) == {"lmbda", "lr", "feature_dim", "loss"} and "seed" not in setting.base


def test_a_space_the_design_cannot_cover_is_refused(tmp_path):
    (tmp_path / "space.yaml").write_text("lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    (tmp_path / "e.yaml").write_text("pretrain: {dataset: digits, epochs: 4, eval_every: 2}\nsearch: {space: space.yaml}\n")
    with pytest.raises(InputError, match="the replay design covers a space of exactly"):
        experiment_setting(tmp_path / "e.yaml")


def test_resume_lists_only_the_runs_the_table_lacks_configuration_major(tmp_path):
    setting = experiment_setting()
    _write(tmp_path / "t.npz", setting, done=[(0, 0, 0), (0, 1, 1), (1, 0, 0)])
    table, _ = load_table(tmp_path / "t.npz")
    assert [t[:3] for t in remaining_tasks(table)] == [(0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (1, 1, 1)]
    _, _, _, loss, lmbda, lr, feature_dim = remaining_tasks(table)[0]
    assert loss == setting.losses[1] and (lmbda, lr, feature_dim) == (table["lmbda"][0], table["lr"][0], table["feature_dim"][0])


def test_resume_of_a_complete_table_trains_nothing_and_keeps_every_run(tmp_path, capsys):
    setting = experiment_setting()
    everything = [(c, k, s) for c in range(2) for k in range(2) for s in range(2)]
    _write(tmp_path / "t.npz", setting, done=everything)
    assert main(["--out", str(tmp_path / "t.npz"), "--configs", "2", "--seeds", "2", "--workers", "1", "--resume"]) == 0
    table, meta = load_table(tmp_path / "t.npz")
    assert table["done"].all() and np.all(table["val_acc"][..., 0] == 50.0) and meta["complete"]
    assert "--resume" in meta["sessions"][-1]["command"] and "8/8 runs" in capsys.readouterr().out


@pytest.mark.parametrize("argv, differs", [
    (["--epochs", "6"], "epochs 6 (table: 4)"),
    (["--seeds", "3"], "configs × losses × seeds 2 × 2 × 3 (table: 2 × 2 × 2)"),
    (["--design-seed", "1"], "design seed 1 (table: 0)"),
])
def test_resume_refuses_a_table_built_with_other_settings_in_one_line(tmp_path, capsys, argv, differs):
    _write(tmp_path / "t.npz", experiment_setting(epochs=4))
    before = (tmp_path / "t.npz").read_bytes()
    args = {"--configs": "2", "--seeds": "2", **dict(zip(argv[::2], argv[1::2]))}
    assert main(["--out", str(tmp_path / "t.npz"), "--resume", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was built with other settings" in err and differs in err
    assert (tmp_path / "t.npz").read_bytes() == before


def test_resume_without_a_table_is_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "none.npz"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_table_of_the_old_format_says_rebuild(tmp_path):
    np.savez(tmp_path / "old.npz", val_acc=np.zeros(1), meta=np.asarray(json.dumps({"format": 1})))
    with pytest.raises(InputError, match="format 1, expected 2; rebuild it"):
        load_table(tmp_path / "old.npz")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM to the driver", "Ctrl-C to the group"])
def test_a_build_stopped_keeps_its_finished_runs_and_leaves_no_worker(tmp_path, stop):
    """`pkill -f ...replay_table` (SIGTERM to the driver alone) used to kill the driver at once and leave its spawned
    workers (~950 MB each) running, idle, as orphans. Now both stops write the finished runs and end the workers; the
    workers ignore the terminal's Ctrl-C (it reaches the whole group), which is the driver's to handle."""
    out = tmp_path / "t.npz"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    # 16 × 2 × 4 = 128 runs of 2 epochs: minutes on two workers, so the build is still going when it is stopped.
    command = [sys.executable, "-m", "sslsearch.bench.replay_table", "--out", str(out), "--configs", "16", "--seeds", "4",
               "--workers", "2", "--epochs", "2"]
    build = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        # Stopped once the table was first written (15 s in): the driver is in its loop, past the moment its workers
        # start with Ctrl-C ignored (a Ctrl-C within those milliseconds would be lost, and this test with it).
        driver, deadline = psutil.Process(build.pid), time.monotonic() + 240
        while not out.exists():
            assert build.poll() is None and time.monotonic() < deadline, build.communicate()
            time.sleep(0.2)
        workers = driver.children(recursive=True)
        assert sum("spawn_main" in " ".join(p.cmdline()) for p in workers) == 2
        written = int(load_table(out)[0]["done"].sum())
        if stop.startswith("SIGTERM"):
            build.send_signal(signal.SIGTERM)
        else:
            os.killpg(build.pid, signal.SIGINT)
        _, err = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
    assert build.returncode == 130 and "Traceback" not in err, err
    table, _ = load_table(out)
    done = int(table["done"].sum())
    assert written <= done < table["done"].size
    assert err.strip().splitlines()[-1] == (f"interrupted: {out} holds {done}/128 runs; continue with the same command "
                                            "and --resume")
    assert not list(tmp_path.glob("*.tmp*"))
    deadline = time.monotonic() + 30   # (multiprocessing's resource tracker ends once it reads the driver's EOF)
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.pid for p in workers if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie; is_running() also tells a reused pid apart (psutil compares the start time)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
