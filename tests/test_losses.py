"""Losses against an independent transcription of the reference, and their defining properties."""

import pytest
import torch

from sslsearch.method.losses import barlow_twins_loss, cross_correlation, hsic_loss, ssl_loss


def reference_loss(z1, z2, lmbda, corr_neg_one, bessel=True):
    """Written the way yaohungt/Barlow-Twins-HSIC main.py computes it (explicit off-diagonal gather), in float64."""
    z1, z2 = z1.double(), z2.double()
    n = z1.shape[0]
    if bessel:
        n1 = (z1 - z1.mean(0)) / z1.std(0)
        n2 = (z2 - z2.mean(0)) / z2.std(0)
    else:  # BatchNorm1d(affine=False) in training mode: biased variance, eps 1e-5
        n1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
        n2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = n1.T @ n2 / n
    d = c.shape[0]
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
    on = torch.diagonal(c).add(-1).pow(2).sum()
    off_term = off.add(1).pow(2).sum() if corr_neg_one else off.pow(2).sum()
    return on + lmbda * off_term


@pytest.mark.parametrize("batch,dim", [(2, 3), (8, 16), (128, 128), (64, 512), (33, 7)])
@pytest.mark.parametrize("lmbda", [0.0, 0.0051, 0.0078125, 1.0])
def test_matches_reference(batch, dim, lmbda):
    g = torch.Generator().manual_seed(batch * 1000 + dim)
    z1 = torch.randn(batch, dim, generator=g)
    z2 = z1 + 0.5 * torch.randn(batch, dim, generator=g)
    for loss, neg in ((barlow_twins_loss, False), (hsic_loss, True)):
        for normalization, bessel in (("reference", True), ("batchnorm", False)):
            got = loss(z1, z2, lmbda, normalization)
            want = reference_loss(z1, z2, lmbda, neg, bessel)
            torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["barlow", "hsic"])
def test_invariant_to_positive_affine_change_per_dimension(name):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    scale1, shift1 = torch.rand(32, generator=g) * 5 + 0.1, torch.randn(32, generator=g) * 10
    scale2, shift2 = torch.rand(32, generator=g) * 5 + 0.1, torch.randn(32, generator=g) * 10
    base = ssl_loss(name, z1, z2, 0.01)
    moved = ssl_loss(name, z1 * scale1 + shift1, z2 * scale2 + shift2, 0.01)
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-4)


def test_variants_differ_exactly_by_the_disputed_term():
    # (c+1)² − c² = 2c + 1, so HSIC − Barlow = λ·Σᵢ≠ⱼ (2cᵢⱼ + 1) = λ·(2·Σᵢ≠ⱼ cᵢⱼ + D(D−1)).
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(50, 20, generator=g), torch.randn(50, 20, generator=g)
    lmbda = 0.3
    c = cross_correlation(z1, z2).double()
    off_sum = c.sum() - torch.diagonal(c).sum()
    d = c.shape[0]
    expected = lmbda * (2 * off_sum + d * (d - 1))
    diff = hsic_loss(z1, z2, lmbda).double() - barlow_twins_loss(z1, z2, lmbda).double()
    torch.testing.assert_close(diff, expected, rtol=1e-5, atol=1e-3)


def test_perfectly_correlated_decorrelated_views_give_zero_barlow_loss():
    # Whitened, identical views: c = I (up to Bessel's factor), so the Barlow Twins loss is ~0.
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4096, 8, generator=g, dtype=torch.float64)
    z = torch.linalg.qr(z - z.mean(0))[0] * (4095 ** 0.5)
    loss = barlow_twins_loss(z.float(), z.float(), 1.0)
    assert loss.item() < 1e-3


def test_gradients_flow_and_bf16_inputs_are_computed_in_float32():
    z1 = torch.randn(16, 8, requires_grad=True)
    z2 = torch.randn(16, 8, requires_grad=True)
    loss = hsic_loss(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_rejects_mismatched_shapes_and_unknown_names():
    with pytest.raises(ValueError, match="equal shape"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 5), 0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        ssl_loss("simclr", torch.randn(4, 3), torch.randn(4, 3), 0.1)
    with pytest.raises(ValueError, match="unknown normalization"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), 0.1, normalization="layer")
