"""What determines a pretraining run, as a frozen dataclass that imports no torch.

The command line parses and validates settings (flags, experiment files, `--set` overrides)
before it imports torch, Ray or MLflow, so that bad input is refused in well under a second;
this module is the part of the pretraining layer that makes that possible. The names of the
method's choices live here once; the modules that implement them import them from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sslsearch.errors import InputError, shown, shown_path

if TYPE_CHECKING:
    import torch

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "tiny_imagenet", "folder")
LOSSES: tuple[str, ...] = ("barlow", "hsic")
NORMALIZATIONS: tuple[str, ...] = ("reference", "batchnorm")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "lars")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
# The backbones sslsearch.method.models registers on import (tests/test_models.py checks they agree).
BUILTIN_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "small_cnn")

# Sane bounds: beyond them a value is a slip (1e20 for 20), not a plan.
MAX_EPOCHS = 100_000
# feature_dim and projector widths: the loss holds a D×D cross-correlation, 16 GiB in float32 at D = 65,536
# (the official recipe's 8,192 is 256 MiB).
MAX_WIDTH = 65_536
MAX_PROJECTOR_LAYERS = 8
MAX_SEED = 2**32                 # numpy's seeds, which the data split and augmentations use
MAX_IMAGE_SIZE = 1024


IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")   # what a `folder` data set's images end with
DEFAULT_DATA_DIR = "data"      # resolved against the current directory, then made absolute
TEST_FRACTION = 0.2            # digits and test-less folders: a fixed held-out test split (sslsearch.method.data)
# Each downloadable data set as it lies under data_dir once extracted: its folder and the files that must be there
# (sslsearch.method.data downloads them; checked here, without torch, before a sweep writes anything).
DATASET_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
    "stl10": ("stl10_binary", ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin",
                               "class_names.txt")),
    "tiny_imagenet": ("tiny-imagenet-200", ("wnids.txt", "train", "val")),
}


def image_files(directory: Path) -> list[Path]:
    """The images under `directory` (any depth) as the `folder` and Tiny ImageNet readers take them, sorted."""
    return sorted(p for p in directory.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def class_folders(directory: Path) -> list[Path]:
    """The class folders of a `folder` data set's split (its visible subfolders), sorted."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def held_out_count(count: int, fraction: float) -> int:
    """Items of a class of `count` that a stratified split with `fraction` holds out."""
    # Round half up (Python's round() goes to even: 2.5 → 2, surprising in a table of split sizes).
    # A class of ≥2 items gives at least one to the held-out side and keeps at least one;
    # a singleton stays on the keep side, where a probe can still learn it.
    if fraction == 0 or count < 2:
        return 0
    return min(max(math.floor(fraction * count + 0.5), 1), count - 1)


# The built-in data sets' labelled training images per class (before the validation split) and unlabeled images,
# so that batch_size and val_fraction are checked against the data before anything loads it
# (tests/test_config.py checks digits against its loader). digits: scikit-learn's 1,797 images less the fixed
# 20 % test split (TEST_FRACTION) that held_out_count carves per class.
_DIGITS_CLASSES = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
TRAIN_CLASS_COUNTS: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": (tuple(c - held_out_count(c, TEST_FRACTION) for c in _DIGITS_CLASSES), 0),
    "cifar10": ((5000,) * 10, 0),
    "cifar100": ((500,) * 100, 0),
    "stl10": ((500,) * 10, 100_000),
    "tiny_imagenet": ((500,) * 200, 0),
}


_FOLDER_COUNTS: dict[str, tuple[int, ...] | None] = {}   # resolved data_dir → counts: a space check asks per candidate


