"""Experiment and search-space files: precedence, validation, one-line errors with exit code 2."""

from pathlib import Path

import optuna
import pytest
import yaml

from sslsearch.cli import main
from sslsearch.errors import InputError
from sslsearch.search.experiment import DEFAULT_EXPERIMENT, load_experiment
from sslsearch.search.space import load_search_space, parse_search_space

ROOT = Path(__file__).resolve().parent.parent


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "pretrain": {"epochs": 7, "lr": 0.01}, "search": {"num_samples": 4}}))
    e = load_experiment(path, ["pretrain.lr=0.5", "search.sampler=random", "scheduler.grace_period=3", "pretrain.eval_every=1"])
    assert e.pretrain.epochs == 7            # file
    assert e.pretrain.lr == 0.5              # override beats file
    assert e.pretrain.batch_size == 128      # default
    assert e.search.sampler == "random" and e.scheduler.grace_period == 3
    assert e.search.num_samples == 4


def test_shipped_experiments_and_space_load():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        e = load_experiment(path)
        space = load_search_space(e.space_path())
        assert set(space.names) <= {"lmbda", "lr", "feature_dim", "loss", "weight_decay"}, path
    space = load_search_space(ROOT / "search_spaces" / "barlow_hsic.yaml").to_optuna()
    assert space["lmbda"].log and space["lmbda"].low == 1e-4 and space["lmbda"].high == 0.1
    assert 1 / 128 < space["lmbda"].high and 0.0051 > space["lmbda"].low
    assert space["feature_dim"].choices == (64, 128, 256, 512, 1024)
    assert isinstance(space["loss"], optuna.distributions.CategoricalDistribution)


def test_default_experiment_is_the_embedded_digits_sweep():
    e = load_experiment(None)
    assert e.source == str(DEFAULT_EXPERIMENT) and e.pretrain.dataset == "digits"
    assert e.search.num_samples >= 8 and e.scheduler.type == "asha" and e.search.paired


@pytest.mark.parametrize("raw,match", [
    ({"lmbda": {"distribution": "loguniform", "low": 0.1, "high": 0.01}}, "low < high"),
    ({"lmbda": {"distribution": "loguniform", "low": 0.0, "high": 0.01}}, "bounds must be > 0"),
    ({"feature_dim": {"distribution": "int", "low": 0, "high": 8, "log": True}}, "bounds must be > 0"),
    ({"loss": {"distribution": "choice", "values": []}}, "non-empty list"),
    ({"momentum_magic": {"distribution": "uniform", "low": 0, "high": 1}}, "does not know parameter 'momentum_magic'"),
    ({"lr": {"distribution": "normal", "low": 0, "high": 1}}, "unknown distribution 'normal'"),
    ({"lr": {"distribution": "uniform", "low": 0}}, "missing: high"),
    ({"epochs": {"distribution": "int", "low": 1, "high": 9}}, "does not know parameter 'epochs'"),
])
def test_bad_search_spaces(raw, match):
    with pytest.raises(InputError, match=match):
        parse_search_space(raw)


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("content,overrides,match", [
    ("pretrain: [unclosed", [], "malformed YAML"),
    ("pretrain: {epochz: 3}", [], "unknown key\\(s\\) in pretrain: epochz \\(did you mean epochs\\?\\); valid: dataset"),
    ("pretrian: {}", [], "unknown key\\(s\\) in e.yaml: pretrian \\(did you mean pretrain\\?\\); valid: name, search"),
    ("search: {num_samples: 0}", [], "num_samples must be in \\[1, 100,000\\]"),
    ("search: {paired: true, num_samples: 3}", [], "even num_samples"),
    ("pretrain: {epochs: 2}", ["pretrain.lmbda=-1"], "lmbda must be"),
    ("pretrain: {epochs: 2}", ["pretrain.epochs=abc"], "pretrain.epochs must be a number"),
    ("pretrain: {epochs: 2}", ["scheduler.type=hyperband"], "scheduler.type must be one of asha, fifo"),
])
def test_sweep_cli_refuses_bad_experiments_before_any_trial(tmp_path, capsys, content, overrides, match):
    path = tmp_path / "e.yaml"
    path.write_text(content)
    argv = ["sweep", str(path), "--storage", str(tmp_path / "runs")]
    for o in overrides:
        argv += ["--set", o]
    code, err = _run(capsys, argv)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    import re
    assert re.search(match, err), err
    assert not (tmp_path / "runs").exists()


def test_a_data_folder_is_always_absolute_for_the_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = load_experiment(overrides=["pretrain.dataset=cifar10"])
    assert default.pretrain.data_dir == str(tmp_path.resolve() / "data")  # pretrain's default, ./data
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text("pretrain: {dataset: cifar10, data_dir: ../sets}")
    assert load_experiment(tmp_path / "exp" / "e.yaml").pretrain.data_dir == str(tmp_path.resolve() / "sets")
    assert load_experiment().pretrain.data_dir is None  # digits is bundled


