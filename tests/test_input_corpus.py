"""A corpus of malformed input, each case run as a user runs it: `python -m sslsearch.cli ...` in a fresh process.

Every case must be refused before anything starts: exit code 2, one line on stderr of at most MAX_LINE characters
naming what was wrong, no traceback, nothing on stdout, nothing written (the working folder, the storage folder,
TMPDIR, where Ray would put its session, and HOME stay empty), Ray never started, within a memory cap that a YAML
alias bomb or a 100 kB value quoted back would break. The cases follow issue 22's list: data-dependent limits,
sane bounds, resources the machine can never give, YAML aliases by expanded size, values quoted at length,
recursion, and paths that are not files.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINE = 600          # "one line of at most a few hundred characters"
MEMORY_CAP = 1 << 30    # address space of the refused process: a bomb expanded in memory would need gigabytes
CPUS = os.cpu_count() or 1
MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
TIMEOUT_S = 120   # a hang guard, not a figure: every case is refused in well under a second of CPU


def _has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists() or Path("/dev/dxg").exists()


def _bomb(levels: int, width: int = 10, under: str = "name") -> str:
    """The "billion laughs": each level lists the previous one `width` times, by alias; `under` gets the last."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{under}: *l{levels - 1}\n"


def _experiment_bomb(levels: int) -> str:
    # The anchors live in keys the experiment does not know: only the expansion can be refused first.
    return _bomb(levels) + "pretrain: {epochs: 2}\n"


