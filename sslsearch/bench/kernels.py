"""Benchmarks: how fast this package's pieces run on this machine (`sslsearch bench ...`).

Each benchmark returns a dict of plain numbers (for --json) and has a `format_...` function
for the human-readable report. Like the training code below it, this module needs only torch,
torchvision, numpy and Pillow, so it runs on a bare GPU machine (benchmarks/gpu_check.sh).

- `bench_augment`: batched augmentation vs the reference's per-image PIL pipeline.
- `bench_train`: pretraining steps through train.py's fast path vs a reference-style loop
  (yaohungt/Barlow-Twins-HSIC main.py: PIL views in DataLoader workers, fp32, a host sync per
  step), in the same process on the same images; FLOPs counted with PyTorch's flop counter.
- `bench_packing`: aggregate throughput of N concurrent training processes on one device, as
  Ray runs trials with fractional GPUs.
- `bench_probe`: the fast probe's time (features, L-BFGS fit, kNN) against the pretraining it
  interrupts: its share of a trial at a report interval.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from sslsearch.errors import InputError
from sslsearch.method.augment import PRESETS, AugmentPreset, augment_views
from sslsearch.method.data import ImageData
from sslsearch.method.evaluate import extract_features, fit_linear_probe, knn_accuracy, probe_scores
from sslsearch.method.losses import ssl_loss
from sslsearch.method.train import PretrainConfig, build_model, make_train_step, prepare_training, synchronize

# Side of the source images each preset is used with (STL-10 is cropped from 96 to 64 px).
SOURCE_SIZES = {"cifar": 32, "stl10": 96, "tiny_imagenet": 64, "digits": 32}
# The preset a training view size stands for: 32 px is CIFAR; 64 px is STL-10 (the reference's
# 64 px runs; its 96 px sources make it the costlier of the two 64 px augmentations).
PRESET_FOR_SIZE = {32: "cifar", 64: "stl10"}
# Dense bf16 tensor-core peak in TFLOP/s (fp16 on devices without bf16), from the vendors' data
# sheets, by a substring of torch.cuda.get_device_name(). The first match wins: specific names
# first. A guide, not a measurement: clocks and power limits vary; pass peak_tflops to override.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
    ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("RTX 6000 Ada", 364.0), ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0),
)


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


# ---------------------------------------------------------------------------------------------
# Pretraining steps: train.py's fast path vs a reference-style loop
# ---------------------------------------------------------------------------------------------

def bench_train(backbone: str = "resnet18", image_size: int = 32, batch_size: int = 128, device: str = "auto",
                steps: int | None = None, warmup: int | None = None, dataset_size: int = 50_000,
                peak_tflops: float | None = None, threads: int | None = None, compile: bool = False,
                reference: bool = True, seed: int = 0, preset: str | None = None, joint_views: bool = False,
                rounds: int = 1) -> dict:
    """Images/s, s/epoch and fraction of peak of pretraining steps; and the same for a reference-style loop.

    The fast path is train.py's own step (`make_train_step`): uint8 images on the device,
    batched augmentation, channels_last, fused Adam, bf16 autocast on CUDA, no host sync inside
    the timed steps. The reference-style loop trains a second copy of the model the way the
    reference does: per-image PIL views in DataLoader workers, fp32, default Adam, `.item()`
    every step. Both see the same images (smooth random colour fields of the preset's source
    size) and time `steps` steps after `warmup` untimed ones; with `rounds` > 1 they alternate
    and each keeps its best round. `image_size` 32 is the CIFAR preset, 64 the STL-10 one.
    FLOPs per image: forward and backward of both views and the loss (not the augmentation).
    `threads`: torch threads of this process and DataLoader workers of the reference (default:
    torch's threads on the CPU; min(16, CPUs) workers on CUDA). Defaults for `steps`/`warmup`:
    100/10 on CUDA, 5/1 on the CPU.
    """
    dev = _bench_device(device)
    preset = _preset_for(image_size, preset)
    recipe = PRESETS[preset]
    steps = steps if steps is not None else (100 if dev.type == "cuda" else 5)
    warmup = warmup if warmup is not None else (10 if dev.type == "cuda" else 1)
    if steps < 1 or warmup < 0 or rounds < 1 or batch_size < 2 or dataset_size < batch_size:
        raise InputError(f"need steps >= 1, warmup >= 0, rounds >= 1, batch_size >= 2 and dataset_size >= batch_size; "
                         f"got {steps}, {warmup}, {rounds}, {batch_size}, {dataset_size}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise InputError(f"peak_tflops must be > 0, got {peak_tflops}")
    config = PretrainConfig(dataset="cifar10", backbone=backbone, batch_size=batch_size, seed=seed, device=str(dev),
                            compile=compile, joint_views=joint_views)
    config.validate()
    source_size = SOURCE_SIZES[preset]
    images = _natural_images(batch_size * (warmup + steps), source_size, seed)
    previous_threads = torch.get_num_threads()
    threads = threads or (previous_threads if dev.type == "cpu" else None)
    workers = threads or min(16, _cpu_count())
    result = {
        "backbone": backbone, "preset": preset, "image_size": recipe.size, "source_size": source_size,
        "batch_size": batch_size, "device": str(dev), "device_name": _device_name(dev), "threads": threads,
        "steps": steps, "warmup": warmup, "rounds": rounds, "dataset_size": dataset_size,
        "compile": compile, "joint_views": joint_views, "torch": str(torch.__version__),
    }
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        fast = _FastLoop(config, images, recipe, dev, warmup, steps)
        ref = _ReferenceLoop(config, images, recipe, dev, warmup, workers) if reference else None
        fast_s, reference_s = math.inf, math.inf
        for _ in range(rounds):
            fast_s = min(fast_s, fast.run())
            if ref is not None:
                reference_s = min(reference_s, ref.run())
        flops = flops_per_image(config, recipe.size)
    finally:
        torch.set_num_threads(previous_threads)
    steps_per_epoch = dataset_size // batch_size  # drop_last, as train.py and the reference
    images_per_s = steps * batch_size / fast_s
    peak = peak_tflops if peak_tflops is not None else known_peak_tflops(dev)
    achieved = flops * images_per_s / 1e12
    result.update({
        "images_per_s": images_per_s,
        "step_ms": 1e3 * fast_s / steps,
        "seconds_per_epoch": steps_per_epoch * batch_size / images_per_s,
        "flops_per_image": flops,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
        "compile_seconds": fast.compile_seconds,
        "loss": fast.last_loss,
        "reference_workers": workers if reference else None,
        "reference_images_per_s": None, "reference_seconds_per_epoch": None, "reference_loss": None, "ratio": None,
    })
    if ref is not None:
        reference_ips = steps * batch_size / reference_s
        result.update({"reference_images_per_s": reference_ips,
                       "reference_seconds_per_epoch": steps_per_epoch * batch_size / reference_ips,
                       "reference_loss": ref.last_loss, "ratio": images_per_s / reference_ips})
    return result


def format_bench_train(result: dict) -> str:
    """A short report of bench_train's result."""
    r = result
    threads = f", {r['threads']} thread{'s' * (r['threads'] != 1)}" if r["threads"] else ""
    options = "".join([", compiled" if r["compile"] else "", ", joint views" if r["joint_views"] else ""])
    epoch = f"{r['dataset_size']:,} images"
    rows = [(f"fast path ({'bf16, ' if r['device'].startswith('cuda') else ''}device augmentation{options})",
             f"{r['images_per_s']:,.0f} img/s", f"{r['seconds_per_epoch']:,.2f} s/epoch")]
    if r["ratio"] is not None:
        workers = r["reference_workers"]
        rows.append((f"reference-style (PIL in {workers} worker{'s' * (workers != 1)}, fp32, sync per step)",
                     f"{r['reference_images_per_s']:,.0f} img/s", f"{r['reference_seconds_per_epoch']:,.2f} s/epoch"))
    width = max(len(row[0]) for row in rows) + 2
    lines = [f"pretraining steps: {r['backbone']}, {r['image_size']} px views ({r['preset']} preset, "
             f"{r['source_size']} px sources), batch {r['batch_size']}, {r['device_name']}{threads}; "
             f"best of {r['rounds']} x {r['steps']} steps after {r['warmup']} warm-up; epoch = {epoch}"]
    lines += [f"  {label:<{width}}{ips:>14}{epoch_s:>18}" for label, ips, epoch_s in rows]
    if r["ratio"] is not None:
        lines.append(f"  {'speed-up':<{width}}{r['ratio']:>13.1f}x")
    peak = (f"{100 * r['fraction_of_peak']:.1f} % of {r['peak_tflops']:,.0f} TFLOP/s peak" if r["fraction_of_peak"] is not None
            else "fraction of peak: n/a (no known peak for this device; pass --peak-tflops)")
    lines.append(f"  {_flop_text(r['flops_per_image'])}FLOP per image (2 views, forward + backward); "
                 f"achieved {_flop_text(r['achieved_tflops'] * 1e12)}FLOP/s, {peak}")
    if r["compile_seconds"] is not None:
        lines.append(f"  torch.compile: {r['compile_seconds']:,.1f} s, once (not in the figures above)")
    return "\n".join(lines)


def known_peak_tflops(device: torch.device | str) -> float | None:
    """Dense bf16 peak TFLOP/s of a known CUDA device (PEAK_TFLOPS), else None (always None on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def flops_per_image(config: PretrainConfig, image_size: int, batch_size: int = 4) -> float:
    """FLOPs of one training step per image: forward and backward of both views, and the loss.

    Counted by torch's FlopCounterMode on a fresh CPU copy of the model in fp32 (the count does
    not depend on the device or the dtype). Convolutions and matmuls scale with the batch, so a
    small batch gives the per-image figure; augmentation and the optimiser are not counted.
    """
    torch.manual_seed(config.seed)
    model = build_model(config, image_size).train()
    views = torch.randn(2, batch_size, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        if config.joint_views:
            z1, z2 = model(views.flatten(0, 1))[1].chunk(2)
        else:
            z1, z2 = model(views[0])[1], model(views[1])[1]
        ssl_loss(config.loss, z1, z2, config.lmbda, config.normalization).backward()
    return counter.get_total_flops() / batch_size


class _FastLoop:
    """train.py's step on device-resident uint8 images, timed with a sync only at the two ends."""

    def __init__(self, config: PretrainConfig, images: torch.Tensor, recipe: AugmentPreset, device: torch.device,
                 warmup: int, steps: int):
        self.config, self.device, self.warmup, self.steps = config, device, warmup, steps
        self.images = images.to(device)
        self.model, self.optimizer = prepare_training(config, recipe.size, device)
        self.step = make_train_step(config, self.model, self.optimizer, recipe,
                                    torch.Generator(device).manual_seed(config.seed + 1))
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.compile_seconds = None
        self.last_loss = None
        if config.compile:
            synchronize(device)
            start = time.perf_counter()
            self.step(self.images[:config.batch_size])
            synchronize(device)
            self.compile_seconds = time.perf_counter() - start

    def run(self) -> float:
        batch = self.config.batch_size
        order = torch.randperm(len(self.images), generator=self.shuffle).to(self.device)
        batches = [order[i * batch:(i + 1) * batch] for i in range(self.warmup + self.steps)]
        for index in batches[:self.warmup]:
            self._step(index)
        loss_sum = torch.zeros((), device=self.device)
        synchronize(self.device)
        start = time.perf_counter()
        for index in batches[self.warmup:]:
            loss_sum += self._step(index)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.last_loss = loss_sum.item() / self.steps
        return seconds

    def _step(self, index: torch.Tensor) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr  # as train.py sets it every step (a Python float)
        return self.step(self.images[index])


