"""What `resume` is told: `--tracking-uri` reaches the live tracking callback (Ray restores it from tuner.pkl with the
URI it was pickled with), and an experiment or space file edited since the sweep started is named in one line with
the values that differ (the resumed sweep keeps its own). A real Tuner (synthetic trials), real MLflow (SQLite)."""

import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sslsearch.records.tracking import MlflowTracking
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import resume_sweep, run_sweep
from sslsearch.search.synthetic import synthetic_trainable

ROOT = Path(__file__).resolve().parent.parent
TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2", "scheduler.type=fifo",
        "search.sampler=random"]


@pytest.mark.slow
def test_resume_writes_where_it_is_told_and_names_edited_files(ray_session, tmp_path, capsys):
    for folder in ("experiments", "search_spaces"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    experiment_file = tmp_path / "experiments" / "digits.yaml"
    experiment = load_experiment(str(experiment_file), TINY)
    space = load_search_space(experiment.space_path())
    storage, name = str(tmp_path / "runs"), "moved"
    tracking = MlflowTracking(experiment, space, sweep=name, storage=storage)
    run_sweep(experiment, space, name=name, storage=storage, quiet=True,
              trainable=synthetic_trainable(), callbacks=[tracking])
    capsys.readouterr()

    text = experiment_file.read_text()
    epochs = re.search(r"^  epochs: (\d+)", text, re.M).group(1)   # digits.yaml's own value
    experiment_file.write_text(text.replace(f"epochs: {epochs}", "epochs: 40", 1))
    moved = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    summary = resume_sweep(name, storage, trainable=synthetic_trainable(), tracking_uri=moved)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "changed since sweep" in line]
    assert notes == [f"note: {experiment_file} changed since sweep moved started (pretrain.epochs {epochs} → 40); resume keeps "
                     "the values the sweep started with: start a new sweep to use the files' values"], err
    assert all(t.params for t in summary.trials) and {t.epoch for t in summary.trials} == {2}   # its own 2 epochs
    # The restored callback ended the sweep's parent run in the store it was told, not the one it was pickled with.
    client = MlflowClient(moved)
    parents = client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id],
                                 f"tags.`sslsearch.sweep` = '{name}' and tags.`sslsearch.role` = 'sweep'")
    assert [p.info.status for p in parents] == ["FINISHED"]
