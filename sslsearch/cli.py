"""The `sslsearch` command: thin wrappers that parse, call one library function and print.

Parsing and every check that needs no records come before any heavy import: building the parser
and validating flags, experiment files and `--set` overrides import neither torch, Ray, Optuna's
samplers nor MLflow (sslsearch.method.config, sslsearch.search.experiment and sslsearch.records.store are light), so
`--help` and bad input answer in well under a second (docs/benchmarks.md). Each `_run_*` checks
first and imports the library it calls after.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sslsearch.errors import InputError, first_line
from sslsearch.presets import EXPERIMENTS, SEARCH_SPACES, experiment_names, space_names

QUOTED = 80   # characters of a bad flag value that its one-line error quotes
# Bounds of the flags whose values only make sense within them: past them a value is a slip, not a plan.
MAX_CONFIRM_TOP = 50       # confirm --top: each setting costs 2 × --seeds trials of the full budget
MAX_CONFIRM_SEEDS = 1000   # confirm --seeds: n of the verdict; 1,000 seed blocks is beyond any paper's
MAX_ROWS = 1_000_000       # leaderboard/report --top: rows per loss
MAX_PORT = 65_535
# The shipped files' folder too: in an installed copy it is the only way to find one to copy and change.
EXPERIMENT_HELP = (f"experiment YAML, or a shipped experiment by name ({', '.join(experiment_names())}; default: digits; "
                   f"their files, to copy and change: {EXPERIMENTS})")
SPACE_HELP = (f"search-space YAML, or a shipped space by name ({', '.join(space_names())}; default: the experiment's "
              f"search.space; their files: {SEARCH_SPACES})")


def _integer(low: int | None = None, high: int | None = None):
    """argparse type: an integer in [low, high]; anything else is one line quoting at most QUOTED characters of it."""
    from sslsearch.errors import shown

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:   # (also a number of more than 4,300 digits, which Python will not convert)
            raise argparse.ArgumentTypeError(f"expected an integer, got {shown(text, QUOTED)}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"in [{low:,}, {high:,}]" if low is not None and high is not None
                      else f"≥ {low:,}" if low is not None else f"≤ {high:,}")
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {shown(text, QUOTED)}")
        return value

    return integer


def _number(text: str) -> float:
    """argparse type: a float; anything else is one line quoting at most QUOTED characters of it."""
    from sslsearch.errors import shown

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {shown(text, QUOTED)}") from None


_positive_int = _integer(1)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (exit code 2 is argparse's own)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the default is None/False or already named."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def _add_pretrain(sub) -> None:
    from sslsearch.method.config import DATASETS, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="pretrain one backbone (the reference's main.py)", formatter_class=_DefaultsShown)
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default=None, help="where data sets live or are downloaded to (default: ./data)")
    p.add_argument("--image-size", type=_integer(), default=None, help="side of the images of a 'folder' data set")
    p.add_argument("--loss", default=d.loss, help="barlow (off-diagonal → 0) or hsic (off-diagonal → −1)")
    p.add_argument("--lmbda", type=_number, default=d.lmbda, help=f"λ, weight of the off-diagonal term (default: {d.lmbda})")
    p.add_argument("--batch-size", type=_integer(), default=d.batch_size, help=f"images per step, ≥ 2 (default: {d.batch_size})")
    p.add_argument("--feature-dim", type=_integer(), default=d.feature_dim,
                   help=f"projector output width (default: {d.feature_dim})")
    p.add_argument("--epochs", type=_integer(), default=d.epochs, help=f"pretraining epochs (default: {d.epochs})")
    p.add_argument("--lr", type=_number, default=d.lr, help=f"learning rate of the weights (default: {d.lr})")
    p.add_argument("--lr-biases", type=_number, default=None,
                   help="learning rate of biases and BatchNorm parameters (default: --lr; official: 0.0048)")
    p.add_argument("--lr-per-256", action="store_true", help="rates are per 256 images: ×batch-size/256 (official)")
    p.add_argument("--weight-decay", type=_number, default=d.weight_decay, help=f"weight decay (default: {d.weight_decay:g})")
    p.add_argument("--weight-decay-filter", action="store_true",
                   help="no weight decay on biases and BatchNorm parameters (official)")
    p.add_argument("--lars-adaptation-filter", action="store_true",
                   help="LARS leaves biases and BatchNorm parameters unadapted (official)")
    p.add_argument("--momentum", type=_number, default=d.momentum, help=f"SGD and LARS (default: {d.momentum})")
    p.add_argument("--optimizer", default=d.optimizer, help="adam (reference), sgd or lars")
    p.add_argument("--schedule", default=d.schedule, help="constant (reference) or cosine to 1/1000 of the rate (official)")
    p.add_argument("--warmup-epochs", type=_integer(), default=d.warmup_epochs, help="linear warm-up from 0 (official: 10)")
    p.add_argument("--normalization", default=d.normalization, help="reference (mean/std) or batchnorm (official Barlow Twins)")
    p.add_argument("--projector", default=None, help="hidden widths, e.g. 512 (reference) or 8192-8192 (official)")
    p.add_argument("--projector-last-bias", action=argparse.BooleanOptionalAction, default=d.projector_last_bias,
                   help="bias on the projector's last layer (reference: yes; official: --no-projector-last-bias)")
    p.add_argument("--normalize-projection", action=argparse.BooleanOptionalAction, default=d.normalize_projection,
                   help="L2-normalise z before the loss (reference: yes; official: --no-normalize-projection)")
    p.add_argument("--zero-init-residual", action="store_true", help="ResNets: residual branches start at 0 (official)")
    p.add_argument("--backbone", default=None,
                   help="resnet18, resnet34, resnet50, small_cnn (default: small_cnn on digits, else resnet50)")
    p.add_argument("--eval-every", type=_integer(), default=d.eval_every, help="epochs between probes and checkpoints")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=_integer(), default=d.seed, help="seeds the weights, augmentations and batches")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=None, help="output folder (default: runs/pretrain-DATASET-LOSS-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=_run_pretrain)


def pretrain_flag_fields(args) -> list[str]:
    """PretrainConfig's fields that `pretrain` takes as a flag of the same name (data_dir and the projector's
    widths are read apart: a path to resolve, widths joined by '-')."""
    import dataclasses

    from sslsearch.method.config import PretrainConfig

    return [f.name for f in dataclasses.fields(PretrainConfig) if f.name != "data_dir" and hasattr(args, f.name)]


def _run_pretrain(args) -> int:
    from sslsearch.method.config import PretrainConfig

    # Every setting that has a flag of the same name (the flags are PretrainConfig's fields, with dashes);
    # the fields without one keep PretrainConfig's defaults (tests/test_cli.py checks which those are).
    values = {name: getattr(args, name) for name in pretrain_flag_fields(args)}
    values["data_dir"] = str(Path(args.data_dir or "data").resolve())
    if args.projector is not None:
        try:
            values["projector_hidden"] = tuple(int(w) for w in args.projector.split("-") if w)
        except ValueError:
            raise InputError("--projector expects widths joined by '-', e.g. 512 or 8192-8192, got "
                             f"{args.projector[:80]!r}") from None
    config = PretrainConfig(**values)
    config.validate()
    config.check_data()
    config.check_local_data()
    if args.resume and not args.out:   # the default --out is a new, time-stamped folder: nothing to continue there
        runs = sorted(Path("runs").glob(f"pretrain-{config.dataset}-{config.loss}-*/last.pt"))
        found = (f"; the newest here: --out {runs[-1].parent}" if runs
                 else f"; no run of {config.dataset}/{config.loss} under ./runs")
        raise InputError(f"--resume needs --out, the folder of the run to continue{found}")
    out = Path(args.out or f"runs/pretrain-{config.dataset}-{config.loss}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    _check_folder(out, "--out", "a folder (new, empty, or a run to --resume)")
    resume = None
    if args.resume:
        resume = out / "last.pt"
        if not resume.is_file():
            raise InputError(f"--resume: no checkpoint at {resume}")
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"output folder {out} exists and is not empty; pass --resume to continue it or choose another --out")
    _fetch_data(config)   # before --out is created
    from sslsearch.method.train import pretrain
    from sslsearch.processes import INTERRUPTED, reaping

    try:
        with reaping():  # SIGTERM as Ctrl-C: a scheduler's stop ends with the resume hint too
            result = pretrain(config, out_dir=out, resume=resume, progress=not args.quiet, final_test=True)
    except KeyboardInterrupt:
        last = out / "last.pt"
        hint = (f"its last checkpoint is {last}; continue with the same options and --out {out} --resume"
                if last.is_file() else "before its first checkpoint: nothing to resume")
        print(f"\nsslsearch: pretraining interrupted, {hint}", file=sys.stderr)
        return INTERRUPTED
    baseline = result.history[0]
    final = result.last_evaluated()
    print(f"random init: val_acc {baseline['val_acc']:.2f}  knn_acc {baseline['knn_acc']:.2f}")
    test = f"  test_acc {final['test_acc']:.2f} (reported, never used to choose)" if final.get("test_acc") is not None else ""
    print(f"pretrained ({final['epoch']} epochs): val_acc {final['val_acc']:.2f}  knn_acc {final['knn_acc']:.2f}{test}")
    print(f"checkpoint: {out / 'last.pt'}")
    return 0


def _add_linear(sub) -> None:
    p = sub.add_parser("linear", help="full linear evaluation of a checkpoint (the reference's linear.py)")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt, or a folder holding last.pt")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="(default: per data set: 200, the reference's, for cifar10/cifar100/stl10/tiny_imagenet; 100 for digits)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="(default: 512, the reference's; 64 for digits; folder: halved until an epoch has 20 steps)")
    p.add_argument("--lr", type=_number, default=None,
                   help="Adam's learning rate (default: 1e-3, the reference's; 3e-2 for digits)")
    p.add_argument("--weight-decay", type=_number, default=None, help="(default: 1e-6)")
    p.add_argument("--data-dir", default=None, help="override the data folder stored in the checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--out", default=None,
                   help="CSV of per-epoch results, must not exist (default: linear-TIME.csv next to the checkpoint)")
    p.set_defaults(run=_run_linear)


def _run_linear(args) -> int:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    checkpoint_path = Path(args.checkpoint).resolve()
    if checkpoint_path.is_dir():  # a pretrain output folder or a sweep trial's checkpoint folder
        checkpoint_path = checkpoint_path / "last.pt"
    out = (Path(args.out).resolve() if args.out
           else checkpoint_path.with_name(f"linear-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
    if out.exists():
        raise InputError(f"--out {out} exists; choose another file (results are never overwritten)")
    if checkpoint_path.exists() and not checkpoint_path.is_file():
        raise InputError(f"checkpoint {checkpoint_path} is not a regular file (a device or a pipe?); give a last.pt / best.pt")
    if not checkpoint_path.is_file():
        raise InputError(f"checkpoint not found: {checkpoint_path}")
    _check_checkpoint_file(checkpoint_path)
    if args.device != "auto" and not (args.device == "cpu" or args.device.startswith("cuda")):
        raise InputError(f"device must be auto, cpu or an available cuda[:N], got {args.device!r}")  # before torch loads
    from sslsearch.method.linear import evaluate_checkpoint

    overrides = {k: getattr(args, k, None) for k in ("epochs", "batch_size", "lr", "weight_decay")}
    result = evaluate_checkpoint(checkpoint_path, out, device=args.device, data_dir=args.data_dir, overrides=overrides)
    print(f"linear evaluation: test_acc {result['test_acc']:.2f} after {result['settings']['epochs']} epochs ({out})")
    return 0


def _check_checkpoint_file(path: Path) -> None:
    """InputError unless `path` looks like a pretraining checkpoint, checked without torch (seconds to import): a
    torch.save zip archive whose pickle names an sslsearch version. torch.load checks it fully afterwards."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            data = archive.read(pickles[0]) if len(pickles) == 1 else b""
    except (zipfile.BadZipFile, OSError, KeyError):
        data = b""
    if b"sslsearch_version" not in data:
        raise InputError(f"{path} is not an sslsearch pretraining checkpoint: give the last.pt or best.pt that "
                         "`sslsearch pretrain` or a sweep's trial wrote, or its folder")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    a = bench.add_parser("augment", help="batched augmentation vs the reference's per-image PIL pipeline")
    a.add_argument("--preset", default="cifar", help="cifar, stl10, tiny_imagenet or digits")
    a.add_argument("--images", type=_positive_int, default=2048, help="images augmented per pipeline (default: 2048)")
    a.add_argument("--batch-size", type=_positive_int, default=256, help="images per batched call (default: 256)")
    a.add_argument("--threads", type=_positive_int, default=2, help="CPU threads for both pipelines")
    a.add_argument("--json", action="store_true", help="print the figures as JSON")
    a.set_defaults(run=_run_bench_augment)
    _add_bench_train(bench)


