"""What determines a pretraining run, as a frozen dataclass that imports no torch.

The command line parses and validates settings (flags, experiment files, `--set` overrides)
before it imports torch, Ray or MLflow, so that bad input is refused in well under a second;
this module is the part of the pretraining layer that makes that possible. The names of the
method's choices live here once; the modules that implement them import them from here.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sslsearch.errors import InputError

if TYPE_CHECKING:
    import torch

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "tiny_imagenet", "folder")
LOSSES: tuple[str, ...] = ("barlow", "hsic")
NORMALIZATIONS: tuple[str, ...] = ("reference", "batchnorm")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "lars")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
# The backbones sslsearch.method.models registers on import (tests/test_models.py checks they agree).
BUILTIN_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "small_cnn")


def _registered_backbones() -> list[str]:
    # A custom backbone can only be registered through sslsearch.method.models, so while that module is
    # not imported the registry holds exactly the built-in ones and torch need not be loaded.
    models = sys.modules.get("sslsearch.method.models")
    return models.list_backbones() if models is not None else sorted(BUILTIN_BACKBONES)


def _cuda_available() -> bool:
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
                raise InputError(f"unknown {key} {getattr(self, key)!r}; expected one of {', '.join(allowed)}")
        backbones = _registered_backbones()
        if self.resolved_backbone() not in backbones:
            raise InputError(f"unknown backbone {self.backbone!r}; expected one of {', '.join(backbones)}")
        if self.zero_init_residual and not self.resolved_backbone().startswith("resnet"):
            raise InputError(f"zero_init_residual needs a ResNet backbone, got {self.resolved_backbone()}")
        if self.lars_adaptation_filter and self.optimizer != "lars":
            raise InputError(f"lars_adaptation_filter applies to the lars optimizer only, got optimizer {self.optimizer}")
        checks = [
            (self.lmbda >= 0 and math.isfinite(self.lmbda), f"lmbda must be a finite number ≥ 0, got {self.lmbda}"),
            (self.feature_dim >= 1, f"feature_dim must be ≥ 1, got {self.feature_dim}"),
            (all(h >= 1 for h in self.projector_hidden), f"projector_hidden widths must be ≥ 1, got {self.projector_hidden}"),
            (self.batch_size >= 2, f"batch_size must be ≥ 2 (the loss standardises along the batch), got {self.batch_size}"),
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            # Above 10 every optimiser here (Adam, SGD, LARS's trust-scaled steps) diverges at once.
            (0 < self.lr <= 10, f"lr must be in (0, 10], got {self.lr}"),
            (self.lr_biases is None or (self.lr_biases >= 0 and math.isfinite(self.lr_biases)),
             f"lr_biases must be ≥ 0, got {self.lr_biases}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            # A warm-up longer than the run is allowed: the run is then all warm-up (a short test of a recipe).
            (self.warmup_epochs >= 0, f"warmup_epochs must be ≥ 0, got {self.warmup_epochs}"),
            (self.eval_every >= 1, f"eval_every must be ≥ 1, got {self.eval_every}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.knn_k >= 1 and self.knn_temperature > 0, "knn_k must be ≥ 1 and knn_temperature > 0"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"device must be auto, cpu or cuda[:N], got {self.device!r}"),
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
