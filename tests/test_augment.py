"""sslsearch.method.augment against torchvision, op by op and end to end, plus its per-image randomness.

The references are torchvision's tensor ops (`torchvision.transforms.functional` on float
images), applied one image at a time with the same parameters. Our ops compute the same
formulas batched, so they agree to float32 round-off: TOL below. Against the PIL pipeline,
which rounds to uint8 after every op, agreement is to about one grey level (a few where PIL
clips bicubic overshoot between its two resampling passes).
"""

import dataclasses
import itertools
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from sslsearch.bench.kernels import bench_augment, format_bench_augment, reference_transform
from sslsearch.method import augment as A

TOL = 1e-5  # max abs difference on [0, 1] images; observed differences are 1e-7 .. 2e-6


def natural(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Float N×3×size×size in [0, 1]: smooth colour fields plus noise, with saturated and gray spots."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = (0.8 * smooth + 0.2 * torch.rand(n, 3, size, size, generator=generator)).clamp(0, 1)
    x[:, :, :2, :2] = 1.0                      # saturated corner
    x[:, :, -2:, -2:] = x[:, :1, -2:, -2:]     # gray corner
    return x


def uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def per_image(fn, images, *params):
    return torch.stack([fn(images[i], *(p[i] for p in params)) for i in range(len(images))])


# -------------------------------------------------------------------------------------------
# Ops vs torchvision, one image at a time, different parameters per image
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [24, 64])
def test_resized_crop_matches_torchvision(interpolation, size):
    images = natural(6, 48)
    # Full image, small boxes (upsampled), large boxes (downsampled to 24), thin and edge boxes.
    boxes = torch.tensor([[0, 0, 48, 48], [10, 5, 12, 20], [3, 7, 40, 30], [30, 30, 18, 18], [0, 40, 48, 8], [1, 2, 5, 9]])
    flip = torch.tensor([False, True, False, True, True, False])
    out = A.resized_crop(images, boxes, size, interpolation, flip=flip)
    mode = InterpolationMode(interpolation)

    def reference(image, box, mirror):
        view = TF.resized_crop(image, *box.tolist(), [size, size], mode, antialias=True)
        return TF.hflip(view) if mirror else view

    expected = per_image(reference, images, boxes, flip)
    assert out.shape == (6, 3, size, size)
    assert (out - expected).abs().max() < TOL


@pytest.mark.parametrize("source", [32, 20])
def test_bilinear_upsampling_crop_matches_the_resampling_matrices(source):
    # Crops no larger than the output go through grid_sample; the general path is the two
    # matmuls with _resample_weights' antialiased kernel. Boxes: whole image, 1 px, edges, thin.
    images = natural(7, source, seed=5)
    boxes = torch.tensor([[0, 0, source, source], [3, 4, 1, 1], [0, source - 5, 9, 5], [source - 6, 0, 6, 11],
                          [2, 1, source - 3, 7], [5, 5, 10, 10], [1, 0, 13, source]])
    flip = torch.tensor([False, True, False, True, True, False, True])
    rows = A._resample_weights(boxes[:, 0], boxes[:, 2], source, 32, "bilinear")
    cols = A._resample_weights(boxes[:, 1], boxes[:, 3], source, 32, "bilinear", flip)
    out = A.resized_crop(images, boxes, 32, "bilinear", flip=flip)
    assert (out - A._resample(images, rows, cols)).abs().max() < TOL
    assert (A.resized_crop(uint8(images), boxes, 32, flip=flip) - A._resample(uint8(images), rows, cols)).abs().max() < TOL


def test_resized_crop_reads_uint8_as_to_tensor():
    images = uint8(natural(4, 32))
    boxes = torch.tensor([[0, 0, 32, 32], [4, 4, 10, 20], [0, 3, 29, 17], [8, 0, 24, 32]])
    out = A.resized_crop(images, boxes, 32)
    assert out.dtype == torch.float32
    assert (out - A.resized_crop(images.float() / 255, boxes, 32)).abs().max() < TOL


