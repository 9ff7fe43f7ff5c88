"""Barlow Twins and its HSIC variant as loss functions on two batches of embeddings.

References:
- Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021.
- Tsai et al., "A Note on Connecting Barlow Twins with Negative-Sample-Free Contrastive
  Learning", arXiv 2104.13712 (code: yaohungt/Barlow-Twins-HSIC).

Both losses share the on-diagonal term Σᵢ(cᵢᵢ − 1)²; they differ only in where they push the
off-diagonal entries of the cross-correlation matrix c: towards 0 (Barlow Twins) or towards −1
(the HSIC variant), weighted by λ (`lmbda`, named as in the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslsearch.method.config import LOSSES, NORMALIZATIONS  # the names live with the config, which imports no torch


def standardize(z: torch.Tensor, normalization: str = "reference") -> torch.Tensor:
    """Standardise each embedding dimension along the batch.

    "reference": (z − mean) / std with Bessel's correction, as yaohungt/Barlow-Twins-HSIC does.
    "batchnorm": BatchNorm1d(affine=False) in training mode, as the official Barlow Twins code
    does (biased variance, eps 1e-5).
    """
    if normalization == "reference":
        return (z - z.mean(dim=0)) / z.std(dim=0)
    if normalization == "batchnorm":
        return F.batch_norm(z, None, None, training=True, eps=1e-5)
    raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, normalization: str = "reference") -> torch.Tensor:
    """The D×D cross-correlation c = z1ᵀz2 / B of the batch-standardised embeddings."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two B×D embeddings of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    # Always in float32: under bf16 autocast a D×D sum of squares loses too many digits.
    z1, z2 = z1.float(), z2.float()
    batch_size = z1.shape[0]
    return standardize(z1, normalization).T @ standardize(z2, normalization) / batch_size


def _redundancy_loss(c: torch.Tensor, lmbda: float, off_target: float) -> torch.Tensor:
    diag = torch.diagonal(c)
    on_diag = (diag - 1).pow(2).sum()
    # Σᵢ≠ⱼ (cᵢⱼ − t)² as the full sum minus the diagonal: no D×D mask, no off-diagonal copy.
    off_diag = (c - off_target).pow(2).sum() - (diag - off_target).pow(2).sum()
    return on_diag + lmbda * off_diag


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lmbda: float, normalization: str = "reference") -> torch.Tensor:
    """Σᵢ(cᵢᵢ−1)² + λ·Σᵢ≠ⱼ cᵢⱼ²: off-diagonal correlations pushed to 0."""
    return _redundancy_loss(cross_correlation(z1, z2, normalization), lmbda, 0.0)


def hsic_loss(z1: torch.Tensor, z2: torch.Tensor, lmbda: float, normalization: str = "reference") -> torch.Tensor:
    """Σᵢ(cᵢᵢ−1)² + λ·Σᵢ≠ⱼ (cᵢⱼ+1)²: off-diagonal correlations pushed to −1 (the HSIC variant)."""
    return _redundancy_loss(cross_correlation(z1, z2, normalization), lmbda, -1.0)


def ssl_loss(name: str, z1: torch.Tensor, z2: torch.Tensor, lmbda: float, normalization: str = "reference") -> torch.Tensor:
    """Dispatch on the loss variant's name ("barlow" or "hsic")."""
    if name == "barlow":
        return barlow_twins_loss(z1, z2, lmbda, normalization)
    if name == "hsic":
        return hsic_loss(z1, z2, lmbda, normalization)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
