"""The replay benchmark drives the sweep's own SweepSearcher and PairedASHA over the shipped table of real
learning curves, and a real Tuner over the same table makes the same decisions."""

import math

import optuna
import pytest

from sslsearch.bench.replay import (
    DEFAULT_TABLE,
    METHODS,
    REFERENCE,
    Table,
    bench_replay,
    format_replay,
    replay_sweep,
    replay_trainable,
)
from sslsearch.errors import InputError
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space, parse_search_space

TABLE = Table(DEFAULT_TABLE)


def _experiment(*overrides):
    """experiments/digits.yaml with the table's settings."""
    return load_experiment(None, [*TABLE.overrides(), *overrides])


def _space(experiment):
    return load_search_space(experiment.space_path())


def test_a_replayed_paired_sweep_is_deterministic_and_stops_twins_together():
    experiment = _experiment()
    run = replay_sweep(TABLE, experiment, _space(experiment), METHODS["tpe+asha"], seed=3)
    again = replay_sweep(TABLE, experiment, _space(experiment), METHODS["tpe+asha"], seed=3)
    assert run.decisions == again.decisions and run.params == again.params
    assert len(run.params) == experiment.search.num_samples
    for first, second in zip(run.params[::2], run.params[1::2]):   # twins: one configuration, both losses, one seed
        assert {k: v for k, v in first.items() if k != "loss"} == {k: v for k, v in second.items() if k != "loss"}
        assert {first["loss"], second["loss"]} == {"barlow", "hsic"}
    assert run.last_epochs[::2] == run.last_epochs[1::2], "a pair was not stopped as one unit"
    assert min(run.last_epochs) < experiment.pretrain.epochs, "ASHA stopped nothing: the test shows nothing"


def test_fifo_trains_every_trial_to_its_budget_and_asha_spends_less():
    experiment = _experiment()
    fifo = replay_sweep(TABLE, experiment, _space(experiment), METHODS["random+fifo"], seed=0)
    asha = replay_sweep(TABLE, experiment, _space(experiment), METHODS["random+asha"], seed=0)
    assert fifo.params == asha.params   # one sampler seed: the same configurations, only the budgets differ
    assert fifo.epochs == experiment.search.num_samples * experiment.pretrain.epochs
    assert asha.epochs < fifo.epochs


def test_the_regret_is_the_tables_best_minus_the_true_mean_of_the_sweeps_pick():
    experiment = _experiment("search.paired=false", "scheduler.type=fifo")
    run = replay_sweep(TABLE, experiment, _space(experiment), METHODS["random+fifo"], seed=1)
    finals = [TABLE.reports(p, experiment.pretrain.epochs)[-1]["val_acc"] for p in run.params]
    pick = max(range(len(finals)), key=finals.__getitem__)   # the summary's ranking: the best final report
    c, loss = TABLE.lookup(run.params[pick]), TABLE.losses.index(run.params[pick]["loss"])
    assert run.curve[-1][1] == pytest.approx(TABLE.best - TABLE.true_mean[c, loss])
    assert all(regret >= 0 for _, regret in run.curve)


def test_bench_replay_reports_intervals_and_the_paired_difference_to_the_reference():
    experiment = _experiment()
    result = bench_replay(experiment, _space(experiment), methods=(METHODS[REFERENCE], METHODS["tpe+asha"]), seeds=4)
    reference, tpe = result["methods"][REFERENCE], result["methods"]["tpe+asha"]
    measured = [d for d in reference["difference_to_reference"] if not math.isnan(d[0])]   # (nan: no pick yet)
    assert measured and all(d == (0.0, 0.0, 0.0) for d in measured)   # paired with itself
    mean, low, high = tpe["regret"][-1]
    assert low <= mean <= high and tpe["epochs_spent"][0] < reference["epochs_spent"][0]
    text = format_replay(result)   # a median seed that never got there reads "never", not "inf"; no "nan%"
    assert "inf" not in text and "nan" not in text
    for name, m in result["methods"].items():
        when = "never" if math.isinf(m["epochs_to_tolerance_median"]) else f"after {m['epochs_to_tolerance_median']:.0f}"
        assert f"within 0.5 of the best: {when}" in text and f"{m['reached_tolerance']}/4 seeds got there" in text


def test_an_experiment_the_table_did_not_record_is_refused_in_one_line():
    with pytest.raises(InputError, match="was recorded with val_fraction") as refused:
        TABLE.check(_experiment("pretrain.val_fraction=0.3"))
    assert "\n" not in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tpe+asha"])   # 12 configurations: TPE proposes the last nine (startup 3)
def test_a_real_tuner_over_the_table_makes_the_same_decisions(ray_session, tmp_path, method):
    """One trial at a time (unpaired), so Ray's order of events is fixed: every configuration TPE proposes and
    every epoch ASHA stops a trial at must be the replay's."""
    from sslsearch.search.sweep import run_sweep

    sampler, scheduler = METHODS[method].sampler, METHODS[method].scheduler
    for seed in (0, 1):
        experiment = _experiment("search.paired=false", "search.max_concurrent=1", "search.num_samples=12",
                                 f"search.seed={seed}", f"search.sampler={sampler}", f"scheduler.type={scheduler}")
        summary = run_sweep(experiment, _space(experiment), name=f"x{seed}", storage=str(tmp_path), quiet=True,
                            trainable=replay_trainable(DEFAULT_TABLE))
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(summary.study_path))
        study = optuna.load_study(study_name=f"x{seed}", storage=storage)
        real = sorted(study.trials, key=lambda t: t.number)
        replayed = replay_sweep(TABLE, experiment, _space(experiment), METHODS[method], seed)
        assert [t.params for t in real] == [{k: p[k] for k in ("lmbda", "lr", "feature_dim", "loss")}
                                            for p in replayed.params]
        assert [max(t.intermediate_values) for t in real] == replayed.last_epochs
        assert [t.state for t in real] == [optuna.trial.TrialState.COMPLETE if e == experiment.pretrain.epochs
                                           else optuna.trial.TrialState.PRUNED for e in replayed.last_epochs]


def test_the_table_records_the_embedded_default_sweep_and_refuses_another_space_in_one_line():
    experiment = load_experiment(None)   # experiments/digits.yaml as it stands: no overrides needed
    TABLE.check(experiment)
    TABLE.check_space(_space(experiment))
    narrower = parse_search_space({**TABLE.meta["space"], "lmbda": {"distribution": "loguniform", "low": 1e-3, "high": 0.1}})
    with pytest.raises(InputError, match=r"recorded over another search space: lmbda: loguniform \[0.0001, 0.1\] "
                                         r"\(replay: loguniform \[0.001, 0.1\]\)") as refused:
        TABLE.check_space(narrower)
    assert "\n" not in str(refused.value)
    with pytest.raises(InputError, match="was recorded with batch_size 128 \\(experiment: 64\\)"):
        TABLE.check(load_experiment(None, ["pretrain.batch_size=64"]))
