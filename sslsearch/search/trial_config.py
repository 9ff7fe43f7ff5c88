"""The trial config: what a sweep hands each trial, and how a trial's settings are read back from it.

Ray resolves one config per trial from the Tuner's `param_space`:

    {"base": {...every PretrainConfig setting of the experiment...}, "final_test": True, "cpus": 2,
     "loss": "hsic", "lmbda": 0.0078, "lr": 0.001, "feature_dim": 128,   # sampled (the search space)
     "seed": 3, "pair": 1}                                               # chosen by the searcher / the plan

A sampled value overrides the same setting in `base`. Everything that reads a trial's settings (the
trainable, the live view, the sweep summary, the MLflow callback, confirmation) goes through
`trial_settings` / `sampled_params`, so the rule and the key filter exist once. Plain Python, no Ray:
records/ and analysis/ may import it.
"""

from __future__ import annotations

BASE, FINAL_TEST, CPUS, SEED, PAIR = "base", "final_test", "cpus", "seed", "pair"
# Keys that say how a trial runs, not what it trains ("synthetic": of trials of sweeps started before
# sslsearch.search.synthetic took its settings as a parameter).
RUN_KEYS = (BASE, FINAL_TEST, CPUS, "synthetic")


def make_trial_config(base: dict, *, cpus: float, final_test: bool = True, **values) -> dict:
    """A trial config (or a Tuner's param_space): the experiment's pretraining settings `base`, how the
    trial runs, and `values` (sampled settings, or Tune search-space objects / placeholders for them)."""
    return {BASE: base, FINAL_TEST: final_test, CPUS: cpus, **values}


def sampled_params(config: dict) -> dict:
    """The settings a trial's config sets over `base` (e.g. loss, lmbda, lr, feature_dim), without its
    seed and pair number: what tells one configuration from another."""
    return {k: v for k, v in config.items() if k not in (*RUN_KEYS, SEED, PAIR)}


def trial_settings(config: dict) -> dict:
    """The trial's pretraining settings: `base` with the sampled values and the trial's seed on top
    (the keyword arguments of PretrainConfig)."""
    settings = {**config.get(BASE, {}), **sampled_params(config)}
    if config.get(SEED) is not None:
        settings[SEED] = config[SEED]
    return settings


def trial_value(config: dict, key: str, default=None):
    """One setting of a trial: the sampled value, else `base`'s, else `default` (a config Ray has not
    resolved yet, e.g. of a trial that failed first, may lack both)."""
    value = config.get(key, config.get(BASE, {}).get(key))
    return default if value is None else value


def logged_value(params: dict, key: str):
    """One setting from a trial's MLflow params (its config flattened: `lmbda`, `base.lmbda`, ...): the sampled
    value, else `base`'s; None if neither was logged."""
    return params.get(key, params.get(f"{BASE}.{key}"))
