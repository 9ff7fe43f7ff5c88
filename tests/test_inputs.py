"""Every bad input is refused before anything starts: exit code 2, one line on stderr, no traceback, no file
written (no sweep folder, no MLflow store), Ray never started. The corpus holds each case of issue 12's table."""

import pytest

from sslsearch import cli

SPACE_OK = "loss: {distribution: choice, values: [barlow, hsic]}\n"
UNPAIRED = ["--set", "search.paired=false"]


def _bomb(levels: int = 12, width: int = 10) -> str:
    """The "billion laughs": each level lists the previous one `width` times, by alias."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# (experiment file, search-space file, extra arguments, what the one line must say)
EXPERIMENTS = [
    ("", None, [], "is empty"),
    ("{}", None, [], "is empty"),
    ("# only a comment\n", None, [], "is empty"),
    ("pretrain:\n", None, [], "section\\(s\\) pretrain .* are empty"),
    ("pretrain: {}\n", None, [], "section\\(s\\) pretrain .* are empty"),
    ("pretrain: {epochs: 2}\nsearch: null\n", None, [], "section\\(s\\) search .* are empty"),
    ("pretrain: {epochs: 2}\nscheduler: {}\n", None, [], "section\\(s\\) scheduler .* are empty"),
    (b"pretrain: {epochs: 2}\nname: caf\xe9\n", None, [], "is not UTF-8 text \\(byte 31: 0xe9\\)"),
    (b"\xff\xfe\x00p\x00r", None, [], "is not UTF-8 text"),
    ("pretrain: {data_dir: [a, b]}\n", None, [], "pretrain.data_dir must be text"),
    ("pretrain: {dataset: 7}\n", None, [], "pretrain.dataset must be text"),
    ("pretrain: {projector_hidden: abc}\n", None, [], "projector_hidden must be a list of integers"),
    ("pretrain: {projector_hidden: [512, x]}\n", None, [], "projector_hidden must be a list of integers"),
    ("pretrain: {projector_hidden: [0]}\n", None, [], "projector_hidden widths must be in \\[1, 65,536\\]"),
    (_bomb(), None, [], "expands, once its aliases .* are followed, to more than"),
    ("pretrain: {epochs: 2}\n" + "#" * (1 << 20), None, [], "settings files are at most"),
    ("[" * 5000 + "]" * 5000, None, [], "nests more than 64 brackets deep"),
    ("[1, 2]\n", None, [], "must hold a mapping"),
    ("just text\n", None, [], "must hold a mapping"),
    ("pretrain: [unclosed\n", None, [], "malformed YAML .*line"),
    ("pretrain: {epochz: 3}\n", None, [], "unknown key\\(s\\) in pretrain: epochz"),
    ("1: x\npretrain: {epochs: 2}\n", None, [], "unknown key\\(s\\) in e.yaml: 1"),
    ("name: [a]\npretrain: {epochs: 2}\n", None, [], "name in .* must be text"),
    ("pretrain: {lr: .nan}\n", None, [], "pretrain.lr must be a finite number"),
    ("pretrain: {lr: .inf}\n", None, [], "pretrain.lr must be a finite number"),
    ("pretrain: {lr: 1.0e+300}\n", None, [], "lr must be in \\(0, 10\\]"),
    ("pretrain: {lr: 0}\n", None, [], "lr must be in \\(0, 10\\]"),
    ("pretrain: {weight_decay: .inf}\n", None, [], "weight_decay must be a finite number"),
    ("pretrain: {lmbda: -0.5}\n", None, [], "lmbda must be a finite number ≥ 0"),
    ("pretrain: {epochs: 0}\n", None, [], "epochs must be in \\[1, 100,000\\]"),
    ("pretrain: {epochs: 2.5}\n", None, [], "pretrain.epochs must be an integer"),
    ("pretrain: {epochs: true}\n", None, [], "pretrain.epochs must be a number"),
    ("pretrain: {loss: nope}\n", None, [], "unknown loss 'nope'"),
    ("pretrain: {backbone: resnet999}\n", None, [], "unknown backbone 'resnet999'"),
    ("pretrain: {batch_size: 1}\n", None, [], "batch_size must be ≥ 2"),
    ("pretrain: {val_fraction: 1.5}\n", None, [], "val_fraction must be in \\(0, 1\\)"),
    ("pretrain: {device: tpu}\n", None, [], "device must be auto, cpu or cuda"),
    ("pretrain: {epochs: 2}\nsearch: {num_samples: 0}\n", None, [], "num_samples must be in \\[1, 100,000\\]"),
    ("pretrain: {epochs: 2}\nsearch: {seed: -1}\n", None, [], "search.seed must be in \\[0"),
    ("pretrain: {epochs: 2}\nsearch: {sampler: grid}\n", None, [], "search.sampler must be one of"),
    ("pretrain: {epochs: 2}\nsearch: {paired: true, num_samples: 3}\n", None, [], "even num_samples"),
    ("pretrain: {epochs: 2}\nsearch: {time_budget_s: -1}\n", None, [], "time_budget_s must be in \\[60, "),
    ("pretrain: {epochs: 2}\nsearch: {max_concurrent: 0}\n", None, [], "max_concurrent must be in \\[1, 10,000\\]"),
    ("pretrain: {epochs: 2}\nscheduler: {grace_period: 3}\n", None, [], "grace_period must be in \\[1, pretrain.epochs=2\\]"),
    ("pretrain: {epochs: 2}\nscheduler: {type: hyperband}\n", None, [], "scheduler.type must be one of"),
    ("pretrain: {epochs: 2}\nresources: {max_failures: -1}\n", None, [], "max_failures must be in \\[0, 100\\]"),
    ("pretrain: {epochs: 2}\nresources: {cpus_per_trial: 0}\n", None, [], "cpus_per_trial must be in \\[0.0001, 4096\\]"),
    ("pretrain: {epochs: 2}\nresources: {gpus_per_trial: .inf}\n", None, [], "gpus_per_trial must be a finite number"),
    ("pretrain: {epochs: 2}\ntracking: {uri: 'file:///tmp/mlruns'}\n", None, [], "tracking.uri must be"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: sometimes}\n", None, [], "tracking.checkpoints must be one of"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: 'top_k:0'}\n", None, [],
     "tracking.checkpoints must be one of best_and_last, best, top_k:N, all, none \\(N a whole number ≥ 1\\), got 'top_k:0'"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: 'top_k:N'}\n", None, [],
     "tracking.checkpoints must be one of .* got 'top_k:N'"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: 'top_k:-1'}\n", None, [], "tracking.checkpoints must be one of"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: 'top_k:2.5'}\n", None, [], "tracking.checkpoints must be one of"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: 'top_k'}\n", None, [], "tracking.checkpoints must be one of"),
    ("pretrain: {epochs: 2}\ntracking: {checkpoints: {top_k: 3}}\n", None, [], "tracking.checkpoints must be text"),
]

OVERRIDES = [
    # Empty or null values of settings that take no `none` (review of the merged validation: each was a TypeError).
    (None, None, ["--set", "search.num_samples="], "search.num_samples needs a value; it was empty or null"),
    (None, None, ["--set", "pretrain.lr=null"], "pretrain.lr needs a value"),
    (None, None, ["--set", "pretrain.val_fraction=~"], "pretrain.val_fraction needs a value"),
    (None, None, ["--set", "resources.cpus_per_trial=null"], "resources.cpus_per_trial needs a value"),
    (None, None, ["--set", "tracking.checkpoints=null"], "tracking.checkpoints needs a value"),
    (None, None, ["--set", "pretrain.device=null"], "pretrain.device needs a value"),
    (None, None, ["--set", "pretrain.image_size=32.5"], "pretrain.image_size must be an integer, got 32.5"),
    (None, None, ["--set", "pretrain.projector_hidden=abc"], "projector_hidden must be a list of integers"),
    (None, None, ["--set", "search.seed=-1"], "search.seed must be in \\[0"),
    (None, None, ["--set", "pretrain=3"], "pretrain must be a mapping"),
    (None, None, ["--set", "nokey"], "--set expects key.sub=value"),
    (None, None, ["--set", "=3"], "--set expects key.sub=value"),
    (None, None, ["--set", "pretrain.lr=1e300"], "pretrain.lr must be a number"),  # YAML 1.1 reads it as text
    (None, None, ["--set", "pretrain.lr=1.0e+300"], "lr must be in \\(0, 10\\]"),
    (None, None, ["--set", "pretrain.lr=.nan"], "pretrain.lr must be a finite number"),
    (None, None, ["--set", "pretrain.data_dir=[a]"], "pretrain.data_dir must be text"),
    (None, None, ["--set", "pretrain.epochs=abc"], "pretrain.epochs must be a number"),
    (None, None, ["--set", "pretrain.epochs.x=1"], "epochs is not a section"),
    (None, None, ["--set", "search.num_samples=0"], "num_samples must be in \\[1, 100,000\\]"),
    (None, None, ["--set", "resources.max_failures=-2"], "max_failures must be in \\[0, 100\\]"),
    (None, None, ["--set", "tracking.checkpoints=top_k:x"], "tracking.checkpoints must be one of .* got 'top_k:x'"),
    (None, None, ["--set", "tracking.checkpoints=best_and_lasts"], "tracking.checkpoints must be one of"),
    (None, None, ["--name", "a b"], "--name may hold up to 128 letters"),
    (None, None, ["--name", "../up"], "--name may hold up to 128 letters"),
]

SPACES = [
    (None, "feature_dim: {distribution: choice, values: [0, -5]}\n", UNPAIRED, "feature_dim=0 would fail every trial"),
    (None, "lmbda: {distribution: uniform, low: -1, high: 1}\n", UNPAIRED, "lmbda=-1.0 would fail every trial"),
    (None, "loss: {distribution: choice, values: [barlow, nope]}\n", UNPAIRED, "loss='nope' would fail every trial"),
    (None, "loss: {distribution: choice, values: [barlow, nope]}\n", [], "search.paired needs 'loss'"),
    (None, "lmbda: {distribution: uniform, low: 0, high: 1}\n", [], "search.paired needs 'loss'"),
    (None, "lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e+300}\n", UNPAIRED, "lr=1e\\+300 would fail every trial"),
    (None, "lr: {distribution: loguniform, low: .nan, high: 1}\n", UNPAIRED, "bounds must be finite numbers"),
    (None, "lmbda: {distribution: uniform, low: 0, high: .inf}\n", UNPAIRED, "bounds must be finite numbers"),
    (None, "lr: {distribution: loguniform, low: 0, high: 1}\n", UNPAIRED, "log-scaled, so its bounds must be > 0"),
    (None, "lr: {distribution: uniform, low: 1, high: 0.1}\n", UNPAIRED, "needs low < high"),
    (None, "feature_dim: {distribution: uniform, low: 8, high: 64}\n", UNPAIRED, "draws real numbers; use distribution int"),
    (None, "feature_dim: {distribution: int, low: -8, high: 64}\n", UNPAIRED, "feature_dim=-8 would fail every trial"),
    (None, "loss: {distribution: int, low: 1, high: 2}\n", UNPAIRED, "loss takes str values, not integers"),
    (None, "backbone: {distribution: choice, values: [resnet18, resnet999]}\n", UNPAIRED, "backbone='resnet999' would fail"),
    (None, "projector_hidden: {distribution: choice, values: [abc]}\n", UNPAIRED, "projector_hidden='abc' would fail"),
    (None, "batch_size: {distribution: choice, values: [1, 64]}\n", UNPAIRED, "batch_size=1 would fail"),
    (None, "momentumm: {distribution: uniform, low: 0, high: 1}\n", UNPAIRED, "does not know parameter 'momentumm'"),
    (None, "epochs: {distribution: int, low: 1, high: 9}\n", UNPAIRED, "does not know parameter 'epochs'"),
    (None, "lr: {distribution: gaussian, low: 0, high: 1}\n", UNPAIRED, "unknown distribution 'gaussian'"),
    (None, "lr: {distribution: uniform, low: 0.1}\n", UNPAIRED, "missing: high"),
    (None, "lr: 0.1\n", UNPAIRED, "must be a mapping with 'distribution'"),
    (None, "feature_dim: {distribution: choice, values: []}\n", UNPAIRED, "non-empty list of values"),
    (None, "", UNPAIRED, "non-empty mapping"),
    (None, "{}", UNPAIRED, "non-empty mapping"),
    (None, b"lr: {distribution: uniform, low: 0.1, high: \xb51}\n", UNPAIRED, "is not UTF-8 text"),
    (None, _bomb(), UNPAIRED, "expands, once its aliases .* are followed, to more than"),
    (None, SPACE_OK + "loss: {distribution: choice, values: [barlow]}\n", UNPAIRED, "'loss' is given twice \\(line 2\\)"),
]

CASES = EXPERIMENTS + OVERRIDES + SPACES


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fails a case that gets as far as preparing data or starting Ray."""
    import sslsearch.search.sweep as search

    started = []
    monkeypatch.setattr(search, "connect_ray", lambda *a, **k: started.append("ray") or pytest.fail("Ray started"))
    monkeypatch.setattr(search, "prepare_dataset", lambda *a, **k: started.append("data") or pytest.fail("data prepared"))
    return started


@pytest.mark.parametrize("experiment, space, extra, match", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_is_one_line_exit_2_nothing_written_no_ray(experiment, space, extra, match, tmp_path, monkeypatch,
                                                             capsys, nothing_starts):
    import re

    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir(), work.mkdir()
    monkeypatch.chdir(work)
    argv = ["sweep"]
    if experiment is not None:
        path = inputs / "e.yaml"
        path.write_bytes(experiment if isinstance(experiment, bytes) else experiment.encode())
        argv.append(str(path))
    if space is not None:
        path = inputs / "s.yaml"
        path.write_bytes(space if isinstance(space, bytes) else space.encode())
        argv += ["--space", str(path)]
    argv += ["--storage", str(work / "runs"), *extra]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out, err
    assert re.search(match, err), err
    assert list(work.iterdir()) == []  # no sweep folder, no MLflow store
    assert nothing_starts == []


def test_the_corpus_holds_each_kind_of_case_of_the_issue():
    assert len(CASES) >= 91
