"""`sslsearch bench search`: the anytime arithmetic, the machinery on the synthetic problem, the CLI's quick mode."""

import json

import pytest

from sslsearch.bench.search import AnytimeRecorder, bench_search, epochs_to_reach, plot_anytime, summarize_methods
from sslsearch.cli import main
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space
from sslsearch.search.synthetic import synthetic_trainable


class _T:
    def __init__(self, trial_id, last=None):
        self.trial_id, self.last_result = trial_id, last


def test_the_anytime_curve_counts_every_trials_epochs_and_steps_at_finished_trials():
    r = AnytimeRecorder()
    a, b = _T("a"), _T("b")
    r.on_trial_result(0, [], a, {"epoch": 1})
    r.on_trial_result(0, [], b, {"epoch": 1})
    r.on_trial_result(0, [], a, {"epoch": 2})
    r.on_trial_complete(0, [], _T("a", {"epoch": 2, "val_acc": 80.0}))
    r.on_trial_result(0, [], b, {"epoch": 4})          # b trained 3 more epochs
    r.on_trial_complete(0, [], _T("b", {"epoch": 4, "val_acc": 70.0}))  # not better: no new point
    r.on_trial_result(0, [], _T("c"), {"epoch": 2})
    r.on_trial_complete(0, [], _T("c", {"epoch": 2, "val_acc": 90.0}))
    assert r.curve() == [(3, 80.0), (8, 90.0)]
    assert epochs_to_reach(r.curve(), 85.0) == 8 and epochs_to_reach(r.curve(), 95.0) is None


def test_in_a_paired_sweep_the_curve_does_not_depend_on_which_twin_finished_first():
    def curve(first, second):
        r = AnytimeRecorder(paired=True)
        for trial_id in ("a", "b"):
            r.on_trial_result(0, [], _T(trial_id), {"epoch": 4})
        for trial_id, value in (first, second):
            twin = _T(trial_id, {"epoch": 4, "val_acc": value})
            twin.config = {"pair": 0}
            r.on_trial_complete(0, [], twin)
        return r.curve()

    assert curve(("a", 80.0), ("b", 90.0)) == curve(("b", 90.0), ("a", 80.0)) == [(8, 90.0)]


def test_each_method_is_measured_against_the_same_seeds_baseline():
    runs = [{"method": "random+fifo", "seed": 0, "best": 90.0, "epochs": 100, "wall_s": 10, "curve": [(50, 85.0), (90, 90.0)]},
            {"method": "tpe+asha", "seed": 0, "best": 89.7, "epochs": 40, "wall_s": 5, "curve": [(20, 89.7)]},
            {"method": "random+fifo", "seed": 1, "best": 92.0, "epochs": 100, "wall_s": 10, "curve": [(100, 92.0)]},
            {"method": "tpe+asha", "seed": 1, "best": 90.0, "epochs": 40, "wall_s": 7, "curve": [(40, 90.0)]}]
    s = summarize_methods(runs, ("tpe+asha", "random+fifo"))
    assert s["tpe+asha"]["reached"] == "1/2" and s["tpe+asha"]["share_mean"] == pytest.approx(0.2)
    assert s["tpe+asha"]["best_mean"] == pytest.approx(89.85) and s["tpe+asha"]["epochs_mean"] == 40
    assert s["random+fifo"]["share_mean"] == pytest.approx((0.9 + 1.0) / 2)


@pytest.mark.slow
def test_four_methods_run_real_sweeps_on_the_synthetic_problem(ray_session, tmp_path):
    experiment = load_experiment(None, ["pretrain.epochs=4", "pretrain.eval_every=1", "scheduler.grace_period=1",
                                        "search.num_samples=4"])
    result = bench_search(experiment, load_search_space(experiment.space_path()), seeds=(0,), storage=str(tmp_path),
                          trainable=synthetic_trainable(), progress=lambda line: None)
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == {"tpe+asha", "random+asha", "random+fifo", "tpe+fifo"}
    assert runs["random+fifo"]["epochs"] == runs["tpe+fifo"]["epochs"] == 16   # 4 trials × 4 epochs
    assert runs["tpe+asha"]["epochs"] < 16 and runs["random+asha"]["epochs"] < 16  # ASHA stopped a pair
    for run in runs.values():
        assert run["curve"] and run["curve"][-1][1] == run["best"]
    assert plot_anytime(result, tmp_path / "any.png").stat().st_size > 10_000


@pytest.mark.slow
def test_quick_mode_runs_the_real_trials(ray_session, tmp_path, capsys):
    assert main(["bench", "search", "--quick", "--json", "--storage", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["runs"]] == ["tpe+asha", "random+asha", "random+fifo", "tpe+fifo"]
    assert all(r["best"] is not None and r["epochs"] >= 2 for r in result["runs"])


def test_unknown_methods_are_refused_in_one_line(capsys):
    assert main(["bench", "search", "--methods", "tpe+hyperband"]) == 2
    assert "unknown method(s) tpe+hyperband; choose from tpe+asha" in capsys.readouterr().err