class _ReferenceLoop:
    """The reference's main.py loop: PIL views in DataLoader workers, fp32, default Adam, .item() per step."""

    def __init__(self, config: PretrainConfig, images: torch.Tensor, recipe: AugmentPreset, device: torch.device,
                 warmup: int, workers: int):
        self.config, self.device, self.warmup = config, device, warmup
        torch.manual_seed(config.seed)
        self.model = build_model(config, recipe.size).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        pairs = _ReferencePairs(images.permute(0, 2, 3, 1).contiguous().numpy(), reference_transform(recipe))
        # As the reference: shuffle, pin_memory, drop_last. persistent_workers: with rounds > 1 the
        # workers start once, like the reference's within an epoch.
        self.loader = torch.utils.data.DataLoader(
            pairs, batch_size=config.batch_size, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
            drop_last=True, persistent_workers=True, generator=torch.Generator().manual_seed(config.seed))
        self.last_loss = None

    def run(self) -> float:
        # The clock starts after the warm-up steps, so worker start-up is not timed; the batches
        # the workers prefetched meanwhile (2 per worker) favour the reference slightly.
        total, start = 0.0, None
        self.model.train()
        for i, (view1, view2) in enumerate(self.loader):
            if i == self.warmup:
                synchronize(self.device)
                start = time.perf_counter()
            view1 = view1.to(self.device, non_blocking=True)
            view2 = view2.to(self.device, non_blocking=True)
            _, z1 = self.model(view1)
            _, z2 = self.model(view2)
            loss = ssl_loss(self.config.loss, z1, z2, self.config.lmbda, self.config.normalization)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item()  # the reference's host sync, every step
        synchronize(self.device)
        self.last_loss = total / max(1, i + 1)
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Several trials per device
# ---------------------------------------------------------------------------------------------