def _inline_bomb(levels: int, width: int = 10) -> str:
    """A flow-style bomb that fits one `--set` value."""
    parts = [f"&a0 [{', '.join(['1'] * width)}]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


LONG = "x" * 100_000   # below Linux's 128 kB limit on one argument
QUOTED_80 = r"expected an integer, got '[^' ]{1,80}"   # a bad integer flag's value, quoted to at most 80 characters
SPACE = ["--set", "search.paired=false", "--space", "{in}/s.yaml"]

# (id, files to create in the input folder {name: text | bytes | "<fifo>" | "<dir>" | "<loop>"}, arguments, pattern)
CASES = [
    # --- data-dependent limits (digits: 1,437 labelled training images before the validation split) ---
    ("batch_above_pretraining_set", {}, ["--set", "pretrain.batch_size=5000"], r"batch_size.*5000.*pretrain"),
    ("batch_1e21", {}, ["--set", "pretrain.batch_size=1.0e+21"], r"batch_size"),
    ("batch_1e21_file", {"e.yaml": "pretrain: {batch_size: 1000000000000000000000, epochs: 2}\n"}, ["{in}/e.yaml"],
     r"batch_size"),
    ("val_fraction_0.9999", {}, ["--set", "pretrain.val_fraction=0.9999"], r"val_fraction"),
    ("space_batch_choice_above_set", {"s.yaml": "batch_size: {distribution: choice, values: [64, 4096]}\n"}, SPACE,
     r"batch_size=4096"),
    ("space_batch_int_above_set", {"s.yaml": "batch_size: {distribution: int, low: 2, high: 100000}\n"}, SPACE,
     r"batch_size=100000"),
    ("space_feature_dim_huge", {"s.yaml": "feature_dim: {distribution: int, low: 8, high: 10000000000}\n"}, SPACE,
     r"feature_dim=10000000000"),
    ("space_feature_dim_choice_huge", {"s.yaml": "feature_dim: {distribution: choice, values: [128, 100000000]}\n"},
     SPACE, r"feature_dim=100000000"),
    ("feature_dim_huge", {}, ["--set", "pretrain.feature_dim=100000000"], r"feature_dim"),
    ("projector_width_huge", {}, ["--set", "pretrain.projector_hidden=[100000000]"], r"projector_hidden"),
    ("projector_too_deep", {}, ["--set", "pretrain.projector_hidden=[" + ", ".join(["8"] * 5000) + "]"],
     r"projector_hidden"),
    ("image_size_huge", {}, ["--set", "pretrain.image_size=100000"], r"image_size"),
    *([("image_size_beyond_memory", {}, ["--set", "pretrain.dataset=tiny_imagenet", "--set", "pretrain.image_size=1024"],
        r"image_size 1024 makes the .* GiB")] if MEMORY < 200 * 2**30 else []),   # 80,000 images at 1024 px: 234 GiB
    # --- sane bounds ---
    ("epochs_1e20", {"e.yaml": "pretrain: {epochs: 100000000000000000000}\n"}, ["{in}/e.yaml"], r"epochs"),
    ("epochs_1e20_float", {}, ["--set", "pretrain.epochs=1.0e+20"], r"pretrain.epochs|epochs must"),
    ("epochs_million", {}, ["--set", "pretrain.epochs=1000000"], r"epochs"),
    ("eval_every_1e20", {}, ["--set", "pretrain.eval_every=1.0e+20"], r"eval_every"),
    ("warmup_1e20", {}, ["--set", "pretrain.warmup_epochs=1.0e+20"], r"warmup_epochs"),
    ("rungs_reduction_1.0000001", {}, ["--set", "scheduler.reduction_factor=1.0000001"], r"reduction_factor"),
    ("rungs_reduction_1.001_many", {}, ["--set", "pretrain.epochs=1000", "--set", "pretrain.eval_every=1",
                                        "--set", "scheduler.grace_period=1", "--set", "scheduler.reduction_factor=1.001"],
     r"reduction_factor|rung"),
    ("time_budget_1e-300", {}, ["--set", "search.time_budget_s=1.0e-300"], r"time_budget_s"),
    ("time_budget_1e300", {}, ["--set", "search.time_budget_s=1.0e+300"], r"time_budget_s"),
    ("num_samples_1e23", {}, ["--set", "search.num_samples=1.0e+23"], r"search\.num_samples"),
    ("num_samples_1e23_file", {"e.yaml": "pretrain: {epochs: 2}\nsearch: {num_samples: 100000000000000000000000}\n"},
     ["{in}/e.yaml"], r"search\.num_samples"),
    ("max_concurrent_1e23", {}, ["--set", "search.max_concurrent=1.0e+23"], r"search\.max_concurrent"),
    ("search_seed_1e30", {}, ["--set", "search.seed=1.0e+30"], r"search\.seed"),
    ("pretrain_seed_1e30", {}, ["--set", "pretrain.seed=1.0e+30"], r"seed"),
    ("pretrain_seed_negative", {}, ["--set", "pretrain.seed=-1"], r"seed"),
    ("split_seed_1e30", {}, ["--set", "pretrain.split_seed=1.0e+30"], r"split_seed"),
    ("max_failures_1e30", {}, ["--set", "resources.max_failures=1.0e+30"], r"max_failures"),
    ("momentum_negative", {}, ["--set", "pretrain.momentum=-1"], r"momentum"),
    ("probe_weight_decay_negative", {}, ["--set", "pretrain.probe_weight_decay=-1"], r"probe_weight_decay"),
    ("knn_temperature_zero", {}, ["--set", "pretrain.knn_temperature=0"], r"knn"),
    # --- resources the machine can never give ---
    ("cpus_1e308", {}, ["--set", "resources.cpus_per_trial=1.0e+308"], r"cpus_per_trial"),
    ("cpus_1e-9", {}, ["--set", "resources.cpus_per_trial=1.0e-9"], r"cpus_per_trial"),
    ("cpus_above_machine", {}, ["--set", f"resources.cpus_per_trial={CPUS + 1}"], r"cpus_per_trial"),
    ("gpus_1e-9", {}, ["--set", "resources.gpus_per_trial=1.0e-9"], r"gpus_per_trial"),
    ("gpus_1e308", {}, ["--set", "resources.gpus_per_trial=1.0e+308"], r"gpus_per_trial"),
    ("gpus_negative", {}, ["--set", "resources.gpus_per_trial=-1"], r"gpus_per_trial"),
    *([("gpus_on_gpu_less_machine", {}, ["--set", "resources.gpus_per_trial=1"], r"gpus_per_trial|GPU"),
       ("device_cuda_on_gpu_less_machine", {}, ["--set", "pretrain.device=cuda"], r"cuda|CUDA")]
      if not _has_gpu() else []),
    ("device_malformed", {}, ["--set", "pretrain.device=cuda:abc"], r"device"),
    # --- YAML aliases, limited by what they expand to ---
    ("bomb_9_levels_under_name", {"e.yaml": _experiment_bomb(9)}, ["{in}/e.yaml"], r"alias|expand"),
    ("bomb_7_levels_under_name", {"e.yaml": _experiment_bomb(7)}, ["{in}/e.yaml"], r"alias|expand"),
    ("bomb_12_levels", {"e.yaml": _experiment_bomb(12)}, ["{in}/e.yaml"], r"alias|expand"),
    ("bomb_wide_3_levels", {"e.yaml": _bomb(3, width=90) + "pretrain: {epochs: 2}\n"}, ["{in}/e.yaml"], r"alias|expand"),
    ("bomb_long_string", {"e.yaml": "a: &a " + "y" * 500_000 + "\nname: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                          "pretrain: {epochs: 2}\n"}, ["{in}/e.yaml"], r"alias|expand"),
    ("bomb_in_space", {"s.yaml": _bomb(9, under="lr").replace("lr: *l8", "lr: {distribution: choice, values: *l8}")},
     SPACE, r"alias|expand"),
    ("bomb_in_set", {}, ["--set", "pretrain.projector_hidden=" + _inline_bomb(9)], r"alias|expand"),
    # --- values quoted back: at most ~200 characters of any of them ---
    ("long_dataset_in_set", {}, ["--set", f"pretrain.dataset={LONG}"], r"dataset"),
    ("long_name_flag", {}, ["--name", LONG], r"--name"),
    ("long_name_in_set", {}, ["--set", f"name={LONG}"], r"name"),
    ("long_key_in_set", {}, ["--set", f"pretrain.{LONG}=1"], r"unknown key"),
    ("long_dataset_in_file", {"e.yaml": f"pretrain: {{dataset: {'d' * 500_000}}}\n"}, ["{in}/e.yaml"], r"dataset"),
    ("long_tracking_uri", {}, ["--tracking-uri", "ftp://" + LONG], r"tracking.uri"),
    ("long_space_choice", {"s.yaml": f"loss: {{distribution: choice, values: [barlow, {'h' * 500_000}]}}\n"}, SPACE,
     r"loss"),
    ("long_list_value", {}, ["--set", "pretrain.dataset=[" + ", ".join(["7"] * 30_000) + "]"], r"dataset"),
    ("newline_in_name", {}, ["--name", "a\nb"], r"--name"),
    ("name_too_long", {}, ["--name", "n" * 300], r"--name"),
    ("name_dot_dot", {}, ["--name", ".."], r"--name"),
    ("not_utf8_in_set", {}, [b"--set", b"pretrain.dataset=caf\xff"], r"dataset"),
    # --- recursion ---
    ("set_list_60k_deep", {}, ["--set", "pretrain.projector_hidden=" + "[" * 60_000 + "]" * 60_000],
     r"projector_hidden|nests"),
    ("set_map_20k_deep", {}, ["--set", "pretrain.dataset=" + "{a: " * 20_000 + "1" + "}" * 20_000],
     r"dataset|nests"),
    ("set_key_60k_deep", {}, ["--set", "a." * 60_000 + "b=1"], r"unknown key|nests|--set"),
    ("file_list_deep", {"e.yaml": "pretrain: " + "[" * 100_000 + "]" * 100_000 + "\n"}, ["{in}/e.yaml"],
     r"nests|malformed|mapping"),
    # --- paths that are not settings files ---
    ("experiment_is_folder", {"d": "<dir>"}, ["{in}/d"], r"folder|directory"),
    ("experiment_is_fifo", {"p": "<fifo>"}, ["{in}/p"], r"FIFO|pipe|not a regular file"),
    ("experiment_is_dev_zero", {}, ["/dev/zero"], r"device|not a regular file"),
    ("experiment_missing", {}, ["{in}/missing.yaml"], r"not found|no such"),
    ("experiment_symlink_loop", {"loop": "<loop>"}, ["{in}/loop"], r"symbolic link|not found"),
    ("space_is_folder", {"d": "<dir>"}, ["--set", "search.paired=false", "--space", "{in}/d"], r"folder|directory"),
    ("space_is_fifo", {"p": "<fifo>"}, ["--set", "search.paired=false", "--space", "{in}/p"],
     r"FIFO|pipe|not a regular file"),
    ("space_is_dev_zero", {}, ["--set", "search.paired=false", "--space", "/dev/zero"], r"device|not a regular file"),
    ("space_in_experiment_is_dev_zero", {}, ["--set", "search.space=/dev/zero"], r"device|not a regular file"),
    ("storage_is_file", {"f": "text\n"}, ["--storage", "{in}/f"], r"--storage"),
    ("data_dir_is_file", {"f": "text\n"}, ["--set", "pretrain.dataset=cifar10", "--set", "pretrain.data_dir={in}/f"],
     r"data_dir"),
    ("address_malformed", {}, ["--address", "not an address"], r"--address"),
    ("folder_data_set_missing", {}, ["--set", "pretrain.dataset=folder", "--set", "pretrain.data_dir={in}/nothing"],
     r"folder data set not found"),
    ("storage_under_a_file", {"f": "text\n"}, ["--storage", "{in}/f/runs"], r"--storage"),
    ("space_path_too_long", {}, ["--set", "search.paired=false", "--space", "/tmp/" + "p" * 5000 + ".yaml"],
     r"search space file .*(too long|not found)"),
    ("experiment_python_tag", {"e.yaml": "pretrain: !!python/object/apply:os.system ['touch pwned']\n"}, ["{in}/e.yaml"],
     r"malformed YAML|constructor"),
    ("experiment_nul_byte", {"e.yaml": b"pretrain: {epochs: 2}\nname: a\x00b\n"}, ["{in}/e.yaml"], r"malformed YAML|special"),
    ("merge_key_bomb", {"e.yaml": "".join(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}\n"
                                          if i else "m0: &m0 {a: lol, b: lol}\n" for i in range(9))
                        + "pretrain: {epochs: 2}\n"}, ["{in}/e.yaml"], r"expands"),
    ("cpus_64", {}, ["--set", "resources.cpus_per_trial=64"], r"cpus_per_trial") if CPUS < 64 else
    ("cpus_100000", {}, ["--set", "resources.cpus_per_trial=100000"], r"cpus_per_trial"),
    # --- pretrain, the same rules ---
    ("pretrain_batch_above_set", {}, ["pretrain", "--batch-size", "100000"], r"batch_size|batch-size"),
    ("pretrain_epochs_huge", {}, ["pretrain", "--epochs", "100000000000000000000"], r"epochs"),
    ("pretrain_seed_huge", {}, ["pretrain", "--seed", "100000000000000000000"], r"seed"),
    ("pretrain_feature_dim_huge", {}, ["pretrain", "--feature-dim", "100000000"], r"feature_dim|feature-dim"),
    ("pretrain_long_dataset", {}, ["pretrain", "--dataset", LONG], r"dataset"),
    ("pretrain_projector_huge", {}, ["pretrain", "--projector", "100000000"], r"projector"),
    ("pretrain_out_is_file", {"f": "text\n"}, ["pretrain", "--out", "{in}/f"], r"--out .* is a file"),
    ("pretrain_out_under_file", {"f": "text\n"}, ["pretrain", "--out", "{in}/f/run"], r"--out .* is a file"),
    ("linear_checkpoint_dev_zero", {}, ["linear", "--checkpoint", "/dev/zero", "--out", "{in}/x.csv"],
     r"not a regular file"),
    ("linear_checkpoint_fifo", {"p": "<fifo>"}, ["linear", "--checkpoint", "{in}/p", "--out", "{in}/x.csv"],
     r"not a regular file"),
    ("pretrain_projector_digits", {}, ["pretrain", "--projector", "9" * 5000], r"projector"),
    # --- flags with bounds, refused by the parser; a bad value is quoted to at most ~80 characters ---
    ("confirm_top_51", {}, ["confirm", "x", "--top", "51"], r"--top: expected an integer in \[1, 50\]"),
    ("confirm_seeds_100000", {}, ["confirm", "x", "--seeds", "100000"], r"--seeds: expected an integer in \[1, 1,000\]"),
    ("confirm_seeds_1e30", {}, ["confirm", "--seeds", "1" + "0" * 30], r"--seeds: expected an integer in"),
    ("confirm_seeds_5000_digits", {}, ["confirm", "x", "--seeds", "9" * 5000], QUOTED_80 + r" \(5,000 characters\)"),
    ("confirm_seeds_not_integer", {}, ["confirm", "x", "--seeds", "8.5"], r"--seeds: expected an integer, got '8.5'"),
    ("confirm_top_long", {}, ["confirm", "x", "--top", LONG], QUOTED_80 + r" \(100,000 characters\)"),
    ("leaderboard_top_above_1e6", {}, ["leaderboard", "--top", "1000001"], r"--top: expected an integer in \[1, 1,000,000\]"),
    ("leaderboard_top_long", {}, ["leaderboard", "--top", LONG], QUOTED_80 + r" \(100,000 characters\)"),
    ("report_top_1e30", {}, ["report", "--top", "1" + "0" * 30], r"--top: expected an integer in \[1, 1,000,000\]"),
    ("ui_port_70000", {}, ["ui", "--port", "70000"], r"--port: expected an integer in \[1, 65,535\]"),
    ("ui_port_negative", {}, ["ui", "--port", "-1"], r"--port: expected an integer in \[1, 65,535\]"),
    ("ui_port_long", {}, ["ui", "--port", LONG], QUOTED_80 + r" \(100,000 characters\)"),
    ("dashboard_port_65536", {}, ["dashboard", "--port", "65536"], r"--port: expected an integer in \[1, 65,535\]"),
    ("dashboard_port_5000_digits", {}, ["dashboard", "x", "--port", "9" * 5000], QUOTED_80 + r" \(5,000 characters\)"),
    ("pretrain_epochs_long", {}, ["pretrain", "--epochs", LONG], QUOTED_80 + r" \(100,000 characters\)"),
    ("pretrain_lr_long", {}, ["pretrain", "--lr", LONG], r"--lr: expected a number, got '[^' ]{1,80} \(100,000 characters\)"),
    ("linear_epochs_zero", {}, ["linear", "--checkpoint", "{in}/x.pt", "--epochs", "0"], r"--epochs: expected an integer ≥ 1"),
]


def _make(inputs: Path, files: dict) -> None:
    for name, content in files.items():
        path = inputs / name
        if content == "<dir>":
            path.mkdir()
        elif content == "<fifo>":
            os.mkfifo(path)
        elif content == "<loop>":
            path.symlink_to(path)
        else:
            text = content if isinstance(content, bytes) else content.encode()
            # Experiment files here name the project's search space: the input folder has none beside it.
            if name == "e.yaml" and b"search:" not in text:
                text += f"search: {{space: {REPO / 'search_spaces' / 'barlow_hsic.yaml'}}}\n".encode()
            path.write_bytes(text)


COMMANDS = ("pretrain", "linear", "confirm", "leaderboard", "report", "ui", "dashboard")   # else the case is `sweep`'s


def command_line(args: list, inputs: Path, work: Path) -> list:
    """A case's arguments to `sslsearch` (`sweep` unless they name another command), {in} filled in; a sweep's
    records go to the case's own working folder."""
    command = args if args and args[0] in COMMANDS else ["sweep", *args]
    argv = [a.replace("{in}", str(inputs)) if isinstance(a, str) else a for a in command]
    if argv[0] in ("sweep", "confirm", "leaderboard", "report", "ui", "dashboard") and "--storage" not in argv:
        argv += ["--storage", str(work / "runs")]
    return argv


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("case, files, args, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_starts(case, files, args, pattern, tmp_path):
    inputs, work, tmp, home = (tmp_path / n for n in ("in", "work", "tmp", "home"))
    for folder in (inputs, work, tmp, home):
        folder.mkdir()
    _make(inputs, files)
    argv = command_line(args, inputs, work)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "HOME": str(home),
           "PYTHONDONTWRITEBYTECODE": "1"}
    # A new session, so that a case that wrongly got as far as starting Ray leaves no process behind.
    process = subprocess.Popen([sys.executable, "-m", "sslsearch.cli", *argv], cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limit_memory,
                               start_new_session=True)
    try:
        out, raw = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"not refused within {TIMEOUT_S} s")
    err = raw.decode("utf-8", errors="replace")
    assert process.returncode == 2, err[-2000:]
    assert out == b"", out[:500]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert len(lines[0]) <= MAX_LINE, f"{len(lines[0])} characters: {lines[0][:300]}…"
    assert lines[0].startswith("sslsearch") and re.search(pattern, lines[0]), lines[0]
    assert _tree(work) == [] and _tree(tmp) == [] and _tree(home) == []   # nothing written, no Ray session


def test_the_corpus_covers_every_kind_of_issue_22():
    ids = {c[0] for c in CASES}
    for kind in ("batch_above_pretraining_set", "val_fraction_0.9999", "space_batch_choice_above_set", "epochs_1e20",
                 "time_budget_1e-300", "cpus_1e308", "cpus_1e-9", "cpus_above_machine", "bomb_9_levels_under_name",
                 "set_list_60k_deep", "experiment_is_folder", "experiment_is_fifo", "experiment_is_dev_zero",
                 "num_samples_1e23", "batch_1e21", "confirm_top_51", "confirm_seeds_100000", "leaderboard_top_above_1e6",
                 "report_top_1e30", "ui_port_70000", "dashboard_port_65536", "ui_port_long"):
        assert kind in ids
    assert len(CASES) >= 100
