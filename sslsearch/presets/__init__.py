"""What sslsearch ships to be used as it is: the experiment files, the search spaces they name and the replay
benchmark's table. They live inside the package, so that an installed copy (`pip install .`, a wheel) has them
where a checkout has them; the repository's `experiments/` and `search_spaces/` are links to the folders here.

An experiment is named by its file or, for a shipped one, by its name alone (`sslsearch sweep cifar10_resnet18`); so
is a search space (`search.space: barlow_hsic` in an experiment file, `--space official_recipe`), which is how the
shipped experiments name theirs: a copy of one, anywhere, still finds its space.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
EXPERIMENTS = FOLDER / "experiments"
SEARCH_SPACES = FOLDER / "search_spaces"
REPLAY_TABLE = FOLDER / "replay" / "digits_table.npz"   # built on experiments/digits.yaml (docs/sweeps.md)
DEFAULT_EXPERIMENT = EXPERIMENTS / "digits.yaml"        # the embedded default sweep: digits on the CPU
DEFAULT_SPACE = SEARCH_SPACES / "barlow_hsic.yaml"      # the space of an experiment file that names none


def experiment_names() -> list[str]:
    """The shipped experiments' names, sorted."""
    return sorted(path.stem for path in EXPERIMENTS.glob("*.yaml"))


def space_names() -> list[str]:
    """The shipped search spaces' names, sorted."""
    return sorted(path.stem for path in SEARCH_SPACES.glob("*.yaml"))


def shipped_experiment(name: str) -> Path | None:
    """The shipped experiment called `name` (a bare name such as `digits`, no folder or suffix), or None."""
    return _shipped(EXPERIMENTS, name)


def shipped_space(name: str) -> Path | None:
    """The shipped search space called `name` (a bare name such as `barlow_hsic`), or None."""
    return _shipped(SEARCH_SPACES, name)


def _shipped(folder: Path, name: str) -> Path | None:
    if not name or name != Path(name).name or name.startswith(".") or Path(name).suffix:
        return None
    path = folder / f"{name}.yaml"
    return path if path.is_file() else None
