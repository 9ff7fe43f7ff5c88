"""Batched augmentation on the training device, with random parameters drawn per image.

The reference (yaohungt/Barlow-Twins-HSIC, utils.py) augments one PIL image at a time in
DataLoader workers: about 1k pairs of views per second per CPU core, which starves a GPU.
`torchvision.transforms.v2` batches, but draws one set of random parameters per call, so
every image of a batch would get the same crop and the same colours. Here each op takes one
parameter per image and the whole batch goes through it as tensor ops: no Python loop over
images, no `.item()`, no branch on data, so on CUDA it queues asynchronously.

Each op follows torchvision's tensor implementation (`torchvision.transforms.functional` on
float images), which tests/test_augment.py checks op by op. Deviations from the reference's
PIL pipeline, all small:
- values stay float32 between ops; PIL rounds to uint8 after every op (<= 0.5/255 each);
- the contrast mean is not rounded to an integer and hue shifts are continuous, not in
  steps of 1/255 of a turn as PIL's `adjust_hue` on uint8 HSV;
- grayscale uses torchvision's tensor weights 0.2989/0.587/0.114 (PIL: 0.299/0.587/0.114);
- resampling is torch's antialiased interpolate: PIL's kernels, without PIL's fixed-point
  weights and its uint8 rounding between the horizontal and vertical passes (which also clips
  bicubic overshoot: up to ~3 grey levels at saturated edges, ~0.3 on average).
Measured in tests/test_augment.py.

Two exact shortcuts, each tested against the general form: a bilinear crop that only upsamples
(CIFAR: 32 px crops of 32 px images) is grid_sample at clamped coordinates, not two matmuls;
and on the CPU, apply_view sorts the images by the rank of their hue shift among their jitter
ops, so each blend step runs only on the images that apply it (on accelerators, one pass over
all images, identity steps included, with no host sync).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# Colour-jitter ops, numbered as torchvision's ColorJitter numbers them in its random order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
# Luma weights of torchvision's tensor `rgb_to_grayscale` (ITU-R 601-2, as TensorFlow writes it).
_LUMA = (0.2989, 0.587, 0.114)
_CROP_TRIES = 10  # RandomResizedCrop.get_params gives up after 10 rejected boxes


@dataclass(frozen=True)
class AugmentPreset:
    """One dataset's augmentation recipe: a training view and the deterministic eval view."""

    name: str
    size: int                                      # output side of a training view
    crop_scale: tuple[float, float]                # crop area, as a fraction of the source image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"                # or "bicubic"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    color_before_crop: bool = False                # stl10/tiny: jitter at source resolution, then crop
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
    eval_resize: int | None = None                 # shorter side after resizing (interpolation above)
    eval_crop: int | None = None                   # then a centre crop of this side

    def __post_init__(self):
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', not {self.interpolation!r}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if min(self.jitter) < 0 or self.jitter[HUE] > 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")


PRESETS: dict[str, AugmentPreset] = {
    preset.name: preset
    for preset in (
        # The reference's CIFAR-10 train_transform: crop first, then colours, at 32 px.
        AugmentPreset("cifar", size=32, crop_scale=(0.08, 1.0)),
        # The reference's Tiny ImageNet and STL-10 transforms: colours at source resolution,
        # then a bicubic crop to 64 px. STL-10 (96 px) evaluates on a resize to 70 + centre crop 64.
        AugmentPreset("tiny_imagenet", size=64, crop_scale=(0.2, 1.0), interpolation="bicubic",
                      grayscale_p=0.1, color_before_crop=True,
                      mean=(0.480, 0.448, 0.398), std=(0.277, 0.269, 0.282)),
        AugmentPreset("stl10", size=64, crop_scale=(0.2, 1.0), interpolation="bicubic",
                      grayscale_p=0.1, color_before_crop=True,
                      mean=(0.43, 0.42, 0.39), std=(0.27, 0.26, 0.27), eval_resize=70, eval_crop=64),
        # Ours: scikit-learn's 8x8 digits upscaled to 32 px RGB. No flip (digits are not mirror
        # symmetric); grayscale images, so saturation and hue are meaningless and grayscale is a
        # no-op. Milder crops: a digit cut to 8% of its area is unreadable. Mean/std measured
        # on all 1797 digits as sslsearch.method.data loads them (0..16 scaled to 0..255, bilinear to
        # 32 px, rounded to uint8): 0.305 / 0.324.
        AugmentPreset("digits", size=32, crop_scale=(0.25, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0),
                      grayscale_p=0.0, mean=(0.305, 0.305, 0.305), std=(0.324, 0.324, 0.324)),
    )
}


