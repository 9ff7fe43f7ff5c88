"""Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel Hyperparameter
Tuning", MLSys 2020) as the sweep needs it: rungs that are part of the sweep's saved state, and
pairs of trials (the same configuration with each loss) promoted or stopped as one unit.

Ray's ASHAScheduler keeps its rungs in memory only (Tuner.restore builds a fresh one from
tuner.pkl) and judges every trial alone, so in a paired sweep whichever twin reaches a rung first
sets the bar for the other. `PairedASHA` makes the same decisions as Ray's single-bracket ASHA for
unpaired sweeps (tests/test_asha.py checks it against Ray's own scheduler), and for paired sweeps:

- a twin that reaches a rung before its partner is PAUSED there (its checkpoint kept) until the
  partner reports at the same rung; the pair is then judged on the better of its two val_acc
  values (the max: a configuration is worth more budget if either loss is promising there; the mean
  would stop exactly the configurations that separate the two losses) against the rung's other
  pairs, and both twins continue or both stop, so both losses always get equal budgets;
- a partner that ended before the rung (diverged, errored) releases its twin, which is judged alone;
  a partner not created yet (the searcher proposes it when a slot frees, and a paired sweep's num_samples
  is even, so it always comes) is waited for like one still running;
- a twin waiting at a rung when the sweep was interrupted waits again after `resume` (Ray requeues every
  unfinished trial PENDING and would run it on past the rung).

`RungState` is a Tune callback holding the same scheduler object (Ray pickles the Tuner's
scheduler and callbacks together in tuner.pkl, so the reference survives a restore): Ray saves its
state with the trials' and the searcher's in every experiment checkpoint, and restores it on
resume, so a resumed sweep decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import SearchGenerator

from sslsearch.search.rungs import rung_epochs


class PairedASHA(FIFOScheduler):
    """Single-bracket ASHA on `epoch` and val_acc (max); pair-aware when `paired`."""

    # One decision per report: a buffered batch of results could carry a trial past its rung.
    _supports_buffered_results = False
    # The sweep's max_concurrent, set by its searcher (SweepSearcher.set_max_concurrency, which Ray calls again when
    # a sweep resumes, so a sweep saved before this existed gets it too): a released twin resumes only into a free
    # slot, so that a pair's second twin can take a slot first (choose_trial_to_run). None (a scheduler whose
    # searcher does not limit concurrency): Ray's resources alone decide when it resumes.
    slots: int | None = None

    def __init__(self, *, metric: str, max_epochs: int, eval_every: int, grace_period: int, reduction_factor: float,
                 paired: bool):
        super().__init__()
        self._metric, self._mode = metric, "max"
        self.max_epochs, self.reduction_factor, self.paired = max_epochs, reduction_factor, paired
        self.rungs = rung_epochs(max_epochs, eval_every, grace_period, reduction_factor)
        self._reset()

    def _reset(self) -> None:
        # rung epoch → unit (trial id, or "pair N") → the value it was judged on
        self.recorded: dict[int, dict[str, float]] = {r: {} for r in self.rungs}
        self.values: dict[str, dict[int, float]] = {}    # trial id → rung epoch → its own val_acc there
        self.waiting: dict[str, int] = {}                  # paused twin → the rung it waits at
        self.doomed: set[str] = set()                      # stopped with its twin while its pause was in flight
        self.stopped = 0

    # -- the state Ray checkpoints with the experiment (through RungState) -------------------------

    def state_dict(self) -> dict:
        return {"recorded": {str(r): dict(v) for r, v in self.recorded.items()},
                "values": {t: {str(r): v for r, v in by_rung.items()} for t, by_rung in self.values.items()},
                "waiting": dict(self.waiting), "doomed": sorted(self.doomed), "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        for rung, units in state["recorded"].items():
            self.recorded.setdefault(int(rung), {}).update(units)
        self.values = {t: {int(r): v for r, v in by_rung.items()} for t, by_rung in state["values"].items()}
        self.waiting = dict(state["waiting"])
        self.doomed = set(state["doomed"])
        self.stopped = int(state["stopped"])

    # -- decisions ------------------------------------------------------------------------------------

    def cutoff(self, rung: int) -> float | None:
        values = list(self.recorded[rung].values())
        return float(np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)) if values else None

    def _unit(self, trial: Trial) -> str:
        return f"pair {trial.config.get('pair')}" if self.paired else trial.trial_id

    # -- the trials as Ray adds them: a twin, and the trials still to run, without a scan of every trial -------
    # (Per decision and per step of Ray's loop, a scan is O(trials), so O(trials²) over a sweep: docs/scale.md.)

    def _index(self) -> tuple[dict, dict]:
        """pair → its trials; trial id → trial for the trials not yet seen ended. (setdefault: a scheduler
        unpickled from a sweep saved before the index existed starts it empty.)"""
        return self.__dict__.setdefault("_pairs", {}), self.__dict__.setdefault("_open", {})

    def _released_twins(self) -> set[str]:
        """Twins released by their pair's decision while Ray still saves their pause (kept in `__dict__` under
        "_released_while_pausing", set up on first use: as `_index`)."""
        return self.__dict__.setdefault("_released_while_pausing", set())

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        pairs, open_trials = self._index()
        twins = pairs.setdefault(trial.config.get("pair"), [])
        if not any(t is trial for t in twins):   # (Ray adds a retried trial again: tune_controller._requeue_trial)
            twins.append(trial)
            self.__dict__["_added"] = self.__dict__.get("_added", 0) + 1
        open_trials[trial.trial_id] = trial
        # A trial Ray adds again will report before it pauses again: it is no longer a twin whose pause is in flight.
        self._released_twins().discard(trial.trial_id)
        if trial.status != Trial.PENDING:
            return
        controller = getattr(tune_controller, "_tune_controller", tune_controller)
        retried = trial in getattr(controller, "_pending_trials", ())   # Ray filed it PENDING before this hook
        if trial.trial_id in self.waiting:
            # Ray requeued the twin that waits at its rung: filed PAUSED, it stays put until its partner reaches the rung.
            if retried:
                # A retry (its pause failed, tune_controller._requeue_trial): its status changes through Ray, which
                # keeps its sets of trials by status.
                controller._set_trial_status(trial, Trial.PAUSED)
            else:
                # A resumed sweep: add_trial files the trial by its status after this hook.
                trial.set_status(Trial.PAUSED)

    def _candidates(self, tune_controller) -> list:
        """The trials that may be paused or pending, in the order Ray added them."""
        trials = tune_controller.get_trials()
        if len(trials) != self.__dict__.get("_added", 0):   # trials added without on_trial_add: all of them
            return trials
        open_trials = self._index()[1]
        for trial in [t for t in open_trials.values() if t.status in (Trial.TERMINATED, Trial.ERROR)]:
            del open_trials[trial.trial_id]   # (one that reports again is back through on_trial_result)
        return list(open_trials.values())

    def _twin(self, tune_controller, trial: Trial) -> Trial | None:
        pair = trial.config.get("pair")
        known = self._index()[0].get(pair, ())
        if trial not in known:  # added without on_trial_add: look through every trial
            known = tune_controller.get_trials()
        return next((other for other in known if other is not trial and other.config.get("pair") == pair), None)

    def _judge(self, rung: int, unit: str, value: float) -> str:
        """ASHA's rule: stop below the rung's (1 − 1/factor) quantile of the units recorded before."""
        cutoff = self.cutoff(rung)
        self.recorded[rung][unit] = value
        if cutoff is not None and value < cutoff:
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._index()[1].setdefault(trial.trial_id, trial)   # (only a trial that reports can be paused)
        self._released_twins().discard(trial.trial_id)   # it runs again
        if "epoch" not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        epoch, value = int(result["epoch"]), float(result[self._metric])
        if epoch >= self.max_epochs or result.get("diverged") or trial.trial_id in self.doomed:
            self.doomed.discard(trial.trial_id)
            return TrialScheduler.STOP
        mine = self.values.setdefault(trial.trial_id, {})
        # The highest rung reached and not yet recorded (with aligned rungs: the rung of this report).
        rung = next((r for r in reversed(self.rungs) if epoch >= r and r not in mine), None)
        if rung is None:
            return TrialScheduler.CONTINUE
        mine[rung] = value
        if not self.paired:
            return self._judge(rung, trial.trial_id, value)
        twin = self._twin(tune_controller, trial)
        if twin is not None and rung in self.values.get(twin.trial_id, {}):
            decision = self._judge(rung, self._unit(trial), max(value, self.values[twin.trial_id][rung]))
            self._release(tune_controller, twin, decision)
            return decision
        if twin is not None and twin.status in (Trial.TERMINATED, Trial.ERROR):
            return self._judge(rung, self._unit(trial), value)   # its partner ended before this rung
        # Its partner runs, waits for a slot, or is not created yet: wait for it at the rung.
        self.waiting[trial.trial_id] = rung
        return TrialScheduler.PAUSE

    def _release(self, tune_controller, twin: Trial, decision: str) -> None:
        """Apply the pair's decision to the twin waiting at the rung."""
        if self.waiting.pop(twin.trial_id, None) is None:
            return
        if decision == TrialScheduler.STOP:
            self._stop(tune_controller, twin)
        elif twin.status == Trial.RUNNING:
            # Released while its pause is still being saved: it will want an actor again once paused.
            self._released_twins().add(twin.trial_id)
        # CONTINUE: no longer waiting, so choose_trial_to_run picks it up again.

    def _stop(self, tune_controller, trial: Trial) -> None:
        if trial.status in (Trial.PAUSED, Trial.PENDING):
            self.doomed.discard(trial.trial_id)
            tune_controller.stop_trial(trial)
            # Ray 2.60 saves a trial's state only when it is marked, and stop_trial does not mark a
            # trial without an actor: the experiment checkpoint would keep it PAUSED, and resume
            # would run it again. (Ray's own HyperBand has the same gap.)
            controller = getattr(tune_controller, "_tune_controller", tune_controller)
            mark = getattr(controller, "_mark_trial_to_checkpoint", None)
            if mark is not None:
                mark(trial)
        elif trial.status == Trial.RUNNING:
            # Its PAUSE is still being saved: stop it once paused (choose_trial_to_run), or at its next report.
            self.doomed.add(trial.trial_id)

    def _partner_ended(self, tune_controller, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)
        self._released_twins().discard(trial.trial_id)
        self.doomed.discard(trial.trial_id)
        if not self.paired:
            return
        twin = self._twin(tune_controller, trial)
        if twin is None or twin.trial_id not in self.waiting:
            return
        rung = self.waiting[twin.trial_id]
        self._release(tune_controller, twin, self._judge(rung, self._unit(twin), self.values[twin.trial_id][rung]))

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._partner_ended(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        # Ray calls this also when it retries a failed trial (FailureConfig.max_failures): it has then already
        # set the trial ERROR, and requeues it PENDING right after (tune_controller._try_recover/_requeue_trial);
        # a final error comes while the trial is still RUNNING or PENDING. A retried trial resumes from its
        # checkpoint and reaches the rung again, so its twin keeps waiting for it rather than being judged alone.
        if trial.status == Trial.ERROR:
            return
        self._partner_ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._partner_ended(tune_controller, trial)

    def resumable(self) -> int:
        """Twins released at their rung that have not been chosen to run again: paused, or their pause still
        being saved. Each will want a slot."""
        released = self._released_twins()
        return sum((t.status == Trial.PAUSED or t.trial_id in released) and t.trial_id not in self.waiting
                   and t.trial_id not in self.doomed for t in self._index()[1].values())

    def _holding(self, candidates: list) -> int:
        """Trials that hold a slot or are staged for one: running or pending, not a twin paused (or pausing) at
        a rung, not a released twin whose pause is still being saved, not one this scheduler has stopped."""
        released = self._released_twins()
        return sum(t.status in (Trial.RUNNING, Trial.PENDING) and t.trial_id not in self.waiting
                   and t.trial_id not in self.doomed and not (t.status == Trial.RUNNING and t.trial_id in released)
                   for t in candidates)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        candidates = self._candidates(tune_controller)
        for trial in candidates:
            if trial.trial_id in self.doomed and trial.status in (Trial.PAUSED, Trial.PENDING):
                self._stop(tune_controller, trial)
        # Paused first, as ASHA promotes before it starts new configurations: a twin released at its rung resumes
        # as soon as a slot is free. (Pending first, as Ray's FIFO order has it, a released twin waits until no new
        # trial waits for an actor, while it holds its place under max_concurrent: measured in docs/scale.md. Ray
        # starts pending trials on its own, in its step, whatever this returns.) A slot is free when fewer than
        # `slots` trials run or are staged: the searcher may have created a pair's second twin for the slot that
        # just freed (SweepSearcher.suggest), and that twin goes first, so that a pair's twins train side by side
        # and the last pair does not run one twin after the other.
        resume = self.slots is None or self._holding(candidates) < self.slots
        for status in (Trial.PAUSED, Trial.PENDING):
            if status == Trial.PAUSED and not resume:
                continue
            for trial in candidates:
                if trial.status == status and trial.trial_id not in self.waiting and trial.trial_id not in self.doomed:
                    if status == Trial.PAUSED:
                        self._released_twins().discard(trial.trial_id)   # staged now: Ray files it PENDING
                    return trial
        return None

    def needs_actor_later(self) -> bool:
        """Whether a trial that holds no actor now will need one: a twin paused at a rung, a released twin not yet
        resumed, a trial pending. (Not one this scheduler has stopped.)"""
        # (A twin being paused is in `waiting`, or released while its pause is saved, before Ray files it PAUSED,
        # which it does after it has stopped or cached its actor.)
        if self.waiting:
            return True
        open_trials = list(self._index()[1].values())
        if self._released_twins() and any(
                t.status not in (Trial.TERMINATED, Trial.ERROR) for t in open_trials):
            return True
        return any(t.status in (Trial.PAUSED, Trial.PENDING) and t.trial_id not in self.doomed for t in open_trials)

    def debug_string(self) -> str:
        return f"PairedASHA: rungs at epochs {self.rungs}, {self.stopped} stopped, {len(self.waiting)} waiting for a twin"


class TwinAwareSearch(SearchGenerator):
    """Ray's SearchGenerator for a sweep with PairedASHA: the search counts as finished only once no trial waits
    for an actor.

    Ray keeps the actor of a trial that pauses or ends for the next trial (reuse_actors) unless the search is
    finished and no trial is staged (TuneController._maybe_cache_trial_actor and _cleanup_cached_actors, ray
    2.60): in a sweep's last pairs the actor of a twin paused at its rung was stopped, and the twin, released,
    waited for a new worker process (seconds here; on a GPU cluster, the worker and CUDA start-up) while its
    slot stood idle. Kept "not finished" while a trial still needs an actor, the actor stays cached and the
    twin resumes on it. No trial is created beyond num_samples: next_trial asks Ray's own count first.
    """

    def __init__(self, searcher, scheduler: PairedASHA):
        super().__init__(searcher)
        self.scheduler = scheduler

    def is_finished(self) -> bool:
        return super().is_finished() and not self.scheduler.needs_actor_later()

    def next_trial(self):
        if SearchGenerator.is_finished(self):
            return None
        return super().next_trial()


class RungState(tune.Callback):
    """Carries the scheduler's rungs in Ray's experiment checkpoints, so `Tuner.restore` gets them back."""

    def __init__(self, scheduler: PairedASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"asha": self.scheduler.state_dict()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["asha"])
