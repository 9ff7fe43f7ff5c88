"""Data loading: each reader on fake files in the real on-disk formats, and the splits' guarantees."""

from __future__ import annotations

import os
import pickle
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils

from fake_datasets import (
    CIFAR10_CLASSES,
    STL10_CLASSES,
    asymmetric_image,
    stl10_unlabeled,
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_stl10,
    write_tiny_imagenet,
)
from sslsearch.errors import InputError
from sslsearch.method import data
from sslsearch.method.data import DATASETS, ImageData, load_dataset, prepare_dataset, stratified_split


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """One directory with fake cifar10, cifar100, stl10 and tiny_imagenet; read-only use."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root)
    write_cifar100(root)
    write_stl10(root)
    write_tiny_imagenet(root)
    return root


def image_set(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def check_splits(d: ImageData, size: int, num_classes: int) -> None:
    for images, labels in ((d.train_images, d.train_labels), (d.val_images, d.val_labels), (d.test_images, d.test_labels)):
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert images.shape[1:] == (3, size, size)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        assert 0 <= labels.min() and labels.max() < num_classes
    assert d.pretrain_images.dtype == torch.uint8 and d.pretrain_images.shape[1:] == (3, size, size)
    assert d.num_classes == num_classes and d.image_size == size
    # val is never pretrained on and never probed on; train is part of pretrain.
    val, pretrain, train = image_set(d.val_images), image_set(d.pretrain_images), image_set(d.train_images)
    assert len(val) == len(d.val_images) > 0
    assert not val & pretrain and not val & train
    assert train <= pretrain
    # every training class is represented in val (stratified)
    assert set(d.val_labels.tolist()) == set(d.train_labels.tolist())


# --- stratified_split -------------------------------------------------------------------------------

def test_stratified_split_sizes_and_properties():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 25 + [3] * 3 + [4] * 1)[torch.randperm(179)]
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert torch.equal(torch.sort(torch.cat([keep, held])).values, torch.arange(len(labels)))
    counts = Counter(labels[held].tolist())
    # round half up (2.5 → 3), at least one for a class of ≥2, none from a singleton
    assert counts == {0: 10, 1: 5, 2: 3, 3: 1}
    assert torch.equal(keep, keep.sort().values) and torch.equal(held, held.sort().values)
    again_keep, again_held = stratified_split(labels, 0.1, seed=3)
    assert torch.equal(again_keep, keep) and torch.equal(again_held, held)
    assert not torch.equal(stratified_split(labels, 0.1, seed=4)[1], held)


def test_stratified_split_proportions():
    labels = torch.tensor([0] * 400 + [1] * 200 + [2] * 100)
    keep, held = stratified_split(labels, 0.2, seed=0)
    val_share = torch.bincount(labels[held]).float() / len(held)
    train_share = torch.bincount(labels[keep]).float() / len(keep)
    assert torch.allclose(val_share, train_share, atol=0.01)


def test_stratified_split_zero_fraction_and_bad_arguments():
    keep, held = stratified_split(torch.tensor([0, 0, 1, 1]), 0.0, seed=0)
    assert keep.tolist() == [0, 1, 2, 3] and held.numel() == 0
    for fraction in (1.0, -0.1, float("nan"), True):
        with pytest.raises(InputError, match="0 <= fraction < 1"):
            stratified_split(torch.tensor([0, 1]), fraction, seed=0)
    with pytest.raises(InputError, match="1-D integer"):
        stratified_split(torch.tensor([0.0, 1.0]), 0.5, seed=0)


# --- digits (real data) ---------------------------------------------------------------------------------

def test_digits_real_data_with_fixed_test_split():
    d = load_dataset("digits", split_seed=0)
    check_splits(d, 32, 10)
    assert d.preset == "digits" and d.classes == tuple(str(i) for i in range(10))
    assert len(d.train_images) + len(d.val_images) + len(d.test_images) == 1797
    assert len(d.pretrain_images) == len(d.train_images)
    assert d.pretrain_images.max() == 255 and d.pretrain_images.min() == 0
    assert torch.equal(d.pretrain_images[:, 0], d.pretrain_images[:, 2])     # grey, replicated
    other = load_dataset("digits", split_seed=1)
    assert torch.equal(other.test_images, d.test_images)                    # test does not move with split_seed
    assert not torch.equal(other.val_labels, d.val_labels) or not torch.equal(other.val_images, d.val_images)
    same = load_dataset("digits", split_seed=0)
    assert torch.equal(same.val_images, d.val_images) and torch.equal(same.train_labels, d.train_labels)


def test_digits_without_val_and_at_another_size():
    d = load_dataset("digits", val_fraction=0.0, image_size=16)
    assert len(d.val_images) == 0 and d.image_size == 16
    assert len(d.train_images) + len(d.test_images) == 1797


# --- CIFAR ------------------------------------------------------------------------------------------------

def test_cifar10(fake_root):
    d = load_dataset("cifar10", fake_root, download=False)
    check_splits(d, 32, 10)
    assert d.preset == "cifar" and d.classes == CIFAR10_CLASSES
    assert (len(d.train_images), len(d.val_images), len(d.test_images)) == (50, 10, 20)
    assert torch.equal(d.test_images[0], torch.from_numpy(asymmetric_image(32)))   # right way up, right channels


def test_cifar100(fake_root):
    d = load_dataset("cifar100", fake_root, download=False)
    check_splits(d, 32, 100)
    assert d.classes[:2] == ("class_00", "class_01") and len(d.test_images) == 100
    assert len(d.val_images) == 100              # three per class: one each goes to val
    assert torch.equal(d.test_images[0], torch.from_numpy(asymmetric_image(32)))


def test_cifar_split_is_seeded(fake_root):
    a, b, c = (load_dataset("cifar10", fake_root, download=False, split_seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.pretrain_images, b.pretrain_images)
    assert not torch.equal(a.val_images, c.val_images)
    assert image_set(a.train_images) | image_set(a.val_images) == image_set(c.train_images) | image_set(c.val_images)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_repacked_by_python3_loads(tmp_path, fake_root, protocol):
    # The fixtures mimic Python 2's pickles, as in the official files; re-packed copies must load too.
    write_cifar10(tmp_path, py2=False)
    base = tmp_path / "cifar-10-batches-py"
    batch = pickle.loads((base / "test_batch").read_bytes(), encoding="bytes")
    (base / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    repacked = load_dataset("cifar10", tmp_path, download=False)
    official = load_dataset("cifar10", fake_root, download=False)
    assert torch.equal(repacked.pretrain_images, official.pretrain_images)
    assert torch.equal(repacked.test_images, official.test_images) and repacked.classes == official.classes


def test_corrupt_cifar_batch_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(InputError, match="data_batch_3") as error:
        load_dataset("cifar10", tmp_path, download=False)
    assert "\n" not in str(error.value)


def test_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}, protocol=2))
    with pytest.raises(InputError, match="refusing to load"):
        load_dataset("cifar10", tmp_path, download=False)


# --- STL-10 ---------------------------------------------------------------------------------------------------

def test_stl10(fake_root):
    d = load_dataset("stl10", fake_root, download=False)
    check_splits(d, 96, 10)
    assert d.preset == "stl10" and d.classes == STL10_CLASSES
    assert (len(d.train_images), len(d.val_images), len(d.test_images)) == (30, 10, 20)    # 4 per class: 1 each to val
    assert torch.equal(d.test_images[0], torch.from_numpy(asymmetric_image(96)))   # column-major undone
    # pretrain = train minus val, then all of unlabeled
    assert len(d.pretrain_images) == 30 + 30
    assert torch.equal(d.pretrain_images[30:], torch.from_numpy(np.ascontiguousarray(stl10_unlabeled(fake_root))))
    assert d.train_images.data_ptr() == d.pretrain_images.data_ptr()              # a view, not a copy


def test_truncated_stl10_names_the_file(tmp_path):
    write_stl10(tmp_path)
    images = tmp_path / "stl10_binary" / "train_X.bin"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(InputError, match="train_X.bin is truncated"):
        load_dataset("stl10", tmp_path, download=False)


def test_stl10_chunked_reading_matches(fake_root):
    out = torch.empty((30, 3, 96, 96), dtype=torch.uint8)
    data._read_stl_images(fake_root / "stl10_binary" / "unlabeled_X.bin", out, chunk=7)
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(stl10_unlabeled(fake_root))))


# --- Tiny ImageNet ------------------------------------------------------------------------------------------------

def test_tiny_imagenet(fake_root):
    d = load_dataset("tiny_imagenet", fake_root, download=False)
    check_splits(d, 64, 3)
    assert d.preset == "tiny_imagenet" and d.classes == ("thing 0", "thing 1", "thing 2")
    assert (len(d.train_images) + len(d.val_images), len(d.test_images)) == (24, 9)
    assert d.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the grayscale JPEGs came out as RGB with equal channels
    grey = [img for img in d.pretrain_images if torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])]
    assert len(grey) >= 1


@pytest.mark.parametrize("layout", ["per_class", "per_class_flat"])
def test_tiny_imagenet_val_layouts_agree(fake_root, tmp_path, layout):
    write_tiny_imagenet(tmp_path, layout=layout)
    raw = load_dataset("tiny_imagenet", fake_root, download=False)
    other = load_dataset("tiny_imagenet", tmp_path, download=False)
    assert torch.equal(raw.test_images, other.test_images) and torch.equal(raw.test_labels, other.test_labels)


def test_decoded_folders_are_cached(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path)
    first = load_dataset("tiny_imagenet", tmp_path, download=False)
    cache_files = list((tmp_path / data.CACHE_DIR_NAME).iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".pt"
    torch.load(cache_files[0], weights_only=True)

    def must_not_decode(path, size):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data, "_decode_image", must_not_decode)
    second = load_dataset("tiny_imagenet", tmp_path, download=False)
    assert torch.equal(first.pretrain_images, second.pretrain_images) and torch.equal(first.test_images, second.test_images)

    # Changing one file invalidates the cache; the stale cache file is removed.
    decoded = []
    monkeypatch.setattr(data, "_decode_image", lambda path, size: decoded.append(path) or np.zeros((3, size, size), np.uint8))
    changed = tmp_path / "tiny-imagenet-200" / "train" / "n01443537" / "images" / "n01443537_3.JPEG"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_dataset("tiny_imagenet", tmp_path, download=False)
    assert len(decoded) == 24 + 9
    remaining = list((tmp_path / data.CACHE_DIR_NAME).iterdir())
    assert len(remaining) == 1 and remaining != cache_files


def test_failed_cache_write_leaves_no_file(tmp_path, monkeypatch):
    write_image_folder(tmp_path, per_class=4, test_per_class=0)

    def disk_full(obj, f):
        f.write(b"half a cache")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match="could not write the decoded-image cache"):
        d = load_dataset("folder", tmp_path, download=False)
    assert len(d.pretrain_images) > 0
    assert list((tmp_path / data.CACHE_DIR_NAME).iterdir()) == []


def test_corrupt_image_names_the_file(tmp_path):
    write_tiny_imagenet(tmp_path)
    broken = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_4.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(InputError, match="val_4.JPEG"):
        load_dataset("tiny_imagenet", tmp_path, download=False)


# --- image folders ---------------------------------------------------------------------------------------

def test_folder_with_test_split(tmp_path):
    write_image_folder(tmp_path)
    d = load_dataset("folder", tmp_path, download=False)
    check_splits(d, 64, 3)
    assert d.classes == ("cat", "dog", "frog") and d.preset == "tiny_imagenet"
    assert (len(d.train_images) + len(d.val_images), len(d.test_images)) == (30, 9)   # notes.txt, .hidden.png skipped


def test_folder_without_test_carves_a_fixed_one(tmp_path):
    write_image_folder(tmp_path, test_per_class=0)
    a = load_dataset("folder", tmp_path, image_size=32, split_seed=0)
    b = load_dataset("folder", tmp_path, image_size=32, split_seed=1)
    check_splits(a, 32, 3)
    assert a.preset == "cifar" and len(a.test_images) == 6                          # 20 % of 10 per class
    assert torch.equal(a.test_images, b.test_images)
    assert not image_set(a.test_images) & image_set(a.pretrain_images)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match=f"expected {tmp_path}/train/<class>/"):
        load_dataset("folder", tmp_path)
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no images; accepted suffixes: .jpg"):
        load_dataset("folder", tmp_path)


# --- argument and missing-file errors --------------------------------------------------------------------------

def test_unknown_name_and_bad_arguments():
    with pytest.raises(InputError, match="unknown data set 'mnist'; accepted: " + ", ".join(DATASETS)):
        load_dataset("mnist")
    with pytest.raises(InputError, match="0 <= val_fraction < 1"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(InputError, match="image_size applies to digits, tiny_imagenet and folder"):
        load_dataset("cifar10", image_size=64)
    with pytest.raises(InputError, match="unknown device"):
        load_dataset("digits", device="gpu0")


EXPECTED = {"cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
            "cifar100": "cifar-100-python/{train,test,meta}",
            "stl10": "stl10_binary/{train_X.bin,",
            "tiny_imagenet": "tiny-imagenet-200/{wnids.txt,"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_files_without_download(tmp_path, name):
    with pytest.raises(InputError) as error:
        load_dataset(name, tmp_path, download=False)
    message = str(error.value)
    assert message.startswith(f"{name} not found: expected {tmp_path}/{EXPECTED[name]}")
    assert "download=False" in message and "\n" not in message


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(url, download_root, extract_root=None, md5=None, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution\nsecond line")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(InputError) as error:
        load_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert f"expected {tmp_path}/cifar-10-batches-py/" in message
    assert "download failed: URLError" in message and "\n" not in message
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_download_moves_a_complete_tree_into_place(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, extract_root=None, md5=None, **kwargs):
        calls.append((url, md5))
        write_stl10(extract_root)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    d = load_dataset("stl10", tmp_path)
    assert calls == [("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb")]
    assert len(d.test_images) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stl10_binary"]        # staging folder cleaned up
    load_dataset("stl10", tmp_path)
    assert len(calls) == 1                                                       # present now: no second download


def test_download_completes_a_partial_tree(tmp_path, monkeypatch):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"left over from an earlier, interrupted copy")
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive",
                        lambda url, download_root, extract_root=None, md5=None, **kw: write_cifar100(extract_root))
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-100-python"]


def test_incomplete_archive_is_not_put_in_place(tmp_path, monkeypatch):
    def incomplete(url, download_root, extract_root=None, md5=None, **kwargs):
        write_cifar10(extract_root)
        (Path(extract_root) / "cifar-10-batches-py" / "test_batch").unlink()

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", incomplete)
    with pytest.raises(InputError, match="download failed: .*lacks cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


# --- failed downloads leave the file system as it was ----------------------------------------------

def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root, with the bytes of each file (None for a folder)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


def offline(monkeypatch):
    # The real torchvision code runs (and creates its download folder) until it reaches the network.
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def bad_archive(monkeypatch):
    # A "downloaded" archive that cannot be extracted (truncated file, wrong content).
    def garbage(url, root, filename=None, md5=None, **kwargs):
        os.makedirs(root, exist_ok=True)
        Path(root, filename or os.path.basename(url)).write_bytes(b"not an archive")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", garbage)


@pytest.mark.parametrize("failure", [offline, bad_archive])
@pytest.mark.parametrize("state", ["missing", "empty", "user file"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_failed_download_leaves_data_dir_as_it_was(tmp_path, monkeypatch, name, state, failure):
    data_dir = tmp_path / "new" / "data" if state == "missing" else tmp_path / "data"
    if state != "missing":
        data_dir.mkdir()
    if state == "user file":
        (data_dir / "notes.txt").write_text("mine")
        (data_dir / "mine").mkdir()
    before = snapshot(tmp_path)
    failure(monkeypatch)
    with pytest.raises(InputError, match=f"^{name} not found: .*; download failed: "):
        load_dataset(name, data_dir)
    assert snapshot(tmp_path) == before


def test_failed_download_keeps_an_earlier_archive(tmp_path, monkeypatch):
    # An interrupted earlier run left its archive in the staging folder: a later failure keeps it
    # (the next run checks its md5 and reuses it) and drops only the half extraction.
    staging = tmp_path / ".sslsearch-download-cifar-10-batches-py"
    (staging / "extracted" / "cifar-10-batches-py").mkdir(parents=True)
    (staging / "extracted" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    (staging / "cifar-10-python.tar.gz").write_bytes(b"partial archive")
    offline(monkeypatch)
    with pytest.raises(InputError, match="download failed: URLError"):
        load_dataset("cifar10", tmp_path)
    assert snapshot(tmp_path) == {staging.name: None, f"{staging.name}/cifar-10-python.tar.gz": b"partial archive"}


def test_failed_download_removes_an_empty_staging_folder(tmp_path, monkeypatch):
    (tmp_path / ".sslsearch-download-stl10_binary").mkdir()     # left behind by an older version
    offline(monkeypatch)
    with pytest.raises(InputError, match="download failed: URLError"):
        load_dataset("stl10", tmp_path)
    assert snapshot(tmp_path) == {}


# --- moving between devices --------------------------------------------------------------------------------

def test_to_moves_every_tensor_and_keeps_train_a_view(fake_root):
    d = load_dataset("cifar10", fake_root, download=False)
    moved = d.to("meta")     # a real device change that needs no GPU
    tensors = [getattr(moved, f) for f in ("pretrain_images", "train_images", "train_labels", "val_images",
                                           "val_labels", "test_images", "test_labels")]
    assert all(t.device.type == "meta" for t in tensors) and d.pretrain_images.device.type == "cpu"
    assert moved.train_images.shape == d.train_images.shape and moved.classes == d.classes
    same = d.to("cpu")
    assert same is not d and same.train_images.data_ptr() == same.pretrain_images.data_ptr()
    assert "pretrain=50, train=50, val=10, test=20" in repr(d)


def test_device_argument_places_every_tensor():
    d = load_dataset("digits", device="meta")
    assert d.pretrain_images.device.type == d.val_labels.device.type == d.test_images.device.type == "meta"


def test_prepare_dataset_checks_presence_without_decoding(tmp_path, monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("prepare_dataset decoded images")

    monkeypatch.setattr(data, "_read_cifar_split", must_not_decode)
    write_cifar10(tmp_path / "sets")
    prepare_dataset("cifar10", tmp_path / "sets")
    prepare_dataset("digits")
    with pytest.raises(InputError, match="cifar100"):
        prepare_dataset("cifar100", tmp_path / "sets", download=False)
    with pytest.raises(InputError, match="folder data set not found"):
        prepare_dataset("folder", tmp_path / "none")
    with pytest.raises(InputError, match="unknown data set 'mnist'"):
        prepare_dataset("mnist")
    assert not (tmp_path / "none").exists()