# ---------------------------------------------------------------------------------------------
# Random parameters, one set per image
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view of each image in a batch (all tensors, first dim N)."""

    boxes: torch.Tensor            # N×4 int64 crop boxes (top, left, height, width) in source pixels
    flip: torch.Tensor             # N bool: mirror left-right
    jitter: torch.Tensor           # N bool: colour jitter applies (RandomApply)
    jitter_order: torch.Tensor     # N×4 int64: a permutation of the four jitter ops, as ColorJitter's randperm(4)
    jitter_factors: torch.Tensor   # N×4 float: brightness, contrast, saturation factors and hue shift
    grayscale: torch.Tensor        # N bool: convert to grayscale


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """N×4 (top, left, height, width) boxes drawn as RandomResizedCrop.get_params draws one."""
    device = generator.device
    # All tries are drawn at once and the first acceptable one kept, instead of looping until one
    # fits. Double precision, as get_params computes in Python floats (it only matters when a
    # side lands on a rounding boundary).
    area = height * width
    u_area = torch.rand(n, _CROP_TRIES, generator=generator, device=device, dtype=torch.float64)
    u_ratio = torch.rand(n, _CROP_TRIES, generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.sqrt(target_area * aspect).round()  # round half to even, as Python's round()
    h = torch.sqrt(target_area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    tries = torch.arange(_CROP_TRIES, device=device)
    first = torch.where(fits, tries, _CROP_TRIES).amin(dim=1, keepdim=True)  # first fitting try, or 10
    found = first.squeeze(1) < _CROP_TRIES
    first = first.clamp(max=_CROP_TRIES - 1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # get_params' fallback when all tries fail: the central crop clipped to the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)

    # randint(0, side - crop + 1) per image: a uniform draw scaled by each image's own range.
    u_pos = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.minimum((u_pos[:, 0] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u_pos[:, 1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, (height - fallback_h) // 2)
    left = torch.where(found, left, (width - fallback_w) // 2)
    return torch.stack((top, left, h, w), dim=1).long()


def sample_view_params(n: int, height: int, width: int, preset: AugmentPreset,
                       generator: torch.Generator) -> ViewParams:
    """Draw one view's parameters for N images of height×width, on the generator's device."""
    device = generator.device
    boxes = sample_crop_boxes(n, height, width, preset.crop_scale, preset.crop_ratio, generator)
    flip = torch.rand(n, generator=generator, device=device) < preset.flip_p
    jitter = torch.rand(n, generator=generator, device=device) < preset.jitter_p
    # ColorJitter's ranges: factors uniform in [max(0, 1 - s), 1 + s], the hue shift in [-h, h].
    b, c, s, h = preset.jitter
    low = _device_constant((max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h), device)
    high = _device_constant((1 + b, 1 + c, 1 + s, h), device)
    factors = low + (high - low) * torch.rand(n, 4, generator=generator, device=device)
    order = torch.rand(n, 4, generator=generator, device=device).argsort(dim=1)  # uniform permutations
    grayscale = torch.rand(n, generator=generator, device=device) < preset.grayscale_p
    return ViewParams(boxes, flip, jitter, order, factors, grayscale)


# ---------------------------------------------------------------------------------------------
# Ops on float images in [0, 1], N×3×H×W, with one parameter per image
# ---------------------------------------------------------------------------------------------

def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int, interpolation: str = "bilinear",
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, height, width) and resize it to size×size.

    Matches torchvision's `resized_crop(..., antialias=True)` on tensors. `flip` (N bool)
    mirrors the chosen outputs at no cost. uint8 images come out as float in [0, 1].
    """
    _, _, height, width = images.shape
    if interpolation == "bilinear" and max(height, width) <= size:
        return _upsample_bilinear(images, boxes, size, flip)
    rows = _resample_weights(boxes[:, 0], boxes[:, 2], height, size, interpolation)
    cols = _resample_weights(boxes[:, 1], boxes[:, 3], width, size, interpolation, flip)
    return _resample(images, rows, cols)


