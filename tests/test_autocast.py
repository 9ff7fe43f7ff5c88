"""Augmentation stays float32 when the network runs under bf16 autocast (issue 13, point 1).

CUDA autocast cannot run here, so the tests switch the network's autocast to the CPU's bf16
autocast, which casts the same ops (matmul, bmm), and check that no augmentation op ever runs
inside it, while the network does.
"""

import dataclasses
import inspect

import pytest
import torch

import sslsearch.method.augment as A
import sslsearch.method.evaluate as evaluate_module
import sslsearch.method.train as train_module
from sslsearch.method.data import load_dataset
from sslsearch.method.train import PretrainConfig, make_train_step, prepare_training


def cpu_bf16(device):
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture
def watched(monkeypatch):
    """Every function of sslsearch.method.augment records whether autocast was on when it ran."""
    calls = []
    for name, function in inspect.getmembers(A, inspect.isfunction):
        if function.__module__ != A.__name__ or name == "_device_constant":
            continue

        def wrapper(*args, _f=function, _name=name, **kwargs):
            calls.append((_name, torch.is_autocast_enabled("cpu")))
            return _f(*args, **kwargs)

        monkeypatch.setattr(A, name, wrapper)
    # train and evaluate imported these by name: point them at the watched versions too.
    for module in (train_module, evaluate_module):
        for name in ("augment_views", "eval_views"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(A, name))
        monkeypatch.setattr(module, "network_autocast", cpu_bf16)
    return calls


def network_precision(model):
    """Record, per forward pass, whether the network ran under autocast."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    return seen


@pytest.mark.parametrize("joint_views", [False, True])
def test_train_step_builds_views_outside_autocast(watched, joint_views):
    config = PretrainConfig(backbone="small_cnn", feature_dim=16, batch_size=8, device="cpu", joint_views=joint_views)
    model, optimizer = prepare_training(config, 32, torch.device("cpu"))
    forwards = network_precision(model)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loss = make_train_step(config, model, optimizer, A.PRESETS["cifar"], torch.Generator().manual_seed(0))(images)
    assert torch.isfinite(loss)
    assert forwards and all(forwards), "the network should run under the (patched) autocast"
    ops = {name for name, _ in watched}
    # The ops that autocast would cast (bmm; grid_sample for the crop) all ran, none under it.
    assert {"augment_views", "apply_view", "resized_crop", "_upsample_bilinear", "_jitter_sorted_", "_color_map"} <= ops
    assert not [name for name, under in watched if under], "augmentation ran under autocast"


@pytest.mark.slow
def test_linear_evaluation_and_features_build_views_outside_autocast(watched):
    full = load_dataset("digits", val_fraction=0.2)
    data = dataclasses.replace(full, train_images=full.train_images[:64], train_labels=full.train_labels[:64],
                               val_images=full.val_images[:16], val_labels=full.val_labels[:16],
                               test_images=full.test_images[:16], test_labels=full.test_labels[:16])
    model, _ = prepare_training(PretrainConfig(dataset="digits", feature_dim=16, device="cpu"), 32, torch.device("cpu"))
    forwards = network_precision(model.backbone)
    evaluate_module.linear_evaluation(model.backbone, data, epochs=1, batch_size=32)
    assert forwards and all(forwards)
    assert {"augment_views", "eval_views"} <= {name for name, _ in watched}
    assert not [name for name, under in watched if under], "augmentation ran under autocast"
