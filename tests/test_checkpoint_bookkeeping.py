"""Ray's list of a trial's kept checkpoints can name a folder that is gone (after a hard kill, Ray's saved state lists
a checkpoint Ray deleted after that save). Registering the next checkpoint then deletes it again and Ray logs a
1.8 kB "Error handling checkpoint" ERROR; the sweep forgets such folders first. A real Tuner, synthetic trials."""

import logging
import shutil
from pathlib import Path

import pytest
from ray import tune

from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep
from sslsearch.search.synthetic import synthetic_trainable

TINY = ["pretrain.epochs=4", "pretrain.eval_every=1", "search.num_samples=1", "search.paired=false",
        "scheduler.type=fifo",
        "search.sampler=random"]


class RemoveOlderCheckpoints(tune.Callback):
    """At each report, removes the trial's checkpoint folders but the newest, as a hard kill leaves them: gone from
    storage while Ray's list still names them (Ray registers this report's checkpoint after the callbacks saw it)."""

    def __init__(self):
        self.removed = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        folders = sorted(Path(trial.storage.trial_fs_path).glob("checkpoint_*"))
        for folder in folders[:-1]:
            shutil.rmtree(folder)
            self.removed += 1


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_a_checkpoint_already_gone_is_forgotten_without_an_error(ray_session, tmp_path):
    experiment = load_experiment(None, TINY)
    space = load_search_space(experiment.space_path())
    collect, remover = Collect(), RemoveOlderCheckpoints()
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    logger.addHandler(collect)
    try:
        summary = run_sweep(experiment, space, name="gone", storage=str(tmp_path), quiet=True,
                            trainable=synthetic_trainable(), callbacks=[remover])
    finally:
        logger.removeHandler(collect)
    assert [t.outcome for t in summary.trials] == ["completed"]
    assert remover.removed >= 2   # Ray's num_to_keep=2 would have deleted one of them again at a later report
    assert not [m for m in collect.messages if "Error handling checkpoint" in m], collect.messages
    trial = tune.ExperimentAnalysis(summary.path).trials[0]
    assert all(Path(r.checkpoint.path).is_dir() for r in trial.run_metadata.checkpoint_manager._checkpoint_results)
