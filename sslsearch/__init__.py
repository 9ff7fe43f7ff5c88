"""sslsearch: hyperparameter search for Barlow Twins and its HSIC variant."""

from sslsearch import legacy_paths as _legacy_paths

__version__ = "0.1.0"

_legacy_paths.install()   # old module paths resolve for pickles of sweeps started before the move


def __getattr__(name: str):
    # Lazy: `import sslsearch` stays light; the export module (and torch, mlflow) load on first use.
    if name == "load_backbone":
        from sslsearch.analysis.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'sslsearch' has no attribute {name!r}")
