"""The prepared device check: CUDA against the CPU, then the training benchmarks, into one JSON.

    bash benchmarks/gpu_check.sh [OUT.json]          # from the repository root

Needs only torch and torchvision (the bottom layer of sslsearch imports nothing else), installs
nothing and uses no network. With CUDA it checks, on small batches, that augmentation, the loss
and one training step's gradients (fp32) agree with the CPU and that training steps never wait
for the device; then it times pretraining steps (`sslsearch.bench.kernels.bench_train`) for ResNet-18
and ResNet-50 at 32 px and ResNet-50 at 64 px against the reference-style loop, larger batches,
joint views, the fast probe's share of a trial (`bench_probe`), packed trials and torch.compile, skipping the optional
runs that would push it past its time budget (default 240 s; about 3 minutes on an H200 is expected). Without CUDA, or
with --device cpu, it runs tiny sizes in well under a minute: that is what CI tests.
The exit code is 1 when a check fails or a benchmark errors; the JSON is written either way.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree, not an installed copy

import torch  # noqa: E402
import torchvision  # noqa: E402

from sslsearch.bench.kernels import (  # noqa: E402
    SOURCE_SIZES,
    _natural_images,
    bench_packing,
    bench_probe,
    bench_train,
    format_bench_packing,
    format_bench_probe,
    format_bench_train,
)
from sslsearch.method import augment as A  # noqa: E402
from sslsearch.method.losses import ssl_loss  # noqa: E402
from sslsearch.method.train import PretrainConfig, build_model, make_train_step, prepare_training  # noqa: E402

CIFAR10_IMAGES = 50_000      # a CIFAR-10 epoch
STL10_IMAGES = 105_000       # STL-10 train + unlabeled, the reference's 64 px pretraining set
# (name, bench_train arguments, required): required runs always run, optional ones only while the
# time budget lasts. Batch 128 is the reference's; 512 is experiments/cifar10_resnet18.yaml's.
CUDA_PLAN = [
    ("resnet18-32px-b128", dict(backbone="resnet18", image_size=32, batch_size=128, dataset_size=CIFAR10_IMAGES), True),
    ("resnet50-32px-b128", dict(backbone="resnet50", image_size=32, batch_size=128, dataset_size=CIFAR10_IMAGES), True),
    ("resnet50-64px-b128", dict(backbone="resnet50", image_size=64, batch_size=128, dataset_size=STL10_IMAGES), True),
    ("resnet18-32px-b512", dict(backbone="resnet18", image_size=32, batch_size=512, dataset_size=CIFAR10_IMAGES,
                                reference=False), False),
    ("resnet50-32px-b512", dict(backbone="resnet50", image_size=32, batch_size=512, dataset_size=CIFAR10_IMAGES,
                                reference=False, steps=50), False),
    ("resnet18-32px-b512-joint", dict(backbone="resnet18", image_size=32, batch_size=512, dataset_size=CIFAR10_IMAGES,
                                      reference=False, joint_views=True), False),
]
CUDA_PACKING = dict(n_trials=(1, 2, 4), backbone="resnet18", image_size=32, batch_size=128, steps=100, warmup=10)
CUDA_COMPILE = ("resnet18-32px-b512-compile", dict(backbone="resnet18", image_size=32, batch_size=512,
                                                  dataset_size=CIFAR10_IMAGES, reference=False, compile=True), False)
# Tiny sizes for the CPU (CI): the same code paths, seconds each.
CPU_PLAN = [
    ("small_cnn-32px-b16", dict(backbone="small_cnn", image_size=32, batch_size=16, steps=2, warmup=1,
                                dataset_size=CIFAR10_IMAGES), True),
    ("small_cnn-64px-b16", dict(backbone="small_cnn", image_size=64, batch_size=16, steps=2, warmup=1,
                                dataset_size=STL10_IMAGES), True),
    ("resnet18-32px-b4", dict(backbone="resnet18", image_size=32, batch_size=4, steps=1, warmup=0,
                              dataset_size=CIFAR10_IMAGES, reference=False), True),
]
# The fast probe at CIFAR-10's split sizes (45,000 train + 5,000 val) and its share of a trial,
# against an epoch at the sweep files' batch of 512, timed side by side in each round.
CIFAR10_TRAIN, CIFAR10_VAL = 45_000, 5_000
CUDA_PROBES = [
    ("probe-resnet18", dict(backbone="resnet18", image_size=32, train_images=CIFAR10_TRAIN, val_images=CIFAR10_VAL,
                            batch_size=512)),
    ("probe-resnet50", dict(backbone="resnet50", image_size=32, train_images=CIFAR10_TRAIN, val_images=CIFAR10_VAL,
                            batch_size=512, steps=50)),
]
CPU_PROBES = [("probe-small_cnn", dict(backbone="small_cnn", image_size=32, train_images=512, val_images=128,
                                       batch_size=16, steps=2, warmup=1, rounds=1))]
CPU_PACKING = dict(n_trials=(1, 2), backbone="small_cnn", image_size=32, batch_size=16, steps=2, warmup=1)
# Rough seconds of each optional run on an H200, for the budget.
ESTIMATED_S = {"resnet18-32px-b512": 10, "resnet50-32px-b512": 15, "resnet18-32px-b512-joint": 10,
               "probe-resnet18": 20, "probe-resnet50": 35, "packing": 40, "resnet18-32px-b512-compile": 120}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda[:N] or cpu (tiny sizes)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="skip optional runs that would end later than this")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--no-packing", action="store_true", help="skip the packed-trials run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = (args.device if args.device.startswith("cuda") else "cuda") if cuda else "cpu"
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    report: dict = {"script": "benchmarks/gpu_check.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "mode": "cuda" if cuda else "cpu", "environment": environment(device), "checks": {},
                    "benchmarks": {}, "probes": {}, "packing": None, "targets": None}
    print(f"device check on {report['environment']['device_name']} (torch {torch.__version__})", flush=True)

    def save() -> None:
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    if cuda:
        for name, check in (("augmentation", check_augmentation), ("loss", check_loss),
                            ("training_step", check_training_step), ("no_host_sync", check_no_host_sync)):
            report["checks"][name] = attempt(check, device)
            print(f"check {name}: {summary(report['checks'][name])}", flush=True)
        report["checks_ok"] = all(c.get("ok") for c in report["checks"].values())
    else:
        report["checks"] = {"skipped": "no CUDA device: nothing to compare with the CPU"}
        report["checks_ok"] = None
    save()

    plan = CUDA_PLAN if cuda else CPU_PLAN
    optional_tail = [] if not cuda or args.no_compile else [CUDA_COMPILE]
    for name, kwargs, required in plan:
        run_step(report["benchmarks"], name, lambda: bench_train(device=device, **kwargs), format_bench_train,
                 required, started, args.budget_s)
        save()
    for name, kwargs in (CUDA_PROBES if cuda else CPU_PROBES):
        run_step(report["probes"], name, lambda: bench_probe(device=device, **kwargs), format_bench_probe,
                 not cuda, started, args.budget_s)
        save()
    packing = CUDA_PACKING if cuda else CPU_PACKING
    if args.no_packing:
        report["packing"] = {"skipped": "--no-packing"}
    elif cuda and not within_budget(started, args.budget_s, ESTIMATED_S["packing"]):
        report["packing"] = {"skipped": "time budget"}
    else:
        report["packing"] = attempt(lambda: bench_packing(device=device, **packing))
        print(format_bench_packing(report["packing"]) if "error" not in report["packing"] else
              f"packing: {summary(report['packing'])}", flush=True)
    save()
    for name, kwargs, required in optional_tail:
        run_step(report["benchmarks"], name, lambda: bench_train(device=device, **kwargs), format_bench_train,
                 required, started, args.budget_s)
        save()
    if cuda:
        report["targets"] = targets(report["benchmarks"], report["probes"])
        for target, value in report["targets"].items():
            print(f"target {target}: {value}", flush=True)
    failed = (report["checks_ok"] is False
              or any("error" in r for r in report["benchmarks"].values())
              or any("error" in r for r in report["probes"].values())
              or (isinstance(report["packing"], dict) and "error" in report["packing"]))
    report["ok"] = not failed
    save()
    print(f"wrote {out.resolve()} in {report['elapsed_s']} s; {'all ran' if not failed else 'SOMETHING FAILED, see the JSON'}")
    return 1 if failed else 0


def run_step(records: dict, name: str, run, describe, required: bool, started: float, budget_s: float) -> None:
    """records[name] = run(), or its error, or "skipped" when an optional step would overrun the budget."""
    if not required and not within_budget(started, budget_s, ESTIMATED_S.get(name, 30)):
        records[name] = {"skipped": "time budget"}
        print(f"{name}: skipped (time budget)", flush=True)
        return
    result = attempt(run)
    records[name] = result
    print(f"[{name}]\n" + (describe(result) if "error" not in result else summary(result)), flush=True)


def within_budget(started: float, budget_s: float, estimate_s: float) -> bool:
    return time.monotonic() - started + estimate_s <= budget_s


def attempt(function, *args) -> dict:
    """The function's result, or its error as a record: one failure must not lose the other figures."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 — recorded in the JSON, and the exit code says so
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def summary(record: dict) -> str:
    if "error" in record:
        return "ERROR " + record["error"].splitlines()[0]
    return ("ok" if record.get("ok") else "FAILED") + " " + json.dumps(
        {k: v for k, v in record.items() if k != "ok"}, default=str)


