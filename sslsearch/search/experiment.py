"""Experiment files → validated, frozen dataclasses.

Precedence is resolved in one place, `load_experiment`: dataclass defaults < experiment file <
`--set key.sub=value` overrides. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslsearch.errors import InputError, shown, shown_path
from sslsearch.method.config import PretrainConfig, visible_gpus
from sslsearch.presets import DEFAULT_EXPERIMENT, DEFAULT_SPACE, experiment_names, shipped_experiment, shipped_space
from sslsearch.search.rungs import rung_epochs

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # a checkout's root (benchmarks/, docs/); not in an installed copy
# An experiment file that names no search space gets the shipped one (DEFAULT_SPACE), wherever the package lives. (It
# once was `../search_spaces/barlow_hsic.yaml` next to the user's file: a file outside the repository then named a space
# that is not there.)
SAMPLERS = ("tpe", "random", "gp")
SCHEDULERS = ("asha", "fifo")
# What a sweep keeps of each trial's checkpoints (docs/tracking.md, sslsearch.search.retention): weights only, except the
# latest checkpoint of unfinished trials and, with top_k:N, of the N best finished trials (full training state).
CHECKPOINT_POLICIES = ("best_and_last", "best", "top_k:N", "all", "none")
MAX_FILE_BYTES = 1 << 20   # an experiment or a search space is a page of settings, not a megabyte
# What a settings file may expand to once its aliases (*name) are followed, in characters of its values: a few
# nested aliases ("billion laughs") expand a page to gigabytes. Counting aliases would refuse a file that reuses a
# block often and let a 9-level bomb through; the expanded size refuses exactly what is too large to hold.
MAX_EXPANDED = 4 * MAX_FILE_BYTES
# Sane bounds: beyond them a value is a slip (1e20 for 20), not a plan.
MAX_NUM_SAMPLES = 100_000     # docs/scale.md measures the driver at 1,000 trials
MAX_CONCURRENT = 10_000
MAX_FAILURES = 100
MIN_TIME_BUDGET_S = 60.0      # Ray alone takes seconds to start: a shorter budget trains nothing
MAX_TIME_BUDGET_S = 366 * 24 * 3600.0   # a year; beyond it Ray's timedelta arithmetic overflows
RESOURCE_GRANULARITY = 1e-4   # Ray counts resources in units of 1/10,000 (ray_constants.MIN_RESOURCE_GRANULARITY)
MAX_CPUS_PER_TRIAL = 4096     # a trial runs on one node: no machine has more
MAX_GPUS_PER_TRIAL = 64


@dataclass(frozen=True)
class SearchSettings:
    space: str = str(DEFAULT_SPACE)  # one the file (or --set) names: relative to the experiment file's folder
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
        """The search-space file: `search.space` relative to the experiment file's folder (an absolute one, such as the
        default DEFAULT_SPACE, as it is), or a shipped space by its name (`barlow_hsic`) when no file of that name is
        there."""
        return space_file(self.search.space, Path(self.source).parent if self.source else Path.cwd())


_SECTIONS = {"search": SearchSettings, "scheduler": SchedulerSettings, "resources": ResourceSettings,
             "tracking": TrackingSettings, "pretrain": PretrainConfig}


def with_suggestions(unknown: list[str], known: list[str]) -> str:
    """'epoch (did you mean epochs?), foo': each unknown name with its closest known one, if any is close."""
    import difflib

    named = [shown_path(u, 60) for u in unknown[:5]] + ([f"and {len(unknown) - 5} more"] if len(unknown) > 5 else [])
    return ", ".join(f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, known, 1)) else u
                     for u in named)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'pretrain.lr=0.01' → (['pretrain', 'lr'], 0.01); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise InputError(f"--set expects key.sub=value, got {shown(text)}")
    if len(parts) > 2:   # settings are `name` or SECTION.KEY: nothing deeper (and no 60k-deep key to build)
        raise InputError(f"--set {shown_path(key.strip(), 60)}: {shown_path(parts[1], 60)} is not a section; "
                         "settings are name or SECTION.KEY, e.g. pretrain.lr")
    where = f"--set {shown_path(key.strip(), 60)}"
    try:
        value = load_yaml(raw, where) if raw.strip() else None
    except InputError as error:
        if "malformed YAML" not in str(error):
            raise   # too deep, too large once expanded, a key given twice: refused, never taken as text
        value = raw   # not YAML (e.g. `--set name=a: b`): the text itself
    return parts, value


def _merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise InputError(f"--set {shown_path('.'.join(path), 60)}: {part} is not a section")
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
        if value is None and "None" not in declared:   # `key:` or `key: null` (or `--set key=`): no value given
            raise InputError(f"{where}.{key} needs a value; it was empty or null")
        if declared.startswith("tuple") and isinstance(value, list):
            value = tuple(value)
        if declared in ("float", "float | None") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        numeric = declared.split(" |")[0] in ("float", "int")
        if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{where}.{key} must be a number, got {shown(value)}")
        if numeric and isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}.{key} must be a finite number, got {shown(value)}")
        if declared == "bool" and not isinstance(value, bool):
            raise InputError(f"{where}.{key} must be true or false, got {shown(value)}")
        if declared.startswith("str") and value is not None and not isinstance(value, str):
            raise InputError(f"{where}.{key} must be text, got {shown(value)}")
        if declared.startswith("tuple") and not (isinstance(value, tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise InputError(f"{where}.{key} must be a list of integers, e.g. [512], got {shown(value)}")
        if declared.split(" |")[0] == "int" and isinstance(value, float):
            if not value.is_integer():
                raise InputError(f"{where}.{key} must be an integer, got {shown(value)}")
            value = int(value)
        converted[key] = value
    try:
        return cls(**converted)
    except TypeError as error:
        raise InputError(f"{where}: {str(error)[:300]}") from None


def _expanded_size(root: yaml.Node, where: str) -> int:
    """The characters `root` stands for once every alias is followed (each node counted once per use); InputError
    past MAX_EXPANDED or for a node that contains itself. Iterative and memoised: the bomb is never expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = len(node.value) + 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_EXPANDED:
                line = node.start_mark.line + 1 if node.start_mark else "?"
                raise InputError(f"{where}: the value at line {line} expands, once its aliases (*name) are followed, to "
                                 f"more than {MAX_EXPANDED:,} characters; write the settings out")
            continue
        if key in open_nodes:
            raise InputError(f"{where}: a value contains itself through an alias (line {node.start_mark.line + 1}); "
                             "write the settings out")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """yaml.safe_load, refusing a document that expands past MAX_EXPANDED characters (checked on the composed
    nodes, where an alias is still a reference, before anything is built) and keys given twice. On libyaml where
    PyYAML has it: ten times faster on a long list, and it refuses a nesting deeper than 1,000 itself."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, self.name)
        return node

    def construct_mapping(self, node, deep=False):
        # YAML keeps the last of two equal keys without a word: a setting given twice is a mistake to show.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys: SafeLoader refuses them itself
            if key in seen:
                raise InputError(f"{self.name}: {shown(key)} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BRACKETS = re.compile(r"[\[\]{}]")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
MAX_FLOW_DEPTH = 64


def load_yaml(text: str, where: str) -> Any:
    """`text` parsed as YAML by the bounded loader; InputError (one line) if malformed, too deep or too large."""
    # PyYAML's scanner slows down with each open bracket (0.7 s at 60,000): count the nesting first.
    steps = map(_BRACKET_STEP.__getitem__, _BRACKETS.findall(text))
    if max(itertools.accumulate(steps, initial=0)) > MAX_FLOW_DEPTH:
        raise InputError(f"{where} nests more than {MAX_FLOW_DEPTH} brackets deep; settings are a mapping of a few levels")
    try:
        loader = _BoundedLoader(text)
        loader.name = where
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except RecursionError:
        raise InputError(f"{where} nests too deeply; settings are a mapping of a few levels") from None
    except UnicodeError:   # bytes that are not UTF-8 reach argv as lone surrogates
        raise InputError(f"{where} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = str(getattr(error, "problem", None) or error).replace("\n", " ")
        raise InputError(f"malformed YAML in {where}{at}: {problem[:200]}") from None


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(path: Path, what: str, mode: int) -> InputError:
    if stat.S_ISDIR(mode):
        return InputError(f"{what} file {shown_path(path)} is a folder; give the YAML file itself")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return InputError(f"{what} file {shown_path(path)} is {kind}, not a regular file; give a YAML file")


def resolved(path: str | Path, what: str) -> Path:
    """`path` made absolute with its links resolved; InputError (one line) for a link loop or a name too long."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as error:   # Python 3.11 raises RuntimeError for a symbolic link loop
        reason = getattr(error, "strerror", None) or "a symbolic link loop"
        raise InputError(f"{what} {shown_path(path)}: {reason}") from None


