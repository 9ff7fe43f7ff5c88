"""The shipped experiments, search spaces and replay table (sslsearch/presets): named by file or by name, and
present in an installed copy of the package (a wheel), not only in a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sslsearch import presets
from sslsearch.cli import main
from sslsearch.errors import InputError
from sslsearch.search.experiment import load_experiment, space_file
from sslsearch.search.space import load_search_space

ROOT = Path(__file__).resolve().parent.parent


def test_the_repository_links_are_the_shipped_folders():
    assert (ROOT / "experiments").resolve() == presets.EXPERIMENTS
    assert (ROOT / "search_spaces").resolve() == presets.SEARCH_SPACES
    assert presets.experiment_names() == sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert "digits" in presets.experiment_names() and presets.DEFAULT_EXPERIMENT.is_file() and presets.REPLAY_TABLE.is_file()


def test_a_shipped_experiment_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment("cifar10_resnet18")
    assert experiment.source == str(presets.EXPERIMENTS / "cifar10_resnet18.yaml")
    assert experiment.pretrain.dataset == "cifar10" and experiment.space_path() == presets.DEFAULT_SPACE


def test_a_file_of_that_name_comes_first_a_folder_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    assert load_experiment("digits").source == str(presets.DEFAULT_EXPERIMENT)
    (tmp_path / "cifar10_resnet18").write_text("name: mine\npretrain: {dataset: digits, epochs: 2, eval_every: 1}\n")
    experiment = load_experiment("cifar10_resnet18")
    assert experiment.name == "mine" and experiment.source == str(tmp_path / "cifar10_resnet18")


@pytest.mark.parametrize("given", ["nosuch", "digits.yaml", "sub/digits", ".digits", ""])
def test_no_file_and_no_shipped_experiment_of_that_name(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="experiment file not found: .*shipped experiment by name: .*digits"):
        load_experiment(given)


def test_the_command_line_names_the_shipped_experiments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    shown = "".join(capsys.readouterr().out.split())   # (argparse wraps the help, long paths mid-word too)
    assert "".join(str(presets.EXPERIMENTS).split()) in shown   # the folder to copy one from, in an installed copy too
    assert main(["sweep", "nosuch", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(name in err for name in presets.experiment_names())
    assert not (tmp_path / "runs").exists()


def test_a_copy_of_a_shipped_experiment_finds_its_space_anywhere(tmp_path):
    """Found by review: the shipped experiments named `../search_spaces/barlow_hsic.yaml`, so a copy made to change
    one (what the README suggests) was refused with "search space file not found: /tmp/search_spaces/..."."""
    for name in presets.experiment_names():
        copy = tmp_path / f"my_{name}.yaml"
        copy.write_text((presets.EXPERIMENTS / f"{name}.yaml").read_text())
        shipped = load_experiment(presets.EXPERIMENTS / f"{name}.yaml")
        assert load_experiment(copy).space_path() == shipped.space_path()
        assert shipped.space_path().parent == presets.SEARCH_SPACES


def test_a_shipped_experiment_reads_its_data_from_the_working_folder(tmp_path, monkeypatch):
    """Found reading the change: the shipped files said `data_dir: ../data` (relative to themselves), which meant the
    repository's data/ until they moved into the package, and then a folder inside the package (in an installed copy,
    inside site-packages). They name no data folder now: ./data of the working folder, as `sslsearch pretrain`."""
    monkeypatch.chdir(tmp_path)
    for name in presets.experiment_names():
        data_dir = load_experiment(name).pretrain.data_dir
        if data_dir is not None:   # (digits is bundled)
            assert data_dir == str(tmp_path.resolve() / "data"), (name, data_dir)


def test_a_search_space_by_name_or_by_file(tmp_path):
    assert space_file("official_recipe", tmp_path) == presets.SEARCH_SPACES / "official_recipe.yaml"
    (tmp_path / "official_recipe").write_text("lr: {distribution: loguniform, low: 0.001, high: 0.1}\n")
    assert space_file("official_recipe", tmp_path) == tmp_path / "official_recipe"   # a file of that name first
    assert space_file("../x/barlow_hsic.yaml", tmp_path) == (tmp_path.parent / "x" / "barlow_hsic.yaml")
    with pytest.raises(InputError, match=r"search space file not found: .*nosuch \(give a YAML file, or a shipped space "
                                         r"by name: barlow_hsic, official_recipe\)"):
        load_search_space(space_file("nosuch", tmp_path))
    assert [p.name for p in load_search_space(space_file("barlow_hsic", tmp_path)).parameters]


@pytest.mark.slow
def test_an_installed_wheel_has_the_shipped_files(tmp_path):
    """A wheel built from the tree, installed into a folder of its own and imported from there (not from the
    checkout): the default experiment, its search space, the replay table and every shipped experiment load.
    Before the files moved into the package, an installed copy looked for them beside site-packages."""
    # Built from a copy of the tree without earlier builds' output: setuptools puts all of an existing build/lib into
    # a wheel, which would hide a package-data table that lost an entry.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "data"))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)]
    try:
        import setuptools  # noqa: F401 — present: build without fetching it again
        build.insert(5, "--no-build-isolation")
    except ImportError:
        pass
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "wheel").glob("sslsearch-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("sslsearch/presets/")}
    expected = {f"sslsearch/presets/{p.relative_to(presets.FOLDER)}" for p in presets.FOLDER.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= shipped, sorted(expected - shipped)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    probe = (
        "import json, sslsearch\n"
        "from sslsearch import presets\n"
        "from sslsearch.bench.replay_table import load_table\n"
        "from sslsearch.search.experiment import load_experiment\n"
        "from sslsearch.search.space import load_search_space\n"
        "default = load_experiment(None)\n"
        "arrays, meta = load_table(presets.REPLAY_TABLE)\n"
        "names = [load_experiment(n).name for n in presets.experiment_names()]\n"
        "print(json.dumps({'package': sslsearch.__file__, 'source': default.source, 'dataset': default.pretrain.dataset,\n"
        "                  'space': [p.name for p in load_search_space(default.space_path()).parameters],\n"
        "                  'table': sorted(arrays), 'names': names}))\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert Path(seen["package"]).is_relative_to(site) and Path(seen["source"]).is_relative_to(site)
    assert seen["dataset"] == "digits" and "loss" in seen["space"] and seen["table"]
    assert len(seen["names"]) == len(presets.experiment_names())