def environment(device: str) -> dict:
    cuda = device.startswith("cuda")
    return {
        "python": platform.python_version(), "torch": str(torch.__version__), "torchvision": torchvision.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.machine()})",
        "device_count": torch.cuda.device_count() if cuda else 0,
    }


# ---------------------------------------------------------------------------------------------
# CUDA against the CPU
# ---------------------------------------------------------------------------------------------

class _Fp32:
    """No TF32 inside: the CPU computes in true fp32, so must the GPU to compare closely."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def check_augmentation(device: str) -> dict:
    """The same random parameters give the same views on both devices (train and eval views)."""
    worst = {}
    for preset_name in ("cifar", "stl10", "tiny_imagenet"):
        preset = A.PRESETS[preset_name]
        size = SOURCE_SIZES[preset_name]
        images = _natural_images(32, size, seed=1)
        params = A.sample_view_params(32, size, size, preset, torch.Generator().manual_seed(0))
        on_device = A.ViewParams(**{k: v.to(device) for k, v in vars(params).items()})
        train = (A.apply_view(images.to(device), on_device, preset).cpu() - A.apply_view(images, params, preset)).abs().max()
        evals = (A.eval_views(images.to(device), preset).cpu() - A.eval_views(images, preset)).abs().max()
        worst[preset_name] = max(train.item(), evals.item())
    tolerance = 1e-4  # normalised units; float32 round-off is ~1e-6
    return {"ok": max(worst.values()) < tolerance, "max_abs_diff": worst, "tolerance": tolerance}


def check_loss(device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 256, 128, generator=generator)
    diffs = {}
    with _Fp32():
        for loss in ("barlow", "hsic"):
            for normalization in ("reference", "batchnorm"):
                cpu = ssl_loss(loss, z1, z2, 1 / 128, normalization)
                gpu = ssl_loss(loss, z1.to(device), z2.to(device), 1 / 128, normalization).cpu()
                diffs[f"{loss}/{normalization}"] = abs(gpu.item() - cpu.item()) / abs(cpu.item())
    tolerance = 1e-4  # float32 round-off of sums over 256×128 values is ~1e-6
    return {"ok": max(diffs.values()) < tolerance, "relative_diff": diffs, "tolerance": tolerance}


def check_training_step(device: str) -> dict:
    """Loss and gradients of one training step: the GPU (fp32, channels_last) and the CPU (fp32) against fp64.

    At initialisation the gradients are ill-conditioned in fp32 (BatchNorm and the loss both
    standardise along a small batch): two correct fp32 computations, CPU and CPU in another
    memory format, already differ by ~0.5 %. So the yardstick is the CPU's own fp32 error
    against fp64; a wrong kernel or a wrong layout is off by order 1.
    """
    config = PretrainConfig(dataset="cifar10", backbone="resnet18", batch_size=32)
    torch.manual_seed(0)
    cpu_model = build_model(config, 32).train()
    exact_model = copy.deepcopy(cpu_model).double()
    gpu_model = copy.deepcopy(cpu_model).to(device, memory_format=torch.channels_last)
    images = _natural_images(32, 32, seed=2)
    generator = torch.Generator().manual_seed(3)
    views = [A.augment_views(images, A.PRESETS["cifar"], generator) for _ in range(2)]
    gpu_views = [v.to(device).contiguous(memory_format=torch.channels_last) for v in views]
    exact_loss = _loss_and_backward(exact_model, [v.double() for v in views], config)
    cpu_loss = _loss_and_backward(cpu_model, views, config)
    with _Fp32():
        gpu_loss = _loss_and_backward(gpu_model, gpu_views, config)
    exact = [p.grad for p in exact_model.parameters()]
    cpu_error = _relative_error([p.grad for p in cpu_model.parameters()], exact)
    gpu_error = _relative_error([p.grad for p in gpu_model.parameters()], exact)
    loss_error = abs(gpu_loss - exact_loss) / abs(exact_loss)
    # bf16 autocast, as the fast path trains: close, not equal (reported, not checked).
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16_loss = _loss_and_backward(gpu_model, gpu_views, config)
    grad_tolerance = max(5 * cpu_error, 1e-3)
    return {"ok": loss_error < 1e-4 and gpu_error <= grad_tolerance,
            "loss_fp64": exact_loss, "gpu_loss_relative_error": loss_error,
            "cpu_loss_relative_error": abs(cpu_loss - exact_loss) / abs(exact_loss),
            "gpu_grad_relative_error": gpu_error, "cpu_grad_relative_error": cpu_error,
            "bf16_loss_relative_error": abs(bf16_loss - exact_loss) / abs(exact_loss),
            "tolerances": {"loss": 1e-4, "grad": grad_tolerance}}


def _relative_error(grads: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """‖g − exact‖ / ‖exact‖ over all parameters together, in fp64 on the CPU."""
    difference = sum((g.detach().cpu().double() - e).pow(2).sum() for g, e in zip(grads, exact))
    return (difference.sqrt() / sum(e.pow(2).sum() for e in exact).sqrt()).item()


def _loss_and_backward(model, views, config) -> float:
    model.zero_grad(set_to_none=True)
    _, z1 = model(views[0])
    _, z2 = model(views[1])
    loss = ssl_loss(config.loss, z1, z2, config.lmbda, config.normalization)
    loss.backward()
    return loss.item()


def check_no_host_sync(device: str) -> dict:
    """train.py's loop body (lr, batch indexing, step, running loss) under sync debug mode "error"."""
    results = {}
    for joint_views in (False, True):
        config = PretrainConfig(dataset="cifar10", backbone="resnet18", batch_size=64, joint_views=joint_views)
        dev = torch.device(device)
        model, optimizer = prepare_training(config, 32, dev)
        step = make_train_step(config, model, optimizer, A.PRESETS["cifar"], torch.Generator(dev).manual_seed(0))
        images = _natural_images(256, 32, seed=0).to(dev)
        order = torch.randperm(256).to(dev)
        loss_sum = torch.zeros((), device=dev)

        def body(i: int) -> None:
            nonlocal loss_sum
            for group in optimizer.param_groups:
                group["lr"] = config.lr
            loss_sum += step(images[order[(i % 4) * 64:(i % 4 + 1) * 64]])

        for i in range(2):  # warm-up: optimiser state, constants on the device, cuDNN plans
            body(i)
        torch.cuda.synchronize(dev)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(3):
                body(i)
            results["joint_views" if joint_views else "separate_views"] = "no sync"
        except RuntimeError as error:
            results["joint_views" if joint_views else "separate_views"] = f"synchronised: {str(error).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(dev)
    return {"ok": all(v == "no sync" for v in results.values()), **results}


