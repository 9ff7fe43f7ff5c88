"""sslsearch: hyperparameter search for Barlow Twins and its HSIC variant."""

__version__ = "0.1.0"
