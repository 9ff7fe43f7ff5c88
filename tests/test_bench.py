"""The benchmarks (`sslsearch bench train`, packing, the device check) run on the CPU at tiny sizes
and report consistent figures; the training fast path they time keeps the reference's semantics.

No timings are asserted: speed targets live in the benchmarks and docs/benchmarks.md, not here.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sslsearch.bench.kernels import (
    bench_packing,
    bench_probe,
    bench_train,
    flops_per_image,
    format_bench_packing,
    format_bench_probe,
    format_bench_train,
    known_peak_tflops,
)
from sslsearch.errors import InputError
from sslsearch.method.augment import PRESETS, augment_views
from sslsearch.method.data import load_dataset
from sslsearch.method.losses import ssl_loss
from sslsearch.method.train import PretrainConfig, build_model, make_train_step, prepare_training, pretrain

ROOT = Path(__file__).resolve().parents[1]
# What the bare GPU machine lacks: the benchmark code must import without any of them.
ABSENT_ON_GPU_MACHINE = ("ray", "optuna", "mlflow", "pandas", "sklearn", "matplotlib", "yaml")


# -------------------------------------------------------------------------------------------
# bench_train
# -------------------------------------------------------------------------------------------

def test_bench_train_reports_consistent_figures_on_cpu():
    result = bench_train("small_cnn", 32, 8, "cpu", steps=2, warmup=1, dataset_size=1000, threads=1)
    assert result["images_per_s"] > 0 and result["reference_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["images_per_s"] / result["reference_images_per_s"])
    # An epoch is the whole batches of dataset_size (drop_last): 125 steps of 8 images.
    assert result["seconds_per_epoch"] == pytest.approx(1000 / result["images_per_s"])
    assert result["achieved_tflops"] == pytest.approx(result["flops_per_image"] * result["images_per_s"] / 1e12)
    assert result["peak_tflops"] is None and result["fraction_of_peak"] is None  # no peak is known for a CPU
    assert result["compile_seconds"] is None
    assert math.isfinite(result["loss"]) and math.isfinite(result["reference_loss"])
    assert (result["preset"], result["source_size"], result["reference_workers"]) == ("cifar", 32, 1)
    json.dumps(result)  # plain values only, for --json
    text = format_bench_train(result)
    for words in ("img/s", "s/epoch", "speed-up", "FLOP per image", "fraction of peak: n/a"):
        assert words in text


def test_bench_train_with_a_peak_and_without_the_reference():
    result = bench_train("small_cnn", 64, 4, "cpu", steps=1, warmup=0, peak_tflops=2.0, reference=False)
    assert result["preset"] == "stl10" and result["source_size"] == 96 and result["image_size"] == 64
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_tflops"] / 2.0)
    assert result["ratio"] is None and result["reference_images_per_s"] is None
    text = format_bench_train(result)
    assert "% of 2 TFLOP/s peak" in text and "speed-up" not in text and "reference" not in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=48), "image_size must be one of"),
    (dict(image_size=32, preset="stl10"), "makes 64 px views"),
    (dict(backbone="vgg"), "unknown backbone 'vgg'"),
    (dict(device="tpu"), "device must be"),
    (dict(steps=0), "need steps >= 1"),
    (dict(batch_size=64, dataset_size=10), "dataset_size >= batch_size"),
    (dict(peak_tflops=0.0), "peak_tflops must be > 0"),
    (dict(threads=0), "threads must be >= 1"),
])
def test_bench_train_refuses_bad_settings(kwargs, match):
    values = dict(backbone="small_cnn", image_size=32, batch_size=4, device="cpu", steps=1, warmup=0, reference=False)
    with pytest.raises(InputError, match=match):
        bench_train(**{**values, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_bench_train_without_cuda_says_so():
    with pytest.raises(InputError, match="CUDA is not available"):
        bench_train("small_cnn", 32, 4, "cuda", steps=1)


def _forward_flops(model: nn.Module, image_size: int) -> tuple[float, float]:
    """Forward FLOPs of one image from the layer shapes (2 per multiply-add), and those of the first conv."""
    total, first = 0.0, None

    def count(module, inputs, output):
        nonlocal total, first
        if isinstance(module, nn.Conv2d):
            flops = 2 * output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
            first = flops if first is None else first
        else:
            flops = 2 * module.in_features * module.out_features
        total += flops

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return total, first


@pytest.mark.slow
@pytest.mark.parametrize("backbone, image_size", [("resnet18", 32), ("resnet50", 64), ("small_cnn", 32)])
def test_flops_per_image_match_the_layer_shapes(backbone, image_size):
    config = PretrainConfig(backbone=backbone)
    forward, first_conv = _forward_flops(build_model(config, image_size), image_size)
    # Backward costs twice the forward (input and weight gradients), except the first conv, whose
    # input needs no gradient; the loss adds c = z1ᵀz2 and its two gradients: 3·2·D² per image.
    expected = 2 * (3 * forward - first_conv) + 3 * 2 * config.feature_dim ** 2
    assert flops_per_image(config, image_size) == pytest.approx(expected, rel=1e-3)
    joint = dataclass_replace(config, joint_views=True)
    assert flops_per_image(joint, image_size) == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
def test_issue_arithmetic_for_a_cifar_epoch():
    # The issue's floor: ~0.33 PFLOP (ResNet-18) and ~0.78 PFLOP (ResNet-50) per CIFAR-10 epoch.
    assert flops_per_image(PretrainConfig(backbone="resnet18"), 32) * 50_000 / 1e15 == pytest.approx(0.333, abs=0.005)
    assert flops_per_image(PretrainConfig(backbone="resnet50"), 32) * 50_000 / 1e15 == pytest.approx(0.779, abs=0.005)


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("Tesla V100-SXM2-32GB", 125.0), ("NVIDIA RTX A6000", 155.0),
                                        ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("Some Future GPU", None)])
def test_known_peaks_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert known_peak_tflops("cuda") == peak
    assert known_peak_tflops("cpu") is None


# -------------------------------------------------------------------------------------------
# Several trials per device
# -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_packing_runs_concurrent_trials_on_cpu():
    result = bench_packing((1, 2), "small_cnn", 32, 8, "cpu", steps=2, warmup=1)
    assert [r["trials"] for r in result["runs"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and len(r["per_trial_images_per_s"]) == r["trials"] for r in result["runs"])
    assert result["runs"][0]["speedup"] == 1.0
    assert "2 trials" in format_bench_packing(result)


def test_bench_packing_refuses_an_unknown_backbone():
    with pytest.raises(InputError, match="unknown backbone"):
        bench_packing((1,), "vgg", 32, 8, "cpu", steps=1, warmup=0)


# -------------------------------------------------------------------------------------------
# The fast path that bench_train times (train.make_train_step)
# -------------------------------------------------------------------------------------------

def dataclass_replace(config, **changes):
    return PretrainConfig(**{**config.to_dict(), "projector_hidden": config.projector_hidden, **changes})


@pytest.mark.parametrize("joint_views", [False, True])
def test_train_step_batchnorm_sees_the_views_as_documented(joint_views):
    # Separate passes (the reference): BN normalises each view with its own batch statistics.
    # joint_views: one pass over both views, BN statistics over 2B images.
    config = PretrainConfig(backbone="small_cnn", batch_size=16, feature_dim=32, joint_views=joint_views)
    device = torch.device("cpu")
    model, optimizer = prepare_training(config, 32, device)
    twin = copy.deepcopy(model)
    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    generator, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)  # same state, same views
    v1, v2 = augment_views(images, PRESETS["cifar"], replay), augment_views(images, PRESETS["cifar"], replay)
    if joint_views:
        z1, z2 = twin(torch.cat((v1, v2)))[1].chunk(2)
    else:
        z1, z2 = twin(v1)[1], twin(v2)[1]
    expected = ssl_loss(config.loss, z1, z2, config.lmbda, config.normalization)
    loss = make_train_step(config, model, optimizer, PRESETS["cifar"], generator)(images)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-4)


def test_separate_and_joint_views_differ():
    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    losses = []
    for joint_views in (False, True):
        config = PretrainConfig(backbone="small_cnn", batch_size=16, feature_dim=32, joint_views=joint_views)
        model, optimizer = prepare_training(config, 32, torch.device("cpu"))
        losses.append(make_train_step(config, model, optimizer, PRESETS["cifar"], torch.Generator().manual_seed(5))(images))
    assert not torch.allclose(losses[0], losses[1])


def test_model_is_channels_last_with_a_fused_optimiser():
    model, optimizer = prepare_training(PretrainConfig(backbone="resnet18"), 32, torch.device("cpu"))
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert optimizer.defaults.get("fused") is True


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_throughput(monkeypatch, digits):
    monkeypatch.setattr(torch, "compile", lambda model: model)  # the bookkeeping, not the compiler
    config = PretrainConfig(epochs=2, eval_every=2, batch_size=128, feature_dim=32, device="cpu", compile=True)
    history = pretrain(config, data=digits, progress=False).history
    assert history[1]["compile_seconds"] > 0 and "compile_seconds" not in history[2]
    # images_per_s of the first epoch leaves the compiled step out of its time.
    first = history[1]
    assert first["images_per_s"] > (len(digits.pretrain_images) // 128) * 128 / first["seconds"]


@pytest.mark.slow
def test_joint_views_pretrain_and_resume_guard(tmp_path, digits):
    config = PretrainConfig(epochs=1, eval_every=1, batch_size=128, feature_dim=32, device="cpu", joint_views=True)
    result = pretrain(config, out_dir=tmp_path, data=digits, progress=False)
    assert math.isfinite(result.history[-1]["train_loss"])
    with pytest.raises(InputError, match="different settings: joint_views"):
        pretrain(dataclass_replace(config, epochs=2, joint_views=False), out_dir=tmp_path, data=digits,
                 progress=False, resume=tmp_path / "last.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_step_does_not_synchronise():
    config = PretrainConfig(backbone="small_cnn", batch_size=32)
    device = torch.device("cuda")
    model, optimizer = prepare_training(config, 32, device)
    step = make_train_step(config, model, optimizer, PRESETS["cifar"], torch.Generator(device).manual_seed(0))
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8).to(device)
    step(images)  # warm-up: optimiser state and constants reach the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum = step(images) + step(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum)


# -------------------------------------------------------------------------------------------
# bench_probe
# -------------------------------------------------------------------------------------------

def test_bench_probe_times_the_parts_and_the_share_of_a_trial():
    result = bench_probe("small_cnn", 32, "cpu", train_images=300, val_images=60, seconds_per_epoch=2.0,
                         eval_every=(1, 5), rounds=1, threads=1)
    assert result["feature_dim"] == 32 and result["seconds_per_epoch"] == 2.0
    # labels linear in the features: the probe fits them well and L-BFGS has work to do
    assert result["val_acc"] > 50 and result["fit_iterations"] > 5
    assert min(result["probe_seconds"], result["features_seconds"], result["fit_seconds"], result["knn_seconds"]) > 0
    probe = result["probe_seconds"]
    assert result["share"] == {"1": pytest.approx(probe / (2.0 + probe)), "5": pytest.approx(probe / (10.0 + probe))}
    json.dumps(result)
    text = format_bench_probe(result)
    assert "every 5 epochs" in text and "L-BFGS" in text


def test_bench_probe_measures_the_epoch_when_not_given():
    # 3 timed steps + 1 warm-up of 16 images draw from 2 copies of the 40 train images
    result = bench_probe("small_cnn", 32, "cpu", train_images=40, val_images=16, batch_size=16, rounds=1, threads=1,
                         steps=3, warmup=1)
    assert result["epoch_measured"] and (result["steps"], result["warmup"]) == (3, 1)
    # an epoch is 2 whole batches of 16 (drop_last), at the timed steps' speed
    assert result["steps_seconds"] > 0
    assert result["seconds_per_epoch"] == pytest.approx(2 * result["steps_seconds"] / 3)
    assert "3 fast-path steps timed" in format_bench_probe(result)
    assert 0 < result["share"]["10"] < result["share"]["5"] < 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(val_images=0), "val_images >= 1"),
    (dict(train_images=8, batch_size=16), "train_images >= batch_size"),
    (dict(eval_every=(0,)), "report intervals >= 1"),
    (dict(seconds_per_epoch=0.0), "seconds_per_epoch must be a finite number > 0"),
    (dict(seconds_per_epoch=math.inf), "seconds_per_epoch must be a finite number > 0"),
    (dict(device="cudaX"), "device must be auto, cpu or cuda"),
    (dict(image_size=48), "image_size must be one of"),
])
def test_bench_probe_refuses_bad_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        bench_probe(**{**dict(backbone="small_cnn", device="cpu", train_images=64, val_images=16, batch_size=16,
                              seconds_per_epoch=1.0),
                       **kwargs})


# -------------------------------------------------------------------------------------------
# The device check script, in CPU mode, on an interpreter where Ray & co. cannot be imported
# -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_runs_on_cpu_without_the_sweep_dependencies(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT_ON_GPU_MACHINE))
    out = tmp_path / "figures" / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocker)}
    completed = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["ok"] is True and report["checks_ok"] is None
    assert set(report["benchmarks"]) == {"small_cnn-32px-b16", "small_cnn-64px-b16", "resnet18-32px-b4"}
    for name, figures in report["benchmarks"].items():
        assert figures["images_per_s"] > 0 and figures["flops_per_image"] > 0, name
    assert report["benchmarks"]["small_cnn-32px-b16"]["ratio"] > 0
    assert [r["trials"] for r in report["packing"]["runs"]] == [1, 2]
    probe = report["probes"]["probe-small_cnn"]
    assert probe["epoch_measured"] and probe["probe_seconds"] > 0 and 0 < probe["share"]["5"] < 1
    assert "wrote" in completed.stdout
    # The blocker works: the same interpreter cannot import Ray.
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0


# -------------------------------------------------------------------------------------------
# bench platform: a real sweep of trials that only sleep, the driver measured
# -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_platform_measures_a_real_sweep_end_to_end(ray_session, tmp_path):
    import mlflow

    from sslsearch.bench.platform import format_bench_platform, measure_sweep

    result = measure_sweep(4, reports=1, concurrency=2, report_seconds=0.0, checkpoint_mb=0.01, storage=str(tmp_path))
    # Every trial reports epoch 0 and epoch 10 (its last): ASHA's first rung is the end here.
    assert result["reports"] == 8 and result["outcomes"] == {"completed": 4, "stopped early": 0, "errored": 0}
    assert result["suggest_ms"]["calls"] == 4 and result["snapshot_ms"]["calls"] == 4
    assert result["components"]["tracking.on_trial_result"]["calls"] == 8
    # MLflow is searched when the sweep starts (parent, children) and once at its end, never per finished trial
    # (the parent's summary read back at every finished trial made the driver O(trials²): docs/scale.md).
    assert result["components"]["mlflow.search_runs"]["calls"] == 3
    assert result["components"]["tracking.send"]["calls"] > result["reports"]   # the sender thread, timed
    kinds = {k: v for k, v in result["components"].items() if k.startswith("tracking.send (")}   # and by record kind
    assert sum(v["calls"] for v in kinds.values()) == result["components"]["tracking.send"]["calls"]
    assert kinds["tracking.send (metrics)"]["calls"] == result["reports"] and "tracking.send (checkpoint)" in kinds
    assert 1 <= result["actor_processes"] <= result["actor_requests"]
    assert result["ray_state_saves"]["count"] >= 1 and result["ray_state_saves"]["last_bytes"] > 0
    assert 0 < result["timed_cpu_s"] < result["driver_cpu_s"]
    # (peak from getrusage, after from /proc: two counters that round differently)
    assert result["memory_mb"]["peak"] >= 0.99 * result["memory_mb"]["after"] > 0
    # The records are real: four trial runs in the SQLite store, each with both reports and its checkpoints.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sslsearch")
    runs = client.search_runs([experiment.experiment_id], "tags.`sslsearch.role` = 'trial'")
    assert len(runs) == 4 and all(r.data.tags["sslsearch.outcome"] == "completed" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "val_acc")) == 2 for r in runs)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "checkpoints")} == {"checkpoints/best.pt",
                                                                                           "checkpoints/last.pt"}
    # What the idle slot-time is made of: every trial started once (ASHA's only rung is the end: no twin paused), one
    # interval between each trial's two reports, each at least the sleep (0 here) less the clocks' jitter.
    assert result["trial_starts"] == 4 and result["idle_slot_s_per_start"] >= -1e-9
    assert math.isfinite(result["report_interval_beyond_sleep_ms"]) and result["report_interval_beyond_sleep_ms"] >= 0
    # Ray's result.json and progress.csv per trial, as run_sweep has them; no TensorBoard writer.
    folders = sorted((tmp_path / "platform-4").glob("trial_*"))
    assert len(folders) == 4 and all((f / "result.json").is_file() and (f / "progress.csv").is_file() for f in folders)
    assert not list((tmp_path / "platform-4").glob("trial_*/events.out.tfevents*"))
    text = format_bench_platform({**result, "reports": 1, "machine": {"cpus": 2, "date": "today"}, "runs": [result]})
    assert "ms per report" in text and "suggest ms" in text and "idle slot-s per trial start" in text


def test_the_searchers_appended_study_snapshot_equals_a_rewritten_one(tmp_path):
    # SweepSearcher.persist appends each newly finished trial (O(1) per trial); the journal must hold
    # what a full rewrite would, and survive the searcher being pickled by Ray in between.
    import pickle

    import optuna

    from sslsearch.search.space import load_search_space
    from sslsearch.search.sweep import SweepSearcher, write_study_snapshot

    space = load_search_space(ROOT / "search_spaces" / "barlow_hsic.yaml")
    searcher = SweepSearcher(space, max_epochs=4, sampler="random", seed=0, paired=False, study_name="s",
                             study_path=str(tmp_path / "appended.journal"))
    for i in range(5):
        searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"epoch": 2, "val_acc": 40.0 + i})
        searcher.on_trial_complete(f"t{i}", {"epoch": 4 if i % 2 else 2, "val_acc": 50.0 + i})
        searcher.save(str(tmp_path / "searcher.pkl"))
    assert "_snapshot" in searcher.__dict__ and "_snapshot" not in pickle.load(open(tmp_path / "searcher.pkl", "rb"))
    write_study_snapshot(searcher.study, tmp_path / "rewritten.journal")

    def trials(path):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return [(t.number, t.state, t.value, t.params, t.intermediate_values, t.user_attrs)
                for t in optuna.load_study(study_name="s", storage=storage).trials]

    assert trials(tmp_path / "appended.journal") == trials(tmp_path / "rewritten.journal")
    assert len(trials(tmp_path / "appended.journal")) == 5


def test_suggest_latency_is_measured_per_sampler_and_study_size():
    from sslsearch.bench.platform import suggest_latency

    result = suggest_latency((4, 12), ("tpe", "random"), running=2, calls=2)
    assert set(result) == {"tpe", "random"} and all(set(v) == {"4", "12"} for v in result.values())
    assert all(ms > 0 for v in result.values() for ms in v.values())
    with pytest.raises(InputError, match="unknown sampler variant"):
        suggest_latency((4,), ("annealing",))


@pytest.mark.slow
def test_bench_platform_quick_runs_each_size_in_its_own_process():
    completed = subprocess.run([sys.executable, "-m", "sslsearch.cli", "bench", "platform", "--quick", "--json"], cwd=ROOT,
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert [r["trials"] for r in result["runs"]] == [4, 8]
    for run in result["runs"]:
        assert run["outcomes"]["errored"] == 0 and run["trials"] * 2 <= run["reports"] <= run["trials"] * 3
        assert run["driver_cpu_ms_per_report"] > 0 and run["mlflow"]["calls"] > run["reports"]
        assert run["suggest_ms"]["calls"] == run["trials"] and run["memory_mb"]["peak"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--trials", "5"], "search.paired needs an even num_samples"),
    (["--trials", ""], "--trials needs at least one sweep size"),
    (["--trials", "4", "--checkpoint-mb", "-1"], "--checkpoint-mb must be in [0, 1024]"),
])
def test_bench_platform_refuses_bad_settings_in_one_line(argv, message, capsys):
    from sslsearch.cli import main

    assert main(["bench", "platform", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sslsearch: error: {message}")
