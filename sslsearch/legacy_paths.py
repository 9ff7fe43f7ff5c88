"""Module paths from before the folder move, for the pickles of sweeps started then.

Ray pickles the objects of a sweep by their module path (`tuner.pkl` holds the trainable and the
callbacks, the searcher's state file the searcher, ...): a sweep started with the flat layout names
`sslsearch.asha.PairedASHA`, `sslsearch.tracking.MlflowTracking`, `sslsearch.trainable.run_trial`.
This finder makes each old path import the module's new home (the same module object), so such a
sweep resumes. Only unpickling should use these names; the code and the tests use the new paths
(tests/test_layers.py checks).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

OLD_TO_NEW = {
    "sslsearch.pretrain_config": "sslsearch.method.config",
    "sslsearch.data": "sslsearch.method.data",
    "sslsearch.augment": "sslsearch.method.augment",
    "sslsearch.models": "sslsearch.method.models",
    "sslsearch.losses": "sslsearch.method.losses",
    "sslsearch.optim": "sslsearch.method.optim",
    "sslsearch.train": "sslsearch.method.train",
    "sslsearch.evaluate": "sslsearch.method.evaluate",
    "sslsearch.config": "sslsearch.search.experiment",
    "sslsearch.space": "sslsearch.search.space",
    "sslsearch.rungs": "sslsearch.search.rungs",
    "sslsearch.asha": "sslsearch.search.asha",
    "sslsearch.trainable": "sslsearch.search.trainable",
    "sslsearch.confirm": "sslsearch.search.confirm",
    "sslsearch.retention": "sslsearch.search.retention",
    "sslsearch.saved_state": "sslsearch.search.saved_state",
    "sslsearch.sweeplock": "sslsearch.search.sweeplock",
    "sslsearch.synthetic": "sslsearch.search.synthetic",
    "sslsearch.store": "sslsearch.records.store",
    "sslsearch.tracking": "sslsearch.records.tracking",
    "sslsearch.ui": "sslsearch.records.ui",
    "sslsearch.leaderboard": "sslsearch.analysis.leaderboard",
    "sslsearch.report": "sslsearch.analysis.report",
    "sslsearch.export": "sslsearch.analysis.export",
    "sslsearch.bench_search": "sslsearch.bench.search",
    "sslsearch.bench_platform": "sslsearch.bench.platform",
    "sslsearch.platform_trial": "sslsearch.search.synthetic",   # (merged into it; bench sweeps are never resumed)
}
# `sslsearch.search` (now a package: its __init__ resolves the old module's names) and
# `sslsearch.bench` (now a package; the old module held no pickled objects) need no alias.


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec, self.loader = module.__spec__, module.__loader__
        return module

    def exec_module(self, module) -> None:
        # The import system stamped the old spec on the module: give it back its own.
        module.__spec__, module.__loader__ = self.spec, self.loader


class LegacyPathFinder(importlib.abc.MetaPathFinder):
    """Finds an old module path and answers with the module at its new home."""

    def find_spec(self, fullname, path=None, target=None):
        new = OLD_TO_NEW.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, LegacyPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(LegacyPathFinder())
