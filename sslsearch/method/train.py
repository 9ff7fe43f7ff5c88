"""One Barlow Twins / HSIC pretraining run, in plain PyTorch (no Ray, Optuna or MLflow).

The loop keeps everything on the training device: the data set as uint8 tensors, batched
augmentation with per-image random parameters, the channels_last memory format, a fused
optimiser, bf16 autocast and cudnn.benchmark on CUDA, and no host synchronisation per step (the
running loss stays a device tensor; the host looks at it about once a second for the progress
bar and once per epoch for the NaN check). `torch.compile` is an option (`compile=True`): the
first compiled step is timed on its own, reported as `compile_seconds` in that epoch's row and
left out of its `images_per_s`. `make_train_step` is this loop's step; `sslsearch bench train`
times the same function (docs/benchmarks.md).

BatchNorm semantics: as in the reference and in the official Barlow Twins code (whose
SyncBatchNorm makes one GPU's batch the global batch), the two views go through the network in
separate forward passes (the default, `joint_views=False`), so BatchNorm normalises each view
with its own batch statistics. `joint_views=True` concatenates both views into one forward pass
of 2B images instead: BatchNorm then normalises over both views together (neither code does
this) and a GPU runs fewer, larger kernels. It is a different method setting, so a checkpoint
only resumes with the same value.

The official Barlow Twins recipe is a configuration (experiments/cifar10_official_barlow.yaml):
`normalize_projection=False`, `projector_last_bias=False`, `normalization="batchnorm"`
(BatchNorm1d without affine on z), `zero_init_residual=True`, LARS with `lr=0.2` for weights
and `lr_biases=0.0048` for biases and BatchNorm parameters, both per 256 images
(`lr_per_256=True`), those parameters excluded from weight decay and from LARS's adaptation
(`weight_decay_filter`, `lars_adaptation_filter`), 10 warm-up epochs then cosine,
`weight_decay=1.5e-6`, `lmbda=0.0051`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sslsearch import __version__
from sslsearch.errors import InputError, error_line
from sslsearch.method.augment import PRESETS, AugmentPreset, augment_views
from sslsearch.method.config import PretrainConfig  # defined torch-free so the CLI validates before importing torch
from sslsearch.method.data import ImageData, load_run_data
from sslsearch.method.evaluate import network_autocast, probe_scores
from sslsearch.method.losses import ssl_loss
from sslsearch.method.models import SSLModel, build_backbone, build_projector, zero_init_residual
from sslsearch.method.optim import build_optimizer, lr_factor, parameter_groups

CHECKPOINT_FORMAT = 1
STATISTICS_COLUMNS = ("epoch", "train_loss", "val_acc", "knn_acc", "test_acc", "images_per_s", "lr", "seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (in epoch `epoch`)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


@dataclass
class PretrainResult:
    config: PretrainConfig
    model: SSLModel
    history: list[dict] = field(default_factory=list)   # one row per epoch; epoch 0 = random initialisation
    out_dir: Path | None = None

    def last_evaluated(self) -> dict:
        return next(row for row in reversed(self.history) if row.get("val_acc") is not None)


def build_model(config: PretrainConfig, image_size: int) -> SSLModel:
    """Backbone + projector as the config describes them (on the CPU, seeded by the caller)."""
    backbone = build_backbone(config.resolved_backbone(), image_size)
    if config.zero_init_residual:
        zero_init_residual(backbone)
    projector = build_projector(backbone.out_dim, config.feature_dim, config.projector_hidden, config.projector_last_bias)
    return SSLModel(backbone, projector, config.normalize_projection)


def prepare_training(config: PretrainConfig, image_size: int, device: torch.device) -> tuple[SSLModel, torch.optim.Optimizer]:
    """The model, seeded by `config.seed`, on `device` in channels_last, and its optimiser (fused where torch has it)."""
    torch.manual_seed(config.seed)
    model = build_model(config, image_size)
    # channels_last (NHWC) everywhere: cuDNN's tensor-core convolutions want it (in NCHW every conv
    # adds transposes), and on x86 CPUs oneDNN trains small_cnn ~30 % faster in it (docs/benchmarks.md).
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        # Training shapes are fixed (drop_last), so cuDNN's one-off search for the fastest kernels pays.
        torch.backends.cudnn.benchmark = True
    # Fused Adam/SGD: the whole update in a few kernels. On the CPU too (torch >= 2.4), where it is
    # 3-4x faster than the default for ResNet-18's parameters. LARS ignores the flag.
    lr_weights, lr_biases = config.learning_rates()
    params = parameter_groups(model, lr_weights, lr_biases, config.weight_decay,
                              weight_decay_filter=config.weight_decay_filter,
                              lars_adaptation_filter=config.lars_adaptation_filter)
    try:
        optimizer = build_optimizer(config.optimizer, params, config.lr, config.weight_decay, config.momentum, fused=True)
    except RuntimeError:  # a build or device without fused kernels
        optimizer = build_optimizer(config.optimizer, params, config.lr, config.weight_decay, config.momentum)
    return model, optimizer


def make_train_step(config: PretrainConfig, model: SSLModel, optimizer: torch.optim.Optimizer, preset: AugmentPreset,
                    generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """`step(images)`: one optimisation step on a batch of uint8 images on the model's device.

    Two augmented views (random parameters from `generator`), forward (bf16 autocast on CUDA;
    separate passes unless `config.joint_views`), loss, backward, update. Returns the detached
    loss as a device tensor: nothing in a step waits for the device. With `config.compile` the
    model is compiled on the first call.
    """
    device = next(model.parameters()).device
    step_model = torch.compile(model) if config.compile else model

    def view(images: torch.Tensor) -> torch.Tensor:
        x = augment_views(images, preset, generator)
        return x.contiguous(memory_format=torch.channels_last)

    def step(images: torch.Tensor) -> torch.Tensor:
        # The views are built before autocast starts: under it the resampling matmuls and the
        # colour bmm would run in bf16 and every later op with them (up to ~7 grey levels off).
        # The float32 views are cast once, by the network's first layer.
        if config.joint_views:
            views = (torch.cat((view(images), view(images))),)
        else:
            views = (view(images), view(images))
        with network_autocast(device):
            if config.joint_views:
                _, z = step_model(views[0])
                z1, z2 = z.chunk(2)
            else:
                _, z1 = step_model(views[0])
                _, z2 = step_model(views[1])
        loss = ssl_loss(config.loss, z1, z2, config.lmbda, config.normalization)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `pretrain`; InputError when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path.resolve()}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise InputError(f"cannot read checkpoint {path.resolve()}: {error_line(error)}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "model" not in checkpoint:
        raise InputError(f"{path.resolve()} is not an sslsearch pretraining checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def check_extension(saved: PretrainConfig, config: PretrainConfig, epoch: int, path) -> None:
    """The rule for resuming with another `epochs`: InputError (one line) where it is not allowed.

    The learning rate at a step depends on `epochs` only through the cosine schedule's length
    (the warm-up is counted in its own epochs). So a constant-schedule run may be extended (or
    cut, down to the epoch it reached) and continues at the rate it had; a cosine run resumes
    only with its own `epochs`: a longer schedule would send the learning rate back up.
    """
    if config.epochs == saved.epochs:
        return
    if config.epochs < epoch:
        raise InputError(f"checkpoint {path} is at epoch {epoch}, past the requested epochs={config.epochs}")
    if config.schedule == "cosine":
        raise InputError(f"checkpoint {path} follows a cosine schedule over {saved.epochs} epochs; resume it with "
                         f"epochs={saved.epochs} (changing it would change the learning rates already used), "
                         f"or start a new run")


# What resuming needs beyond the weights; a weights-only checkpoint leaves these out (a third of
# the size of an Adam or LARS run's full state: the optimiser holds one or two tensors per weight).
RESUME_ONLY = ("optimizer", "rng")


def weights_only(checkpoint: dict) -> dict:
    """The checkpoint without the state only resuming needs: backbone + projector weights, the
    configuration and the history (what export, `linear` and analysis read)."""
    return {**{k: v for k, v in checkpoint.items() if k not in RESUME_ONLY}, "weights_only": True}


def save_weights_only(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Write the weights-only form of the checkpoint file `source` to `target` (atomically).

    Any dict of tensors and plain values is accepted: the resume-only entries are dropped if present."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    _atomic_save(weights_only(checkpoint) if isinstance(checkpoint, dict) else checkpoint, Path(target))


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous file intact


def _write_statistics(history: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STATISTICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in STATISTICS_COLUMNS})
    os.replace(tmp, path)


class _Progress:
    """A progress line (loss, images/s, ETA) that reads the device loss at most once a second."""

    def __init__(self, enabled: bool, total_steps: int, batch_size: int):
        self.enabled, self.total, self.batch_size = enabled, total_steps, batch_size
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def step(self, epoch: int, epochs: int, loss_sum: torch.Tensor, steps_in_epoch: int) -> None:
        self.done += 1
        if not self.enabled or not self.tty:
            return
        now = time.perf_counter()
        if now - self.last < 1.0 and self.done < self.total:
            return
        self.last = now
        rate = self.done * self.batch_size / (now - self.start)
        eta = (self.total - self.done) * self.batch_size / max(rate, 1e-9)
        loss = loss_sum.item() / max(steps_in_epoch, 1)  # the one host sync, about once a second
        print(f"\repoch {epoch}/{epochs} loss {loss:.4f} {rate:,.0f} img/s ETA {eta:,.0f}s   ", end="", file=sys.stderr,
              flush=True)

    def epoch_end(self, row: dict, epochs: int) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"{row['images_per_s']:,.0f} img/s"]
        if row.get("val_acc") is not None:
            parts += [f"val_acc {row['val_acc']:.2f}", f"knn_acc {row['knn_acc']:.2f}"]
        if row.get("compile_seconds") is not None:
            parts.append(f"(compiled in {row['compile_seconds']:.1f}s)")
        print(("\r" if self.tty else "") + "  ".join(parts) + " " * 8, file=sys.stderr, flush=True)


def pretrain(config: PretrainConfig, *, out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
             data: ImageData | None = None, on_report: Callable[[dict, Path | None], None] | None = None,
             progress: bool = True, final_test: bool = False) -> PretrainResult:
    """Pretrain a backbone; evaluate every `eval_every` epochs and at the end.

    Writes to `out_dir` (when given): `last.pt` (full state, resumable), `best.pt` (best `val_acc`)
    and `statistics.csv` (one row per epoch). `resume` continues from a `last.pt`: on the CPU the
    result is identical to a run that never stopped. `on_report(row, checkpoint_path)` is called
    after every evaluation (this is how a Ray Tune trial reports). With `final_test`, the last
    evaluation also measures `test_acc`, once, for reporting.
    """
    config.validate()
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if checkpoint is not None and checkpoint.get("weights_only"):
        raise InputError(f"{resume} holds weights only (no optimiser or random state): it cannot be resumed; "
                         f"resume from the run's last.pt")
    if checkpoint is not None:
        saved = PretrainConfig.from_dict(checkpoint["config"])
        ignore = {"epochs", "device", "compile", "data_dir"}
        differing = [f.name for f in dataclasses.fields(config)
                     if f.name not in ignore and getattr(config, f.name) != getattr(saved, f.name)]
        if differing:
            raise InputError(f"checkpoint {resume} was trained with different settings: {', '.join(differing)}")
        check_extension(saved, config, checkpoint["epoch"], resume)
    device = config.torch_device()
    if data is None:
        data = load_run_data(config)
    n_images = data.pretrain_images.shape[0]
    if config.batch_size > n_images:
        raise InputError(f"batch_size {config.batch_size} exceeds the {n_images} pretraining images of {config.dataset}")
    data = data.to(device)
    out = Path(out_dir).resolve() if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    model, optimizer = prepare_training(config, data.image_size, device)
    shuffle = torch.Generator().manual_seed(config.seed)
    augment_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    steps_per_epoch = n_images // config.batch_size  # drop_last, as the reference
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs
    history: list[dict] = []
    start_epoch, step = 1, 0
    best_val = -math.inf

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        shuffle.set_state(checkpoint["rng"]["shuffle"])
        augment_rng.set_state(checkpoint["rng"]["augment"].to(augment_rng.get_state().device))
        torch.set_rng_state(checkpoint["rng"]["torch"])
        history = list(checkpoint["history"])
        start_epoch, step = checkpoint["epoch"] + 1, checkpoint["step"]
        best_val = max((r["val_acc"] for r in history if r.get("val_acc") is not None and r["epoch"] > 0), default=-math.inf)
    else:
        # Epoch 0: the same network at random initialisation, the baseline pretraining must beat.
        history.append({"epoch": 0, "train_loss": None, **probe_scores(model.backbone, data, knn_k=config.knn_k,
                        knn_temperature=config.knn_temperature, probe_weight_decay=config.probe_weight_decay),
                        "images_per_s": None, "lr": None, "seconds": 0.0})

    def save_state(epoch: int) -> Path | None:
        if out is None:
            return None
        state = {
            "format": CHECKPOINT_FORMAT, "sslsearch_version": __version__, "torch_version": str(torch.__version__),
            "config": config.to_dict(), "epoch": epoch, "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": {"shuffle": shuffle.get_state(), "augment": augment_rng.get_state().cpu(), "torch": torch.get_rng_state()},
            "history": history, "image_size": data.image_size, "preset": data.preset, "classes": list(data.classes),
        }
        _atomic_save(state, out / "last.pt")
        if epoch > 0 and history[-1]["val_acc"] > best_val:
            _atomic_save(weights_only(state), out / "best.pt")  # only last.pt resumes
        _write_statistics(history, out / "statistics.csv")
        return out / "last.pt"

    if checkpoint is None:
        # A checkpoint of the initial state too: a trial interrupted before its first report then
        # resumes instead of starting again from scratch.
        path = save_state(0)
        if on_report is not None:
            on_report(history[0], path)

    train_step = make_train_step(config, model, optimizer, PRESETS[data.preset], augment_rng)
    bar = _Progress(progress, steps_per_epoch * (config.epochs - start_epoch + 1), config.batch_size)
    compile_pending = config.compile  # the first step of this process compiles: timed on its own

    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(n_images, generator=shuffle).to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device)
        compile_seconds = None
        for i in range(steps_per_epoch):
            factor = lr_factor(step, total_steps, warmup_steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor  # a Python float: no tensor, no copy to the device
            lr = optimizer.param_groups[0]["lr"]  # the weights' rate, for statistics.csv
            images = data.pretrain_images[order[i * config.batch_size:(i + 1) * config.batch_size]]
            if compile_pending:
                synchronize(device)
                compile_start = time.perf_counter()
                loss_sum += train_step(images)
                synchronize(device)  # once per run, not per step
                compile_seconds = time.perf_counter() - compile_start
                compile_pending = False
            else:
                loss_sum += train_step(images)
            step += 1
            bar.step(epoch, config.epochs, loss_sum, i + 1)
        train_loss = loss_sum.item() / steps_per_epoch  # one host sync per epoch
        seconds = time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"loss became {train_loss} in epoch {epoch} (loss={config.loss}, lmbda={config.lmbda}, "
                                   f"lr={config.lr}); lower the learning rate or λ", epoch=epoch)
        # images_per_s leaves the one-off compilation out; `seconds` is the epoch's wall time.
        training_seconds = seconds - (compile_seconds or 0.0)
        row = {"epoch": epoch, "train_loss": train_loss, "val_acc": None, "knn_acc": None,
               "images_per_s": steps_per_epoch * config.batch_size / max(training_seconds, 1e-9), "lr": lr, "seconds": seconds}
        if compile_seconds is not None:
            row["compile_seconds"] = compile_seconds
        evaluate_now = epoch % config.eval_every == 0 or epoch == config.epochs
        if evaluate_now:
            row.update(probe_scores(model.backbone, data, knn_k=config.knn_k, knn_temperature=config.knn_temperature,
                                    probe_weight_decay=config.probe_weight_decay,
                                    with_test=final_test and epoch == config.epochs))
        history.append(row)
        bar.epoch_end(row, config.epochs)
        checkpoint_path = save_state(epoch) if evaluate_now else None
        if evaluate_now and row["val_acc"] > best_val:
            best_val = row["val_acc"]
        if on_report is not None and evaluate_now:
            on_report(row, checkpoint_path)
    return PretrainResult(config, model, history, out)


def model_from_checkpoint(checkpoint: dict) -> SSLModel:
    """Rebuild the SSLModel stored in a checkpoint (on the CPU, in eval mode)."""
    config = PretrainConfig.from_dict(checkpoint["config"])
    model = build_model(config, checkpoint["image_size"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()