def test_blend_ops_match_torchvision():
    images = natural(6, 16)
    factors = torch.tensor([0.0, 0.6, 1.0, 1.4, 2.5, 0.9])  # 0 and > 1 exercise the clamp
    for ours, theirs in [(A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
                         (A.adjust_saturation, TF.adjust_saturation)]:
        expected = per_image(lambda x, f: theirs(x, float(f)), images, factors)
        assert (ours(images, factors) - expected).abs().max() < TOL, ours.__name__


def test_hue_matches_torchvision():
    images = natural(8, 16, seed=1)
    images[:, :, 4:6] = (images[:, :, 4:6] * 4).round() / 4      # exact ties between channels
    images[:, 1, 6:8] = images[:, 2, 6:8]                         # g == b
    images[:, 0, 8:10] = images[:, 1, 8:10]                       # r == g
    images[:, :, 10] = 0.0                                        # black
    shifts = torch.tensor([0.0, 0.5, -0.5, 0.1, -0.1, 0.25, -0.37, 0.49])
    expected = per_image(lambda x, s: TF.adjust_hue(x, float(s)), images, shifts)
    assert (A.adjust_hue(images, shifts) - expected).abs().max() < TOL


def test_grayscale_and_normalize_match_torchvision():
    images = natural(4, 16)
    mask = torch.tensor([True, False, True, False])
    expected = torch.stack([TF.rgb_to_grayscale(x, 3) if m else x for x, m in zip(images, mask)])
    assert (A.to_grayscale(images, mask) - expected).abs().max() < TOL
    assert torch.equal(A.to_grayscale(images, mask)[1], images[1])  # unselected images untouched
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    assert (A.normalize(images.clone(), mean, std) - TF.normalize(images, mean, std)).abs().max() < TOL


def test_ops_do_not_modify_their_input():
    images = natural(3, 8)
    before = images.clone()
    factors = torch.tensor([0.5, 1.5, 1.0])
    A.adjust_brightness(images, factors)
    A.adjust_contrast(images, factors)
    A.adjust_saturation(images, factors)
    A.adjust_hue(images, factors - 1)
    A.to_grayscale(images, factors > 1)
    A.color_jitter(images, torch.rand(3, 4), torch.stack([torch.randperm(4) for _ in range(3)]))
    assert torch.equal(images, before)


# -------------------------------------------------------------------------------------------
# Colour jitter: per-image order
# -------------------------------------------------------------------------------------------

def sequential_jitter(image, factors, order, active):
    """torchvision's ColorJitter.forward with fixed parameters: the ops one by one, in order."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order.tolist():
        if active[op]:
            image = ops[op](image, float(factors[op]))
    return image


@pytest.mark.parametrize("active", [(True, True, True, True), (True, True, False, False), (False, True, True, True)])
def test_color_jitter_follows_each_images_order(active):
    orders = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders, one per image
    images = natural(len(orders), 12, seed=2)
    generator = torch.Generator().manual_seed(0)
    factors = torch.cat([0.5 + torch.rand(len(orders), 3, generator=generator),
                         torch.rand(len(orders), 1, generator=generator) - 0.5], dim=1)
    out = A.color_jitter(images, factors, orders, active)
    expected = per_image(lambda x, f, o: sequential_jitter(x, f, o, active), images, factors, orders)
    assert (out - expected).abs().max() < TOL


def test_color_jitter_order_matters():
    # The same image and factors under two orders give different results, and each matches
    # torchvision applied in its own order: the order is per image, not per batch.
    image = natural(1, 12)[0]
    factors = torch.tensor([1.4, 0.5, 1.6, 0.2])
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    out = A.color_jitter(image.expand(2, -1, -1, -1), factors.expand(2, -1), orders)
    assert (out[0] - out[1]).abs().max() > 0.01
    for view, order in zip(out, orders):
        assert (view - sequential_jitter(image, factors, order, (True,) * 4)).abs().max() < TOL


def test_identity_factors_leave_images_unchanged():
    images = natural(5, 8)
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(5, -1)
    out = A.color_jitter(images, identity, torch.stack([torch.randperm(4) for _ in range(5)]))
    assert (out - images).abs().max() < 1e-6


# -------------------------------------------------------------------------------------------
# Random parameters
# -------------------------------------------------------------------------------------------

def test_rates_match_the_preset_probabilities():
    n = 20000
    for preset in (A.PRESETS["cifar"], A.PRESETS["stl10"]):
        params = A.sample_view_params(n, 96, 96, preset, torch.Generator().manual_seed(0))
        for rate, p in [(params.flip, preset.flip_p), (params.jitter, preset.jitter_p),
                        (params.grayscale, preset.grayscale_p)]:
            assert abs(rate.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
        # Every one of the 24 jitter orders occurs, about equally often.
        counts = torch.bincount((params.jitter_order * torch.tensor([64, 16, 4, 1])).sum(1), minlength=256)
        counts = counts[counts > 0]
        assert len(counts) == 24 and counts.min() > n / 24 * 0.8
        b, c, s, h = preset.jitter
        low, high = torch.tensor([1 - b, 1 - c, 1 - s, -h]), torch.tensor([1 + b, 1 + c, 1 + s, h])
        assert (params.jitter_factors >= low).all() and (params.jitter_factors <= high).all()


@pytest.mark.parametrize("preset_name, height, width", [("cifar", 32, 32), ("stl10", 96, 96), ("digits", 32, 32),
                                                        ("cifar", 20, 50)])
def test_crop_boxes_follow_random_resized_crop(preset_name, height, width):
    preset = A.PRESETS[preset_name]
    boxes = A.sample_crop_boxes(20000, height, width, preset.crop_scale, preset.crop_ratio,
                                torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    # Area and aspect ratio within bounds, up to the rounding of each side to whole pixels:
    # some real sides within 0.5 pixel of (h, w) satisfy them.
    h, w, area = h.double(), w.double(), height * width
    assert ((h + 0.5) * (w + 0.5) >= preset.crop_scale[0] * area).all()
    assert ((h - 0.5) * (w - 0.5) <= preset.crop_scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= preset.crop_ratio[0]).all()
    assert ((w - 0.5) / (h + 0.5) <= preset.crop_ratio[1]).all()
    area = h * w / area
    # The distribution matches torchvision's get_params (mean area and mean side lengths).
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, list(preset.crop_scale), list(preset.crop_ratio))
                           for _ in range(4000)]).double()
    for ours_values, their_values in [(area, theirs[:, 2] * theirs[:, 3] / (height * width)),
                                      (h, theirs[:, 2]), (w, theirs[:, 3])]:
        standard_error = their_values.std() * math.sqrt(1 / 4000 + 1 / 20000)
        assert abs(ours_values.mean() - their_values.mean()) < 4 * standard_error


def test_crop_boxes_fall_back_to_the_central_crop():
    # No box of a 2:1..3:1 ratio covering the whole area fits in a square: get_params' fallback.
    boxes = A.sample_crop_boxes(5, 40, 40, (1.0, 1.0), (2.0, 3.0), torch.Generator().manual_seed(0))
    expected = RandomResizedCrop.get_params(torch.zeros(3, 40, 40), [1.0, 1.0], [2.0, 3.0])
    assert expected == (10, 0, 20, 40)
    assert (boxes == torch.tensor(expected)).all()


# -------------------------------------------------------------------------------------------
# Pipelines
# -------------------------------------------------------------------------------------------

def reference_view(image, params, i, preset):
    """One training view with torchvision's tensor ops, in the reference's order, with our parameters."""
    mode = InterpolationMode(preset.interpolation)

    def crop(x):
        x = TF.resized_crop(x, *params.boxes[i].tolist(), [preset.size, preset.size], mode, antialias=True)
        return TF.hflip(x) if params.flip[i] else x

    def colors(x):
        if params.jitter[i]:
            x = sequential_jitter(x, params.jitter_factors[i], params.jitter_order[i], [s > 0 for s in preset.jitter])
        return TF.rgb_to_grayscale(x, 3) if params.grayscale[i] else x

    x = crop(colors(image)) if preset.color_before_crop else colors(crop(image))
    if preset.interpolation == "bicubic":
        x = x.clamp(0, 1)  # PIL clamps
    return TF.normalize(x, preset.mean, preset.std)


@pytest.mark.parametrize("preset_name, source", [("cifar", 32), ("stl10", 96), ("tiny_imagenet", 64), ("digits", 32)])
def test_views_match_torchvision_pipeline(preset_name, source):
    preset = A.PRESETS[preset_name]
    images = uint8(natural(16, source, seed=3))
    params = A.sample_view_params(16, source, source, preset, torch.Generator().manual_seed(1))
    out = A.apply_view(images, params, preset)
    expected = torch.stack([reference_view(images[i].float() / 255, params, i, preset) for i in range(16)])
    assert out.shape == (16, 3, preset.size, preset.size) and out.dtype == torch.float32
    assert (out - expected).abs().max() < TOL / min(preset.std)  # normalisation scales errors by 1/std


@pytest.mark.parametrize("preset_name, source", [("cifar", 32), ("stl10", 40), ("digits", 32), ("no brightness", 32),
                                                  ("hue only", 32), ("few", 32)])
def test_grouped_views_equal_the_single_pass(preset_name, source):
    # On the CPU, apply_view sorts images by the rank of their hue shift and runs each step on the
    # images that apply it; the single pass (accelerators) runs every step, identities included, on all.
    cifar = A.PRESETS["cifar"]
    preset = {"no brightness": dataclasses.replace(cifar, jitter=(0.0, 0.4, 0.4, 0.1)),
              "hue only": dataclasses.replace(cifar, jitter=(0.0, 0.0, 0.0, 0.1)),
              "few": cifar}.get(preset_name) or A.PRESETS[preset_name]
    n = 2 if preset_name == "few" else 64
    images = uint8(natural(n, source, seed=6))
    params = A.sample_view_params(n, source, source, preset, torch.Generator().manual_seed(2))
    active = tuple(s > 0 for s in preset.jitter)
    if n > 2:  # every group is exercised: each rank of the hue among the active ops, and no jitter
        assert len(A._jitter_group(params, active).unique()) == (sum(active) + 1 if active[A.HUE] else 2)
    grouped = A._apply_view(images, params, preset, grouped=True)
    assert torch.equal(grouped, A.apply_view(images, params, preset))
    single = A._apply_view(images, params, preset, grouped=False)
    assert (grouped - single).abs().max() < TOL / min(preset.std)


def test_views_are_drawn_per_image():
    images = uint8(natural(1, 32)).expand(64, -1, -1, -1)  # 64 copies of one image
    views = A.augment_views(images, A.PRESETS["cifar"], torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
    assert len(distinct) == 64
    params = A.sample_view_params(64, 32, 32, A.PRESETS["cifar"], torch.Generator().manual_seed(0))
    assert len(set(map(tuple, params.boxes.tolist()))) > 32
    assert 0 < params.flip.sum() < 64


def test_same_generator_state_same_views():
    images = uint8(natural(8, 32))
    preset = A.PRESETS["cifar"]
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    first = A.augment_views(images, preset, generator)
    second = A.augment_views(images, preset, generator)   # the generator moved on: a new view
    generator.set_state(state)                            # as a resumed run restores it
    assert torch.equal(A.augment_views(images, preset, generator), first)
    assert not torch.equal(first, second)
    assert torch.equal(first, A.augment_views(images, preset, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, A.augment_views(images, preset, torch.Generator().manual_seed(8)))


def test_augment_views_keeps_device_and_rejects_bad_input():
    images = uint8(natural(4, 32))
    before = images.clone()
    out = A.augment_views(images, A.PRESETS["digits"], torch.Generator().manual_seed(0))
    assert out.device == images.device and out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(images, before)
    with pytest.raises(TypeError):
        A.augment_views(images.float(), A.PRESETS["cifar"], torch.Generator())
    with pytest.raises(ValueError):
        A.AugmentPreset("bad", size=32, crop_scale=(0.5, 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset_name, source", [("stl10", 96), ("cifar", 32)])
def test_cuda_views_match_cpu_and_do_not_synchronise(preset_name, source):
    # The CPU sorts images by jitter group and crops cifar by grid_sample; CUDA runs the single pass.
    preset = A.PRESETS[preset_name]
    images = uint8(natural(32, source))
    params = A.sample_view_params(32, source, source, preset, torch.Generator().manual_seed(0))
    on_cuda = A.ViewParams(**{f.name: getattr(params, f.name).cuda() for f in dataclasses.fields(params)})
    out = A.apply_view(images.cuda(), on_cuda, preset)
    assert (out.cpu() - A.apply_view(images, params, preset)).abs().max() < 1e-4
    generator = torch.Generator("cuda").manual_seed(0)
    A.augment_views(images.cuda(), preset, generator)  # constants reach the device once
    A.eval_views(images.cuda(), preset)
    torch.cuda.set_sync_debug_mode("error")
    try:
        A.augment_views(images.cuda(), preset, generator)
        A.eval_views(images.cuda(), preset)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_eval_views_stl10_resize_and_centre_crop():
    preset = A.PRESETS["stl10"]
    images = uint8(natural(4, 96))
    out = A.eval_views(images, preset)
    assert out.shape == (4, 3, 64, 64)
    x = TF.center_crop(TF.resize(images.float() / 255, [70], InterpolationMode.BICUBIC, antialias=True), [64])
    expected = TF.normalize(x.clamp(0, 1), preset.mean, preset.std)
    assert (out - expected).abs().max() < TOL / min(preset.std)
    # Against the reference's PIL transform: within about one grey level (PIL rounds to uint8).
    pil = torch.stack([TF.to_tensor(TF.center_crop(TF.resize(to_pil(image), [70], InterpolationMode.BICUBIC), [64]))
                       for image in images])
    assert (out - TF.normalize(pil, preset.mean, preset.std)).abs().max() * min(preset.std) < 1.5 / 255


def test_eval_views_others_only_normalise():
    for name in ("cifar", "tiny_imagenet", "digits"):
        preset = A.PRESETS[name]
        images = uint8(natural(3, 32))
        expected = TF.normalize(images.float() / 255, preset.mean, preset.std)
        assert (A.eval_views(images, preset) - expected).abs().max() < TOL / min(preset.std)


def test_reference_transform_keeps_the_reference_order():
    names = [type(t).__name__ for t in reference_transform(A.PRESETS["cifar"]).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "ToTensor", "Normalize"]
    names = [type(t).__name__ for t in reference_transform(A.PRESETS["stl10"]).transforms]
    assert names == ["RandomApply", "RandomGrayscale", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resized_crop_close_to_pil(interpolation):
    # The reference crops PIL images: same kernels, but PIL rounds to uint8, also between its
    # horizontal and vertical passes, where it clips bicubic overshoot (seen at the saturated corner).
    images = uint8(natural(4, 96, seed=4))
    boxes = torch.tensor([[0, 0, 96, 96], [4, 2, 20, 25], [10, 10, 80, 60], [0, 5, 31, 90]])
    ours = A.resized_crop(images, boxes, 64, interpolation).clamp(0, 1)
    mode = InterpolationMode(interpolation)
    pil = torch.stack([TF.to_tensor(TF.resized_crop(to_pil(image), *box.tolist(), [64, 64], mode))
                       for image, box in zip(images, boxes)])
    assert (ours - pil).abs().max() < (1.5 if interpolation == "bilinear" else 3.5) / 255
    assert (ours - pil).abs().mean() < 0.4 / 255  # i.e. rounding


def test_bench_augment_smoke():
    result = bench_augment("cifar", images=16, batch_size=8, threads=1)
    assert result["batched_pairs_per_s"] > 0 and result["reference_pairs_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["batched_pairs_per_s"] / result["reference_pairs_per_s"])
    assert "pairs/s" in format_bench_augment(result)
