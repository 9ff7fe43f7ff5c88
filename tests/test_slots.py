"""Slot utilisation from Ray's trial events: a trial is busy from its (re)start to its last report before it
pauses or ends; wall runs from the first start to the last end."""

import sys
from pathlib import Path

import pytest

from sslsearch.search import slots
from sslsearch.search.slots import SlotUse


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_a_paused_twin_is_idle_from_its_pause_to_its_restart(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(slots.time, "monotonic", lambda: clock[0])
    use = SlotUse()
    a, b = _Trial("a"), _Trial("b")

    def at(t, event, trial=None):
        clock[0] = t
        {"start": lambda: use.on_trial_start(0, [], trial), "report": lambda: use.on_trial_result(0, [], trial, {}),
         "complete": lambda: use.on_trial_complete(0, [], trial), "end": lambda: use.on_experiment_end([])}[event]()

    at(1, "start", a)
    at(1, "start", b)
    at(3, "report", a)      # a pauses at its rung after this report
    at(5, "report", b)
    at(6, "start", a)       # a resumes: its pause (3 to 6) was idle
    at(9, "report", a)
    at(9, "complete", a)
    at(9, "report", b)
    at(10, "complete", b)   # ended right after its last report, at 9
    at(12, "end")
    assert use.busy == pytest.approx((3 - 1) + (9 - 6) + (9 - 1))
    assert use.utilization(2) == pytest.approx(13 / (2 * (9 - 1)))
    assert use.startup_seconds == pytest.approx(1.0)


def test_no_trial_no_figure():
    assert SlotUse().utilization(2) is None


def _nothing(config):
    """A trainable Ray registers (the search below never runs it)."""


class _Scheduler:
    """What TwinAwareSearch asks of PairedASHA."""

    def __init__(self):
        self.later = False

    def needs_actor_later(self):
        return self.later


def test_the_search_stays_open_while_a_twin_will_need_an_actor_and_creates_no_trial_beyond_num_samples():
    from ray.tune.search import Searcher

    from sslsearch.search.asha import TwinAwareSearch

    class Proposals(Searcher):
        def __init__(self):
            super().__init__(metric="val_acc", mode="max")
            self.asked = 0

        def suggest(self, trial_id):
            self.asked += 1
            return {"x": self.asked}

    proposals, scheduler = Proposals(), _Scheduler()
    search = TwinAwareSearch(proposals, scheduler)
    search.add_configurations({"sweep": {"run": _nothing, "num_samples": 2, "config": {}}})
    assert search.next_trial() is not None and search.next_trial() is not None
    scheduler.later = True                  # a twin waits at its rung: Ray must keep its actor
    assert not search.is_finished()
    assert search.next_trial() is None and proposals.asked == 2   # but no third trial is proposed
    scheduler.later = False
    assert search.is_finished()


def _pid_recording_trial(config, *, settings, payload, folder):
    import os
    import time
    from pathlib import Path

    from ray import tune

    from sslsearch.search.synthetic import synthetic_trial

    trial = f"{config['pair']}-{config['loss']}"
    with open(Path(folder, "starts"), "a") as starts:   # a line per (re)start: trial and worker process, in order
        starts.write(f"{trial} {os.getpid()}\n")
    if tune.get_checkpoint() is None:   # both twins start training together, each on its own actor
        Path(folder, f"up-{trial}").touch()
        deadline = time.monotonic() + 120
        while len(list(Path(folder).glob("up-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    synthetic_trial(config, settings=settings, payload=payload)


@pytest.mark.slow
def test_a_released_twin_resumes_on_the_actor_kept_for_it(ray_session, tmp_path):
    """Two slots, one pair, rungs at epochs 1 and 2: at each rung the twin that gets there first pauses, after the
    search has made its last trial, and resumes when its partner gets there. Ray stops the actor of a trial that
    pauses once the search is finished, unless the search says a trial still needs one (TwinAwareSearch): then
    each twin resumes in the process it paused in. (Without it, the first twin to pause loses its process.)"""
    import ray.cloudpickle
    from ray import tune

    from sslsearch.search.experiment import load_experiment
    from sslsearch.search.space import load_search_space
    from sslsearch.search.sweep import run_sweep
    from sslsearch.search.synthetic import SyntheticSettings, checkpoint_payload

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray's workers cannot import this module
    experiment = load_experiment(None, ["pretrain.epochs=4", "pretrain.eval_every=1", "search.num_samples=2",
                                        "search.paired=true", "search.max_concurrent=2", "scheduler.type=asha",
                                        "scheduler.grace_period=1", "scheduler.reduction_factor=2"])
    folder = tmp_path / "pids"
    folder.mkdir()
    settings = SyntheticSettings(epoch_seconds=0.2)
    trainable = tune.with_parameters(_pid_recording_trial, settings=settings,
                                     payload=checkpoint_payload(settings.checkpoint_bytes), folder=str(folder))
    summary = run_sweep(experiment, load_search_space(experiment.space_path()), name="reuse",
                        storage=str(tmp_path / "runs"), quiet=True, trainable=trainable)
    assert [t.outcome for t in summary.trials] == ["completed", "completed"]
    starts = [line.split() for line in (folder / "starts").read_text().splitlines()]
    assert len(starts) == 4, starts   # each twin started, paused at a rung (one of them at each), resumed
    last = {}
    for trial, process in starts:   # each resume runs in the process its trial paused in
        assert last.setdefault(trial, process) == process, starts


class _Controller:
    """What PairedASHA reads of Ray's TuneController: the trials, in the order Ray added them."""

    def __init__(self):
        self.trials = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.set_status("TERMINATED")


class _Sweep:
    """SweepSearcher and PairedASHA over two slots, driven as Ray drives them (ask the searcher, then the
    scheduler's choice), up to the moment the slot question arises: pair 1's first twin trains, pair 0's first
    twin was released at its rung (promoted) while its partner trained on, and that partner has just ended."""

    def __init__(self, no_limit: bool = False):
        import optuna
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import TrialScheduler

        from sslsearch.search.asha import PairedASHA
        from sslsearch.search.space import load_search_space
        from sslsearch.search.sweep import SweepSearcher

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.asha = PairedASHA(metric="val_acc", max_epochs=4, eval_every=2, grace_period=2, reduction_factor=2,
                               paired=True)
        space = load_search_space(Path(__file__).resolve().parent.parent / "search_spaces" / "barlow_hsic.yaml")
        self.searcher = SweepSearcher(space, max_epochs=4, sampler="random", seed=0, paired=True, study_name="slots",
                                      study_path=None, scheduler=self.asha, num_samples=8)
        self.searcher.set_max_concurrency(2)
        assert self.asha.slots == 2
        if no_limit:
            del self.asha.slots            # the class default: no limit
        self.controller = _Controller()
        a0, b0 = self.new("a0"), self.new("b0")
        self.start(a0), self.start(b0)
        assert self.new("x") is None                                     # two slots taken
        assert self.report(a0, 2, 90.0) == TrialScheduler.PAUSE          # a0 waits at its rung: its slot is free
        a0.set_status(Trial.PAUSED)
        a1 = self.new("a1")
        self.start(a1)
        assert self.report(b0, 2, 80.0) == TrialScheduler.CONTINUE       # pair 0 promoted: a0 released
        assert self.asha.resumable() == 1 and self.searcher.slots_taken() == 3
        self.report(b0, 4, 85.0)
        self.asha.on_trial_complete(self.controller, b0, None)
        self.searcher.on_trial_complete("b0", {"epoch": 4, "val_acc": 85.0})
        b0.set_status(Trial.TERMINATED)
        self.a0, self.a1 = a0, a1

    def new(self, trial_id):
        from ray.tune.experiment import Trial

        config = self.searcher.suggest(trial_id)
        if config is None:
            return None
        trial = Trial("t", config=config, trial_id=trial_id, stub=True)
        self.controller.trials.append(trial)
        self.asha.on_trial_add(self.controller, trial)
        return trial

    def report(self, trial, epoch, value):
        result = {"epoch": epoch, "val_acc": value}
        decision = self.asha.on_trial_result(self.controller, trial, result)
        self.searcher.on_trial_result(trial.trial_id, result)
        return decision

    def start(self, trial):
        from ray.tune.experiment import Trial

        assert self.asha.choose_trial_to_run(self.controller) is trial
        trial.set_status(Trial.RUNNING)


def test_a_pairs_second_twin_takes_the_free_slot_before_a_released_twin_resumes():
    """The free slot goes to pair 1's second twin (created beyond max_concurrent only because the released twin
    holds that slot), so pair 1's twins train side by side; the released twin resumes when the next slot frees.
    No third trial runs at once, and no new pair starts before the released twin has resumed."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    sweep = _Sweep()
    b1 = sweep.new("b1")                                                 # pair 1's second twin
    assert b1 is not None and b1.config["pair"] == sweep.a1.config["pair"] == 1
    assert sweep.asha.choose_trial_to_run(sweep.controller) is b1        # it takes the slot; a0 waits for one
    b1.set_status(Trial.RUNNING)
    assert sweep.asha.choose_trial_to_run(sweep.controller) is None      # a1 and b1 hold both slots
    assert sweep.new("a2") is None                                       # no new pair while a0 waits for a slot
    assert sweep.report(sweep.a1, 2, 70.0) == TrialScheduler.PAUSE       # a1 waits for b1 at the rung: a slot frees
    sweep.a1.set_status(Trial.PAUSED)
    assert sweep.asha.choose_trial_to_run(sweep.controller) is sweep.a0  # the released twin resumes there
    sweep.a0.set_status(Trial.PENDING)                                   # staged by Ray
    assert sweep.asha.resumable() == 0 and sweep.asha.choose_trial_to_run(sweep.controller) is sweep.a0


def test_without_a_slot_limit_a_released_twin_is_chosen_first():
    """A scheduler whose searcher sets no limit (PairedASHA.slots None): the released twin is chosen at once (Ray's
    resources decide when it runs), and the searcher creates no trial beyond max_concurrent for a second twin."""
    sweep = _Sweep(no_limit=True)
    assert sweep.asha.slots is None
    assert sweep.new("b1") is None
    assert sweep.asha.choose_trial_to_run(sweep.controller) is sweep.a0


def test_the_timeline_benchmark_recomputes_the_sweeps_figure_from_its_event_log(monkeypatch):
    """benchmarks/slot_timeline.py's arithmetic on a logged sequence equals SlotUse's on the same events, and its idle
    stretches add up to slots × wall − busy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "slot_timeline", Path(__file__).resolve().parent.parent / "benchmarks" / "slot_timeline.py")
    timeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timeline)
    clock = [0.0]
    monkeypatch.setattr(slots.time, "monotonic", lambda: clock[0])
    use = SlotUse()
    events = [(1, "start", "a"), (1.5, "start", "b"), (3, "report2", "a"), (4, "report2", "b"), (4.5, "start", "a"),
              (6, "report4", "a"), (6, "end", "a"), (6.2, "start", "c"), (7, "report4", "b"), (7, "end", "b"),
              (8, "report2", "c"), (8.1, "end", "c")]
    for at, event, trial_id in events:
        clock[0] = at
        trial = _Trial(trial_id)
        if event == "start":
            use.on_trial_start(0, [], trial)
        elif event == "end":
            use.on_trial_complete(0, [], trial)
        else:
            use.on_trial_result(0, [], trial, {})
    logged = [(at, event, trial_id, None, None) for at, event, trial_id in events]
    busy, wall, idle = timeline.idle_stretches(timeline.busy_stretches(logged), 2)
    assert busy == pytest.approx(use.busy) and busy / (2 * wall) == pytest.approx(use.utilization(2))
    assert sum((end - start) * n for start, end, n in idle) == pytest.approx(2 * wall - busy)
    assert max(idle, key=lambda s: (s[1] - s[0]) * s[2])[:2] == (3, 4.5)   # a paused at its rung from 3 to 4.5