def read_yaml_file(path: Path, what: str) -> Any:
    """The parsed YAML of `path`; InputError (one line, with line and column) if missing, not a regular file, too
    large, not UTF-8, malformed, or expanding past MAX_EXPANDED through its aliases."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; what was opened is checked, not the name.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {shown_path(path)}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{what} file {shown_path(path)} is a symbolic link loop") from None
        raise InputError(f"{what} file {shown_path(path)} cannot be read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_file(path, what, info.st_mode)
        if info.st_size > MAX_FILE_BYTES:
            raise InputError(f"{what} file {shown_path(path)} is {info.st_size} bytes; settings files are at most "
                             f"{MAX_FILE_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise InputError(f"{what} file {shown_path(path)} is a folder; give the YAML file itself") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{what} file {shown_path(path)} is over {MAX_FILE_BYTES} bytes; settings files are at most that")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what} file {shown_path(path)} is not UTF-8 text (byte {error.start}: "
                         f"{error.object[error.start]:#04x})") from None
    return load_yaml(text, shown_path(path))


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
        pretrain = dataclasses.replace(pretrain, data_dir=str(resolved(origin.parent / pretrain.data_dir,
                                                                       "pretrain.data_dir")))
    elif pretrain.dataset != "digits":  # (digits is bundled) the default ./data, as `sslsearch pretrain` has it
        pretrain = dataclasses.replace(pretrain, data_dir=str((Path.cwd() / "data").resolve()))
    if sections["scheduler"].grace_period is None:
        # ASHA's first rung on the first report after epoch 0, so every rung falls on a report.
        sections["scheduler"] = dataclasses.replace(sections["scheduler"], grace_period=min(pretrain.eval_every, pretrain.epochs))
    return Experiment(name=str(raw.get("name") or origin.stem), pretrain=pretrain, source=source, **sections)


def space_file(space: str | Path, base: Path) -> Path:
    """The search-space file `space` names, relative to `base`: a file, or a shipped space by its name alone when no file
    of that name is there (then as it is: loading it names what is missing)."""
    path = base / space
    if not os.path.lexists(path) and (shipped := shipped_space(str(space))) is not None:
        return shipped
    return path.resolve()


def experiment_path(path: str | Path | None) -> Path:
    """The experiment file `path` names, absolute: a file, or a shipped experiment by its name (`digits`) when no file
    of that name is there (a folder of that name does not count); None is the embedded default. InputError (one line,
    naming the shipped ones) if neither."""
    if path is None:
        return DEFAULT_EXPERIMENT
    shipped = shipped_experiment(str(path))
    if not os.path.lexists(path) or (shipped is not None and os.path.isdir(path)):   # (a folder is never an experiment)
        if shipped is None:
            raise InputError(f"experiment file not found: {shown_path(path)} (give a YAML file, or a shipped experiment by "
                             f"name: {', '.join(experiment_names())})")
        return shipped
    return resolved(path, "experiment file")


def load_experiment(path: str | Path | None = None, overrides: list[str] = (), name: str | None = None) -> Experiment:
    """Read an experiment file (None: the embedded digits default; a shipped one by its name alone), apply
    overrides, validate."""
    path = experiment_path(path)
    raw = read_yaml_file(path, "experiment")
    if raw is None or raw == {}:
        raise InputError(f"experiment file {shown_path(path)} is empty; it needs at least a pretrain section "
                         "(see experiments/digits.yaml)")
    if not isinstance(raw, dict):
        raise InputError(f"{shown_path(path)} must hold a mapping with keys name, {', '.join(_SECTIONS)}")
    empty = [key for key in _SECTIONS if key in raw and raw[key] in (None, {})]
    if empty:
        raise InputError(f"section(s) {', '.join(empty)} of {shown_path(path)} are empty; give settings or remove the section")
    if not isinstance(raw.get("name", ""), str):
        raise InputError(f"name in {shown_path(path)} must be text, got {shown(raw['name'])}")
    for override in overrides:
        keys, value = parse_override(override)
        _merge(raw, keys, value)
    if name is not None:
        raw["name"] = name
    if not isinstance(raw.get("name", ""), str):
        raise InputError(f"--set name must be text, got {shown(raw['name'])}")
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


def _resource_ok(quantity: float, most: float) -> bool:
    return quantity == 0 or RESOURCE_GRANULARITY <= quantity <= most


def validate_experiment(experiment: Experiment) -> None:
    """One-line InputError for any setting a sweep cannot use (the machine's own limits: `check_machine`)."""
    experiment.pretrain.validate()
    s, sch, r, t = experiment.search, experiment.scheduler, experiment.resources, experiment.tracking
    checks = [
        # num_samples first: the seed's bound depends on it, and a wild num_samples must be blamed on itself.
        (1 <= s.num_samples <= MAX_NUM_SAMPLES, f"search.num_samples must be in [1, {MAX_NUM_SAMPLES:,}], got {s.num_samples:g}"),
        (0 <= s.seed < 2**32 - s.num_samples, f"search.seed must be in [0, 2**32 - num_samples), got {s.seed:g}"),
        (0 <= r.max_failures <= MAX_FAILURES, f"resources.max_failures must be in [0, {MAX_FAILURES}], got {r.max_failures:g}"),
        (s.sampler in SAMPLERS, f"search.sampler must be one of {', '.join(SAMPLERS)}, got {shown(s.sampler)}"),
        (1 <= s.max_concurrent <= MAX_CONCURRENT,
         f"search.max_concurrent must be in [1, {MAX_CONCURRENT:,}], got {s.max_concurrent:g}"),
        (s.time_budget_s is None or MIN_TIME_BUDGET_S <= s.time_budget_s <= MAX_TIME_BUDGET_S,
         f"search.time_budget_s must be in [{MIN_TIME_BUDGET_S:g}, {MAX_TIME_BUDGET_S:,.0f}] seconds (or absent: no budget), "
         f"got {s.time_budget_s:g}" if s.time_budget_s is not None else ""),
        (not s.paired or s.num_samples % 2 == 0, f"search.paired needs an even num_samples (pairs), got {s.num_samples}"),
        (sch.type in SCHEDULERS, f"scheduler.type must be one of {', '.join(SCHEDULERS)}, got {shown(sch.type)}"),
        (sch.type != "asha" or 1 <= sch.grace_period <= experiment.pretrain.epochs,
         f"scheduler.grace_period must be in [1, pretrain.epochs={experiment.pretrain.epochs}], got {sch.grace_period:g}"),
        (sch.reduction_factor > 1, f"scheduler.reduction_factor must be > 1, got {sch.reduction_factor:g}"),
        (_resource_ok(r.cpus_per_trial, MAX_CPUS_PER_TRIAL) and r.cpus_per_trial > 0,
         f"resources.cpus_per_trial must be in [{RESOURCE_GRANULARITY:g}, {MAX_CPUS_PER_TRIAL}] (Ray counts in "
         f"1/10,000ths), got {r.cpus_per_trial:g}"),
        (_resource_ok(r.gpus_per_trial, MAX_GPUS_PER_TRIAL),
         f"resources.gpus_per_trial must be 0 or in [{RESOURCE_GRANULARITY:g}, {MAX_GPUS_PER_TRIAL}] (Ray counts in "
         f"1/10,000ths), got {r.gpus_per_trial:g}"),
        (_valid_policy(t.checkpoints), f"tracking.checkpoints must be one of {', '.join(CHECKPOINT_POLICIES)} "
                                       f"(N a whole number ≥ 1), got {shown(t.checkpoints)}"),
        (t.uri is None or t.uri.startswith(("http://", "https://")) or (t.uri.startswith("sqlite:////")),
         f"tracking.uri must be http(s)://host:port or sqlite:////absolute/path (MLflow 3 has no file store), "
         f"got {shown(t.uri)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    if sch.type == "asha":
        rung_epochs(experiment.pretrain.epochs, experiment.pretrain.eval_every, sch.grace_period, sch.reduction_factor)
        if s.paired and s.max_concurrent < 2:
            raise InputError("a paired ASHA sweep runs both twins of a pair together (one waits for the other at each "
                             f"rung): search.max_concurrent must be at least 2, got {s.max_concurrent}")


def check_machine(experiment: Experiment, address: str | None) -> None:
    """Before Ray starts: InputError if the data or, for a local sweep (no `address`), this machine can never give
    what every trial needs. (A cluster's resources are checked once connected: its autoscaler may add nodes.)"""
    experiment.pretrain.check_data()
    if address is not None:
        return
    experiment.pretrain.check_local_data()
    r = experiment.resources
    cpus = os.cpu_count() or 1   # what connect_ray gives a local Ray instance
    if r.cpus_per_trial > cpus:
        raise InputError(f"resources.cpus_per_trial is {r.cpus_per_trial:g}, but this machine has {cpus} CPUs; lower it "
                         "or join a cluster with --address")
    gpus = visible_gpus()
    if gpus is not None and r.gpus_per_trial > gpus:
        raise InputError(f"resources.gpus_per_trial is {r.gpus_per_trial:g}, but this machine has {gpus} GPU"
                         f"{'s' * (gpus != 1)}; lower it (--set resources.gpus_per_trial=0 on a machine without one) "
                         "or join a cluster with --address")


def ray_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray cluster address, None for `auto`; InputError unless auto, HOST:PORT or ray://HOST:PORT."""
    if address == "auto":
        return None
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or any(c.isspace() for c in host) or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InputError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {shown(address)}")
    return host.strip("[]"), int(port)
