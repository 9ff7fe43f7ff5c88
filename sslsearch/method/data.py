"""Image data sets, loaded once into uint8 tensors (N×3×H×W) that live on the training device.

Every data set is split four ways: `pretrain` (self-supervised training), `train` (probe fit),
`val` (the search objective; carved, seeded and stratified, from the labelled training set and
never pretrained on, so it stands in faithfully for unseen data) and `test` (reported once).

The readers parse the official on-disk formats themselves instead of using torchvision's
dataset classes: those md5-check every file (rejecting test fixtures and re-packed copies) and
yield one PIL image at a time. torchvision still downloads and extracts the archives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sslsearch.errors import InputError, error_line
from sslsearch.method.config import (  # the names live with the config, which imports no torch
    DATASET_FILES,
    DATASETS,
    DEFAULT_DATA_DIR,
    IMAGE_SUFFIXES,
    TEST_FRACTION,
    PretrainConfig,
    class_folders,
    held_out_count,
    image_files,
)

TEST_SPLIT_SEED = 0            # TEST_FRACTION's split never moves with split_seed, so test numbers stay comparable
DIGITS_IMAGE_SIZE = 32         # 8×8 digits upscaled so the CIFAR-sized backbones and crops apply
FOLDER_IMAGE_SIZE = 64
CACHE_DIR_NAME = ".sslsearch-cache"
CACHE_FORMAT = 1               # bump when the decoded layout changes: old cache files are then ignored

_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE
_NATIVE_SIZES = {"cifar10": 32, "cifar100": 32, "stl10": _STL_SIDE}
_SUFFIX_GLOB = "*.{" + ",".join(s.lstrip(".") for s in IMAGE_SUFFIXES) + "}"


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """A data set's four splits as uint8 N×3×H×W image tensors and int64 labels, on one device."""

    name: str
    preset: str                      # key of sslsearch.method.augment.PRESETS
    classes: tuple[str, ...]
    pretrain_images: torch.Tensor    # labelled train minus val (+ stl10's unlabeled); never val or test
    # train_images is the first len(train) rows of pretrain_images (a view, not a copy: saves up to
    # 1.2 GB of device memory for Tiny ImageNet), so neither may be modified in place.
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor         # empty when val_fraction=0: a search then has nothing to rank on
    val_labels: torch.Tensor
    test_images: torch.Tensor        # for final reporting only
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Side in pixels of the stored (square) images."""
        return int(self.pretrain_images.shape[-1])

    def to(self, device: str | torch.device) -> ImageData:
        """Return a copy with every tensor on `device` (train_images stays a view of pretrain_images)."""
        pretrain = self.pretrain_images.to(device)
        if _is_prefix_view(self.train_images, self.pretrain_images):
            train = pretrain[: len(self.train_images)]
        else:
            train = self.train_images.to(device)
        others = ("train_labels", "val_images", "val_labels", "test_images", "test_labels")
        moved = {f: getattr(self, f).to(device) for f in others}
        return dataclasses.replace(self, pretrain_images=pretrain, train_images=train, **moved)

    def __repr__(self) -> str:
        # The generated repr would print every pixel.
        return (f"ImageData({self.name!r}, preset={self.preset!r}, classes={self.num_classes}, image_size={self.image_size}, "
                f"pretrain={len(self.pretrain_images)}, train={len(self.train_images)}, val={len(self.val_images)}, "
                f"test={len(self.test_images)}, device={self.pretrain_images.device})")


def load_run_data(config: PretrainConfig) -> ImageData:
    """The data set with a pretraining run's split settings (on the CPU)."""
    return load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                        split_seed=config.split_seed, image_size=config.image_size)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.1,
                 split_seed: int = 0, download: bool = True, image_size: int | None = None,
                 device: str | torch.device = "cpu") -> ImageData:
    """Load data set `name` (one of DATASETS) from `data_dir` (default ./data; ignored by digits) onto `device`."""
    root = _dataset_root(name, data_dir)
    _check_fraction("val_fraction", val_fraction)
    _check_seed("split_seed", split_seed)
    image_size = _check_image_size(name, image_size)
    device = _check_device(device)
    source = _LOADERS[name](root, download, image_size)
    return _assemble(name, source, val_fraction, split_seed, device)


