"""How a sweep proposes configurations: an in-memory Optuna study whose trials are configurations.

The sweep's own study (what `SweepSearcher` persists, optuna-dashboard shows, and the tests hold against
Ray and MLflow) keeps one Optuna trial per Ray trial. Sampling from it directly made TPE steer little
(issue 19): Optuna's `n_startup_trials` counts *finished* trials, so on the default paired sweep TPE
chose 2 of 8 configurations; `loss` was a TPE parameter although in a paired sweep it only decided which
twin started first; and a diverged trial (COMPLETE at chance) could enter TPE's good set. So the
searcher asks a second study, the *configuration study*, and enqueues what it proposes in the sweep's
study:

- startup is counted in configurations proposed and scaled to the sweep: `StartupSampler` samples at
  random for the first quarter of the sweep's configurations (2 to 10), then asks the model (TPE);
- in a paired sweep the configuration study has no `loss`: a configuration is (λ, lr, feature_dim, ...);
  the first twin's loss alternates between pairs, and each twin tells its own value (`twins="each"`;
  the pair's max or mean are the alternatives the replay benchmark compared, docs/sweeps.md);
- a diverged trial is told COMPLETE at chance (so the region looks poor) and marked infeasible
  (`Trial.set_constraint`), which TPE (optuna 5.1, `_split_trials`) ranks after every feasible trial;
  `StartupSampler` keeps sampling at random while the good set could not be filled with feasible
  trials, so a diverged trial never enters it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import TrialState

CONFIGURATION = "configuration"   # user attr of a configuration-study trial: the configuration it measures
DIVERGED = "diverged"             # constraint of a trial whose run diverged (> 0: infeasible)
TWINS = ("each", "max", "mean")
GAMMAS = ("optuna", "hyperopt", "quarter")
STARTUP_MIN, STARTUP_MAX = 2, 10


def optuna_gamma(n: int) -> int:
    """Optuna's TPE good set: the top ⌈0.1·n⌉ finished trials, at most 25."""
    return min(math.ceil(0.1 * n), 25)


def hyperopt_gamma(n: int) -> int:
    """Hyperopt's good set: the top ⌈0.25·√n⌉."""
    return min(math.ceil(0.25 * math.sqrt(n)), 25)


def quarter_gamma(n: int) -> int:
    """The top quarter, ⌈0.25·n⌉."""
    return min(math.ceil(0.25 * n), 25)


GAMMA_FUNCTIONS = {"optuna": optuna_gamma, "hyperopt": hyperopt_gamma, "quarter": quarter_gamma}


@dataclass(frozen=True)
class ProposalSettings:
    """How the configuration study proposes. Where the replay benchmark separated no alternative from them, the
    defaults are Optuna's own (docs/sweeps.md, "How TPE steers")."""

    startup: int | None = None     # configurations sampled at random first; None: startup_configurations()
    multivariate: bool = True      # TPE models the parameters jointly (optuna 5.1's own default, single objective)
    gamma: str = "optuna"          # the size of TPE's good set (GAMMA_FUNCTIONS)
    constant_liar: bool = True     # running configurations count as provisional results, so proposals spread
    twins: str = "each"            # paired: each twin tells its own value, or the pair tells its max / mean

    def __post_init__(self):
        if self.gamma not in GAMMA_FUNCTIONS:
            raise ValueError(f"gamma must be one of {', '.join(GAMMAS)}, got {self.gamma!r}")
        if self.twins not in TWINS:
            raise ValueError(f"twins must be one of {', '.join(TWINS)}, got {self.twins!r}")
        if self.startup is not None and self.startup < 0:
            raise ValueError(f"startup must be ≥ 0, got {self.startup}")


DEFAULT_PROPOSALS = ProposalSettings()


