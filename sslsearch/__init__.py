"""sslsearch: hyperparameter search for Barlow Twins and its HSIC variant."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import sslsearch` stays light; the export module (and torch, mlflow) load on first use.
    if name == "load_backbone":
        from sslsearch.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'sslsearch' has no attribute {name!r}")
