"""Benchmarks: how fast this package's pieces run on this machine (`sslsearch bench ...`).

Each benchmark returns a dict of plain numbers (for --json) and has a `format_...` function
for the human-readable report.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from sslsearch.augment import PRESETS, AugmentPreset, augment_views

# Side of the source images each preset is used with (STL-10 is cropped from 96 to 64 px).
SOURCE_SIZES = {"cifar": 32, "stl10": 96, "tiny_imagenet": 64, "digits": 32}


# ---------------------------------------------------------------------------------------------
# Augmentation: batched on the device vs the reference's per-image PIL pipeline
# ---------------------------------------------------------------------------------------------

def bench_augment(preset: str = "cifar", images: int = 2048, batch_size: int = 256, threads: int = 2,
                  source_size: int | None = None, seed: int = 0, device: str = "cpu", rounds: int = 3) -> dict:
    """Pairs of views per second of `augment_views` and of the reference PIL pipeline, on the same images.

    The batched pipeline runs in this process with `threads` torch threads; the reference runs
    in a DataLoader with `threads` workers (one core each), as the reference trains. The two
    alternate for `rounds` passes over the images and each keeps its best pass, so a machine
    whose speed drifts (shared cores) treats both alike.
    """
    if threads < 1 or rounds < 1:
        raise ValueError(f"threads and rounds must be at least 1, got {threads} and {rounds}")
    recipe = PRESETS[preset]
    size = source_size or SOURCE_SIZES[preset]
    data = _natural_images(images, size, seed)
    # persistent_workers: the workers start once (in the first pass) and stay for the others.
    loader = torch.utils.data.DataLoader(
        _ReferencePairs(data.permute(0, 2, 3, 1).contiguous().numpy(), reference_transform(recipe)),
        batch_size=batch_size, num_workers=threads, persistent_workers=True)
    on_device = data.to(device)
    generator = torch.Generator(device).manual_seed(seed)
    previous_threads = torch.get_num_threads()
    batched_s, reference_s = math.inf, math.inf
    try:
        for _ in range(rounds):
            torch.set_num_threads(threads)
            batched_s = min(batched_s, _time_batched(on_device, recipe, batch_size, generator))
            torch.set_num_threads(previous_threads)
            reference_s = min(reference_s, _time_reference(loader))
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "preset": preset,
        "threads": threads,
        "images": images,
        "batch_size": batch_size,
        "source_size": size,
        "device": device,
        "rounds": rounds,
        "batched_pairs_per_s": images / batched_s,
        "reference_pairs_per_s": images / reference_s,
        "ratio": reference_s / batched_s,
    }


def format_bench_augment(result: dict) -> str:
    """A short report of bench_augment's result."""
    size, threads = result["source_size"], result["threads"]
    rows = [
        (f"batched ({result['device']}, batches of {result['batch_size']})", f"{result['batched_pairs_per_s']:,.0f} pairs/s"),
        (f"reference (PIL, {threads} DataLoader worker{'s' * (threads > 1)})",
         f"{result['reference_pairs_per_s']:,.0f} pairs/s"),
        ("speed-up", f"{result['ratio']:.1f}x"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(
        [f"augmentation, preset {result['preset']}: {result['images']} images of {size}x{size} px, "
         f"{threads} CPU thread{'s' * (threads > 1)}, best of {result['rounds']} passes"]
        + [f"  {label:<{width}}{value:>16}" for label, value in rows])


def reference_transform(preset: AugmentPreset) -> T.Compose:
    """The reference's per-image training transform (yaohungt/Barlow-Twins-HSIC utils.py) for a preset."""
    interpolation = T.InterpolationMode(preset.interpolation)
    crop = [T.RandomResizedCrop(preset.size, scale=preset.crop_scale, ratio=preset.crop_ratio,
                                interpolation=interpolation)]
    if preset.flip_p > 0:
        crop.append(T.RandomHorizontalFlip(preset.flip_p))
    color = [T.RandomApply([T.ColorJitter(*preset.jitter)], p=preset.jitter_p)]
    if preset.grayscale_p > 0:
        color.append(T.RandomGrayscale(p=preset.grayscale_p))
    steps = color + crop if preset.color_before_crop else crop + color
    return T.Compose(steps + [T.ToTensor(), T.Normalize(preset.mean, preset.std)])


class _ReferencePairs(torch.utils.data.Dataset):
    """Two independently augmented views of each image, one PIL image at a time (as the reference)."""

    def __init__(self, images: np.ndarray, transform: T.Compose):
        self.images = images  # N×H×W×3 uint8
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def _natural_images(n: int, size: int, seed: int) -> torch.Tensor:
    # Smooth random colour fields plus fine noise: like photos, neighbouring pixels correlate and
    # colours vary, so no op takes a shortcut on flat or saturated images.
    generator = torch.Generator().manual_seed(seed)
    coarse_size = max(2, size // 8)
    chunks = []
    for start in range(0, n, 1024):
        count = min(1024, n - start)
        coarse = torch.rand(count, 3, coarse_size, coarse_size, generator=generator)
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        noise = torch.rand(count, 3, size, size, generator=generator)
        chunks.append((0.85 * smooth + 0.15 * noise).clamp_(0, 1).mul_(255).round_().to(torch.uint8))
    return torch.cat(chunks)


def _time_batched(data: torch.Tensor, preset: AugmentPreset, batch_size: int, generator: torch.Generator) -> float:
    def synchronize():
        if data.device.type == "cuda":
            torch.cuda.synchronize(data.device)

    for _ in range(2):  # warm-up: allocator, constants on the device, CUDA kernels
        augment_views(data[:batch_size], preset, generator)
    synchronize()
    start = time.perf_counter()
    for i in range(0, len(data), batch_size):
        batch = data[i:i + batch_size]
        augment_views(batch, preset, generator)
        augment_views(batch, preset, generator)
    synchronize()
    return time.perf_counter() - start


def _time_reference(loader: torch.utils.data.DataLoader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start
