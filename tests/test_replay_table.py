"""The replay table's builder takes its setting from the experiment file the sweep runs. No training here."""

import json

import numpy as np
import pytest

from sslsearch.bench.replay_table import experiment_setting, load_table
from sslsearch.errors import InputError
from sslsearch.search.experiment import load_experiment


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


def test_a_table_of_the_old_format_says_rebuild(tmp_path):
    np.savez(tmp_path / "old.npz", val_acc=np.zeros(1), meta=np.asarray(json.dumps({"format": 1})))
    with pytest.raises(InputError, match="format 1, expected 2; rebuild it"):
        load_table(tmp_path / "old.npz")