def targets(benchmarks: dict, probes: dict) -> dict:
    """The issue's H200 targets, against what ran."""
    def value(name: str, key: str):
        return benchmarks.get(name, {}).get(key)

    r18, r50 = value("resnet18-32px-b128", "seconds_per_epoch"), value("resnet50-32px-b128", "seconds_per_epoch")
    r18_512, r50_512 = value("resnet18-32px-b512", "seconds_per_epoch"), value("resnet50-32px-b512", "seconds_per_epoch")
    ratio18, ratio50 = value("resnet18-32px-b128", "ratio"), value("resnet50-32px-b128", "ratio")
    verdict = lambda x, ok: None if x is None else {"value": round(x, 3), "met": ok(x)}  # noqa: E731
    return {
        "resnet18 CIFAR-10 epoch <= 2 s (batch 128)": verdict(r18, lambda x: x <= 2),
        "resnet18 CIFAR-10 epoch <= 2 s (batch 512)": verdict(r18_512, lambda x: x <= 2),
        "resnet50 CIFAR-10 epoch <= 5 s (batch 128)": verdict(r50, lambda x: x <= 5),
        "resnet50 CIFAR-10 epoch <= 5 s (batch 512)": verdict(r50_512, lambda x: x <= 5),
        "resnet18 >= 10x the reference-style loop": verdict(ratio18, lambda x: x >= 10),
        "resnet50 >= 10x the reference-style loop": verdict(ratio50, lambda x: x >= 10),
        **{f"{name.removeprefix('probe-')} probe < 5 % of a trial (every {every} epochs)":
           verdict(share, lambda x: x < 0.05)
           for name, probe in probes.items() for every, share in probe.get("share", {}).items()},
    }


if __name__ == "__main__":
    sys.exit(main())
