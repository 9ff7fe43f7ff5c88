"""evaluate.py against references: the probe's optimum against scikit-learn's, the kNN monitor
against a per-query loop written from the reference's formula, and feature extraction's modes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslsearch.method.data import ImageData
from sslsearch.method.evaluate import extract_features, fit_linear_probe, knn_accuracy, probe_scores
from sslsearch.method.models import build_backbone


def blobs(n=240, dim=6, classes=3, spread=1.5, seed=0):
    """Overlapping Gaussian classes with correlated, unevenly scaled dimensions (not separable)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    mixing = torch.randn(dim, dim, generator=g)
    x = (centers[labels] + spread * torch.randn(n, dim, generator=g)) @ mixing
    return x * torch.logspace(-2, 2, dim) + 5.0, labels


def objective(probe, features, labels, weight_decay):
    logits = ((features - probe.mean) / probe.std) @ probe.weight.T + probe.bias
    return F.cross_entropy(logits, labels) + weight_decay * probe.weight.pow(2).sum()


def test_probe_reaches_scikit_learns_optimum_of_the_same_objective():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs()
    weight_decay = 1e-2
    probe = fit_linear_probe(x, y, 3, weight_decay)
    z = ((x - probe.mean) / probe.std).double().numpy()
    # mean cross-entropy + wd·‖W‖²  ==  (sklearn's C·Σ loss + ½‖W‖²) / (C·n)  with C = 1 / (2·wd·n)
    reference = LogisticRegression(C=1 / (2 * weight_decay * len(y)), tol=1e-10, max_iter=10_000).fit(z, y.numpy())
    np.testing.assert_allclose(probe.weight.numpy(), reference.coef_, atol=2e-3)
    np.testing.assert_allclose(probe.bias.numpy(), reference.intercept_, atol=2e-3)
    ours = probe.logits(x).softmax(1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(z), atol=1e-3)


def test_probe_is_a_stationary_point_and_deterministic():
    x, y = blobs(classes=4, seed=1)
    probe = fit_linear_probe(x, y, 4, 1e-3)
    weight = probe.weight.clone().requires_grad_(True)
    bias = probe.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(((x - probe.mean) / probe.std) @ weight.T + bias, y) + 1e-3 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    again = fit_linear_probe(x, y, 4, 1e-3)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    assert 1 <= probe.iterations <= 100
    assert 1 <= fit_linear_probe(x, y, 4, 1e-3, max_iter=3).iterations <= 3  # fewer if its evaluations run out


def test_probe_is_invariant_to_per_dimension_affine_changes_of_the_features():
    x, y = blobs(seed=2)
    # (kept within float32's reach: a shift 1e7 times a dimension's spread would quantise it)
    scale = torch.logspace(3, -3, x.shape[1])
    shift = torch.linspace(-10, 10, x.shape[1])
    a = fit_linear_probe(x, y, 3)
    b = fit_linear_probe(x * scale + shift, y, 3)
    assert torch.allclose(a.logits(x), b.logits(x * scale + shift), atol=5e-3)
    assert a.accuracy(x, y) == b.accuracy(x * scale + shift, y)
    assert objective(a, x, y, 1e-4) < objective(b, x, y, 1e-4) + 1e-5


def test_probe_fits_more_than_chance_and_handles_empty_queries():
    x, y = blobs(spread=0.5, seed=3)
    probe = fit_linear_probe(x, y, 3)
    assert probe.accuracy(x, y) > 90.0
    assert math.isnan(probe.accuracy(x[:0], y[:0]))


def knn_by_loop(bank, bank_labels, queries, query_labels, classes, k, temperature):
    """The reference's weighted kNN (main.py's test()), one query at a time in float64."""
    bank = F.normalize(bank.double(), dim=1)
    correct = 0
    for q, label in zip(F.normalize(queries.double(), dim=1), query_labels):
        similarity = bank @ q
        top = similarity.argsort(descending=True)[:k]
        votes = torch.zeros(classes, dtype=torch.float64)
        for i in top:
            votes[bank_labels[i]] += math.exp(similarity[i].item() / temperature)
        correct += int(votes.argmax().item() == label.item())
    return 100.0 * correct / len(query_labels)


@pytest.mark.parametrize("k, chunk", [(5, 7), (200, 1024), (1, 3)])
def test_knn_matches_the_reference_formula(k, chunk):
    bank, bank_labels = blobs(n=90, dim=8, classes=3, spread=2.0, seed=4)
    queries, query_labels = blobs(n=31, dim=8, classes=3, spread=2.0, seed=5)
    ours = knn_accuracy(bank, bank_labels, queries, query_labels, 3, k=k, temperature=0.5, chunk=chunk)
    assert ours == pytest.approx(knn_by_loop(bank, bank_labels, queries, query_labels, 3, min(k, 90), 0.5))
    assert math.isnan(knn_accuracy(bank, bank_labels, queries[:0], query_labels[:0], 3))


def test_knn_scores_a_copy_of_the_bank_perfectly_with_one_neighbour():
    bank, labels = blobs(n=60, dim=5, seed=6)
    assert knn_accuracy(bank, labels, bank, labels, 3, k=1) == 100.0


def test_features_use_running_statistics_and_restore_the_mode():
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", 32)
    backbone.train()
    for module in backbone.modules():  # non-trivial running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    together = extract_features(backbone, images, "cifar", batch_size=4)
    assert backbone.training
    assert together.shape == (10, backbone.out_dim) and together.dtype == torch.float32
    alone = torch.cat([extract_features(backbone, images[i:i + 1], "cifar") for i in range(10)])
    # eval mode: an image's features do not depend on the rest of its batch
    assert torch.allclose(together, alone, atol=1e-5)
    running = [m.running_mean.clone() for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    extract_features(backbone, images, "cifar")
    assert all(torch.equal(a, m.running_mean) for a, m in zip(running, [m for m in backbone.modules()
                                                                       if isinstance(m, nn.BatchNorm2d)]))


@pytest.mark.slow
def test_probe_scores_on_digits_report_val_knn_and_test_only_on_request():
    from sslsearch.method.data import load_dataset

    data: ImageData = load_dataset("digits", val_fraction=0.2)
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", 32)
    scores = probe_scores(backbone, data)
    assert set(scores) == {"val_acc", "knn_acc"}
    assert 30.0 < scores["val_acc"] <= 100.0 and 10.0 < scores["knn_acc"] <= 100.0  # chance is 10 %
    with_test = probe_scores(backbone, data, with_test=True)
    assert with_test["val_acc"] == scores["val_acc"] and 30.0 < with_test["test_acc"] <= 100.0
