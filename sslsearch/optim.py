"""Optimisers and the learning-rate schedule used for pretraining.

LARS follows the official Barlow Twins code (You et al., "Large Batch Training of Convolutional
Networks", 2017): biases and BatchNorm parameters (the 1-D tensors) are excluded from weight
decay and from the layer-wise adaptation.
"""

from __future__ import annotations

import math

import torch

from sslsearch.pretrain_config import OPTIMIZERS, SCHEDULES  # the names live with the config, which imports no torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is scaled by η·‖w‖/‖g‖."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:  # weights only: biases and BN parameters are left alone
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    # torch.where keeps this on the device: no host sync to test the norms.
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.9, fused: bool = False):
    """Adam (the reference: lr 1e-3, wd 1e-6), SGD with momentum, or LARS."""
    if name == "adam":
        # Fused Adam runs the whole update in a few kernels on CUDA; not available on every CPU build.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, **({"fused": True} if fused else {}))
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at `step`: linear warm-up, then constant or cosine to 0.1 %."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        # Decays to 1e-3 of the base rather than 0, as the official Barlow Twins recipe does.
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