def prepare_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> None:
    """Make sure data set `name` is on disk in `data_dir`, downloading it when allowed, without decoding it.

    A sweep calls this once on the driver before any trial starts: trials then neither race each
    other to download the same archive nor fail one by one on a data set that is not there.
    """
    root = _dataset_root(name, data_dir)
    if name in _ARCHIVES:
        _ensure_present(name, root, _ARCHIVES[name], download)
    elif name == "folder":
        _folder_classes(root)


def _dataset_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    if name not in DATASETS:
        raise InputError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
    return Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser().resolve()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split into sorted (keep_idx, held_out_idx); see held_out_count for the sizes."""
    _check_fraction("fraction", fraction)
    _check_seed("seed", seed)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    cpu_labels = labels.detach().to("cpu", torch.int64)
    generator = torch.Generator().manual_seed(seed)
    held_out = [torch.empty(0, dtype=torch.int64)]
    for cls in torch.unique(cpu_labels).tolist():      # sorted, so the draw order is fixed
        members = (cpu_labels == cls).nonzero().flatten()
        n = held_out_count(len(members), fraction)
        if n:
            held_out.append(members[torch.randperm(len(members), generator=generator)[:n]])
    held = torch.cat(held_out).sort().values
    keep_mask = torch.ones(len(cpu_labels), dtype=torch.bool)
    keep_mask[held] = False
    return keep_mask.nonzero().flatten().to(labels.device), held.to(labels.device)


# --- assembling the splits --------------------------------------------------------------------

@dataclass
class _Source:
    """What a reader hands back: the labelled train and test splits, plus optional unlabelled images."""

    preset: str
    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    unlabeled_count: int = 0
    read_unlabeled: Callable[[torch.Tensor], None] | None = None   # fills an (unlabeled_count, 3, H, W) buffer


def _assemble(name: str, source: _Source, val_fraction: float, split_seed: int, device: torch.device) -> ImageData:
    keep, val = stratified_split(source.train_labels, val_fraction, split_seed)
    # pretrain = [train minus val | unlabeled] in one buffer, filled in place: stl10's 2.8 GB of
    # unlabeled images are never held twice, and train_images is a free view of its first rows.
    shape = (len(keep) + source.unlabeled_count, *source.train_images.shape[1:])
    pretrain = torch.empty(shape, dtype=torch.uint8)
    torch.index_select(source.train_images, 0, keep, out=pretrain[: len(keep)])
    if source.unlabeled_count:
        source.read_unlabeled(pretrain[len(keep):])
    pretrain = pretrain.to(device)
    return ImageData(
        name=name, preset=source.preset, classes=source.classes,
        pretrain_images=pretrain, train_images=pretrain[: len(keep)],
        train_labels=source.train_labels[keep].to(device),
        val_images=source.train_images[val].to(device), val_labels=source.train_labels[val].to(device),
        test_images=source.test_images.contiguous().to(device), test_labels=source.test_labels.to(device),
    )


def _is_prefix_view(part: torch.Tensor, whole: torch.Tensor) -> bool:
    return (part.numel() > 0 and part.device == whole.device and part.data_ptr() == whole.data_ptr()
            and part.shape[1:] == whole.shape[1:] and len(part) <= len(whole)
            and part.is_contiguous() and whole.is_contiguous())


def _carve_test(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    train, test = stratified_split(labels, TEST_FRACTION, TEST_SPLIT_SEED)
    return images[train], labels[train], images[test], labels[test]


# --- argument checks --------------------------------------------------------------------------

def _check_fraction(what: str, fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InputError(f"{what} must be a number with 0 <= {what} < 1, got {fraction!r}")


def _check_seed(what: str, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{what} must be a non-negative integer, got {seed!r}")


def _check_image_size(name: str, image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InputError(f"image_size must be a positive integer, got {image_size!r}")
    # Only the data sets that are resampled anyway (decoded from files, or upscaled) can change size.
    native = _NATIVE_SIZES.get(name)
    if native is not None and image_size != native:
        raise InputError(f"image_size={image_size} is not accepted for {name}, whose images are stored at {native} px; "
                         "image_size applies to digits, tiny_imagenet and folder")
    return image_size


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; accepted: 'cpu', 'cuda', 'cuda:<index>', 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but this machine has no CUDA device; use device='cpu'")
    return device


# --- downloads ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Archive:
    url: str
    md5: str
    folder: str                  # top-level folder inside the archive and inside data_dir
    files: tuple[str, ...]       # must all exist under data_dir/folder for the data set to count as present
    layout: str                  # what the user should see after data_dir/folder/


_CIFAR10 = _Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                    *DATASET_FILES["cifar10"], "{data_batch_1..5,test_batch,batches.meta} (python pickle batches)")
_CIFAR100 = _Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                     *DATASET_FILES["cifar100"], "{train,test,meta} (python pickles)")
_STL10 = _Archive("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
                  *DATASET_FILES["stl10"],
                  "{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin,class_names.txt} (STL-10 binary)")
_TINY_IMAGENET = _Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
                          *DATASET_FILES["tiny_imagenet"],
                          "{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG + val/val_annotations.txt "
                          "or val/<wnid>/[images/]*.JPEG}")
_ARCHIVES = {"cifar10": _CIFAR10, "cifar100": _CIFAR100, "stl10": _STL10, "tiny_imagenet": _TINY_IMAGENET}


def _ensure_present(name: str, root: Path, archive: _Archive, download: bool) -> Path:
    base = root / archive.folder
    if _first_missing(base, archive.files) is None:
        return base
    reason = "downloading is disabled (download=False)"
    if download:
        created = _missing_dirs(root)   # what the download would create; a failed one must not leave it behind
        try:
            _download(root, archive)
        except Exception as exc:    # network, md5, disk: the user needs one line, not a traceback
            _remove_empty_dirs(created)
            reason = f"download failed: {error_line(exc)}"
        else:
            return base
    raise InputError(f"{name} not found: expected {base}/{archive.layout}; {reason}")


def _download(root: Path, archive: _Archive) -> None:
    # Download and extract into a hidden staging folder, check that every expected file is there,
    # and only then move the tree into place, so no half-extracted tree ever looks complete. A failed
    # download removes the staging folder it created; one left by an interrupted run (whose md5-checked
    # archive the next run reuses) keeps its archive and loses only the extraction, or goes if empty.
    from torchvision.datasets.utils import download_and_extract_archive  # lazy: importing torchvision takes ~1.4 s

    staging = root / f".sslsearch-download-{archive.folder}"
    extracted = staging / "extracted"
    staged_before = staging.exists()
    try:
        shutil.rmtree(extracted, ignore_errors=True)
        download_and_extract_archive(archive.url, download_root=staging, extract_root=extracted, md5=archive.md5)
        missing = _first_missing(extracted / archive.folder, archive.files)
        if missing is not None:
            raise RuntimeError(f"the archive from {archive.url} lacks {archive.folder}/{missing}")
        _move_tree(extracted / archive.folder, root / archive.folder)
    except Exception:
        shutil.rmtree(extracted if staged_before else staging, ignore_errors=True)
        _remove_empty_dirs([staging])
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty_dirs(paths: list[Path]) -> None:
    # rmdir only removes empty folders, so nothing anyone put there in the meantime is lost.
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            return


def _first_missing(base: Path, files: tuple[str, ...]) -> str | None:
    return next((f for f in files if not (base / f).exists()), None)


def _move_tree(src: Path, dst: Path) -> None:
    if not dst.exists():
        os.replace(src, dst)     # one atomic rename (staging lives on the same file system)
        return
    # A partial copy is already there: replace file by file, each rename atomic.
    for path in sorted(p for p in src.rglob("*") if not p.is_dir()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


# --- digits ---------------------------------------------------------------------------------------

def _load_digits(root: Path, download: bool, image_size: int | None) -> _Source:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is needed only for this bundled set

    bunch = load_digits()
    size = image_size or DIGITS_IMAGE_SIZE
    pixels = torch.from_numpy(bunch.images).float()[:, None] * (255.0 / 16.0)   # 0..16 → 0..255
    # Bilinear upsampling (align_corners=False; antialiasing only matters when shrinking), rounded
    # to uint8 once at the end rather than before and after, and replicated to 3 channels.
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = pixels.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    classes = tuple(str(c) for c in bunch.target_names)
    # No official test split: hold out a fixed one, independent of split_seed.
    return _Source("digits", classes, *_carve_test(images, labels))


# --- CIFAR ------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only, so a data file cannot run code when loaded."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
                *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # encoding="bytes" is what the CIFAR page prescribes for its Python 2 pickles: keys come back as bytes.
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:    # truncation alone can raise half a dozen exception types
        raise InputError(f"{path} is not a readable python pickle ({error_line(exc)}); delete it to download it again") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, expected a dict as in the official CIFAR files")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_split(base: Path, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for file in files:
        batch = _read_pickle(base / file)
        data, batch_labels = np.asarray(batch.get("data")), batch.get(label_key)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or batch_labels is None \
                or len(batch_labels) != len(data):
            raise InputError(f"{base / file} is not a CIFAR batch: "
                             f"expected b'data' (N×3072 uint8) and b'{label_key}' (N labels)")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))    # rows are R, G, B planes, each row-major
        labels.append(torch.as_tensor(np.asarray(batch_labels, dtype=np.int64)))
    return torch.cat(images), torch.cat(labels)


def _read_names(path: Path, key: str) -> tuple[str, ...]:
    names = _read_pickle(path).get(key)
    if not isinstance(names, list) or not names:
        raise InputError(f"{path} lacks b'{key}', the list of class names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _check_labels(labels: torch.Tensor, num_classes: int, where: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{where} has labels outside 0..{num_classes - 1} (the number of class names)")


def _load_cifar(name: str, archive: _Archive, train: tuple[str, ...], test: tuple[str, ...], meta: str,
                label_key: str, names_key: str, root: Path, download: bool) -> _Source:
    base = _ensure_present(name, root, archive, download)
    classes = _read_names(base / meta, names_key)
    train_images, train_labels = _read_cifar_split(base, train, label_key)
    test_images, test_labels = _read_cifar_split(base, test, label_key)
    _check_labels(train_labels, len(classes), base)
    _check_labels(test_labels, len(classes), base)
    return _Source("cifar", classes, train_images, train_labels, test_images, test_labels)


def _load_cifar10(root: Path, download: bool, image_size: int | None) -> _Source:
    return _load_cifar("cifar10", _CIFAR10, _CIFAR10.files[:5], ("test_batch",), "batches.meta", "labels", "label_names",
                       root, download)


def _load_cifar100(root: Path, download: bool, image_size: int | None) -> _Source:
    return _load_cifar("cifar100", _CIFAR100, ("train",), ("test",), "meta", "fine_labels", "fine_label_names", root, download)


# --- STL-10 -----------------------------------------------------------------------------------------

def _stl_count(path: Path) -> int:
    size = path.stat().st_size
    if size % _STL_IMAGE_BYTES:
        raise InputError(f"{path} is truncated: {size} bytes is not a whole number of 3×96×96 images")
    return size // _STL_IMAGE_BYTES


def _read_stl_images(path: Path, out: torch.Tensor, chunk: int = 1024) -> None:
    # Read in chunks through one reusable buffer: the 2.8 GB unlabeled file goes straight into
    # `out` without a second full-size copy.
    buffer = np.empty((min(chunk, len(out)), 3, _STL_SIDE, _STL_SIDE), dtype=np.uint8)
    with open(path, "rb") as f:
        for start in range(0, len(out), chunk):
            view = buffer[: min(chunk, len(out) - start)]
            if f.readinto(memoryview(view).cast("B")) != view.nbytes:
                raise InputError(f"{path} is truncated: it ends before image {start + len(view)}")
            # STL-10 stores each channel column-major (MATLAB order): swap the last two axes.
            out[start:start + len(view)].copy_(torch.from_numpy(view).transpose(2, 3))


def _read_stl_split(base: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = _stl_count(base / f"{split}_X.bin")
    labels_path = base / f"{split}_y.bin"
    labels = torch.from_numpy(np.fromfile(labels_path, dtype=np.uint8).astype(np.int64)) - 1   # stored as 1..10
    if len(labels) != n:
        raise InputError(f"{labels_path} holds {len(labels)} labels but {base / f'{split}_X.bin'} holds {n} images")
    _check_labels(labels, num_classes, labels_path)
    images = torch.empty((n, 3, _STL_SIDE, _STL_SIDE), dtype=torch.uint8)
    _read_stl_images(base / f"{split}_X.bin", images)
    return images, labels


def _load_stl10(root: Path, download: bool, image_size: int | None) -> _Source:
    base = _ensure_present("stl10", root, _STL10, download)
    classes = tuple(line.strip() for line in (base / "class_names.txt").read_text().splitlines() if line.strip())
    train_images, train_labels = _read_stl_split(base, "train", len(classes))
    test_images, test_labels = _read_stl_split(base, "test", len(classes))
    unlabeled = base / "unlabeled_X.bin"
    # As in the reference: pretrain on train + unlabeled (here train minus val), probe on train, test on test.
    return _Source("stl10", classes, train_images, train_labels, test_images, test_labels,
                   unlabeled_count=_stl_count(unlabeled), read_unlabeled=lambda out: _read_stl_images(unlabeled, out))


# --- image folders: Tiny ImageNet and any folder of class subfolders ----------------------------


def _load_tiny_imagenet(root: Path, download: bool, image_size: int | None) -> _Source:
    base = _ensure_present("tiny_imagenet", root, _TINY_IMAGENET, download)
    wnids = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train = [(path, index[w]) for w in wnids for path in image_files(base / "train" / w)]
    missing = [w for w in wnids if not (base / "train" / w).is_dir()]
    if missing or not train:
        raise InputError(f"tiny_imagenet: expected {base}/train/<wnid>/images/*.JPEG for every wnid in wnids.txt, "
                         f"missing {missing[0] if missing else 'all images'}")
    test = _tiny_imagenet_val(base, index)
    decoded = _decode_cached(root, "tiny_imagenet", {"train": train, "test": test}, image_size or 64)
    return _Source("tiny_imagenet", _tiny_imagenet_names(base, wnids), *decoded["train"], *decoded["test"])


def _tiny_imagenet_val(base: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    # The official test split has no labels: val serves as test. Both layouts are put in one
    # canonical order, (class, file name), so they give identical tensors.
    val = base / "val"
    annotations = val / "val_annotations.txt"
    if (val / "images").is_dir():      # the layout of the download
        if not annotations.is_file():
            raise InputError(f"tiny_imagenet: {val}/images exists but {annotations} (file<TAB>wnid<TAB>box) is missing")
        files = []
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index or not (val / "images" / fields[0]).is_file():
                raise InputError(f"{annotations} line {number}: expected '<file in val/images><TAB><wnid from wnids.txt>...', "
                                 f"got {line.strip()[:80]!r}")
            files.append((val / "images" / fields[0], index[fields[1]]))
    else:                              # re-organised per class: val/<wnid>/[images/]*.JPEG
        files = [(path, i) for w, i in index.items() if (val / w).is_dir() for path in image_files(val / w)]
    if not files:
        raise InputError(f"tiny_imagenet: no validation images; expected {val}/images/*.JPEG + {annotations} "
                         f"or {val}/<wnid>/[images/]*.JPEG")
    return sorted(files, key=lambda item: (item[1], item[0].name, str(item[0])))


def _tiny_imagenet_names(base: Path, wnids: list[str]) -> tuple[str, ...]:
    # words.txt maps wnid → "name, synonym, ..."; keep the first name, fall back to the wnid,
    # and disambiguate repeated names with their wnid.
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return tuple(n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids))


def _folder_classes(root: Path) -> list[Path]:
    """The class folders of root/train; InputError naming the layout when there are none."""
    train_dir = root / "train"
    class_dirs = class_folders(train_dir) if train_dir.is_dir() else []
    if not class_dirs:
        raise InputError(f"folder data set not found: expected {root}/train/<class>/{_SUFFIX_GLOB} "
                         f"and optionally {root}/test/<class>/{_SUFFIX_GLOB}")
    return class_dirs


def _load_folder(root: Path, download: bool, image_size: int | None) -> _Source:
    size = image_size or FOLDER_IMAGE_SIZE
    train_dir, test_dir = root / "train", root / "test"
    class_dirs = _folder_classes(root)
    classes = tuple(d.name for d in class_dirs)
    train = []
    for label, directory in enumerate(class_dirs):
        images = image_files(directory)
        if not images:
            raise InputError(f"{directory} holds no images; accepted suffixes: {', '.join(IMAGE_SUFFIXES)}")
        train += [(path, label) for path in images]
    splits = {"train": train}
    if test_dir.is_dir():
        unknown = [d.name for d in class_folders(test_dir) if d.name not in classes]
        if unknown:
            raise InputError(f"{test_dir / unknown[0]} is not a class of {train_dir}; test classes must be train classes")
        splits["test"] = [(path, label) for label, c in enumerate(classes) if (test_dir / c).is_dir()
                          for path in image_files(test_dir / c)]
    decoded = _decode_cached(root, "folder", splits, size)
    if "test" in decoded:
        parts = (*decoded["train"], *decoded["test"])
    else:
        parts = _carve_test(*decoded["train"])
    return _Source("cifar" if size <= 32 else "tiny_imagenet", classes, *parts)


def _decode_cached(root: Path, tag: str, splits: dict[str, list[tuple[Path, int]]],
                   size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # The key covers everything the decoded tensors depend on: each file's path, size, mtime and
    # label (hence wnids.txt, val_annotations.txt, the class folders), the image size and this format.
    listing = [[split, path.relative_to(root).as_posix(), label, *_size_and_mtime(path)]
               for split, files in splits.items() for path, label in files]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, tag, size, listing]).encode()).hexdigest()[:20]
    prefix = f"{tag}-{size}px-"
    cache_file = root / CACHE_DIR_NAME / f"{prefix}{key}.pt"
    cached = _read_cache(cache_file, list(splits))
    if cached is not None:
        return cached
    decoded = {split: (_decode_images([p for p, _ in files], size),
                       torch.tensor([label for _, label in files], dtype=torch.int64))
               for split, files in splits.items()}
    _write_cache(cache_file, prefix, decoded)
    return decoded


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _read_cache(path: Path, splits: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return {split: (saved[f"{split}_images"], saved[f"{split}_labels"]) for split in splits}
    except Exception:    # unreadable or from another layout: decode again and overwrite it
        return None


def _write_cache(path: Path, prefix: str, decoded: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    payload = {"format": CACHE_FORMAT}
    for split, (images, labels) in decoded.items():
        payload[f"{split}_images"], payload[f"{split}_labels"] = images, labels
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file + fsync + os.replace: an interrupted run leaves the old cache or none, never half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        for stale in path.parent.glob(f"{prefix}*.pt"):   # same data set and size, older files: free the disk
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:    # a read-only data dir costs speed next time, not this run
        warnings.warn(f"could not write the decoded-image cache {path}: {error_line(exc)}; the next load decodes again",
                      stacklevel=2)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _decode_images(paths: list[Path], size: int) -> torch.Tensor:
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    pixels = out.numpy()

    def decode_into(i: int) -> None:
        pixels[i] = _decode_image(paths[i], size)

    # Threads suffice: PIL releases the GIL while decoding and resizing.
    with ThreadPoolExecutor() as pool:
        for _ in pool.map(decode_into, range(len(paths))):   # re-raises the first failure
            pass
    return out


def _decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file to a uint8 3×size×size RGB array (shorter side resized, centre crop)."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))      # JPEG: let the decoder shrink 2-8× when the file is much larger
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
            img = _resize_center_crop(img.convert("RGB"), size)
            return np.asarray(img).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image {path}: {error_line(exc)}") from None


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    if (width, height) == (size, size):
        return img
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    # PIL widens the bilinear kernel when shrinking, i.e. antialiased, like torchvision's Resize(antialias=True).
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


_LOADERS: dict[str, Callable[[Path, bool, int | None], _Source]] = {
    "digits": _load_digits, "cifar10": _load_cifar10, "cifar100": _load_cifar100,
    "stl10": _load_stl10, "tiny_imagenet": _load_tiny_imagenet, "folder": _load_folder,
}
