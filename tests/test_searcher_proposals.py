"""The configuration study (sslsearch.search.proposals) that SweepSearcher proposes from: startup counted in
configurations, paired proposals that are configurations, diverged trials kept out of TPE's good set, old
searcher pickles that still resume, and the sweep's own study still one Optuna trial per Ray trial."""

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.samplers import TPESampler

from sslsearch.search.proposals import CONFIGURATION, DEFAULT_PROPOSALS, ProposalSettings, startup_configurations
from sslsearch.search.space import load_search_space
from sslsearch.search.sweep import SweepSearcher

ROOT = Path(__file__).resolve().parent.parent
SPACE = load_search_space(ROOT / "search_spaces" / "barlow_hsic.yaml")
CHANCE = 10.0


def _searcher(num_samples, paired=True, proposals=DEFAULT_PROPOSALS, sampler="tpe", max_epochs=4):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return SweepSearcher(SPACE, max_epochs=max_epochs, sampler=sampler, seed=0, paired=paired, study_name="t",
                         study_path=None, num_samples=num_samples, proposals=proposals)


def _finish(searcher, trial_id, epochs, value, diverged=False):
    for epoch in range(epochs):
        searcher.on_trial_result(trial_id, {"epoch": epoch, "val_acc": value - epochs + epoch})
    last = {"epoch": epochs, "val_acc": CHANCE if diverged else value, **({"diverged": True} if diverged else {})}
    searcher.on_trial_complete(trial_id, result=last)


