"""A trial restored from an older checkpoint because the newest is broken says so on the driver's terminal, not only in
its worker's log (Ray runs with log_to_driver=False). A real sweep: the newest checkpoint is cut short, the worker
SIGKILLed, Ray retries the trial from it."""

import os
import signal
from pathlib import Path

import pytest
from ray import tune

from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import run_sweep

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=1", "search.paired=false", "scheduler.type=fifo"]


class BreakNewestAndKill(tune.Callback):
    """At the epoch-1 checkpoint: cut its last.pt short (as a full disk or a crash mid-write does), SIGKILL the worker."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result or {}
        if result.get("epoch") == 1 and not (self.folder / "broken").exists():
            model = Path(checkpoint.path) / "last.pt"
            model.write_bytes(model.read_bytes()[:200])
            (self.folder / "broken").write_text(str(model))
            os.kill(result["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_the_checkpoint_fallback_line_reaches_the_terminal(ray_session, tmp_path, capfd):
    experiment = load_experiment(None, TINY)
    space = load_search_space(experiment.space_path())
    summary = run_sweep(experiment, space, name="fb", storage=str(tmp_path / "runs"), quiet=True,
                        callbacks=[BreakNewestAndKill(tmp_path)])
    broken = (tmp_path / "broken").read_text()
    assert [t.outcome for t in summary.trials] == ["completed"]
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "is unreadable" in line]
    assert len(lines) == 1, err[-3000:]   # printed by the driver once (the worker's own print stays in its log)
    assert lines[0].startswith(f"sslsearch: checkpoint {broken} is unreadable (") and lines[0].endswith(
        "trying the previous one"), lines
