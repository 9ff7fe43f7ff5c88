"""The search: Ray Tune + Optuna. experiment (experiment files), space (search spaces), rungs and
asha (PairedASHA), sweep (the searcher, the Tuner, run/resume), trainable, confirm, retention,
saved_state, sweeplock, synthetic (a torch-free trainable for tests and benchmarks).

Importing this package imports nothing heavy: the analysis layer imports its Ray-free modules.
"""

# Sweeps written before the folder move pickled objects of the old flat module `sslsearch.search`
# (now `sslsearch.search.sweep`) by that path, e.g. Ray's searcher state holds
# `sslsearch.search.SweepSearcher`. Those names resolve here, lazily, so that such sweeps resume.
# New code imports them from `sslsearch.search.sweep`.
_LEGACY_SWEEP_NAMES = frozenset({"SweepSearcher", "LiveView", "TrialSummary", "SweepSummary", "SweepStopped",
                                 "run_sweep", "resume_sweep", "_trial_dirname", "trial_outcome", "result_outcome"})


def __getattr__(name: str):
    if name in _LEGACY_SWEEP_NAMES:
        from sslsearch.search import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'sslsearch.search' has no attribute {name!r}")