def bench_packing(n_trials: tuple[int, ...] = (1, 2, 4), backbone: str = "resnet18", image_size: int = 32,
                  batch_size: int = 128, device: str = "auto", steps: int | None = None, warmup: int | None = None,
                  threads: int | None = None, seed: int = 0, timeout_s: float = 600.0) -> dict:
    """Aggregate images/s of N training processes sharing one device, for each N in `n_trials`.

    Each process runs train.py's fast step on its own images and model, as a Ray trial with a
    fractional GPU does; after their warm-up all start together (a barrier), and the aggregate is
    all their images over the span from the first start to the last finish. `threads`: torch
    threads per process (default: the CPUs shared out on the CPU, 1 per process on CUDA).
    The processes are spawned, so a script that calls this needs the `if __name__ == "__main__":` guard.
    """
    dev = _bench_device(device)
    if not n_trials or min(n_trials) < 1:
        raise InputError(f"n_trials must be counts >= 1, got {n_trials}")
    preset = _preset_for(image_size, None)
    steps = steps if steps is not None else (100 if dev.type == "cuda" else 5)
    warmup = warmup if warmup is not None else (10 if dev.type == "cuda" else 1)
    PretrainConfig(dataset="cifar10", backbone=backbone, batch_size=batch_size, device=str(dev)).validate()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    runs = []
    for n in n_trials:
        per_trial_threads = threads or (max(1, _cpu_count() // n) if dev.type == "cpu" else 1)
        spec = {"backbone": backbone, "preset": preset, "batch_size": batch_size, "device": str(dev), "steps": steps,
                "warmup": warmup, "threads": per_trial_threads, "seed": seed, "timeout_s": timeout_s}
        barrier, results = context.Barrier(n), context.Queue()
        processes = [context.Process(target=_packing_worker, args=(rank, spec, barrier, results), daemon=True)
                     for rank in range(n)]
        for process in processes:
            process.start()
        reports = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(reports) < n:
                try:
                    reports.append(results.get(timeout=1.0))
                except queue.Empty:
                    # A process that died before it could report (e.g. it failed to start) never will.
                    reported = {r["rank"] for r in reports}
                    dead = [rank for rank, p in enumerate(processes) if p.exitcode not in (None, 0) and rank not in reported]
                    if dead or time.monotonic() > deadline:
                        raise RuntimeError(f"packing benchmark: {n - len(reports)} of {n} trials did not finish "
                                           + (f"(trial {dead[0]} exited with code {processes[dead[0]].exitcode})"
                                              if dead else f"within {timeout_s:.0f} s")) from None
                    continue
                if "error" in reports[-1]:
                    raise RuntimeError(f"packing benchmark: trial {reports[-1]['rank']} failed:\n{reports[-1]['error']}")
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
        span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        runs.append({"trials": n, "threads_per_trial": per_trial_threads,
                     "images_per_s": sum(r["images"] for r in reports) / span,
                     "per_trial_images_per_s": sorted(r["images"] / (r["end"] - r["start"]) for r in reports)})
    single = next((r["images_per_s"] for r in runs if r["trials"] == 1), None)
    for run in runs:
        run["speedup"] = run["images_per_s"] / single if single else None
    return {"backbone": backbone, "preset": preset, "image_size": PRESETS[preset].size, "batch_size": batch_size,
            "device": str(dev), "device_name": _device_name(dev), "steps": steps, "warmup": warmup, "runs": runs}


def format_bench_packing(result: dict) -> str:
    """A short report of bench_packing's result."""
    r = result
    lines = [f"trials sharing one device: {r['backbone']}, {r['image_size']} px, batch {r['batch_size']}, "
             f"{r['device_name']}, {r['steps']} steps per trial after {r['warmup']} warm-up"]
    for run in r["runs"]:
        speedup = f"{run['speedup']:.2f}x of 1 trial" if run["speedup"] is not None else ""
        lines.append(f"  {run['trials']} trial{'s' * (run['trials'] > 1)} ({run['threads_per_trial']} thread"
                     f"{'s' * (run['threads_per_trial'] > 1)} each)  {run['images_per_s']:>10,.0f} img/s in all  {speedup}")
    return "\n".join(lines)


def _packing_worker(rank: int, spec: dict, barrier, results) -> None:
    try:
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        recipe = PRESETS[spec["preset"]]
        config = PretrainConfig(dataset="cifar10", backbone=spec["backbone"], batch_size=spec["batch_size"],
                                seed=spec["seed"] + rank, device=spec["device"])
        batch, steps, warmup = spec["batch_size"], spec["steps"], spec["warmup"]
        images = _natural_images(batch * 8, SOURCE_SIZES[spec["preset"]], spec["seed"] + rank).to(device)
        model, optimizer = prepare_training(config, recipe.size, device)
        step = make_train_step(config, model, optimizer, recipe, torch.Generator(device).manual_seed(config.seed + 1))
        shuffle = torch.Generator().manual_seed(config.seed)
        batches = [torch.randperm(len(images), generator=shuffle)[:batch].to(device) for _ in range(warmup + steps)]
        for index in batches[:warmup]:
            step(images[index])
        synchronize(device)
        barrier.wait(timeout=spec["timeout_s"])
        start = time.monotonic()  # system-wide on Linux: comparable across the processes
        for index in batches[warmup:]:
            step(images[index])
        synchronize(device)
        results.put({"rank": rank, "start": start, "end": time.monotonic(), "images": steps * batch})
    except BaseException:
        results.put({"rank": rank, "error": traceback.format_exc()})
        barrier.abort()


# ---------------------------------------------------------------------------------------------
# The fast probe's cost
# ---------------------------------------------------------------------------------------------

def bench_probe(backbone: str = "resnet18", image_size: int = 32, device: str = "auto", train_images: int = 45_000,
                val_images: int = 5_000, num_classes: int = 10, batch_size: int = 128,
                seconds_per_epoch: float | None = None, eval_every: tuple[int, ...] = (5, 10), rounds: int = 2,
                steps: int | None = None, warmup: int | None = None, threads: int | None = None, seed: int = 0) -> dict:
    """Seconds of one probe (`sslsearch.method.evaluate.probe_scores`) and its share of a trial.

    The probe runs as in a trial: features of the train and val splits (`train_images` +
    `val_images`, CIFAR-10's 45,000 + 5,000 with val_fraction 0.1 by default), the L-BFGS fit,
    the kNN, each part also timed alone. Its share of a trial that reports every `e` epochs is
    probe / (e × epoch + probe), where an epoch pretrains on the `train_images` (the labelled
    train split minus val) at `batch_size`: unless `seconds_per_epoch` is given, each round
    first times `steps` of train.py's fast step on the same images, so the two are measured side
    by side; each keeps its best of `rounds`. The labels are a random linear function of the
    backbone's features, so that L-BFGS works as on a trained backbone's (`fit_iterations` says
    how long it ran; random labels stop it early, there being nothing to fit).
    """
    dev = _bench_device(device)
    preset = _preset_for(image_size, None)
    steps = steps if steps is not None else (100 if dev.type == "cuda" else 5)
    warmup = warmup if warmup is not None else (10 if dev.type == "cuda" else 1)
    if (train_images < 2 or val_images < 1 or num_classes < 2 or rounds < 1 or not eval_every or min(eval_every) < 1
            or steps < 1 or warmup < 0 or batch_size < 2 or train_images < batch_size):
        raise InputError(f"need train_images >= batch_size >= 2, val_images >= 1, num_classes >= 2, rounds >= 1, "
                         f"steps >= 1, warmup >= 0 and report intervals >= 1; got {train_images}, {batch_size}, "
                         f"{val_images}, {num_classes}, {rounds}, {steps}, {warmup}, {eval_every}")
    if seconds_per_epoch is not None and not (math.isfinite(seconds_per_epoch) and seconds_per_epoch > 0):
        raise InputError(f"seconds_per_epoch must be a finite number > 0, got {seconds_per_epoch}")
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        config = PretrainConfig(dataset="cifar10", backbone=backbone, batch_size=batch_size, seed=seed, device=str(dev))
        config.validate()
        images = _natural_images(train_images + val_images, SOURCE_SIZES[preset], seed).to(dev)
        training = None
        if seconds_per_epoch is None:
            # The train split, repeated if it holds fewer than the batches the timing draws.
            copies = -(-(warmup + steps) * batch_size // train_images)
            training = _FastLoop(config, images[:train_images].repeat(copies, 1, 1, 1), PRESETS[preset], dev, warmup, steps)
        model, _ = prepare_training(config, PRESETS[preset].size, dev)
        backbone_net = model.backbone
        # Warm-up (kernels, cuDNN's algorithm search for the very batch shapes timed below, the
        # allocator) that also makes the labels.
        features = torch.cat([extract_features(backbone_net, images[:train_images], preset),
                              extract_features(backbone_net, images[train_images:], preset)])
        features = (features - features.mean(0)) / features.std(0).clamp_min(1e-6)
        projection = torch.randn(features.shape[1], num_classes, generator=torch.Generator().manual_seed(seed))
        labels = (features @ projection.to(dev)).argmax(1)
        data = ImageData("bench", preset, tuple(map(str, range(num_classes))), images[:train_images],
                         images[:train_images], labels[:train_images], images[train_images:], labels[train_images:],
                         images[:0], labels[:0])

        def timed(function):
            synchronize(dev)
            start = time.perf_counter()
            value = function()
            synchronize(dev)
            return time.perf_counter() - start, value

        best = {"steps": math.inf, "probe": math.inf, "features": math.inf, "fit": math.inf, "knn": math.inf}
        for _ in range(rounds):
            if training is not None:
                best["steps"] = min(best["steps"], training.run())
            best["probe"] = min(best["probe"], timed(lambda: probe_scores(backbone_net, data))[0])
            seconds, train = timed(lambda: extract_features(backbone_net, data.train_images, preset))
            seconds_val, val = timed(lambda: extract_features(backbone_net, data.val_images, preset))
            best["features"] = min(best["features"], seconds + seconds_val)
            seconds, fitted = timed(lambda: fit_linear_probe(train, data.train_labels, num_classes))
            best["fit"] = min(best["fit"], seconds)
            best["knn"] = min(best["knn"], timed(lambda: knn_accuracy(train, data.train_labels, val, data.val_labels,
                                                                      num_classes))[0])
    finally:
        torch.set_num_threads(previous_threads)
    if training is not None:  # drop_last, as train.py
        seconds_per_epoch = (train_images // batch_size) * batch_size * best["steps"] / (steps * batch_size)
    probe = best["probe"]
    return {"backbone": backbone, "preset": preset, "image_size": PRESETS[preset].size, "device": str(dev),
            "device_name": _device_name(dev), "threads": threads or (previous_threads if dev.type == "cpu" else None),
            "train_images": train_images, "val_images": val_images, "num_classes": num_classes,
            "feature_dim": backbone_net.out_dim, "rounds": rounds, "batch_size": batch_size,
            "steps": steps if training is not None else None, "warmup": warmup if training is not None else None,
            "probe_seconds": probe, "features_seconds": best["features"], "fit_seconds": best["fit"],
            "knn_seconds": best["knn"], "fit_iterations": fitted.iterations, "val_acc": fitted.accuracy(val, data.val_labels),
            "seconds_per_epoch": seconds_per_epoch, "epoch_measured": training is not None,
            "steps_seconds": best["steps"] if training is not None else None,
            "share": {str(e): probe / (e * seconds_per_epoch + probe) for e in eval_every}, "torch": str(torch.__version__)}


def format_bench_probe(result: dict) -> str:
    """A short report of bench_probe's result."""
    r = result
    threads = f", {r['threads']} thread{'s' * (r['threads'] != 1)}" if r["threads"] else ""
    shares = ", ".join(f"every {e} epochs {100 * share:.1f} %" for e, share in r["share"].items())
    return "\n".join([
        f"fast probe: {r['backbone']} ({r['feature_dim']} features), {r['image_size']} px, {r['train_images']:,} train + "
        f"{r['val_images']:,} val images, {r['num_classes']} classes, {r['device_name']}{threads}; best of {r['rounds']}",
        f"  one probe            {r['probe_seconds']:8.2f} s  (features {r['features_seconds']:.2f} s, L-BFGS fit "
        f"{r['fit_seconds']:.2f} s in {r['fit_iterations']} iterations, kNN {r['knn_seconds']:.2f} s)",
        f"  one epoch            {r['seconds_per_epoch']:8.2f} s  (pretraining on the {r['train_images']:,} train images, "
        f"batch {r['batch_size']}; " + (f"{r['steps']} fast-path steps timed in each round)" if r["epoch_measured"]
                                         else "as given)"),
        f"  share of a trial     {shares}",
    ])


# ---------------------------------------------------------------------------------------------
# Helpers of the training benchmarks
# ---------------------------------------------------------------------------------------------

def _bench_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def _preset_for(image_size: int, preset: str | None) -> str:
    if preset is None:
        if image_size not in PRESET_FOR_SIZE:
            raise InputError(f"image_size must be one of {', '.join(map(str, PRESET_FOR_SIZE))} (or give a preset), "
                             f"got {image_size}")
        return PRESET_FOR_SIZE[image_size]
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if PRESETS[preset].size != image_size:
        raise InputError(f"preset {preset!r} makes {PRESETS[preset].size} px views, not {image_size} px")
    return preset


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.uname().machine}, {_cpu_count()} cores)" if hasattr(os, "uname") else "CPU"


def _flop_text(value: float) -> str:
    # 6.66 G, 11.7 M, 312 T: three significant digits and an SI prefix.
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