def startup_configurations(configurations: int | None) -> int:
    """Random configurations before the model: a quarter of the sweep's, at least 2, at most 10 (Optuna's
    default when the budget is unknown). The replay chose a quarter over half (docs/sweeps.md, "How TPE steers")."""
    if configurations is None:
        return STARTUP_MAX
    return min(STARTUP_MAX, max(STARTUP_MIN, configurations // 4))


def _configuration(trial: optuna.trial.FrozenTrial) -> int:
    return trial.user_attrs.get(CONFIGURATION, -1 - trial.number)   # a trial without the attr: one of its own


class StartupSampler(BaseSampler):
    """`RandomSampler` for the first `startup` configurations of the study, then `model`.

    Counted in configurations proposed, not trials finished: a sweep's first proposals are made before
    anything has finished, so Optuna's `n_startup_trials` left TPE the last few proposals only. Twins
    share a configuration (user attr `configuration`), so they count once. While the model's good set
    (`good_set(n)` of n finished trials) could not be filled with feasible trials, sampling stays random:
    TPE would otherwise put an infeasible (diverged) trial in it.
    """

    def __init__(self, model: BaseSampler, startup: int, seed: int | None, good_set=None):
        self._model = model
        self._random = RandomSampler(seed=seed)
        self._startup = startup
        self._good_set = good_set

    def _random_now(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # Decided once per trial: Optuna asks once per parameter, and the study does not change in between.
        decided = getattr(self, "_decided", None)
        if decided is not None and decided[0] == trial.number:
            return decided[1]
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        configurations = set()
        for t in others:   # stops at `startup`: a long sweep pays O(startup), not O(trials)
            if len(configurations) >= self._startup:
                break
            configurations.add(_configuration(t))
        random_now = len(configurations) < self._startup
        if not random_now and self._good_set is not None:
            finished = [t for t in others if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            needed, feasible = self._good_set(len(finished)), 0
            for t in finished:   # stops as soon as the good set can be filled (constraints are read from system attrs)
                if feasible >= needed:
                    break
                feasible += all(v <= 0 for v in t.constraints.values())
            random_now = feasible < needed
        self._decided = (trial.number, random_now)
        return random_now

    def infer_relative_search_space(self, study, trial):
        return self._model.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if not search_space or self._random_now(study, trial):
            return {}
        return self._model.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        sampler = self._random if self._random_now(study, trial) else self._model
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._random.before_trial(study, trial)
        self._model.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._random.after_trial(study, trial, state, values)
        self._model.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self._random.reseed_rng()
        self._model.reseed_rng()


def configuration_sampler(name: str, seed: int, configurations: int | None,
                          settings: ProposalSettings = DEFAULT_PROPOSALS) -> BaseSampler:
    """The configuration study's sampler for `search.sampler` `name` in a sweep of `configurations`."""
    startup = settings.startup if settings.startup is not None else startup_configurations(configurations)
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "tpe":
        gamma = GAMMA_FUNCTIONS[settings.gamma]
        with warnings.catch_warnings():   # `gamma` is deprecated since optuna 4.9 (kept until 6.0, pyproject's bound)
            warnings.simplefilter("ignore", FutureWarning)
            # n_startup_trials=0: StartupSampler decides when TPE takes over. Optuna's own γ is left as its default.
            model = TPESampler(seed=seed, n_startup_trials=0, multivariate=settings.multivariate,
                               gamma=None if settings.gamma == "optuna" else gamma, constant_liar=settings.constant_liar)
        return StartupSampler(model, startup, seed, good_set=gamma)
    if name == "gp":
        # Before anything has finished GP samples at random on its own: intended here, so not warned about.
        return StartupSampler(optuna.samplers.GPSampler(seed=seed, n_startup_trials=0, warn_independent_sampling=False),
                              startup, seed)
    raise ValueError(f"unknown sampler {name!r}")


class ConfigurationStudy:
    """The in-memory study of configurations that drives a sweep's sampling (module docstring).

    Each Ray trial is a member of one configuration-study trial: its own (unpaired, or paired with
    `twins="each"`: twins then are two trials of one configuration), or its pair's (`twins` max / mean,
    told once both twins have ended)."""

    def __init__(self, distributions: dict, sampler: BaseSampler, *, paired: bool, twins: str = "each"):
        losses = distributions.get("loss")
        self.paired = paired
        self.losses = list(losses.choices) if paired else []
        self.distributions = {k: d for k, d in distributions.items() if not (paired and k == "loss")}
        self.twins = twins if paired else "each"
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.configurations = 0                     # proposed so far
        self.members: dict[str, optuna.trial.Trial] = {}    # Ray trial id → its configuration-study trial
        self.ended: dict[int, dict[str, tuple]] = {}        # pair modes: config trial number → {ray id: (outcome, value, steps)}
        self.told: set[int] = set()                         # config trial numbers told
        self._waiting: tuple[dict, optuna.trial.Trial] | None = None   # the second twin to come, and its configuration

    def propose(self, trial_id: str) -> dict:
        """The parameters (the loss included) of the new Ray trial `trial_id`: a new configuration, or in a
        paired sweep every second call, the same configuration with the other loss."""
        if self._waiting is not None:
            params, first = self._waiting
            self._waiting = None
            self.members[trial_id] = first if self.twins != "each" else self._fresh(params, first.user_attrs[CONFIGURATION])
            return params
        trial = self.study.ask(fixed_distributions=self.distributions)
        index = self.configurations
        self.configurations += 1
        trial.set_user_attr(CONFIGURATION, index)
        self.members[trial_id] = trial
        params = dict(trial.params)
        if not self.paired:
            return params
        first, second = self.losses[index % 2], self.losses[(index + 1) % 2]   # which twin starts first alternates
        self._waiting = ({**params, "loss": second}, trial)
        return {**params, "loss": first}

    def _fresh(self, params: dict, index: int) -> optuna.trial.Trial:
        self.study.enqueue_trial({k: v for k, v in params.items() if k in self.distributions}, skip_if_exists=False)
        trial = self.study.ask(fixed_distributions=self.distributions)
        trial.set_user_attr(CONFIGURATION, index)
        return trial

    def rerun(self, trial_id: str) -> None:
        """An errored trial runs again: its result will be told to a fresh trial of its configuration
        (pair modes: to the pair's trial, if the pair has not been told yet; else it is not told)."""
        member = self.members.get(trial_id)
        if member is None:
            return
        if self.twins == "each":
            self.members[trial_id] = self._fresh(member.params, member.user_attrs[CONFIGURATION])
        else:
            self.ended.get(member.number, {}).pop(trial_id, None)

    def tell(self, trial_id: str, outcome: str, value: float | None, steps: dict[int, float]) -> None:
        """A Ray trial ended with `outcome` (outcomes.OUTCOMES), final `value` and its reports {epoch: val_acc}."""
        member = self.members.get(trial_id)
        if member is None or member.number in self.told:
            return
        if self.twins == "each":
            self._finish(member, [(outcome, value, steps)])
            return
        ended = self.ended.setdefault(member.number, {})
        ended[trial_id] = (outcome, value, steps)
        if len(ended) == 2:
            self._finish(member, list(ended.values()))

    def _finish(self, trial: optuna.trial.Trial, runs: list[tuple]) -> None:
        """Tell `trial` what its runs (one, or a pair's two) measured."""
        self.told.add(trial.number)
        runs = [r for r in runs if r[0] != "errored"]
        if not runs:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        # Every finished trial carries the constraint (GPSampler wants the same names on all of them): > 0 is infeasible.
        trial.set_constraint(DIVERGED, 1.0 if all(r[0] == "diverged" for r in runs) else 0.0)
        combine = max if self.twins in ("each", "max") else (lambda values: sum(values) / len(values))
        for step in sorted({s for _, _, steps in runs for s in steps}):
            trial.report(combine([steps[step] for _, _, steps in runs if step in steps]), step)
        if all(r[0] == "stopped early" for r in runs):
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        # A twin stopped early counts with its last report (the pair's other twin diverged).
        finals = [value if outcome != "stopped early" else steps[max(steps)] for outcome, value, steps in runs
                  if value is not None or steps]
        if not finals:
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        self.study.tell(trial, combine(finals), state=TrialState.COMPLETE)
