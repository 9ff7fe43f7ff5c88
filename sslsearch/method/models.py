"""Backbones (a small registry) and the projector, as the reference builds them.

The ResNets are torchvision's, adapted like yaohungt/Barlow-Twins-HSIC: a 3×3 stride-1 stem
instead of the 7×7 stride-2 one, the max-pool removed for 32 px inputs (CIFAR) and kept for
64 px inputs (STL-10, Tiny ImageNet), and no classifier. Because only `conv1`, `maxpool` and `fc`
are swapped (the latter two for parameter-free `Identity`), the state_dict keeps torchvision's key
names: a backbone loads into `torchvision.models.resnet50()` with the same three swaps, strict.

torchvision is imported only when a ResNet is built: importing it (its `ops` pull in torch._dynamo) took
3.5 s of CPU and 160 MB in every process that imported this module (2-core x86_64 CPU sandbox, torch 2.14.1,
torchvision 0.29.1), and every trial of a sweep is such a process, whatever its backbone.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslsearch.errors import InputError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    """Decorator: register a backbone constructor `f(image_size) -> nn.Module` under `name`."""

    def wrap(constructor):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = constructor
        return constructor

    return wrap


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_BACKBONES)


def build_backbone(name: str, image_size: int) -> nn.Module:
    """Build backbone `name` for square inputs of side `image_size`.

    The module maps B×3×H×W images to B×`out_dim` features and has an `out_dim` attribute.
    """
    if name not in _BACKBONES:
        raise InputError(f"unknown backbone {name!r}; expected one of {', '.join(list_backbones())}")
    return _BACKBONES[name](image_size)


def adapt_resnet(model: nn.Module, image_size: int) -> nn.Module:
    """Apply the reference's changes to a torchvision ResNet in place and return it."""
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if image_size <= 32:
        # At 32 px the reference drops the max-pool: with the stride-1 stem the last stage still sees 4×4.
        model.maxpool = nn.Identity()
    model.out_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Start the last BatchNorm of every residual branch at γ = 0, so each block begins as the
    identity (torchvision's `zero_init_residual=True`, which the official Barlow Twins code uses)."""
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is None:  # not imported: no torchvision block can exist in this process
        return model
    for module in model.modules():
        if isinstance(module, resnet.Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, resnet.BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model


def _resnet(name: str) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        import torchvision.models  # here, not at the top: see the module's docstring

        return adapt_resnet(getattr(torchvision.models, name)(weights=None), image_size)

    return build


for _depth in (18, 34, 50):
    register_backbone(f"resnet{_depth}")(_resnet(f"resnet{_depth}"))


class SmallConvNet(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling: fast enough for CPU tests and digits.

    Width 8 (32 features) is deliberate: wider random networks already reach ~98 % with a linear
    probe on digits, which leaves pretraining (and a search) nothing to show.
    """

    def __init__(self, width: int = 8):
        super().__init__()
        layers, channels = [], 3
        for i, out in enumerate((width, 2 * width, 4 * width, 4 * width)):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


register_backbone("small_cnn")(lambda image_size: SmallConvNet())


def build_projector(in_dim: int, feature_dim: int, hidden: tuple[int, ...] = (512,), last_bias: bool = True) -> nn.Sequential:
    """Linear(no bias)→BN→ReLU for each hidden width, then Linear(…, feature_dim).

    The reference uses hidden=(512,) with a biased last layer; the official Barlow Twins recipe
    uses hidden=(8192, 8192), feature_dim=8192 and no bias on the last layer.
    """
    if feature_dim < 1 or any(h < 1 for h in hidden):
        raise InputError(f"projector widths must be ≥ 1, got hidden={hidden} feature_dim={feature_dim}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, feature_dim, bias=last_bias))
    return nn.Sequential(*layers)


class SSLModel(nn.Module):
    """Backbone + projector. `forward` returns (backbone features, projection z)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, normalize_projection: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        # The reference L2-normalises z before the loss standardises it along the batch.
        self.normalize_projection = normalize_projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        z = self.projector(features)
        if self.normalize_projection:
            z = F.normalize(z, dim=-1)
        return features, z