@pytest.mark.slow
def test_sweep_cli_refuses_missing_data_before_any_trial(tmp_path, capsys, monkeypatch):
    from sslsearch.method import data

    def offline(root, archive):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download", offline)
    argv = ["sweep", "--storage", str(tmp_path / "runs"), "--name", "c10", "--set", "pretrain.dataset=cifar10",
            "--set", f"pretrain.data_dir={tmp_path / 'sets'}"]
    code, err = _run(capsys, argv)
    assert code == 2 and "cifar10" in err and "download failed: OSError: network unreachable" in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sets").exists()   # no sweep folder, no mlflow.db


def test_sweep_cli_refuses_a_bad_space_file_and_unknown_resume(tmp_path, capsys):
    space = tmp_path / "s.yaml"
    space.write_text("lr: {distribution: loguniform, low: -1, high: 1}")
    code, err = _run(capsys, ["sweep", "--space", str(space), "--storage", str(tmp_path / "runs")])
    assert code == 2 and "bounds must be > 0" in err and len(err.splitlines()) == 1
    code, err = _run(capsys, ["resume", "nope", "--storage", str(tmp_path / "runs")])
    assert code == 2 and "no sweep named 'nope'" in err and len(err.splitlines()) == 1


# --- issue 22, item 5: limits checked before anything starts -------------------------------------------------------

@pytest.mark.parametrize("val_fraction", [0.1, 0.5, 0.9999])
def test_the_data_set_size_known_up_front_is_the_loaders(val_fraction):
    from sslsearch.method.config import PretrainConfig
    from sslsearch.method.data import load_dataset

    config = PretrainConfig(dataset="digits", val_fraction=val_fraction)
    data = load_dataset("digits", val_fraction=val_fraction)
    assert config.pretraining_images() == data.pretrain_images.shape[0]
    PretrainConfig(dataset="digits", val_fraction=val_fraction, batch_size=data.pretrain_images.shape[0]).check_data()
    with pytest.raises(InputError, match=f"batch_size {data.pretrain_images.shape[0] + 1} exceeds the "
                                         f"{data.pretrain_images.shape[0]:,} pretraining images of digits"):
        PretrainConfig(dataset="digits", val_fraction=val_fraction, batch_size=data.pretrain_images.shape[0] + 1).check_data()


def test_aliases_are_limited_by_what_they_expand_to_not_by_their_count(tmp_path):
    from sslsearch.search.experiment import MAX_EXPANDED, load_yaml

    block = "&p {lr: 0.001, epochs: 2}"
    many = "a: " + block + "\n" + "".join(f"k{i}: *p\n" for i in range(500))   # 500 aliases, a few kB expanded
    assert load_yaml(many, "many")["k499"] == {"lr": 0.001, "epochs": 2}
    big = "a: &s " + "y" * (MAX_EXPANDED // 3) + "\nb: [*s, *s, *s]\n"         # 4 aliases, over the limit expanded
    with pytest.raises(InputError, match="big: the value at line 2 expands, once its aliases"):
        load_yaml(big, "big")
    with pytest.raises(InputError, match="contains itself through an alias"):
        load_yaml("a: &a [1, *a]\n", "loop")


def test_the_machine_is_checked_before_ray_starts(monkeypatch):
    import os

    from sslsearch.search.experiment import check_machine

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    experiment = load_experiment(None, ["resources.cpus_per_trial=3"])
    with pytest.raises(InputError, match="cpus_per_trial is 3, but this machine has 2 CPUs"):
        check_machine(experiment, None)
    check_machine(experiment, "10.0.0.1:6379")   # a cluster's own resources are Ray's to count, once joined
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")   # no GPU visible, whatever the machine has
    experiment = load_experiment(None, ["resources.gpus_per_trial=0.5"])
    if os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"):
        pytest.skip("a GPU without an NVIDIA device file may be present: only Ray can count it")
    with pytest.raises(InputError, match="gpus_per_trial is 0.5, but this machine has 0 GPUs"):
        check_machine(experiment, None)


@pytest.mark.parametrize("address, expected", [("auto", None), ("10.0.0.1:6379", ("10.0.0.1", 6379)),
                                               ("ray://head:10001", ("head", 10001)), ("[::1]:6379", ("::1", 6379))])
def test_ray_addresses_are_read_before_ray_imports(address, expected):
    from sslsearch.search.experiment import ray_address

    assert ray_address(address) == expected


@pytest.mark.parametrize("address", ["head", "head:", "head:99999", "not an address:1", ":6379"])
def test_a_malformed_ray_address_is_one_line(address):
    from sslsearch.search.experiment import ray_address

    with pytest.raises(InputError, match="--address must be auto, HOST:PORT or ray://HOST:PORT"):
        ray_address(address)


def test_values_are_quoted_to_200_characters():
    from sslsearch.errors import shown

    assert shown("x" * 100_000).endswith("' (100,000 characters)") and len(shown("x" * 100_000)) < 230
    assert shown(list(range(10_000))).endswith("...] (10,000 items)")
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep) == "[[[[[...]]]]]"   # no recursion into what it does not show


