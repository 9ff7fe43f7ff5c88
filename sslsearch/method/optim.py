"""Optimisers, their parameter groups and the learning-rate schedule used for pretraining.

Parameters come in two groups, as in the official Barlow Twins code (facebookresearch/barlowtwins,
main.py): weights (tensors of 2 or more dimensions) and the rest, biases and BatchNorm
parameters (1-D tensors). Each group has its own learning rate; the second can be excluded from
weight decay (`weight_decay_filter`) and from LARS's layer-wise adaptation
(`lars_adaptation_filter`), as the official code excludes it from both.

LARS follows You et al., "Large Batch Training of Convolutional Networks" (2017), as the
official Barlow Twins code implements it: SGD with momentum whose step for each tensor is
scaled by the trust ratio η·‖w‖/‖g‖ (g including weight decay).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sslsearch.method.config import OPTIMIZERS, SCHEDULES  # the names live with the config, which imports no torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each tensor is scaled by η·‖w‖/‖g‖.

    A parameter group with `lars_adaptation=False` skips the scaling (plain SGD with momentum):
    the official code's `lars_adaptation_filter` for biases and BatchNorm parameters.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001,
                 lars_adaptation: bool = True):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      lars_adaptation=lars_adaptation))

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
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
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


def parameter_groups(model: nn.Module, lr: float, lr_biases: float, weight_decay: float, *,
                     weight_decay_filter: bool = False, lars_adaptation_filter: bool = False) -> list[dict]:
    """[weights, biases and BatchNorm parameters] as optimiser parameter groups.

    Each group keeps its base learning rate as `base_lr` (the schedule multiplies it) and says
    whether LARS adapts it (`lars_adaptation`). Empty groups are left out.
    """
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": weights, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "lars_adaptation": True},
        {"params": others, "lr": lr_biases, "base_lr": lr_biases,
         "weight_decay": 0.0 if weight_decay_filter else weight_decay, "lars_adaptation": not lars_adaptation_filter},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.9, fused: bool = False):
    """Adam (the reference: lr 1e-3, wd 1e-6), SGD with momentum, or LARS.

    `params` may be parameter groups (`parameter_groups`); their own lr and weight decay win.
    """
    if name == "adam":
        # Fused Adam runs the whole update in a few kernels on CUDA; not available on every CPU build.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, **({"fused": True} if fused else {}))
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at `step` (0-based).

    As the official Barlow Twins code: a linear warm-up from 0 (step/warmup_steps), then constant
    or a cosine from 1 to 1e-3 over the remaining steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        # Decays to 1e-3 of the base rather than 0, as the official Barlow Twins recipe does.
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
