"""Limits that depend on the data are checked before anything is written: a built-in data set that cannot be had (no
network) and an image folder too small for the batch or the validation split are one line and exit 2, with no sweep
folder, no MLflow store and no Ray. The data sets are small files in their real on-disk formats (fake_datasets)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fake_datasets import write_cifar10, write_image_folder
from sslsearch import cli
from sslsearch.method.config import PretrainConfig, folder_class_counts

REPO = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed once the socket is: a connection there is refused at once


@pytest.mark.slow
def test_a_builtin_data_set_that_cannot_be_downloaded_is_refused_before_anything_is_written(tmp_path):
    """Offline, as a proxy that refuses every connection makes it: the real download fails (fast), the sweep says so in
    one line, and neither the storage (sweep folder, mlflow.db) nor the data folder is left behind. (Before: the
    MLflow store was created and the sweep folder claimed first, ~18 s.)"""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "", "no_proxy": "", "TMPDIR": str(tmp_path),
           "RAY_TMPDIR": str(tmp_path), **{k: proxy for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}}
    data, runs = tmp_path / "data", tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "sslsearch.cli", "sweep", "--name", "t", "--storage", str(runs),
                           "--set", "pretrain.dataset=cifar10", "--set", f"pretrain.data_dir={data}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert re.search(r"cifar10 not found: expected .*cifar-10-batches-py.*download failed: .*(refused|Errno 111)", lines[0])
    assert not runs.exists() and not data.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("ray", "session"))]   # no Ray session


def test_a_builtin_data_set_on_disk_needs_no_download(tmp_path):
    config = PretrainConfig(dataset="cifar10", data_dir=str(tmp_path))
    assert not config.data_on_disk()
    write_cifar10(tmp_path)
    assert config.data_on_disk() and PretrainConfig(dataset="digits").data_on_disk()


@pytest.mark.parametrize("test_per_class", [3, 0])   # with a test/ folder, and without one (a test split is carved)
def test_an_image_folder_is_counted_as_its_reader_takes_it(tmp_path, test_per_class):
    from sslsearch.method.data import load_dataset

    root = write_image_folder(tmp_path / f"f{test_per_class}", per_class=10, test_per_class=test_per_class)
    (root / "train" / "cat" / "deeper").mkdir()
    write_image_folder(root / "train" / "cat" / "deeper", classes=("x",), per_class=2, test_per_class=0)  # any depth
    for fraction in (0.1, 0.5):
        config = PretrainConfig(dataset="folder", data_dir=str(root), val_fraction=fraction)
        loaded = load_dataset("folder", root, val_fraction=fraction)
        assert config.pretraining_images() == loaded.pretrain_images.shape[0]
    assert len(folder_class_counts(str(root))) == 3


@pytest.fixture
def nothing_starts(monkeypatch):
    import sslsearch.search.sweep as search

    monkeypatch.setattr(search, "connect_ray", lambda *a, **k: pytest.fail("Ray started"))
    monkeypatch.setattr(search, "prepare_dataset", lambda *a, **k: pytest.fail("data prepared"))


# 3 classes × 10 train images (a test/ folder beside): 24 pretraining images at val_fraction 0.2 (set here, not
# digits.yaml's), 3 at 0.9.
FOLDER_CASES = [
    (["--set", "pretrain.batch_size=25"], None, r"batch_size 25 exceeds the 24 pretraining images of folder at .*train"),
    (["--set", "pretrain.batch_size=4", "--set", "pretrain.val_fraction=0.9"], None,
     r"batch_size 4 exceeds the 3 pretraining images of folder .*val_fraction=0.9"),
    (["--set", "search.paired=false", "--set", "pretrain.batch_size=8"], "batch_size: {distribution: choice, values: [8, 64]}\n",
     r"batch_size=64 would fail every trial that draws it: batch_size 64 exceeds the 24 pretraining images"),
    (["--set", "pretrain.batch_size=8"], "<empty class>", r"empty.* holds no images"),
]


@pytest.mark.parametrize("extra, space, match", FOLDER_CASES, ids=["batch", "val_fraction", "space_batch", "empty_class"])
def test_an_image_folder_too_small_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, nothing_starts,
                                                                           extra, space, match):
    root = write_image_folder(tmp_path / "images", per_class=10, test_per_class=3)
    argv = ["sweep", "--storage", str(tmp_path / "runs"), "--set", "pretrain.dataset=folder",
            "--set", f"pretrain.data_dir={root}", "--set", "pretrain.epochs=2", "--set", "pretrain.val_fraction=0.2", *extra]
    if space == "<empty class>":
        (root / "train" / "empty").mkdir()
    elif space is not None:
        (tmp_path / "s.yaml").write_text(space)
        argv += ["--space", str(tmp_path / "s.yaml")]
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out, err
    assert re.search(match, err), err
    assert not (tmp_path / "runs").exists()