def folder_class_counts(data_dir: str | None) -> tuple[int, ...] | None:
    """A `folder` data set's labelled training images per class before the validation split, counted on disk as its
    reader will take them (a train/ without test/ beside it first gives up the fixed TEST_FRACTION test split, as
    digits does); None when its train/ folder is not here (a cluster's workers may hold it)."""
    root = Path(data_dir or DEFAULT_DATA_DIR).expanduser().resolve()
    train = root / "train"
    try:
        key = f"{root}:{train.stat().st_mtime_ns}"   # a class folder added since is counted anew
    except OSError:
        key = str(root)
    if key not in _FOLDER_COUNTS:
        counts = None
        if train.is_dir():
            counts = tuple(len(image_files(folder)) for folder in class_folders(train))
            if not (root / "test").is_dir():
                counts = tuple(c - held_out_count(c, TEST_FRACTION) for c in counts)
        _FOLDER_COUNTS[key] = counts
    return _FOLDER_COUNTS[key]


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):   # not every system names them
        return None


def visible_gpus() -> int | None:
    """GPUs this machine shows without loading a driver library: NVIDIA device files (as CUDA_VISIBLE_DEVICES
    narrows them); None when GPUs may be present that have no such file (AMD's /dev/kfd, WSL2's /dev/dxg), so only
    Ray or torch can count them."""
    if Path("/dev/kfd").exists() or Path("/dev/dxg").exists():
        return None
    count = sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name)) if os.path.isdir("/dev") else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and count:
        count = min(count, len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"]))
    return count


def _registered_backbones() -> list[str]:
    # A custom backbone can only be registered through sslsearch.method.models, so while that module is
    # not imported the registry holds exactly the built-in ones and torch need not be loaded.
    models = sys.modules.get("sslsearch.method.models")
    return models.list_backbones() if models is not None else sorted(BUILTIN_BACKBONES)


def _cuda_available() -> bool:
    if visible_gpus() == 0:   # no GPU device at all: no need to load torch (seconds) to say so
        return False
    import torch  # only asked when a CUDA device is requested

    return torch.cuda.is_available()


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run. Defaults are the reference's unless noted."""

    dataset: str = "digits"
    data_dir: str | None = None          # absolute path; Ray runs trials in their own working directory
    val_fraction: float = 0.1            # carved, stratified, from the labelled training set
    split_seed: int = 0                  # fixed across a sweep so every trial sees the same val split
    image_size: int | None = None        # "folder" data sets only
    backbone: str | None = None          # None: small_cnn for digits, resnet50 (the reference) otherwise
    feature_dim: int = 128               # reference README
    projector_hidden: tuple[int, ...] = (512,)
    projector_last_bias: bool = True     # the official recipe: False
    normalize_projection: bool = True    # the reference L2-normalises z; the official recipe does not
    zero_init_residual: bool = False     # ResNets: last BN of each residual branch starts at 0 (the official recipe)
    loss: str = "barlow"                 # "barlow" (off-diagonal → 0) or "hsic" (off-diagonal → −1)
    lmbda: float = 0.0078125             # 1/128, the reference README's runs
    normalization: str = "reference"     # "batchnorm" for the official Barlow Twins recipe
    optimizer: str = "adam"
    lr: float = 1e-3                     # weights (tensors of ≥ 2 dimensions)
    lr_biases: float | None = None       # biases and BatchNorm parameters; None: the same as lr
    lr_per_256: bool = False             # lr and lr_biases are per 256 images: ×batch_size/256 (the official recipe)
    weight_decay: float = 1e-6
    weight_decay_filter: bool = False    # True: no weight decay on biases and BatchNorm parameters (official)
    lars_adaptation_filter: bool = False  # True: LARS does not adapt biases and BatchNorm parameters (official)
    momentum: float = 0.9                # SGD and LARS only
    schedule: str = "constant"           # the reference keeps Adam's lr constant
    warmup_epochs: int = 0
    batch_size: int = 128                # reference README
    epochs: int = 1000                   # the reference's default
    eval_every: int = 5                  # the reference runs its kNN monitor every 5 epochs
    knn_k: int = 200
    knn_temperature: float = 0.5
    probe_weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"                 # "auto": CUDA when available, else CPU
    compile: bool = False                # torch.compile the model (CUDA; compile time is paid once)
    joint_views: bool = False            # True: both views in one forward pass, BN over both (not the reference)

    def resolved_backbone(self) -> str:
        return self.backbone or ("small_cnn" if self.dataset == "digits" else "resnet50")

    def learning_rates(self) -> tuple[float, float]:
        """Base learning rates (weights, biases and BatchNorm parameters), batch scaling applied."""
        scale = self.batch_size / 256 if self.lr_per_256 else 1.0
        return self.lr * scale, (self.lr if self.lr_biases is None else self.lr_biases) * scale

    def validate(self) -> None:
        """Raise InputError (one line) for any value the run cannot use."""
        choices = {"dataset": DATASETS, "loss": LOSSES, "normalization": NORMALIZATIONS,
                   "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InputError(f"unknown {key} {shown(getattr(self, key))}; expected one of {', '.join(allowed)}")
        backbones = _registered_backbones()
        if self.resolved_backbone() not in backbones:
            raise InputError(f"unknown backbone {shown(self.backbone)}; expected one of {', '.join(backbones)}")
        if self.zero_init_residual and not self.resolved_backbone().startswith("resnet"):
            raise InputError(f"zero_init_residual needs a ResNet backbone, got {self.resolved_backbone()}")
        if self.lars_adaptation_filter and self.optimizer != "lars":
            raise InputError(f"lars_adaptation_filter applies to the lars optimizer only, got optimizer {self.optimizer}")
        hidden = self.projector_hidden
        checks = [
            (self.lmbda >= 0 and math.isfinite(self.lmbda), f"lmbda must be a finite number ≥ 0, got {self.lmbda:g}"),
            (1 <= self.feature_dim <= MAX_WIDTH, f"feature_dim must be in [1, {MAX_WIDTH:,}] (the loss holds a "
                                                 f"feature_dim² matrix), got {self.feature_dim:g}"),
            (len(hidden) <= MAX_PROJECTOR_LAYERS, f"projector_hidden holds at most {MAX_PROJECTOR_LAYERS} widths, "
                                                  f"got {len(hidden):,}"),
            (all(1 <= h <= MAX_WIDTH for h in hidden),
             f"projector_hidden widths must be in [1, {MAX_WIDTH:,}], got {shown(hidden)}"),
            (self.batch_size >= 2, f"batch_size must be ≥ 2 (the loss standardises along the batch), got {self.batch_size}"),
            (1 <= self.epochs <= MAX_EPOCHS, f"epochs must be in [1, {MAX_EPOCHS:,}], got {self.epochs:g}"),
            # Above 10 every optimiser here (Adam, SGD, LARS's trust-scaled steps) diverges at once.
            (0 < self.lr <= 10, f"lr must be in (0, 10], got {self.lr:g}"),
            (self.lr_biases is None or (self.lr_biases >= 0 and math.isfinite(self.lr_biases)),
             f"lr_biases must be ≥ 0, got {self.lr_biases}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay:g}"),
            (0 <= self.momentum <= 1, f"momentum must be in [0, 1], got {self.momentum:g}"),
            # A warm-up longer than the run is allowed: the run is then all warm-up (a short test of a recipe).
            (0 <= self.warmup_epochs <= MAX_EPOCHS, f"warmup_epochs must be in [0, {MAX_EPOCHS:,}], got {self.warmup_epochs:g}"),
            (1 <= self.eval_every <= MAX_EPOCHS, f"eval_every must be in [1, {MAX_EPOCHS:,}], got {self.eval_every:g}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction:g}"),
            (self.knn_k >= 1 and self.knn_temperature > 0, "knn_k must be ≥ 1 and knn_temperature > 0"),
            (self.probe_weight_decay >= 0, f"probe_weight_decay must be ≥ 0, got {self.probe_weight_decay:g}"),
            (0 <= self.seed < MAX_SEED, f"seed must be in [0, 2**32), got {self.seed:g}"),
            (0 <= self.split_seed < MAX_SEED, f"split_seed must be in [0, 2**32), got {self.split_seed:g}"),
            (self.image_size is None or 1 <= self.image_size <= MAX_IMAGE_SIZE,
             f"image_size must be in [1, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}"),
            (re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", self.device) is not None,
             f"device must be auto, cpu or cuda[:N], got {shown(self.device)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.device.startswith("cuda") and not _cuda_available():
            raise InputError(f"device {self.device!r} requested but CUDA is not available; use --device cpu")

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def pretraining_images(self) -> int | None:
        """Images one epoch pretrains on (labelled training images less the validation split, plus unlabeled ones):
        known up front for the built-in data sets, counted on disk for a `folder` one; None when that is not here."""
        if self.dataset == "folder":
            classes, unlabeled = folder_class_counts(self.data_dir), 0
            if classes is None:
                return None
        elif self.dataset in TRAIN_CLASS_COUNTS:
            classes, unlabeled = TRAIN_CLASS_COUNTS[self.dataset]
        else:
            return None
        return sum(c - held_out_count(c, self.val_fraction) for c in classes) + unlabeled

    def data_on_disk(self) -> bool:
        """Whether the data set needs no download: digits comes with scikit-learn, a `folder` one is never downloaded
        (check_local_data says when it is missing), a downloadable one has every file of its extracted archive."""
        if self.dataset not in DATASET_FILES:
            return True
        folder, files = DATASET_FILES[self.dataset]
        base = Path(self.data_dir or DEFAULT_DATA_DIR).expanduser().resolve() / folder
        return all((base / name).exists() for name in files)

    def check_data(self) -> None:
        """InputError (one line) for settings the data set cannot satisfy, checked without loading it: a batch larger
        than an epoch's images (a validation split that leaves too few; a `folder` data set's images counted on disk),
        a class folder without images, a data folder that is a file."""
        if self.data_dir is not None and os.path.exists(self.data_dir) and not os.path.isdir(self.data_dir):
            raise InputError(f"pretrain.data_dir {shown_path(self.data_dir)} is a file; give the folder that holds "
                             "(or will hold) the data sets")
        images = self.pretraining_images()
        if images is not None and self.batch_size > images:
            counted = ""
            if self.dataset == "folder":   # counted on disk: say where
                counted = f" at {shown_path(Path(self.data_dir or DEFAULT_DATA_DIR) / 'train', 80)}"
            raise InputError(f"batch_size {self.batch_size:g} exceeds the {images:,} pretraining images of {self.dataset}"
                             f"{counted} (its training images less the val_fraction={self.val_fraction:g} validation "
                             "split); lower batch_size or val_fraction")
        if self.dataset == "folder" and 0 in (folder_class_counts(self.data_dir) or ()):
            train = Path(self.data_dir or DEFAULT_DATA_DIR).expanduser().resolve() / "train"
            empty = next(f for f in class_folders(train) if not image_files(f))
            raise InputError(f"{shown_path(empty, 120)} holds no images; accepted suffixes: {', '.join(IMAGE_SUFFIXES)}")

    def check_local_data(self) -> None:
        """InputError (one line) if the data cannot be used on this machine: a `folder` data set, which has nothing to
        download, is not here; the data set at image_size does not fit its memory. (Not called for a cluster, whose
        workers may hold the data and more memory.)"""
        images = self.pretraining_images()
        if images is not None and self.image_size is not None:
            # The data set lives in memory as uint8 at image_size² (the pretraining images alone, a lower bound).
            need, have = images * 3 * self.image_size ** 2, _physical_memory()
            if have and need > have:
                raise InputError(f"image_size {self.image_size} makes the {images:,} pretraining images of {self.dataset} "
                                 f"{need / 2**30:,.1f} GiB as uint8, more than this machine's {have / 2**30:,.1f} GiB; "
                                 "lower image_size")
        if self.dataset == "folder":
            train = Path(self.data_dir or "data") / "train"
            if not (train.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir())):
                raise InputError(f"folder data set not found: expected {shown_path(train, 120)}/<class>/<images> "
                                 "(and optionally test/<class>/<images> beside train/)")

    def to_dict(self) -> dict:
        """Plain values only (lists for tuples), so checkpoints load with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown pretraining setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = dict(values)
        if "projector_hidden" in values:
            values["projector_hidden"] = tuple(values["projector_hidden"])
        return cls(**values)