def _add_bench_train(bench) -> None:
    t = bench.add_parser("train", help="pretraining steps, fast path vs a reference-style loop: img/s, s/epoch, %% of peak")
    t.add_argument("--backbone", default="resnet18", help="resnet18, resnet34, resnet50 or small_cnn")
    t.add_argument("--image-size", type=_integer(), default=32, help="32 (CIFAR preset) or 64 (STL-10 preset, 96 px sources)")
    t.add_argument("--batch-size", type=_positive_int, default=128, help="images per step (default: 128)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--steps", type=_positive_int, default=None, help="timed steps (default: 100 on CUDA, 5 on the CPU)")
    t.add_argument("--warmup", type=_integer(), default=None, help="untimed steps first (default: 10 on CUDA, 1 on the CPU)")
    t.add_argument("--rounds", type=_positive_int, default=1, help="alternate the two loops this often; each keeps its best")
    t.add_argument("--dataset-size", type=_positive_int, default=50_000, help="images per epoch (default: CIFAR-10's 50,000)")
    t.add_argument("--peak-tflops", type=_number, default=None, help="the device's peak (default: a table of known GPUs)")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch threads, and the reference's DataLoader workers")
    t.add_argument("--compile", action="store_true", help="torch.compile the fast path (compile time reported apart)")
    t.add_argument("--joint-views", action="store_true", help="both views in one forward pass (BatchNorm over both)")
    t.add_argument("--no-reference", action="store_true", help="skip the reference-style loop")
    t.add_argument("--json", action="store_true", help="print the figures as JSON")
    t.set_defaults(run=_run_bench_train)
    k = bench.add_parser("packing", help="aggregate img/s of N training processes sharing one device")
    k.add_argument("--trials", default="1,2,4", help="counts of concurrent trials, comma-separated (default: 1,2,4)")
    k.add_argument("--backbone", default="resnet18", help="resnet18, resnet34, resnet50 or small_cnn (default: resnet18)")
    k.add_argument("--image-size", type=_integer(), default=32, help="image side in pixels (default: 32)")
    k.add_argument("--batch-size", type=_positive_int, default=128, help="images per step (default: 128)")
    k.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    k.add_argument("--steps", type=_positive_int, default=None, help="timed steps per trial (default: 100 on CUDA, 5 on the CPU)")
    k.add_argument("--threads", type=_positive_int, default=None, help="torch threads per trial")
    k.add_argument("--json", action="store_true", help="print the figures as JSON")
    k.set_defaults(run=_run_bench_packing)
    q = bench.add_parser("probe", help="the fast probe's seconds (features, L-BFGS, kNN) and its share of a trial")
    q.add_argument("--backbone", default="resnet18", help="resnet18, resnet34, resnet50 or small_cnn (default: resnet18)")
    q.add_argument("--image-size", type=_integer(), default=32, help="image side in pixels (default: 32)")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    q.add_argument("--train-images", type=_positive_int, default=45_000, help="train split (default: CIFAR-10's 45,000)")
    q.add_argument("--val-images", type=_positive_int, default=5_000, help="val split (default: CIFAR-10's 5,000)")
    q.add_argument("--classes", type=_positive_int, default=10, help="label classes (default: 10)")
    q.add_argument("--batch-size", type=_positive_int, default=128, help="pretraining batch for the epoch time")
    q.add_argument("--epoch-seconds", type=_number, default=None, help="an epoch's seconds (default: measured)")
    q.add_argument("--eval-every", default="5,10", help="report intervals in epochs, comma-separated (default: 5,10)")
    q.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    q.add_argument("--json", action="store_true", help="print the figures as JSON")
    q.set_defaults(run=_run_bench_probe)
    s = bench.add_parser("search", help="what the search is worth: TPE/random × ASHA/FIFO on one problem, over seeds")
    s.add_argument("experiment", nargs="?", default=None, help=EXPERIMENT_HELP)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the experiment, e.g. --set pretrain.epochs=8")
    s.add_argument("--methods", default=None,
                   help="sampler+scheduler pairs, comma-separated (default: all of the mode's methods)")
    s.add_argument("--seeds", default="0,1,2", help="search seeds, comma-separated (default: 0,1,2)")
    s.add_argument("--storage", default=None, help="keep the sweeps' folders here (default: a temporary folder)")
    s.add_argument("--plot", default=None, help="write the anytime curves (all methods, one axis) to this PNG")
    s.add_argument("--quick", action="store_true",
                   help="check the machinery: one seed, one pair of trials, 2 epochs (figures meaningless; 2-4 minutes "
                        "on a 2-core CPU, mostly Ray and worker start-up)")
    s.add_argument("--replay", action="store_true",
                   help="replay the search on a table of real learning curves (the sweep's own searcher and scheduler, "
                        "simulated trials): many seeds in minutes, with 95%% intervals")
    s.add_argument("--table", default=None,
                   help="the replay table (default: the shipped digits table, presets/replay/digits_table.npz in the package)")
    s.add_argument("--replay-seeds", type=_positive_int, default=50, help="replayed sweeps per method (default: 50)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(run=_run_bench_search)
    _add_bench_platform(bench)


def _add_bench_platform(bench) -> None:
    f = bench.add_parser("platform", help="the sweep driver's cost as trials grow: a real sweep of trials that only sleep")
    f.add_argument("--trials", default="50,200,1000", help="sweep sizes, comma-separated, each in a fresh process "
                   "(default: 50,200,1000)")
    f.add_argument("--reports", type=_positive_int, default=10, help="report intervals of a trial that runs its "
                   "full budget, after the epoch-0 report (default: 10, as experiments/cifar10_resnet18.yaml)")
    f.add_argument("--concurrency", type=_positive_int, default=8, help="trials at a time (default: 8)")
    f.add_argument("--report-seconds", type=_number, default=0.25, help="a trial's sleep per report interval (default: 0.25)")
    f.add_argument("--checkpoint-mb", type=_number, default=1.0, help="size of each report's last.pt (default: 1)")
    f.add_argument("--tracking", default="sqlite", choices=("sqlite", "server", "none"),
                   help="MLflow to SQLite, to a real `mlflow server` on 127.0.0.1, or none (default: sqlite)")
    f.add_argument("--sampler", default="tpe", choices=("tpe", "random", "gp"), help="Optuna sampler (default: tpe)")
    f.add_argument("--ray-num-to-keep", type=_positive_int, default=2,
                   help="Ray's CheckpointConfig num_to_keep (run_sweep's: 2; 1 was the pre-fix setting, see docs/scale.md)")
    f.add_argument("--append-snapshot", action="store_true",
                   help="append each finished trial to the Optuna journal (what run_sweep does; the default)")
    f.add_argument("--rewrite-snapshot", action="store_true",
                   help="rewrite the whole Optuna journal at every finished trial (the pre-fix behaviour, for comparison; "
                        "run_sweep appends)")
    f.add_argument("--ray-loggers", default="sweep", choices=("sweep", "all", "json"),
                   help="Ray's per-trial loggers: result.json and progress.csv, as run_sweep has them; all three (with "
                        "Ray's TensorBoard logger, as run_sweep had them until 2026-12-06); or result.json only (default: sweep)")
    f.add_argument("--paused-twins-hold-slots", action="store_true",
                   help="count a twin paused at a rung against max_concurrent (the accounting before issue 19, for "
                        "comparison; run_sweep lets a new trial take its slot)")
    f.add_argument("--quick", action="store_true", help="a small run for CI: 4 and 8 trials, up to 3 reports, 2 at a time")
    f.add_argument("--json", action="store_true", help="print the figures as JSON")
    f.set_defaults(run=_run_bench_platform)


def _int_list(text: str, option: str, what: str, example: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        from sslsearch.errors import shown

        raise InputError(f"{option} expects {what} joined by ',', e.g. {example}, got {shown(text, QUOTED)}") from None


def _run_bench_train(args) -> int:
    from sslsearch.bench.kernels import bench_train, format_bench_train

    result = bench_train(args.backbone, args.image_size, args.batch_size, args.device, steps=args.steps, warmup=args.warmup,
                         dataset_size=args.dataset_size, peak_tflops=args.peak_tflops, threads=args.threads,
                         compile=args.compile, reference=not args.no_reference, joint_views=args.joint_views,
                         rounds=args.rounds)
    print(json.dumps(result, indent=2) if args.json else format_bench_train(result))
    return 0


def _run_bench_packing(args) -> int:
    from sslsearch.bench.kernels import bench_packing, format_bench_packing

    trials = _int_list(args.trials, "--trials", "counts", "1,2,4")
    result = bench_packing(trials, args.backbone, args.image_size, args.batch_size, args.device, steps=args.steps,
                           threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench_packing(result))
    return 0


def _run_bench_probe(args) -> int:
    from sslsearch.bench.kernels import bench_probe, format_bench_probe

    intervals = _int_list(args.eval_every, "--eval-every", "epochs", "5,10")
    result = bench_probe(args.backbone, args.image_size, args.device, args.train_images, args.val_images, args.classes,
                         args.batch_size, args.epoch_seconds, intervals, threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench_probe(result))
    return 0


def _run_bench_replay(args) -> int:
    from sslsearch.bench.replay import DEFAULT_METHODS, DEFAULT_TABLE, METHODS, Table, bench_replay, format_replay, plot_replay
    from sslsearch.search.experiment import load_experiment
    from sslsearch.search.space import load_search_space

    table = args.table or DEFAULT_TABLE
    if not Path(table).is_file():
        raise InputError(f"replay table not found: {table}; build one with python -m sslsearch.bench.replay_table")
    # The experiment's search settings at the table's recorded pretraining settings (val split, epochs, reports).
    experiment = load_experiment(args.experiment, [*Table(table).overrides(), *args.overrides])
    space = load_search_space(experiment.space_path())
    if args.plot and Path(args.plot).is_dir():
        raise InputError(f"--plot must name a PNG file, got the folder {args.plot}")

    names = [m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown replay method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    result = bench_replay(experiment, space, table=table, methods=tuple(METHODS[n] for n in names),
                          seeds=args.replay_seeds, progress=None if args.json else print)
    print(json.dumps(result, indent=2) if args.json else format_replay(result))
    if args.plot:
        print(f"regret curves: {plot_replay(result, args.plot)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_bench_search(args) -> int:
    from sslsearch.search.experiment import load_experiment
    from sslsearch.search.space import load_search_space

    if args.replay:
        return _run_bench_replay(args)
    seeds = (0,) if args.quick else _int_list(args.seeds, "--seeds", "seeds", "0,1,2")
    quick = ["pretrain.epochs=2", "pretrain.eval_every=1", "scheduler.grace_period=1", "search.num_samples=2"]
    experiment = load_experiment(args.experiment, [*(quick if args.quick else []), *args.overrides])
    space = load_search_space(experiment.space_path())
    if args.plot and Path(args.plot).is_dir():
        raise InputError(f"--plot must name a PNG file, got the folder {args.plot}")
    from sslsearch.bench.search import bench_search, format_bench_search, plot_anytime

    methods = tuple(m.strip() for m in (args.methods or "tpe+asha,random+asha,random+fifo,tpe+fifo").split(",") if m.strip())
    result = bench_search(experiment, space, methods=methods, seeds=seeds, storage=args.storage,
                          progress=(lambda line: None) if args.json else print)
    print(json.dumps(result, indent=2) if args.json else format_bench_search(result))
    if args.plot:
        print(f"anytime curves: {plot_anytime(result, args.plot)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _run_bench_platform(args) -> int:
    from sslsearch.bench.platform import QUICK, bench_platform, format_bench_platform

    settings = {"trials": _int_list(args.trials, "--trials", "sweep sizes", "50,200,1000"), "reports": args.reports,
                "concurrency": args.concurrency, "report_seconds": args.report_seconds,
                "checkpoint_mb": args.checkpoint_mb}
    if args.quick:
        settings = dict(QUICK)
    result = bench_platform(**settings, tracking=args.tracking, sampler=args.sampler,
                            ray_num_to_keep=args.ray_num_to_keep, append_snapshot=not args.rewrite_snapshot,
                            ray_loggers=args.ray_loggers, paused_twins_hold_slots=args.paused_twins_hold_slots)
    print(json.dumps(result, indent=2) if args.json else format_bench_platform(result))
    return 0


def _run_bench_augment(args) -> int:
    from sslsearch.bench.kernels import bench_augment, format_bench_augment
    from sslsearch.method.augment import PRESETS

    if args.preset not in PRESETS:
        raise InputError(f"unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    result = bench_augment(args.preset, images=args.images, batch_size=args.batch_size, threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench_augment(result))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (default: the embedded digits experiment)")
    p.add_argument("experiment", nargs="?", default=None, help=EXPERIMENT_HELP)
    p.add_argument("--space", default=None, help=SPACE_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set pretrain.epochs=20 --set search.num_samples=32")
    p.add_argument("--name", default=None, help="sweep name (default: EXPERIMENT-TIME)")
    p.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start Ray here)")
    p.add_argument("--storage", default="runs", help="folder or s3:// / gs:// URI for sweep records (default: ./runs)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server http://HOST:PORT (default: SQLite in the storage folder)")
    p.set_defaults(run=_run_sweep)
    r = sub.add_parser("resume", help="continue an interrupted sweep (searcher, scheduler, trials, MLflow runs)")
    r.add_argument("name", metavar="SWEEP", help="the sweep's name (its folder under --storage)")
    r.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start Ray here)")
    r.add_argument("--storage", default="runs", help="folder or s3:// / gs:// URI holding the sweep (default: ./runs)")
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking server http://HOST:PORT (default: the sweep's own)")
    r.set_defaults(run=_run_resume)
    y = sub.add_parser("sync", help="send a sweep's queued MLflow records and make MLflow match Ray's results")
    y.add_argument("name", metavar="SWEEP", help="the sweep's name")
    y.add_argument("--storage", default="runs", help="the sweeps' storage folder (default: ./runs)")
    y.add_argument("--tracking-uri", default=None, help="default: the sweep's own")
    y.set_defaults(run=_run_sync)
    u = sub.add_parser("ui", help="serve the MLflow UI on the sweeps' tracking store")
    u.add_argument("--storage", default="runs", help="the sweeps' storage folder, holding mlflow.db (default: ./runs)")
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    u.add_argument("--port", type=_integer(1, MAX_PORT), default=5000, help="(default: 5000)")
    u.set_defaults(run=_run_ui)
    d = sub.add_parser("dashboard",
                       help="serve optuna-dashboard on a sweep's Optuna study (extra: pip install -e '.[dashboard]')")
    d.add_argument("sweep", nargs="?", default=None, metavar="SWEEP",
                   help="sweep name (default: the most recently written study)")
    d.add_argument("--storage", default="runs", help="the sweeps' storage folder (default: ./runs)")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    d.add_argument("--port", type=_integer(1, MAX_PORT), default=8080, help="(default: 8080)")
    d.set_defaults(run=_run_dashboard)


MAX_NAME = 128   # a sweep's name is a folder name, and part of its trials' folder paths


def _check_folder(path: Path, flag: str, wanted: str) -> None:
    """InputError unless `path` is a folder or can become one (no file in its place or above it)."""
    from sslsearch.errors import file_in_the_way, shown_path

    existing = file_in_the_way(path)
    if existing is not None:
        where = "" if existing == path else f": {shown_path(existing, 80)}"
        raise InputError(f"{flag} {shown_path(path)}{where} is a file; give {wanted}")


def _storage(text: str) -> str:
    if "://" in text:
        return text
    from sslsearch.search.experiment import resolved

    return str(resolved(text, "--storage"))


def _run_sweep(args) -> int:
    from sslsearch.errors import shown
    from sslsearch.records.store import check_store, default_tracking_uri
    from sslsearch.search.experiment import check_machine, load_experiment, ray_address, space_file
    from sslsearch.search.space import load_search_space

    if args.address:
        ray_address(args.address)
    overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    experiment = load_experiment(args.experiment, overrides)
    space = load_search_space(space_file(args.space, Path.cwd()) if args.space else experiment.space_path())
    name = args.name or f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not (name[:1].isalnum() and name.replace("-", "").replace("_", "").replace(".", "").isalnum()
            and len(name) <= MAX_NAME):
        raise InputError(f"--name may hold up to {MAX_NAME} letters, digits, '-', '_' and '.', starting with a letter or "
                         f"digit, got {shown(name, 80)}")
    from sslsearch.records.store import storage_entry

    if storage_entry(name):   # the storage folder's own store and artifacts
        raise InputError(f"--name {shown(name, 80)} is the name of the MLflow store's own files in the storage folder; "
                         "choose another --name")
    from sslsearch.search.space import check_space

    check_machine(experiment, args.address)  # the data and this machine: before Ray starts, not after
    check_space(space, experiment)  # before anything is written: the tracking check below creates the store
    storage = _storage(args.storage)
    if "://" not in storage:
        _check_folder(Path(storage), "--storage", "the folder that holds (or will hold) the sweeps")
    uri = experiment.tracking.uri or default_tracking_uri(storage)
    claim = None
    if "://" not in storage:
        from sslsearch.records.catalog import check_new_name
        from sslsearch.search.sweeplock import abandon_claim, claim_sweep_folder

        check_new_name(storage, name, uri)  # running, finished, interrupted, or recorded: each in its own words
    if args.address is None:   # (a cluster's workers read their own data folder)
        _fetch_data(experiment.pretrain)
    check_store(uri)  # before Ray and MLflow load: a dead server or bad URI is refused at once
    if "://" not in storage:
        # The name is taken now, before the seconds of Ray's and MLflow's imports: a second `sweep --name X`
        # started meanwhile is told at once that X runs (it never reaches MLflow's store creation).
        claim = claim_sweep_folder(Path(storage) / name, name)
    from sslsearch.processes import reaping

    try:
        with reaping():  # a sweep stopped at any moment, even during Ray's start, leaves no process behind
            from sslsearch.records.tracking import MlflowTracking, check_tracking
            from sslsearch.search.sweep import run_sweep

            check_tracking(uri, sweep=name)  # a name already recorded (needs MLflow; a server's records)
            tracking = MlflowTracking(experiment, space, sweep=name, storage=storage)
            code = _report_sweep(lambda: run_sweep(experiment, space, name=name, storage=storage, address=args.address,
                                                   callbacks=[tracking], claim=claim), uri,
                                 continue_with=_command(args, "resume", name))
    except BaseException as error:
        if claim is not None:  # refused or stopped before the sweep started: the name is free again
            abandon_claim(claim)
        if isinstance(error, KeyboardInterrupt) and claim is not None:
            from sslsearch.search.folder import ray_state_saved

            if ray_state_saved(Path(storage) / name):   # Ray saved the sweep: `resume` continues it
                return _interrupted(_command(args, "resume", name))
        raise
    if code in (0, 1, 3):
        print(_next_steps(name, args, confirm=True))
    return code


def _interrupted(continue_with: str) -> int:
    """A Ctrl-C (or SIGTERM) that Ray Tune's handler did not take: a second one, while Ray stops the trials and saves
    the sweep's state one last time, or one before Tune's loop or after it. No summary, but the command that continues
    the sweep (as the summary of an interrupted sweep ends), and the shell's exit code for Ctrl-C."""
    from sslsearch.processes import INTERRUPTED

    print(f"\nsslsearch: interrupted; continue with: {continue_with}", file=sys.stderr)
    return INTERRUPTED


def _fetch_data(config) -> None:
    """A built-in data set that is not on disk is downloaded now, before the sweep folder or the MLflow store exists:
    offline, or a failed download, is one line and nothing written (the download removes what it created)."""
    if config.data_on_disk():   # (checked without torch: the common case costs a few stat calls)
        return
    from sslsearch.method.data import prepare_dataset

    prepare_dataset(config.dataset, config.data_dir)


def _invocation() -> str:
    """How this shell runs sslsearch, for the commands suggested: `sslsearch` when PATH finds this very program
    (its environment is active), else the path it was started by (e.g. .venv/bin/sslsearch), else `python -m`."""
    import shlex
    import shutil

    def shown(path: Path) -> str:
        relative = os.path.relpath(path)
        return shlex.quote(relative if not relative.startswith("..") else str(path))

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is not None and program.name == "sslsearch" and program.is_file():
        found = shutil.which("sslsearch")
        return "sslsearch" if found and Path(found).resolve() == program.resolve() else shown(program)
    return f"{shown(Path(sys.executable))} -m sslsearch.cli"


def _where(args) -> str:
    """The options naming this shell's records (--storage, --tracking-uri) where they are not the defaults: what every
    command printed for the user to run next carries, so that it finds the same sweep."""
    where = ""
    if Path(_storage(args.storage)) != Path("runs").resolve():
        where += f" --storage {shlex.quote(args.storage)}"
    if getattr(args, "tracking_uri", None):
        where += f" --tracking-uri {shlex.quote(args.tracking_uri)}"
    return where


def _command(args, command: str, name: str, extra: str = "") -> str:
    """`sslsearch COMMAND NAME [EXTRA]` as this shell can run it, on the records this command used."""
    return f"{_invocation()} {command} {name}{_where(args)}{extra}"


def _confirm_flags(top: int, seeds: int, design: str | None) -> str:
    """The flags that continue a confirmation stage started with these settings (the defaults left out)."""
    from sslsearch.search.confirm import DESIGN, SEEDS, TOP

    return "".join(f" --{flag} {value}" for flag, value, default in
                   (("top", top, TOP), ("seeds", seeds, SEEDS), ("design", design or DESIGN, DESIGN)) if value != default)


def _next_steps(name: str, args, *, confirm: bool) -> str:
    """The commands that follow on sweep `name`, as this shell can run them, with its --storage / --tracking-uri."""
    where = _where(args)
    program = _invocation()
    steps = [("confirm", "", "the best settings with both losses, 8 fresh seeds: the verdict")] if confirm else []
    steps += [("leaderboard", "", "the ranking per loss and barlow against hsic"),
              ("report", " --out report.html", "the whole sweep on one HTML page"),
              ("export", " --out best/", "the winner's backbone and its model card")]
    commands = [f"{program} {command} {name}{where}{extra}" for command, extra, _ in steps]
    width = max(len(c) for c in commands)
    return "\n".join([f"next, for sweep {name}:"] + [f"  {c:{width}}  # {why}" for c, (_, _, why) in zip(commands, steps)])


def _report_sweep(run, uri: str | None = None, *, continue_with: str | None = None,
                  before_verdict: Callable[[int], None] | None = None, verdict: bool = True) -> int:
    """Run a sweep (or its resume), print its summary (with the disk its records use; `uri`: where MLflow keeps
    them; `continue_with`: the command an interrupted sweep names) and the verdict; exit code per `sweep_exit_code`,
    4 if an OS error stopped it. `before_verdict(code)` runs first (resume: make MLflow match Ray's records, so the
    verdict does not count the orphans the reconcile removes). `verdict` False: none (resume of a sweep whose
    confirmation stage follows: the stage ends with the verdict that counts)."""
    from sslsearch.records.tracking import artifact_bytes
    from sslsearch.search.sweep import SweepStopped

    try:
        summary = run()
    except SweepStopped as stopped:
        if stopped.summary is not None:
            stopped.summary.mlflow_artifact_bytes = artifact_bytes(uri, stopped.summary.name) if uri else None
            print(stopped.summary.format(continue_with))
        print(f"sslsearch: error: {stopped.line(continue_with)}", file=sys.stderr)
        return 4
    summary.mlflow_artifact_bytes = artifact_bytes(uri, summary.name) if uri else None
    print(summary.format(continue_with))
    code = sweep_exit_code(summary)
    if before_verdict is not None:
        before_verdict(code)
    if uri and verdict and not summary.unfinished:
        _print_verdict(uri, summary.name)
    return code


def _print_verdict(uri: str, name: str) -> None:
    """The verdict as the leaderboard ends with it (search stage only after a sweep), also logged on the sweep's
    parent run; records that cannot answer (a server gone, records still in the outbox) cost a warning."""
    from mlflow.exceptions import MlflowException

    from sslsearch.analysis.leaderboard import build_leaderboard, load_trials

    try:
        board = build_leaderboard(load_trials(uri, [name]))
    except (InputError, MlflowException, OSError) as error:
        print(f"warning: no verdict yet ({first_line(error)}); run `sslsearch leaderboard {name}` later",
              file=sys.stderr)
        return
    print("\n".join(board.verdict.lines()))
    _log_verdict(board, uri)


def sweep_exit_code(summary) -> int:
    """0 every trial finished and every record reached MLflow; 1 some trials errored; 3 records wait in the
    outbox (sslsearch sync NAME); 130 interrupted (as a shell reports Ctrl-C). Bad input is 2 (main); an OS
    error that stopped the sweep (disk full) is 4 (_report_sweep)."""
    from sslsearch.records.tracking import unsent_records

    unsent = unsent_records(summary.path)
    if unsent:
        print(f"{unsent} MLflow record(s) not sent yet (the tracking server did not take them); they wait in the sweep's "
              f"outbox: run `sslsearch sync {summary.name}` once the server answers", file=sys.stderr)
    if summary.unfinished:
        return 130
    if any(t.outcome == "errored" for t in summary.trials):
        return 1
    return 3 if unsent else 0


def _run_resume(args) -> int:
    from sslsearch.records.store import check_store, default_tracking_uri

    storage = _storage(args.storage)
    if "://" not in storage:  # (a remote storage is checked by Ray)
        from sslsearch.records.catalog import check_not_written, check_resumable, confirm_stage, find_folder, finished

        sweep = find_folder(storage, args.name)
        check_not_written(sweep, "resume")
        check_resumable(sweep)
        if finished(sweep):
            print(f"sweep {args.name} has finished: every trial ended (and its confirmation stage, if any); "
                  "nothing to resume", flush=True)
            _reconcile(args.name, storage, args.tracking_uri)  # records lost since (e.g. a deleted run) come back
            print(_next_steps(args.name, args, confirm=confirm_stage(sweep) is None))
            return 0
    if args.tracking_uri:
        check_store(args.tracking_uri)
    from sslsearch.processes import reaping

    with reaping():
        from sslsearch.search.sweep import resume_sweep, sweep_metadata

        meta = sweep_metadata(args.name, storage)
        uri = (args.tracking_uri or (meta or {}).get("experiment", {}).get("tracking", {}).get("uri")
               or default_tracking_uri(storage))
        if not args.tracking_uri:
            check_store(uri)
        def reconciled(code: int) -> None:
            if code in (0, 1):   # (3: the server does not take records now; the outbox keeps them for `sync`)
                _reconcile(args.name, storage, args.tracking_uri)

        from sslsearch.search.confirm import read_plan

        plan = read_plan(args.name, storage)  # a confirmation stage was started: continue it too (its verdict counts)
        try:
            code = _report_sweep(lambda: resume_sweep(args.name, storage, address=args.address,
                                                      tracking_uri=args.tracking_uri), uri,
                                 continue_with=_command(args, "resume", args.name), before_verdict=reconciled,
                                 verdict=plan is None)
        except KeyboardInterrupt:
            return _interrupted(_command(args, "resume", args.name))
        if code not in (0, 1, 3):
            return code   # bad input, interrupted, or stopped by an OS error: the confirmation stage waits
        if plan is not None:
            stage_code = _confirm(args.name, storage, plan["top"], len(plan["seeds"]), args.address, args.tracking_uri,
                                  plan.get("design", "per-loss"), args=args)
            if stage_code:
                return stage_code   # interrupted (130) or stopped by a full disk (4): `confirm` continues it
            print(_next_steps(args.name, args, confirm=False))
            return code
    print(_next_steps(args.name, args, confirm=True))
    return code


def _reconcile(name: str, storage: str, tracking_uri: str | None) -> None:
    """After a resume, make MLflow equal to Ray's results: records an earlier session could neither send nor
    keep (its outbox could not be written, e.g. on a full disk) exist only in Ray's per-trial results."""
    from sslsearch.records.tracking import sync

    try:
        report = sync(name, storage, tracking_uri)
    except InputError as error:  # the tracking store is gone again: the sweep itself finished
        print(f"warning: MLflow not reconciled with the sweep's results ({error}); run: sslsearch sync {name}",
              file=sys.stderr)
        return
    if (report.runs_created or report.points_added or report.statuses_fixed or report.unsent or report.duplicates
            or report.orphans):
        print(report.format())


def _run_sync(args) -> int:
    from sslsearch.records.tracking import sync

    report = sync(args.name, _storage(args.storage), args.tracking_uri)
    print(report.format())
    return 3 if report.unsent else 0


def _add_confirm(sub) -> None:
    p = sub.add_parser("confirm", help="re-run the sweep's best settings with both losses and fresh seeds, then the verdict")
    p.add_argument("sweep", nargs="?", default=None,
                   help="sweep name (may be left out when --storage holds only one sweep: confirming spends compute)")
    p.add_argument("--top", type=_integer(1, MAX_CONFIRM_TOP), default=1,
                   help="settings to confirm (default: 1, the best; with more, a seed block's difference is their mean)")
    p.add_argument("--seeds", type=_integer(1, MAX_CONFIRM_SEEDS), default=8,
                   help="fresh seeds = independent blocks = n of the verdict (default: 8; a difference needs ≥ 6 non-zero)")
    p.add_argument("--design", choices=("shared", "per-loss"), default=None,
                   help="shared (default): the best settings, each run with both losses; per-loss: each loss's own best "
                        "configuration (tuned against tuned; calls more false differences, docs/sweeps.md)")
    p.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start Ray here)")
    p.add_argument("--storage", default="runs", help="the sweeps' storage folder (default: ./runs)")
    p.add_argument("--tracking-uri", default=None, help="default: the sweep's own")
    p.set_defaults(run=_run_confirm)


def _run_confirm(args) -> int:
    storage = _storage(args.storage)
    name = args.sweep
    if "://" not in storage:  # every refusal here reads files only: no Ray, no MLflow
        from sslsearch.records.catalog import check_confirmable, check_not_written, find_folder, known_text, sweep_folders

        if name is None:
            found = sweep_folders(storage)
            if not found:
                raise InputError(f"no sweeps in {storage}; run `sslsearch sweep` first")
            if len(found) > 1:  # a wrong guess would spend the compute of a whole stage on another sweep
                raise InputError(f"{storage} holds {len(found)} sweeps; name the one to confirm: sslsearch confirm SWEEP "
                                 f"(newest first: {known_text(found)})")
            name = found[0].name
            print(f"confirm: sweep {name}, the only sweep in {storage}", flush=True)
        sweep = find_folder(storage, name)
        check_not_written(sweep, "confirm")
        from sslsearch.search.sweeplock import check_owned

        check_owned(sweep.path, "confirm")   # the trust check first: before anything of the sweep is read
        check_confirmable(sweep, storage, args.top, args.seeds, args.tracking_uri, args.design, _where(args))
    elif name is None:
        raise InputError(f"name the sweep to confirm in {storage}: sslsearch confirm SWEEP --storage {storage}")
    from sslsearch.processes import reaping

    with reaping():
        code = _confirm(name, storage, args.top, args.seeds, args.address, args.tracking_uri, args.design, args=args)
        if code:
            return code
    print(_next_steps(name, args, confirm=False))
    return 0


def _confirm(name: str, storage: str, top: int, seeds: int, address: str | None, tracking_uri: str | None,
             design: str | None, *, args) -> int:
    """Run or continue the confirmation stage, then make MLflow match Ray's records of the sweep (`sync`), print the
    leaderboard ending with the verdict and log the verdict on the sweep's parent run; the exit code (_report_confirm)."""
    from sslsearch.analysis.stats import MIN_NONZERO
    from sslsearch.records.tracking import MlflowTracking, check_tracking, default_tracking_uri
    from sslsearch.search.confirm import STAGE, confirm_experiment, run_confirm
    from sslsearch.search.sweep import LiveView

    experiment, space = confirm_experiment(name, storage)
    uri = tracking_uri or experiment.tracking.uri or default_tracking_uri(storage)
    check_tracking(uri)
    if seeds < MIN_NONZERO:
        print(f"warning: with {seeds} seed{'s' * (seeds != 1)} the verdict cannot call a difference (the exact test "
              f"needs ≥ {MIN_NONZERO} non-zero differences to reach p < 0.05)", file=sys.stderr)
    tracking = MlflowTracking(experiment, space, sweep=name, storage=storage, tracking_uri=uri, stage=STAGE)
    # The sweep's live view: a line per report, with the trials finished and left of the stage.
    flags = _confirm_flags(top, seeds, design)
    continue_with = f"{_command(args, 'confirm', name, flags)} (or {_command(args, 'resume', name)})"
    code = _report_confirm(lambda: run_confirm(name, storage, top=top, seeds=seeds, design=design, address=address,
                                               callbacks=[LiveView(), tracking]), continue_with)
    if code:
        return code
    _reconcile(name, storage, tracking_uri)   # what an earlier, stopped session could neither send nor keep
    from sslsearch.analysis.leaderboard import build_leaderboard, format_leaderboard, load_trials

    board = build_leaderboard(load_trials(uri, [name]))
    print(format_leaderboard(board))   # ends with the verdict
    _log_verdict(board, uri)
    return 0


def _report_confirm(run, continue_with: str | None = None) -> int:
    """Run (or continue) the confirmation stage and print its line: 0 every trial ended; 130 interrupted; 4 an OS error
    (a full disk) stopped it: its line, then one error line ending with `sslsearch confirm NAME`."""
    from sslsearch.search.confirm import format_stage, stage_unfinished
    from sslsearch.search.sweep import SweepStopped

    try:
        summary = run()
    except KeyboardInterrupt:
        if continue_with is None:
            raise
        return _interrupted(continue_with)
    except SweepStopped as stopped:
        if stopped.summary is not None:
            print(format_stage(stopped.summary, continue_with))
        print(f"sslsearch: error: {stopped.line(continue_with)}", file=sys.stderr)
        return 4
    print(format_stage(summary, continue_with))
    return 130 if stage_unfinished(summary) else 0


def _run_ui(args) -> int:
    from sslsearch.records.ui import mlflow_ui, serve

    return serve(mlflow_ui(_storage(args.storage), args.host, args.port))


def _run_dashboard(args) -> int:
    from sslsearch.records.ui import optuna_dashboard, serve

    return serve(optuna_dashboard(_storage(args.storage), args.sweep, args.host, args.port))


def _tracking_uri(args) -> str:
    if args.tracking_uri:
        return args.tracking_uri
    from sslsearch.records.store import default_tracking_uri

    return default_tracking_uri(args.storage)


def _records_uri(args) -> str:
    """The tracking URI of existing records, checked: an unreachable server is one line, not minutes of retries."""
    from sslsearch.records.store import check_store

    uri = _tracking_uri(args)
    check_store(uri, reading=True)
    return uri


def _recorded(uri: str, names: list[str], command: str) -> list[str]:
    """The sweeps `command` acts on: `names`, each checked against the SQLite store (read without MLflow, so
    a wrong name is refused at once); none named, the latest with a finished trial, said on the first line.
    [] when the store cannot be read here (a tracking server): MLflow then chooses, and the caller says which."""
    from sslsearch.records.catalog import rankable_sweeps, recorded_sweeps

    recorded = recorded_sweeps(uri)
    if recorded is None:
        return list(names)
    if not recorded:
        raise InputError(f"no sweeps recorded at {uri}; run `sslsearch sweep` first")
    known = ", ".join(recorded[:10]) + (f" and {len(recorded) - 10} more" if len(recorded) > 10 else "")
    unknown = [n for n in names if n not in recorded]
    if unknown:
        raise InputError(f"unknown sweep {', '.join(map(repr, unknown))}; known sweeps (newest first): {known}")
    if names:
        return list(names)
    rankable = rankable_sweeps(uri) or []
    if not rankable:
        raise InputError(f"no sweep recorded at {uri} has a finished trial yet (known sweeps, newest first: {known})")
    _say_chosen(command, rankable[0], len(recorded))
    return rankable[:1]


def _say_chosen(command: str, name: str, known: int | None = None) -> None:
    """The first line of a command that chose its sweep itself (stderr: stdout may be a table or JSON)."""
    others = f"; {known - 1} other sweep{'s' * (known > 2)} recorded" if known and known > 1 else ""
    print(f"{command}: sweep {name}, the latest with a finished trial{others} (name a sweep to choose)",
          file=sys.stderr, flush=True)


def _add_records(p) -> None:
    p.add_argument("--storage", default="runs", help="the sweeps' storage folder (default: ./runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///STORAGE/mlflow.db)")


def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="rank a sweep's trials per loss and compare barlow with hsic (reads MLflow)")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP", help="sweep name(s), pooled (default: the most recently started)")
    p.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"), help="(default: table)")
    p.add_argument("--top", type=_integer(1, MAX_ROWS), default=10, help="rows per loss (default: 10)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write PNG plots to DIR and log them to the sweep's run")
    _add_records(p)
    p.set_defaults(run=_run_leaderboard)


def _run_leaderboard(args) -> int:
    if args.plots:
        _check_folder(Path(args.plots).resolve(), "--plots", "a folder for the PNG plots")
    uri = _records_uri(args)
    sweeps = _recorded(uri, args.sweeps, "leaderboard")
    from sslsearch.analysis.leaderboard import build_leaderboard, format_leaderboard, load_trials, write_plots

    board = build_leaderboard(load_trials(uri, sweeps), top=args.top)
    if not sweeps:  # MLflow chose (a tracking server)
        _say_chosen("leaderboard", ", ".join(board.sweeps))
    print(format_leaderboard(board, args.format))
    _log_verdict(board, uri)
    if args.plots:
        written = write_plots(board, args.plots, uri)
        for note in written["notes"]:
            print(note, file=sys.stderr)
        print(f"plots: {', '.join(written['files'])} (also logged to the sweep's MLflow run)", file=sys.stderr)
    return 0


def _log_verdict(board, uri: str) -> None:
    """The verdict on the sweep's parent run (one sweep only); a store that refuses it costs a warning, not the leaderboard."""
    from mlflow.exceptions import MlflowException

    from sslsearch.analysis.leaderboard import log_verdict

    try:
        log_verdict(board, uri)
    except (MlflowException, OSError) as error:
        print(f"warning: could not log the verdict on the sweep's MLflow run: {first_line(error)}",
              file=sys.stderr)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of a sweep: setup, verdict, tables, plots, provenance")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP", help="sweep name(s), pooled (default: the most recently started)")
    p.add_argument("--out", default="report.html", metavar="FILE", help="the HTML file to write (default: report.html)")
    p.add_argument("--card", default=None, metavar="DIR", help="also show the model card `sslsearch export --out DIR` wrote")
    p.add_argument("--top", type=_integer(1, MAX_ROWS), default=10, help="rows per loss in the tables (default: 10)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's MLflow run")
    _add_records(p)
    p.set_defaults(run=_run_report)


def _run_report(args) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    from sslsearch.errors import file_in_the_way, shown_path

    blocked = file_in_the_way(out.resolve().parent)
    if blocked is not None:
        raise InputError(f"--out {shown_path(out)}: {shown_path(blocked, 80)} is a file; give the HTML file to write "
                         "in a folder")
    if args.card is not None and not (Path(args.card) / "model_card.json").is_file() and not Path(args.card).is_file():
        raise InputError(f"--card {args.card}: no model_card.json there; give the folder `sslsearch export --out` wrote")
    uri = _records_uri(args)
    sweeps = _recorded(uri, args.sweeps, "report")
    from sslsearch.analysis.report import write_report

    result = write_report(uri, sweeps, out, card=args.card,
                          top=args.top, log=not args.no_log)
    if not sweeps:  # MLflow chose (a tracking server)
        _say_chosen("report", ", ".join(result["sweeps"]))
    for note in result["notes"]:
        print(note, file=sys.stderr)
    logged = " (also logged to the sweep's MLflow run as report.html)" if result["logged"] else ""
    print(f"report of {', '.join(result['sweeps'])}: {result['file']}{logged}")
    print(f"verdict: {result['verdict']}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write the best trial's backbone (by val_acc) with a model card")
    p.add_argument("sweep", nargs="?", default=None, help="sweep name (default: the most recently started)")
    p.add_argument("--loss", choices=("barlow", "hsic"), default=None, help="the best trial of this loss only")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for backbone.pt, model_card.json, model_card.md")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export at --out (a folder holding other files is never replaced)")
    p.add_argument("--stage", choices=("auto", "confirm", "search"), default="auto",
                   help="auto (default): the confirmed winner if the sweep was confirmed, else the best search trial")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="also register the backbone in the MLflow Model Registry as NAME, alias champion")
    _add_records(p)
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow draws a bar per downloaded file
    from sslsearch.analysis.export_folder import check_export_folder

    out = Path(args.out).resolve()
    # As export_best checks again just before it writes; here before seconds of imports and reading the records.
    check_export_folder(out, args.force)
    uri = _records_uri(args)
    sweeps = _recorded(uri, [args.sweep] if args.sweep else [], "export")
    from sslsearch.analysis.export import export_best

    card = export_best(uri, sweeps[0] if sweeps else None, args.out, loss=args.loss, force=args.force,
                       register=args.register, stage=args.stage)
    if not sweeps:  # MLflow chose (a tracking server)
        _say_chosen("export", card["sweep"])
    m = card["metrics"]
    test = f", test_acc {m['test_acc']:.2f}" if m["test_acc"] is not None else ""
    print(f"exported the {card['backbone']} of trial {card['trial_id']} ({card['loss']}, sweep {card['sweep']}, "
          f"epoch {m['epoch']}): val_acc {m['val_acc']:.2f}{test}")
    c = card["confirmation"]
    if c is not None:
        test_mean = f", test_acc {c['test_acc_mean']:.2f}" if c["test_acc_mean"] is not None else ""
        print(f"  confirmed rank-1 of {card['loss']}: mean val_acc {c['val_acc_mean']:.2f}{test_mean} over {c['seeds']} "
              "seeds; this seed's run is the one closest to the mean val_acc")
    else:
        print(f"  not confirmed: the best of one noisy run per configuration; `sslsearch confirm {card['sweep']}` "
              "re-measures the best settings with fresh seeds")
    print(f"  why {card['loss']}: {card['selection']['loss_choice']}")
    print(f"  verdict ({card['verdict']['stage']} stage): {card['verdict']['sentence']}")
    print(f"  {out}: backbone.pt (sha256 {card['weights']['sha256'][:16]}…), model_card.json, model_card.md")
    if "registered" in card:
        print(f"  registered as {card['registered']['uri']} (version {card['registered']['version']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sslsearch", description="Hyperparameter search for Barlow Twins and its HSIC variant.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_pretrain(sub)
    _add_linear(sub)
    _add_bench(sub)
    _add_sweep(sub)
    _add_confirm(sub)
    _add_leaderboard(sub)
    _add_report(sub)
    _add_export(sub)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Unknown arguments: one line from the (sub)command they were given to, with a close match."""
    import difflib

    command = parser
    for key in ("command", "bench"):
        subparsers = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subparsers is None or getattr(args, key, None) not in subparsers.choices:
            break
        command = subparsers.choices[getattr(args, key)]
    flags = sorted(f for a in command._actions for f in a.option_strings if f.startswith("--") and f != "--help")
    # `--sweep NAME` where the sweep is a positional argument: say so rather than suggest a look-alike flag.
    positionals = {a.dest.rstrip("s"): a for a in command._actions if not a.option_strings and a.dest != "help"}

    def hint(x: str) -> str:
        word = x.split("=")[0]
        if word.startswith("--") and (positional := positionals.get(word[2:].rstrip("s"))) is not None:
            name = positional.metavar or positional.dest.upper()
            return f"{x} ({name} is positional: {command.prog} {name}{' ...' if positional.nargs == '*' else ''})"
        if word == "--sweep" and "--name" in flags:  # `sweep` names a new sweep with --name
            return f"{x} (the new sweep's name is --name NAME)"
        close = difflib.get_close_matches(word, flags, 1)
        return f"{x} (did you mean {close[0]}?)" if close else x

    command.error(f"unrecognized arguments: {' '.join(hint(x) for x in extra)}; accepted: {', '.join(flags)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_unknown(parser, args, extra)
    try:
        return args.run(args)
    except BrokenPipeError:
        # `sslsearch leaderboard --format csv | head -3`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again, and exit as `head`'s writers do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left
    except InputError as error:
        # One line, whatever a message quotes (each value is shortened where it is quoted; this is the backstop).
        line = " ".join(str(error).split())
        print(f"sslsearch: error: {line if len(line) <= 1000 else line[:999] + '…'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from sslsearch.method.train import TrainingDiverged

        if isinstance(error, TrainingDiverged):
            print(f"sslsearch: training diverged: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