def test_an_error_is_quoted_by_its_first_line_even_when_it_has_none():
    """Errors as one-line messages quote them (sslsearch.errors.first_line / error_line, used wherever an error's text
    ends up in a message). Several call sites took `str(error).splitlines()[0]`, an IndexError inside the handler when
    the message was empty (`ConnectionError()` from ray.init, `OSError()`)."""
    from sslsearch.errors import QUOTE_LIMIT, error_line, first_line

    assert first_line(ConnectionError()) == "ConnectionError" and error_line(ConnectionError()) == "ConnectionError"
    assert first_line(OSError("\n  \n  disk gone  \nTraceback ...")) == "disk gone"
    assert error_line(ValueError("bad\nmore")) == "ValueError: bad"
    assert first_line(" \n ") == "" and first_line("text only") == "text only"
    long = RuntimeError("y" * 10_000)
    assert len(first_line(long)) == QUOTE_LIMIT and first_line(long).endswith("…")
    assert first_line(long, None) == "y" * 10_000 and len(first_line(long, 50)) == 50
    assert len(error_line(long, 50)) == len("RuntimeError: ") + 50


def test_the_file_in_the_way_of_a_folder(tmp_path):
    """One rule for every --out/--storage/--plots check (it was written three ways): the nearest existing path at
    or above the given one, when it is not a folder."""
    from sslsearch.errors import file_in_the_way

    (tmp_path / "afile").write_text("mine")
    (tmp_path / "folder").mkdir()
    assert file_in_the_way(tmp_path / "afile" / "a" / "b") == tmp_path / "afile"
    assert file_in_the_way(tmp_path / "afile") == tmp_path / "afile"
    assert file_in_the_way(tmp_path / "folder") is None and file_in_the_way(tmp_path / "folder" / "new" / "x") is None
    assert file_in_the_way(Path("/")) is None


def test_an_experiment_file_without_a_space_uses_the_shipped_one_wherever_it_lives(tmp_path, monkeypatch):
    """`search.space` defaulted to `../search_spaces/barlow_hsic.yaml` next to the user's file: a file outside the
    repository (/tmp/partial.yaml) was refused with "search space file not found: /tmp/search_spaces/barlow_hsic.yaml"."""
    path = tmp_path / "partial.yaml"
    path.write_text("name: x\npretrain: {epochs: 4}\n")
    monkeypatch.chdir(tmp_path)   # nor does the working folder matter
    shipped = load_experiment(None).space_path()
    assert shipped == (ROOT / "search_spaces" / "barlow_hsic.yaml").resolve()
    e = load_experiment(path)
    assert e.space_path() == shipped
    assert load_search_space(e.space_path()) == load_search_space(shipped)


def test_a_space_the_experiment_file_names_is_relative_to_that_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "spaces").mkdir()
    mine = tmp_path / "spaces" / "mine.yaml"
    mine.write_text("lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    (tmp_path / "spaces" / "other.yaml").write_text("lmbda: {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}\n")
    path = tmp_path / "e.yaml"
    path.write_text("name: x\npretrain: {epochs: 4}\nsearch: {space: spaces/mine.yaml}\n")
    monkeypatch.chdir(ROOT)   # not relative to the working folder
    e = load_experiment(path)
    assert e.space_path() == mine.resolve() and load_search_space(e.space_path()).names == ("lr",)
    # --set search.space is read as the file's own setting: relative to the experiment file too.
    assert load_experiment(path, ["search.space=spaces/other.yaml"]).space_path() == (tmp_path / "spaces" / "other.yaml")
    assert load_experiment(None, ["search.space=mine.yaml"]).space_path() == DEFAULT_EXPERIMENT.parent / "mine.yaml"
    # A space the user named that is not there: one line, exit 2, nothing written.
    path.write_text("name: x\npretrain: {epochs: 4}\nsearch: {space: spaces/missing.yaml}\n")
    code, err = _run(capsys, ["sweep", str(path), "--storage", str(tmp_path / "runs")])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "search space file not found" in err and "missing.yaml" in err
    assert not (tmp_path / "runs").exists()