def to_grayscale(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the images selected by `mask` (N bool) with their luminance on all three channels."""
    return _color_map(images, _grayscale_matrices(mask))


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scale each image by its factor (N), clamped to [0, 1]."""
    return _blend(images, factors)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its luminance."""
    return _blend(images, factors, to_mean=1 - factors)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with its luminance."""
    return _blend(images, factors, to_luminance=1 - factors)


def adjust_hue(images: torch.Tensor, shifts: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each image's hue by its shift (N, in turns, within [-0.5, 0.5]), as torchvision's HSV round trip.

    `out` may be `images` itself: it is written last, when nothing more is read from `images`.
    """
    # torchvision goes RGB -> HSV -> RGB with a six-way selection per pixel. Selections
    # (torch.where, bool masks) run 10-20x slower than arithmetic on CPU, so this computes the
    # same function with min/max/abs/clamp only. In sixths of a turn:
    # - the hexcone hue is ±d, with d in [0, 3] the distance from red, d = 1 + (g + b - r - min)/chroma,
    #   and the sign of g - b;
    # - channel n of (R, G, B) = (5, 3, 1) is max - chroma*T(hue + n), T the trapezoid wave of
    #   period 6 (0→1 on [0, 1], 1 until 3, 1→0 on [3, 4], 0 until 6) that _hsv2rgb tabulates;
    # - T(x) = T(4 - x) turns T(-d + s + n) into T(d - s + 4 - n), so for either sign channel n
    #   reads T(d + sign*(s + m) + c) with (m, c) = (0, 5), (1, 2), (-1, 2) for R, G, B;
    # - that argument stays within [-2, 11], where T(x) = clamp(2 - ||x - 5| - 3|, 0, 1) (two of
    #   T's period-6 tents, centred at 2 and 8).
    # Gray pixels (chroma 0) come out as their gray value whatever d is.
    device = images.device
    r, g, b = (channel.unsqueeze(1) for channel in images.unbind(dim=1))
    max_c = images.amax(dim=1, keepdim=True)
    min_c = images.amin(dim=1, keepdim=True)
    chroma = max_c - min_c
    distance = (g + b).sub_(r).sub_(min_c).div_(chroma.clamp(min=torch.finfo(images.dtype).tiny))
    sign = torch.ones_like(distance).copysign_(g - b)  # ties (g == b, d in {0, 3}) may take either sign
    turn = 6 * shifts.view(-1, 1, 1, 1) + _device_constant((0.0, 1.0, -1.0), device).view(1, 3, 1, 1)
    start = _device_constant((1.0, -2.0, -2.0), device).view(1, 3, 1, 1)  # d's 1, plus c, minus 5
    x = (distance + start).addcmul_(sign, turn)               # T's argument minus 5, N×3×H×W
    x = x.abs_().sub_(3).abs_().sub_(2).clamp_(-1, 0)         # -T
    return torch.addcmul(max_c, chroma, x, out=x if out is None else out)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                 active: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> torch.Tensor:
    """ColorJitter with per-image factors (N×4) applied in per-image order (N×4 permutations of 0..3).

    Ops not `active` are skipped, as ColorJitter skips an op of strength 0. Factors of
    (1, 1, 1, 0) leave an image unchanged.
    """
    if not any(active):
        return images.clone()
    return _apply_jitter(images, _jitter_steps(_jitter_table(factors, order, active)))


def normalize(images: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]) -> torch.Tensor:
    """(x - mean) / std per channel, in place."""
    mean_t = _device_constant(tuple(mean), images.device).view(1, 3, 1, 1)
    std_t = _device_constant(tuple(std), images.device).view(1, 3, 1, 1)
    return images.sub_(mean_t).div_(std_t)


# ---------------------------------------------------------------------------------------------
# The pipelines
# ---------------------------------------------------------------------------------------------

def augment_views(images: torch.Tensor, preset: AugmentPreset, generator: torch.Generator) -> torch.Tensor:
    """One augmented view of each image (uint8 N×3×H×W) as normalised float32 N×3×size×size.

    All randomness comes from `generator` (on the images' device): the same generator state
    gives the same views. Call twice for the two views of a pair.
    """
    _check_images(images)
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device} but images are on {images.device}")
    n, _, height, width = images.shape
    return apply_view(images, sample_view_params(n, height, width, preset, generator), preset)


def apply_view(images: torch.Tensor, params: ViewParams, preset: AugmentPreset) -> torch.Tensor:
    """The training view of each image (uint8 N×3×H×W) with the given parameters, normalised."""
    return _apply_view(images, params, preset, grouped=images.device.type == "cpu")


def eval_views(images: torch.Tensor, preset: AugmentPreset) -> torch.Tensor:
    """The deterministic eval view of each image (uint8 N×3×H×W), normalised float32."""
    _check_images(images)
    n, _, height, width = images.shape
    if preset.eval_resize is None:
        x = images.float().div_(255)
        if preset.eval_crop is not None:
            top, left = _centre_crop_offsets((height, width), preset.eval_crop)
            x = x[:, :, top:top + preset.eval_crop, left:left + preset.eval_crop].contiguous()
        return normalize(x, preset.mean, preset.std)

    # torchvision's Resize(int): the shorter side becomes eval_resize, the longer keeps the aspect.
    short, long = min(height, width), max(height, width)
    long_out = int(preset.eval_resize * long / short)
    out_h, out_w = (preset.eval_resize, long_out) if height <= width else (long_out, preset.eval_resize)
    # One set of weights, shared by every image.
    zero = torch.zeros(1, dtype=torch.long, device=images.device)
    rows = _resample_weights(zero, zero + height, height, out_h, preset.interpolation)
    cols = _resample_weights(zero, zero + width, width, out_w, preset.interpolation)
    if preset.eval_crop is not None:
        # A centre crop after the resize keeps only the middle rows of the weight matrices.
        top, left = _centre_crop_offsets((out_h, out_w), preset.eval_crop)
        rows = rows[:, top:top + preset.eval_crop]
        cols = cols[:, left:left + preset.eval_crop]
    x = _resample(images, rows, cols)
    if preset.interpolation == "bicubic":
        x = x.clamp_(0, 1)
    return normalize(x, preset.mean, preset.std)


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------

def _resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                      interpolation: str, flip: torch.Tensor | None = None) -> torch.Tensor:
    """N×out_size×in_size weights that resample source pixels [start, start + length) to out_size pixels.

    The same weights as torch's antialiased interpolate (and PIL's resize): output pixel i is
    centred at scale*(i + 0.5) in the crop, the kernel is stretched by the scale factor when
    downsampling, clipped to the crop, and each row renormalised to sum to 1. `flip` (N bool)
    mirrors the chosen outputs.
    """
    device = start.device
    start = start.to(torch.float32).view(-1, 1, 1)
    length = length.to(torch.float32).view(-1, 1, 1)
    scale = length / out_size                                          # source pixels per output pixel
    stretch = scale.clamp(min=1.0)                                     # kernel widening when downsampling
    position = torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1)
    if flip is not None:
        # A mirrored output pixel i is the plain output pixel out_size - 1 - i.
        position = position + flip.to(torch.float32).view(-1, 1, 1) * (out_size - 1 - 2 * position)
    source = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1) - start  # crop coordinates
    # Kernel argument (source + 0.5 - centre)/stretch: one pass over the N×out×in matrix.
    distance = (source + 0.5) / stretch - (position + 0.5) * (scale / stretch)
    weights = _triangle_(distance) if interpolation == "bilinear" else _keys_cubic(distance)
    # 1 for source pixels inside the crop, else 0 (source is integer-valued), without a bool mask.
    inside = (source + 1).clamp_(0, 1) * (length - source).clamp_(0, 1)
    weights = weights.mul_(inside)
    return weights.div_(weights.sum(dim=2, keepdim=True))


def _triangle_(x: torch.Tensor) -> torch.Tensor:
    # max(0, 1 - |x|), overwriting x.
    return x.abs_().neg_().add_(1).clamp_(min=0)


def _keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    # Keys' cubic convolution with a = -0.5, the kernel of PIL and of torch's antialiased bicubic
    # (torch's plain bicubic uses a = -0.75): (a+2)t³ - (a+3)t² + 1 for t = |x| < 1,
    # a(t-1)(t-2)² for 1 <= t < 2, else 0. Written as the outer piece plus the inner piece's
    # difference from it, (t-1)²(2t + 4a + 1), each evaluated at t clipped to its own end, where
    # it vanishes: no per-element selection.
    t = x.abs()
    t1, t2 = t.clamp(max=1), t.clamp(max=2)
    return a * (t2 - 1) * (t2 - 2).square() + (t1 - 1).square() * (2 * t1 + 4 * a + 1)


def _upsample_bilinear(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None) -> torch.Tensor:
    """resized_crop, bilinear, where no box is larger than the output (as a 32 px source cropped to 32 px).

    Upsampling, the antialiased kernel of _resample_weights has two taps, clipped at the crop's
    edges: bilinear interpolation at each output pixel's centre, its coordinate clamped to the
    crop's first and last pixel centres. grid_sample does that in one pass instead of two dense
    matmuls whose weights are mostly zeros.
    """
    n = len(images)
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    ys = _sample_positions(boxes[:, 0], boxes[:, 2], size, images.shape[2])
    xs = _sample_positions(boxes[:, 1], boxes[:, 3], size, images.shape[3], flip)
    grid = torch.stack((xs.view(n, 1, size).expand(n, size, size), ys.view(n, size, 1).expand(n, size, size)), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _sample_positions(start: torch.Tensor, length: torch.Tensor, size: int, in_size: int,
                      flip: torch.Tensor | None = None) -> torch.Tensor:
    # N×size source positions of the output pixels' centres, clamped to the crop's first and last
    # pixel centres, as grid_sample reads them (align_corners=False: -1 and 1 are the image's edges).
    position = torch.arange(size, device=start.device, dtype=torch.float32).view(1, -1)
    if flip is not None:
        position = position + flip.to(torch.float32).view(-1, 1) * (size - 1 - 2 * position)
    length = length.to(torch.float32).view(-1, 1)
    inside = ((position + 0.5) * (length / size) - 0.5).clamp_(min=0).minimum(length - 1)  # in the crop
    return (inside + start.to(torch.float32).view(-1, 1) + 0.5) * (2 / in_size) - 1


def _resample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ image @ colsᵀ per image and channel (weights N×out×in, or 1×out×in for all images)."""
    n, channels, height, width = images.shape
    if images.dtype == torch.uint8:
        # ToTensor's /255 goes into the small weight matrix instead of a pass over the images.
        images, rows = images.float(), rows / 255
    x = torch.matmul(images.reshape(n, channels * height, width), cols.transpose(1, 2))
    return torch.matmul(rows.unsqueeze(1), x.view(n, channels, height, cols.shape[1]))


def _apply_view(images: torch.Tensor, params: ViewParams, preset: AugmentPreset, grouped: bool) -> torch.Tensor:
    """apply_view, with colour jitter in one pass over the batch or on images sorted by hue rank.

    Colour jitter takes up to 6 blend steps around one hue step (_jitter_steps), of which each
    image applies 3; the others are identities for it. The single pass (on accelerators: no host
    sync, a few large kernels) runs all of them on every image. Sorted (on the CPU, where reading
    the group sizes is free and every pass over the batch costs; _jitter_sorted_), each step runs
    only on the images that apply it. Both give the same views.
    """
    _check_images(images)
    n, _, height, width = images.shape
    device = images.device
    active = tuple(strength > 0 for strength in preset.jitter)
    jitter = any(active) and preset.jitter_p > 0
    order = None
    if grouped and jitter:
        group = _jitter_group(params, active)
        order = group.argsort(stable=True)
        ends = torch.bincount(group, minlength=_NO_JITTER_GROUP + 1).cumsum(0).tolist()
        params, images = _select(params, order), images.index_select(0, order)
    table = None
    if jitter:
        identity = _device_constant((1.0, 1.0, 1.0, 0.0), device)
        factors = torch.where(params.jitter.unsqueeze(1), params.jitter_factors, identity)
        table = _jitter_table(factors, params.jitter_order, active)
    x = images.float().div_(255) if preset.color_before_crop else _crop(images, params, preset)
    if table is not None:
        x = _apply_jitter(x, _jitter_steps(table)) if order is None else _jitter_sorted_(x, table, ends)
    if preset.color_before_crop:
        if preset.grayscale_p > 0:
            x = _color_map(x, _grayscale_matrices(params.grayscale))
        out = normalize(_crop(x, params, preset), preset.mean, preset.std)
    else:
        # Grayscale and normalisation are both per-image colour maps, applied as one.
        scale = 1 / _device_constant(tuple(preset.std), device)
        shift = -_device_constant(tuple(preset.mean), device) * scale
        out = _color_map(x, scale.view(1, 3, 1) * _grayscale_matrices(params.grayscale), shift.expand(n, 3))
    return out if order is None else torch.empty_like(out).index_copy_(0, order, out)


def _jitter_sorted_(x: torch.Tensor, table: _JitterTable, ends: list[int]) -> torch.Tensor:
    """Colour jitter in place on images sorted by _jitter_group; group g ends at image ends[g].

    With a hue op, blend slot s before the hue holds rank s and runs on the groups whose hue comes
    later (s < g: a suffix of the jittered images); then the hue runs on all of them; slot s after
    it holds rank s + 1 and runs on the groups whose hue came earlier (g <= s: a prefix). Each image
    gets its blends in its own order, and no identity step runs.
    """
    ranks = len(table.matrices)
    if table.hue is None:
        for rank in range(ranks):
            _blend_(x, table, rank, 0, ends[0])
        return x
    jittered = ends[ranks - 1]
    for slot in range(ranks - 1):
        _blend_(x, table, slot, ends[slot], jittered)
    if jittered:
        adjust_hue(x[:jittered], table.hue[:jittered], out=x[:jittered])
    for slot in range(ranks - 1):
        _blend_(x, table, slot + 1, 0, ends[slot])
    return x


def _blend_(x: torch.Tensor, table: _JitterTable, rank: int, start: int, stop: int) -> None:
    # The rank-th blend of images start..stop, in place.
    if stop > start:
        part = x[start:stop]
        to_mean = None if table.to_mean is None else table.to_mean[rank, start:stop]
        torch.clamp(_blend_map(part, table.matrices[rank, start:stop], to_mean, clamp=False), 0, 1, out=part)


_NO_JITTER_GROUP = 4  # apply_view's group of images without colour jitter (groups 0..3: the hue's rank)


def _jitter_group(params: ViewParams, active: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    # Each image's group for the grouped apply_view: the rank of its hue shift among its active
    # jitter ops (0 without a hue op), or _NO_JITTER_GROUP.
    ops, rank = _jitter_ranks(params.jitter_order, active)
    hue_rank = rank[:, ops.index(HUE)] if HUE in ops else torch.zeros_like(rank[:, 0])
    return torch.where(params.jitter, hue_rank, _NO_JITTER_GROUP)


def _crop(images: torch.Tensor, params: ViewParams, preset: AugmentPreset) -> torch.Tensor:
    x = resized_crop(images, params.boxes, preset.size, preset.interpolation, params.flip)
    return x.clamp_(0, 1) if preset.interpolation == "bicubic" else x  # PIL clamps bicubic overshoot


def _select(params: ViewParams, index: torch.Tensor) -> ViewParams:
    return ViewParams(*(getattr(params, field.name).index_select(0, index) for field in fields(ViewParams)))


def _jitter_ranks(order: torch.Tensor, active: tuple[bool, bool, bool, bool]) -> tuple[list[int], torch.Tensor]:
    # The active ops, and each image's rank of each among its active ops (N×A), from its order of all four.
    ops = [op for op in (BRIGHTNESS, CONTRAST, SATURATION, HUE) if active[op]]
    position = order.argsort(dim=1)
    position = torch.stack([position[:, op] for op in ops], dim=1)
    return ops, (position.unsqueeze(1) < position.unsqueeze(2)).sum(dim=2)


@dataclass(frozen=True)
class _JitterTable:
    """Each image's jitter ops by rank: the blend at rank r of image n is the colour matrix
    `matrices[r, n]` plus `to_mean[r, n]` times the image's mean luminance, then the clamp to
    [0, 1]. At the hue's rank the blend is the identity (factor 1, no target)."""

    matrices: torch.Tensor               # A×N×3×3, A active ops
    to_mean: torch.Tensor | None         # A×N; None without contrast
    hue: torch.Tensor | None             # N hue shifts; None without hue
    hue_rank: torch.Tensor | None        # N


def _jitter_table(factors: torch.Tensor, order: torch.Tensor, active: tuple[bool, bool, bool, bool]) -> _JitterTable:
    """The per-image coefficients of color_jitter (small tensors: computed once per batch)."""
    device = factors.device
    ops, rank = _jitter_ranks(order, active)
    # N×A op numbers (a cached constant: a fresh list copied to CUDA would synchronise).
    op_at_rank = _device_constant(tuple(map(float, ops)), device)[rank.argsort(dim=1)].long()
    # The hue's share of the table is factor 1 and no target: an identity blend.
    factor = torch.where(op_at_rank == HUE, 1.0, factors.gather(1, op_at_rank)).T   # A×N
    share = 1 - factor  # of the target: the luminance (saturation) or its mean (contrast)
    matrices = factor.view(*factor.shape, 1, 1) * torch.eye(3, device=device)
    if SATURATION in ops:
        to_luminance = share * (op_at_rank.T == SATURATION)
        matrices = matrices + to_luminance.view(*factor.shape, 1, 1) * _device_constant(_LUMA, device)
    to_mean = share * (op_at_rank.T == CONTRAST) if CONTRAST in ops else None
    if HUE not in ops:
        return _JitterTable(matrices, to_mean, None, None)
    return _JitterTable(matrices, to_mean, factors[:, HUE], rank[:, ops.index(HUE)])


@dataclass(frozen=True)
class _JitterPlan:
    """Colour jitter as steps: blend steps (as _JitterTable's), then the hue shift, then blend steps."""

    before: torch.Tensor                  # S×N×3×3
    before_mean: torch.Tensor | None      # S×N
    hue: torch.Tensor | None              # N
    after: torch.Tensor                   # S'×N×3×3
    after_mean: torch.Tensor | None       # S'×N


def _jitter_steps(table: _JitterTable) -> _JitterPlan:
    """The steps that apply each image's jitter in one pass over all images, whatever its hue's rank.

    Slot s before the hue holds rank s where the image's hue comes later, else the identity;
    slot s after it holds rank s + 1 where the hue came earlier.
    """
    matrices, to_mean = table.matrices, table.to_mean
    if table.hue is None:
        return _JitterPlan(matrices, to_mean, None, matrices[:0], None)
    slots = torch.arange(len(matrices) - 1, device=matrices.device).view(-1, 1)
    before, after = slots < table.hue_rank, slots + 1 > table.hue_rank         # ×N
    identity = torch.eye(3, device=matrices.device)
    return _JitterPlan(
        torch.where(before.view(*before.shape, 1, 1), matrices[:-1], identity),
        None if to_mean is None else to_mean[:-1] * before, table.hue,
        torch.where(after.view(*after.shape, 1, 1), matrices[1:], identity),
        None if to_mean is None else to_mean[1:] * after)


def _apply_jitter(images: torch.Tensor, plan: _JitterPlan) -> torch.Tensor:
    x = _apply_blends(images, plan.before, plan.before_mean)
    if plan.hue is not None:
        x = adjust_hue(x, plan.hue)
    x = _apply_blends(x, plan.after, plan.after_mean)
    return images.clone() if x is images else x


def _apply_blends(x: torch.Tensor, matrices: torch.Tensor, to_mean: torch.Tensor | None) -> torch.Tensor:
    for s in range(len(matrices)):
        x = _blend_map(x, matrices[s], None if to_mean is None else to_mean[s])
    return x


def _blend(images: torch.Tensor, factors: torch.Tensor, to_luminance: torch.Tensor | None = None,
           to_mean: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's _blend per image, factor*image + (1 - factor)*target clamped to [0, 1].

    The target is black, plus the luminance with weight `to_luminance` (saturation) and its mean
    with weight `to_mean` (contrast), each N or None. Luminance is linear in RGB, so the blend is a
    3×3 colour matrix plus an offset per image, one batched matmul; exact at factor 1 and zero weights.
    """
    n = images.shape[0]
    matrix = factors.view(n, 1, 1) * torch.eye(3, device=images.device)
    if to_luminance is not None:
        matrix = matrix + to_luminance.view(n, 1, 1) * _device_constant(_LUMA, images.device)  # share·luma on every row
    return _blend_map(images, matrix, to_mean)


def _blend_map(images: torch.Tensor, matrix: torch.Tensor, to_mean: torch.Tensor | None,
               clamp: bool = True) -> torch.Tensor:
    # A blend from its colour matrices (N×3×3) and mean-luminance weights (N or None).
    offset = None
    if to_mean is not None:
        luma = _device_constant(_LUMA, images.device)
        offset = (to_mean * (images.mean(dim=(2, 3)) @ luma)).view(-1, 1)  # share·mean luminance
    x = _color_map(images, matrix, offset)
    return x.clamp_(0, 1) if clamp else x


def _color_map(images: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """matrix @ rgb + offset at every pixel: N×3×3 matrices, offsets N×3 or N×1 (or None)."""
    n, _, height, width = images.shape
    out = torch.bmm(matrix, images.reshape(n, 3, height * width))
    if offset is not None:
        out = out.add_(offset.unsqueeze(2))
    return out.view(n, 3, height, width)


def _grayscale_matrices(mask: torch.Tensor) -> torch.Tensor:
    # N×3×3: every row the luma weights where mask (as torchvision's rgb_to_grayscale with 3
    # output channels), the identity elsewhere; both exact.
    luma_rows = _device_constant(_LUMA, mask.device).expand(3, 3)
    return torch.where(mask.view(-1, 1, 1), luma_rows, torch.eye(3, device=mask.device))


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"expected uint8 images of shape N×3×H×W, got {images.dtype} {tuple(images.shape)}")


def _centre_crop_offsets(size: tuple[int, int], crop: int) -> tuple[int, int]:
    # torchvision's center_crop rounds the margins half to even.
    if crop > min(size):
        raise ValueError(f"centre crop {crop} is larger than the image {size}")
    return int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))


@functools.lru_cache(maxsize=64)
def _device_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Copying a Python list to a CUDA tensor synchronises with the host; copy each constant once.
    return torch.tensor(values, dtype=torch.float32, device=device)
