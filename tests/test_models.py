"""Backbones: the reference's stem changes, torchvision key names, registry behaviour."""

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from sslsearch.errors import InputError
from sslsearch.method.models import SSLModel, build_backbone, build_projector, list_backbones, register_backbone


def test_registry_lists_and_refuses_duplicates_and_unknown_names():
    assert {"resnet18", "resnet34", "resnet50", "small_cnn"} <= set(list_backbones())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet18")(lambda image_size: None)
    with pytest.raises(InputError, match="unknown backbone 'vgg'.*resnet18"):
        build_backbone("vgg", 32)


@pytest.mark.slow
def test_the_torch_free_config_names_exactly_the_registered_backbones():
    # In a fresh interpreter: tests in this session may register more.
    code = ("import sslsearch.method.config as c, sslsearch.method.models as m; "
            "assert sorted(c.BUILTIN_BACKBONES) == m.list_backbones(), (c.BUILTIN_BACKBONES, m.list_backbones())")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_a_trial_process_imports_torchvision_only_to_build_a_resnet():
    """What a sweep's trial imports, and a small_cnn built and zero-initialised, leave torchvision unimported
    (3.5 s and 160 MB per process here); a ResNet still gets torchvision's blocks, zero-initialised."""
    code = ("import sys\nimport sslsearch.search.trainable\n"
            "from sslsearch.method.models import build_backbone, zero_init_residual\n"
            "zero_init_residual(build_backbone('small_cnn', 8))\nprint('torchvision' in sys.modules)\n"
            "model = zero_init_residual(build_backbone('resnet18', 32))\n"
            "print('torchvision' in sys.modules, type(model).__module__, float(model.layer1[0].bn2.weight.abs().sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == ["False", "True torchvision.models.resnet 0.0"], out


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_stem_and_maxpool_follow_the_reference(name, dim):
    small = build_backbone(name, 32)
    large = build_backbone(name, 64)
    for model in (small, large):
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
        assert model.out_dim == dim
    assert isinstance(small.maxpool, nn.Identity)      # removed at 32 px
    assert isinstance(large.maxpool, nn.MaxPool2d)     # kept at 64 px
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_state_dict_loads_strictly_into_torchvision_resnet_with_the_same_swaps():
    ours = build_backbone("resnet18", 32).eval()
    theirs = torchvision.models.resnet18()
    theirs.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = nn.Identity()
    theirs.fc = nn.Identity()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), ours(x))


@pytest.mark.slow
def test_projector_layouts():
    reference = build_projector(2048, 128)
    assert [type(m) for m in reference] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert reference[0].bias is None and reference[0].out_features == 512 and reference[3].bias is not None
    official = build_projector(2048, 8192, hidden=(8192, 8192), last_bias=False)
    assert len(official) == 7 and official[-1].bias is None and official[-1].out_features == 8192
    with pytest.raises(InputError):
        build_projector(16, 0)


def test_ssl_model_normalises_projection_only_when_asked():
    backbone = build_backbone("small_cnn", 32)
    x = torch.randn(4, 3, 32, 32)
    model = SSLModel(backbone, build_projector(backbone.out_dim, 16), normalize_projection=True)
    features, z = model(x)
    assert features.shape == (4, backbone.out_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    model.normalize_projection = False
    assert not torch.allclose(model(x)[1].norm(dim=1), torch.ones(4))
