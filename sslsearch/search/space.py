"""Search-space files: each parameter a distribution, checked before any trial starts."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslsearch.errors import InputError, shown, shown_path
from sslsearch.method.config import PretrainConfig
from sslsearch.presets import space_names
from sslsearch.search.experiment import build_section, read_yaml_file, resolved

if TYPE_CHECKING:
    import optuna

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
MAX_CHOICES = 1000
# Settings that describe the data or the run rather than the method: not searchable.
NOT_SEARCHABLE = {"dataset", "data_dir", "val_fraction", "split_seed", "image_size", "device", "epochs", "eval_every", "compile"}
SEARCHABLE = tuple(f.name for f in dataclasses.fields(PretrainConfig) if f.name not in NOT_SEARCHABLE)


@dataclass(frozen=True)
class Parameter:
    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple | None = None

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        import optuna  # here, not at the top: the CLI reads and checks space files before heavy imports

        if self.distribution == "loguniform":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=True)
        if self.distribution == "uniform":
            return optuna.distributions.FloatDistribution(self.low, self.high)
        if self.distribution == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.CategoricalDistribution(list(self.values))


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...]
    source: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def to_optuna(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.name: p.to_optuna() for p in self.parameters}

    def choices(self, name: str) -> tuple | None:
        for p in self.parameters:
            if p.name == name:
                return p.values
        return None


def _parameter(name: str, spec: Any, where: str) -> Parameter:
    if name not in SEARCHABLE:
        raise InputError(f"{where}: the trainable does not know parameter {shown(name, 60)}; searchable: "
                         f"{', '.join(SEARCHABLE)}")
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise InputError(f"{where}: {name} must be a mapping with 'distribution' ({', '.join(DISTRIBUTIONS)})")
    kind = spec["distribution"]
    allowed = {"loguniform": {"low", "high"}, "uniform": {"low", "high"}, "int": {"low", "high", "log"}, "choice": {"values"}}
    if kind not in allowed:
        raise InputError(f"{where}: {name} has unknown distribution {shown(kind, 60)}; expected one of "
                         f"{', '.join(DISTRIBUTIONS)}")
    extra = sorted(shown_path(key, 40) for key in set(spec) - allowed[kind] - {"distribution"})[:5]
    missing = sorted(allowed[kind] - set(spec) - {"log"})
    if extra or missing:
        raise InputError(f"{where}: {name} ({kind}) takes {', '.join(sorted(allowed[kind]))}"
                         + (f"; unknown: {', '.join(extra)}" if extra else "")
                         + (f"; missing: {', '.join(missing)}" if missing else ""))
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}: {name} choice needs a non-empty list of values")
        if len(values) > MAX_CHOICES:   # each is checked against the validator before the sweep starts
            raise InputError(f"{where}: {name} choice lists {len(values):,} values; at most {MAX_CHOICES:,}")
        if len(set(map(repr, values))) != len(values):
            raise InputError(f"{where}: {name} choice lists a value twice: {shown(values)}")
        return Parameter(name, kind, values=tuple(values))
    low, high = spec["low"], spec["high"]
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise InputError(f"{where}: {name} bounds must be finite numbers, got low={shown(low, 60)} high={shown(high, 60)}")
    if low >= high:
        raise InputError(f"{where}: {name} needs low < high, got low={low:g} high={high:g}")
    log = bool(spec.get("log", False))
    if (kind == "loguniform" or log) and low <= 0:
        raise InputError(f"{where}: {name} is log-scaled, so its bounds must be > 0, got low={low:g}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise InputError(f"{where}: {name} int bounds must be integers, got low={low:g} high={high:g}")
    return Parameter(name, kind, low=float(low), high=float(high), log=log)


def parse_search_space(raw: Any, where: str = "search space") -> SearchSpace:
    """Validate a {name: {distribution: ...}} mapping."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where} must be a non-empty mapping of parameter: {{distribution: ...}}")
    return SearchSpace(tuple(_parameter(name, spec, where) for name, spec in raw.items()), source=None)


def check_space(space: SearchSpace, experiment) -> None:
    """InputError unless every value the space can produce, put on top of the experiment's pretraining settings,
    passes the same validator as `sslsearch pretrain` (choices each; distributions at both bounds, since every
    limit the validator sets is one-sided). Run before anything is written or Ray starts."""
    where = Path(space.source).name if space.source else "search space"
    if experiment.search.paired and sorted(map(str, space.choices("loss") or ())) != ["barlow", "hsic"]:
        raise InputError(f"search.paired needs 'loss' in the search space as a choice of [barlow, hsic], "
                         f"got {list(space.choices('loss') or [])}")
    base = experiment.pretrain.to_dict()
    types = {f.name: str(f.type) for f in dataclasses.fields(PretrainConfig)}
    for p in space.parameters:
        if p.distribution in ("uniform", "loguniform") and types[p.name].split(" |")[0] != "float":
            raise InputError(f"{where}: {p.name} takes {types[p.name]} values, but {p.distribution} draws real numbers; "
                             "use distribution int or choice")
        if p.distribution == "int" and types[p.name].split(" |")[0] not in ("int", "float"):
            raise InputError(f"{where}: {p.name} takes {types[p.name]} values, not integers; use distribution choice")
        candidates = p.values if p.distribution == "choice" else (p.low, p.high)
        for value in candidates:
            value = int(value) if p.distribution == "int" else value
            try:
                config = build_section(PretrainConfig, {**base, p.name: value}, "pretrain")
                config.validate()
                config.check_data()   # a batch_size larger than the data set fails at the trial's start
            except InputError as error:
                raise InputError(f"{where}: {p.name}={shown(value, 80)} would fail every trial that draws it: "
                                 f"{str(error).replace('pretrain.', '')}") from None


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = resolved(path, "search space file")
    if not os.path.lexists(path):
        raise InputError(f"search space file not found: {shown_path(path)} (give a YAML file, or a shipped space by name: "
                         f"{', '.join(space_names())})")
    raw = read_yaml_file(path, "search space")
    return dataclasses.replace(parse_search_space(raw, path.name), source=str(path))
