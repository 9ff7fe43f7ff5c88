"""Experiment files → validated, frozen dataclasses.

Precedence is resolved in one place, `load_experiment`: dataclass defaults < experiment file <
`--set key.sub=value` overrides. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslsearch.errors import InputError
from sslsearch.method.config import PretrainConfig
from sslsearch.search.rungs import rung_epochs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXPERIMENT = PROJECT_ROOT / "experiments" / "digits.yaml"
SAMPLERS = ("tpe", "random", "gp")
SCHEDULERS = ("asha", "fifo")
# What a sweep keeps of each trial's checkpoints (docs/tracking.md, sslsearch.search.retention): weights only, except the
# latest checkpoint of unfinished trials and, with top_k:N, of the N best finished trials (full training state).
CHECKPOINT_POLICIES = ("best_and_last", "best", "top_k:N", "all", "none")
MAX_FILE_BYTES = 1 << 20   # an experiment or a search space is a page of settings, not a megabyte
MAX_ALIASES = 100


@dataclass(frozen=True)
class SearchSettings:
    space: str = "../search_spaces/barlow_hsic.yaml"  # relative to the experiment file's folder
    num_samples: int = 16        # trials in all (pairs count as two)
    sampler: str = "tpe"         # Optuna's TPE; "random" and "gp" for comparison
    seed: int = 0                # seeds the sampler, and the trials' seeds derive from it
    paired: bool = False         # run each sampled configuration with both losses, same seed
    max_concurrent: int = 2
    time_budget_s: float | None = None


@dataclass(frozen=True)
class SchedulerSettings:
    type: str = "asha"           # or "fifo": every trial runs all its epochs
    grace_period: int | None = None  # epochs before ASHA may stop a trial; default: the first report (pretrain.eval_every)
    reduction_factor: float = 2


@dataclass(frozen=True)
class ResourceSettings:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0    # fractions let several small trials share one GPU
    max_failures: int = 3        # retries of a trial whose worker died (SIGKILL, OOM, node lost), from its checkpoint


@dataclass(frozen=True)
class TrackingSettings:
    uri: str | None = None       # None: SQLite next to the sweep; or http://host:port of an MLflow server
    checkpoints: str = "best_and_last"  # one of CHECKPOINT_POLICIES (top_k:3, ...)


@dataclass(frozen=True)
class Experiment:
    name: str
    pretrain: PretrainConfig
    search: SearchSettings = field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    source: str | None = None    # the experiment file it came from (absolute)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pretrain": self.pretrain.to_dict(),
            **{k: dataclasses.asdict(getattr(self, k)) for k in ("search", "scheduler", "resources", "tracking")},
        }

    def space_path(self) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / self.search.space).resolve()


_SECTIONS = {"search": SearchSettings, "scheduler": SchedulerSettings, "resources": ResourceSettings,
             "tracking": TrackingSettings, "pretrain": PretrainConfig}


def with_suggestions(unknown: list[str], known: list[str]) -> str:
    """'epoch (did you mean epochs?), foo': each unknown name with its closest known one, if any is close."""
    import difflib

    return ", ".join(f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(str(u), known, 1)) else str(u)
                     for u in unknown)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'pretrain.lr=0.01' → (['pretrain', 'lr'], 0.01); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set expects key.sub=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return [part for part in key.strip().split(".")], value


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise InputError(f"--set {'.'.join(path)}: {part} is not a section")
        node = node.setdefault(part, {})
    node[path[-1]] = value


def build_section(cls, values: Any, where: str):
    """`cls(**values)` with every value's type checked against the field's (one-line InputError)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping of settings, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(values) - set(known)))
    if unknown:
        raise InputError(f"unknown key(s) in {where}: {with_suggestions(unknown, known)}; valid: {', '.join(known)}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    converted = {}
    for key, value in values.items():
        declared = str(types[key])
        if declared.startswith("tuple") and isinstance(value, list):
            value = tuple(value)
        if declared in ("float", "float | None") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        numeric = declared.split(" |")[0] in ("float", "int")
        if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{where}.{key} must be a number, got {value!r}")
        if numeric and isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}.{key} must be a finite number, got {value!r}")
        if declared == "bool" and not isinstance(value, bool):
            raise InputError(f"{where}.{key} must be true or false, got {value!r}")
        if declared.startswith("str") and value is not None and not isinstance(value, str):
            raise InputError(f"{where}.{key} must be text, got {value!r}")
        if declared.startswith("tuple") and not (isinstance(value, tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise InputError(f"{where}.{key} must be a list of integers, e.g. [512], got {value!r}")
        if declared == "int" and isinstance(value, float):
            if not value.is_integer():
                raise InputError(f"{where}.{key} must be an integer, got {value!r}")
            value = int(value)
        converted[key] = value
    try:
        return cls(**converted)
    except TypeError as error:
        raise InputError(f"{where}: {error}") from None


class _BoundedLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing more than MAX_ALIASES aliases: a few nested aliases ("billion laughs") expand to
    gigabytes once the settings are flattened or printed."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases = getattr(self, "aliases", 0) + 1
            if self.aliases > MAX_ALIASES:
                raise InputError(f"{self.name}: more than {MAX_ALIASES} YAML aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # YAML keeps the last of two equal keys without a word: a setting given twice is a mistake to show.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys: SafeLoader refuses them itself
            if key in seen:
                raise InputError(f"{self.name}: {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: Path, what: str) -> Any:
    """The parsed YAML of `path`; InputError (one line, with line and column) if missing, too large, not UTF-8 or
    malformed."""
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{what} file {path} is {path.stat().st_size} bytes; settings files are at most {MAX_FILE_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what} file {path} is not UTF-8 text (byte {error.start}: {error.object[error.start]:#04x})") from None
    try:
        loader = _BoundedLoader(text)
        loader.name = str(path)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except RecursionError:
        raise InputError(f"{what} file {path} nests too deeply") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(f"malformed YAML in {path}{where}: {getattr(error, 'problem', None) or error}") from None


def experiment_from_dict(raw: dict, source: str | None) -> Experiment:
    """Build (without validating) an Experiment from {name, pretrain, search, ...} read from `source`."""
    origin = Path(source) if source else Path.cwd() / "experiment"
    unknown = sorted(map(str, set(raw) - {"name", *_SECTIONS}))
    if unknown:
        raise InputError(f"unknown key(s) in {origin.name}: {with_suggestions(unknown, ['name', *_SECTIONS])}; "
                         f"valid: name, {', '.join(_SECTIONS)}")
    sections = {key: build_section(cls, raw.get(key), key) for key, cls in _SECTIONS.items()}
    pretrain = sections.pop("pretrain")
    if pretrain.data_dir is not None:
        # Ray runs each trial in its own working directory: hand it an absolute path.
        pretrain = dataclasses.replace(pretrain, data_dir=str((origin.parent / pretrain.data_dir).resolve()))
    elif pretrain.dataset != "digits":  # (digits is bundled) the default ./data, as `sslsearch pretrain` has it
        pretrain = dataclasses.replace(pretrain, data_dir=str((Path.cwd() / "data").resolve()))
    if sections["scheduler"].grace_period is None:
        # ASHA's first rung on the first report after epoch 0, so every rung falls on a report.
        sections["scheduler"] = dataclasses.replace(sections["scheduler"], grace_period=min(pretrain.eval_every, pretrain.epochs))
    return Experiment(name=str(raw.get("name") or origin.stem), pretrain=pretrain, source=source, **sections)


def load_experiment(path: str | Path | None = None, overrides: list[str] = (), name: str | None = None) -> Experiment:
    """Read an experiment file (None: the embedded digits default), apply overrides, validate."""
    path = Path(path).resolve() if path is not None else DEFAULT_EXPERIMENT
    raw = read_yaml_file(path, "experiment")
    if raw is None or raw == {}:
        raise InputError(f"experiment file {path} is empty; it needs at least a pretrain section (see experiments/digits.yaml)")
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a mapping with keys name, {', '.join(_SECTIONS)}")
    empty = [key for key in _SECTIONS if key in raw and raw[key] in (None, {})]
    if empty:
        raise InputError(f"section(s) {', '.join(empty)} of {path} are empty; give settings or remove the section")
    if not isinstance(raw.get("name", ""), str):
        raise InputError(f"name in {path} must be text, got {raw['name']!r}")
    for override in overrides:
        keys, value = parse_override(override)
        _merge(raw, keys, value)
    if name is not None:
        raw["name"] = name
    experiment = experiment_from_dict(raw, str(path))
    validate_experiment(experiment)
    return experiment


def _valid_policy(policy: str) -> bool:
    name, _, count = policy.partition(":")
    if name == "top_k":
        return count.isascii() and count.isdigit() and int(count) >= 1
    return policy in CHECKPOINT_POLICIES


def top_k(policy: str) -> int:
    """N of a `top_k:N` checkpoint policy: how many finished trials keep their full training state; 0 for the others."""
    name, _, count = policy.partition(":")
    return int(count) if name == "top_k" else 0


def keeps_last(policy: str) -> bool:
    """Whether the policy keeps a trial's last weights (MLflow's checkpoints/last.pt) besides its best."""
    return policy in ("best_and_last", "all") or top_k(policy) > 0


def validate_experiment(experiment: Experiment) -> None:
    """One-line InputError for any setting a sweep cannot use."""
    experiment.pretrain.validate()
    s, sch, r, t = experiment.search, experiment.scheduler, experiment.resources, experiment.tracking
    checks = [
        (s.num_samples >= 1, f"search.num_samples must be ≥ 1, got {s.num_samples}"),
        (0 <= s.seed < 2**32 - s.num_samples, f"search.seed must be in [0, 2**32 - num_samples), got {s.seed}"),
        (r.max_failures >= 0, f"resources.max_failures must be ≥ 0, got {r.max_failures}"),
        (s.sampler in SAMPLERS, f"search.sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}"),
        (s.max_concurrent >= 1, f"search.max_concurrent must be ≥ 1, got {s.max_concurrent}"),
        (s.time_budget_s is None or s.time_budget_s > 0, f"search.time_budget_s must be > 0, got {s.time_budget_s}"),
        (not s.paired or s.num_samples % 2 == 0, f"search.paired needs an even num_samples (pairs), got {s.num_samples}"),
        (sch.type in SCHEDULERS, f"scheduler.type must be one of {', '.join(SCHEDULERS)}, got {sch.type!r}"),
        (sch.type != "asha" or 1 <= sch.grace_period <= experiment.pretrain.epochs,
         f"scheduler.grace_period must be in [1, pretrain.epochs={experiment.pretrain.epochs}], got {sch.grace_period}"),
        (sch.reduction_factor > 1, f"scheduler.reduction_factor must be > 1, got {sch.reduction_factor}"),
        (r.cpus_per_trial > 0 and math.isfinite(r.cpus_per_trial), f"resources.cpus_per_trial must be > 0, got {r.cpus_per_trial}"),
        (r.gpus_per_trial >= 0, f"resources.gpus_per_trial must be ≥ 0, got {r.gpus_per_trial}"),
        (_valid_policy(t.checkpoints), f"tracking.checkpoints must be one of {', '.join(CHECKPOINT_POLICIES)} "
                                       f"(N a whole number ≥ 1), got {t.checkpoints!r}"),
        (t.uri is None or t.uri.startswith(("http://", "https://")) or (t.uri.startswith("sqlite:////")),
         f"tracking.uri must be http(s)://host:port or sqlite:////absolute/path (MLflow 3 has no file store), got {t.uri!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    if sch.type == "asha":
        rung_epochs(experiment.pretrain.epochs, experiment.pretrain.eval_every, sch.grace_period, sch.reduction_factor)
        if s.paired and s.max_concurrent < 2:
            raise InputError("a paired ASHA sweep runs both twins of a pair together (one waits for the other at each "
                             f"rung): search.max_concurrent must be at least 2, got {s.max_concurrent}")