@pytest.mark.parametrize("num_samples, paired, startup", [(16, True, 2), (32, False, 8), (80, False, 10), (4, True, 2)])
def test_startup_is_counted_in_configurations_proposed_and_scaled_to_the_sweep(monkeypatch, num_samples, paired, startup):
    """TPE proposes from configuration `startup` on, although nothing has finished (Optuna's n_startup_trials counts
    finished trials: it would sample at random until 10 had)."""
    assert startup_configurations(num_samples // 2 if paired else num_samples) == startup
    searcher = _searcher(num_samples, paired)
    asked = []   # the configuration being proposed, each time TPE samples (jointly, or a parameter alone)
    for method in ("sample_relative", "sample_independent"):
        original = getattr(TPESampler, method)
        monkeypatch.setattr(TPESampler, method, lambda self, study, trial, space, *a, original=original: asked.append(
            searcher._configurations.configurations) or original(self, study, trial, space, *a))
    proposed = [searcher.suggest(f"t{i}") for i in range(num_samples + (2 if paired else 1))]
    configurations = num_samples // 2 + 1 if paired else num_samples + 1
    assert sorted(set(asked)) == list(range(startup, configurations))
    assert all(p is not None for p in proposed)


def test_paired_proposals_are_configurations_whose_first_twin_alternates_loss():
    searcher = _searcher(8)
    configs = [searcher.suggest(f"t{i}") for i in range(8)]
    for a, b in zip(configs[::2], configs[1::2]):
        assert {k: v for k, v in a.items() if k != "loss"} == {k: v for k, v in b.items() if k != "loss"}
        assert {a["loss"], b["loss"]} == {"barlow", "hsic"}
    assert [c["loss"] for c in configs[::2]] == ["barlow", "hsic", "barlow", "hsic"]
    study = searcher._configurations.study
    assert all("loss" not in t.params for t in study.trials)   # TPE does not model the loss of a paired sweep
    assert [t.user_attrs[CONFIGURATION] for t in study.trials] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("twins, told", [("each", [70.0, 80.0]), ("max", [80.0]), ("mean", [75.0])])
def test_each_twin_tells_its_own_value_or_the_pair_its_max_or_mean(twins, told):
    searcher = _searcher(4, proposals=ProposalSettings(twins=twins))
    searcher.suggest("a"), searcher.suggest("b")
    _finish(searcher, "a", 4, 70.0)
    # a pair is told once both twins have ended
    assert [t.value for t in searcher._configurations.study.trials if t.value is not None] == ([70.0] if twins == "each" else [])
    _finish(searcher, "b", 4, 80.0)
    assert [t.value for t in searcher._configurations.study.trials] == told


def test_a_diverged_trial_never_enters_tpes_good_set(monkeypatch):
    """Unpaired, 12 configurations: startup 3. Two trials diverge (COMPLETE at chance), one is stopped early (PRUNED):
    Optuna ranks COMPLETE before PRUNED, so without the constraint a diverged trial would be TPE's good set."""
    below = []
    original = TPESampler._build_parzen_estimator

    def spy(self, study, search_space, trials, handle_below=True):
        if handle_below:
            below.append([(t.state.name, t.value) for t in trials])
        return original(self, study, search_space, trials, handle_below)

    monkeypatch.setattr(TPESampler, "_build_parzen_estimator", spy)
    searcher = _searcher(12, paired=False)
    for i in range(3):
        searcher.suggest(f"t{i}")
    _finish(searcher, "t0", 1, CHANCE, diverged=True)
    _finish(searcher, "t1", 1, CHANCE, diverged=True)
    searcher.suggest("t3")   # the model's good set could hold only diverged trials: it stays random
    assert below == []
    _finish(searcher, "t2", 1, 60.0)   # stopped early at epoch 1 of 4
    searcher.suggest("t4")
    assert below and all(good == [("PRUNED", 60.0)] for good in below), below   # one per parameter TPE samples
    assert [t.state.name for t in searcher.study.trials[:3]] == ["COMPLETE", "COMPLETE", "PRUNED"]   # the sweep's study
    assert [t.value for t in searcher.study.trials[:2]] == [CHANCE, CHANCE]


def test_a_searcher_pickled_before_the_configuration_study_resumes_mid_pair():
    """A sweep started before issue 19 pickled a searcher without `_configurations`: it resumes on its own study,
    and the partner it owed is proposed next."""
    searcher = _searcher(8, proposals=None)
    first = searcher.suggest("t0")
    state = dict(searcher.__dict__)
    assert "_configurations" not in state
    old = SweepSearcher.__new__(SweepSearcher)
    old.__dict__.update(pickle.loads(pickle.dumps(state)))
    twin = old.suggest("t1")
    assert {k: v for k, v in twin.items() if k != "loss"} == {k: v for k, v in first.items() if k != "loss"}
    assert twin["loss"] != first["loss"]
    _finish(old, "t0", 4, 70.0)
    _finish(old, "t1", 2, 60.0)
    assert [t.state.name for t in old.study.trials] == ["COMPLETE", "PRUNED"]
    assert old.suggest("t2")["pair"] == 1


def test_the_sweeps_study_keeps_one_trial_per_ray_trial_with_every_report():
    searcher = _searcher(6)
    restored = None
    for i in range(6):
        searcher.suggest(f"t{i}")
        if i == 3:   # Ray pickles the searcher into its experiment state: the configuration study travels with it
            restored = pickle.loads(pickle.dumps(searcher))
    for s in (searcher, restored):
        for i in range(4):
            _finish(s, f"t{i}", 4 if i < 2 else 2, 70.0 + i)
    trials = searcher.study.trials
    assert [t.user_attrs["ray_trial_id"] for t in trials] == [f"t{i}" for i in range(6)]
    assert [t.user_attrs["pair"] for t in trials] == [0, 0, 1, 1, 2, 2]
    assert all("loss" in t.params for t in trials)
    assert trials[2].intermediate_values == {0: 70.0, 1: 71.0, 2: 72.0} and trials[2].state.name == "PRUNED"
    assert [t.params for t in restored.study.trials[:4]] == [t.params for t in trials[:4]]
    assert restored.suggest("t4")["loss"] == searcher.study.trials[4].params["loss"]


def test_gp_proposes_from_the_configuration_study_with_a_diverged_trial_among_the_finished():
    """GPSampler wants the same constraint names on every finished trial: every one carries `diverged`."""
    searcher = _searcher(4, paired=False, sampler="gp")
    for i in range(3):
        searcher.suggest(f"t{i}")
    _finish(searcher, "t0", 4, 60.0)
    _finish(searcher, "t1", 1, CHANCE, diverged=True)
    assert searcher.suggest("t3")["lr"] > 0
    assert [t.constraints for t in searcher.configuration_study.trials[:2]] == [{"diverged": 0.0}, {"diverged": 1.0}]
