"""Writers of tiny data sets in each data set's real on-disk format, for tests.

Every image carries class signal (a class colour and a class stripe pattern, plus noise), so a
learner can tell the classes apart, and every class gets several items, so stratified splits work.
Image 0 of each CIFAR / STL-10 split is `asymmetric_image`, so an orientation bug is visible.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def asymmetric_image(size: int) -> np.ndarray:
    """A uint8 3×size×size image that changes under any flip or transposition."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    image = np.zeros((3, size, size), dtype=np.uint8)
    image[0] = ramp[None, :]            # red grows to the right
    image[1] = ramp[:, None] // 2       # green grows downwards, at another rate
    image[2, : size // 4, : size // 2] = 255   # a blue block in the top-left quarter-strip
    return image


def class_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 N×3×size×size images: a class colour modulated by class stripes, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((len(labels), 3, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        colour = np.random.default_rng(1000 + int(label)).uniform(40, 215, size=3)
        angle, frequency = 0.7 * int(label), 1 + int(label) % 4
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
        image = colour[:, None, None] * (0.6 + 0.4 * stripes) + rng.normal(0, 10, (3, size, size))
        images[i] = image.clip(0, 255).round().astype(np.uint8)
    return images


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels covering every class equally (±1), shuffled."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _pickle(path: Path, obj: dict, py2: bool = True) -> None:
    # The official files were written by Python 2's cPickle; py2=False writes a Python 3 re-pack instead.
    path.write_bytes(python2_pickle(obj) if py2 else pickle.dumps(obj, protocol=2))


def python2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 wrote the CIFAR files: str as BINSTRING, arrays via numpy.core.multiarray."""
    out = bytearray(b"\x80\x02")

    def emit(o) -> None:
        if isinstance(o, bytes):        # a Python 2 str
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, (int, np.integer)):
            out.extend(b"J" + struct.pack("<i", int(o)))
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for item in o:
                emit(item)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for item in o:
                emit(item)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                emit(key)
                emit(value)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), 'b'), then __setstate__((1, shape, dtype, False, raw bytes))
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R(" + b"J" + struct.pack("<i", 1))
            emit(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b\x89")
            emit(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"python2_pickle cannot write {type(o).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _cifar_split(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = balanced_labels(n, n_classes, np.random.default_rng(seed))
    images = class_images(labels, 32, seed)
    images[0] = asymmetric_image(32)
    return images.reshape(n, 3072), labels


def write_cifar10(root: str | Path, n_train: int = 60, n_test: int = 20, seed: int = 0, py2: bool = True) -> Path:
    """Write cifar-10-batches-py/ (5 train batches, test_batch, batches.meta) under root."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    data, labels = _cifar_split(n_train, 10, seed)
    for i, (chunk, chunk_labels) in enumerate(zip(np.array_split(data, 5), np.array_split(labels, 5)), 1):
        _pickle(base / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(),
                                            b"labels": chunk_labels.tolist(), b"data": chunk,
                                            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(len(chunk))]}, py2)
    data, labels = _cifar_split(n_test, 10, seed + 1)
    _pickle(base / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(), b"data": data,
                                  b"filenames": [f"test_{j}.png".encode() for j in range(len(data))]}, py2)
    _pickle(base / "batches.meta", {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                    b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, py2)
    return Path(root)


def write_cifar100(root: str | Path, n_train: int = 300, n_test: int = 100, seed: int = 0, py2: bool = True) -> Path:
    """Write cifar-100-python/ (train, test, meta) under root; 100 fine classes."""
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    fine = [f"class_{i:02d}".encode() for i in range(100)]
    coarse = [f"super_{i:02d}".encode() for i in range(20)]
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        data, labels = _cifar_split(n, 100, seed + offset)
        _pickle(base / split, {b"filenames": [f"{split}_{j}.png".encode() for j in range(n)],
                               b"batch_label": f"{split}ing batch 1 of 1".encode(), b"fine_labels": labels.tolist(),
                               b"coarse_labels": (labels // 5).tolist(), b"data": data}, py2)
    _pickle(base / "meta", {b"fine_label_names": fine, b"coarse_label_names": coarse}, py2)
    return Path(root)


def write_stl10(root: str | Path, n_train: int = 40, n_test: int = 20, n_unlabeled: int = 30, seed: int = 0) -> Path:
    """Write stl10_binary/ (column-major X files, 1-based y files, class_names.txt) under root."""
    base = Path(root) / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = class_images(labels, 96, int(rng.integers(1 << 30)))
        images[0] = asymmetric_image(96)
        # The official files store each channel column-major: write the transposed planes.
        (base / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        (base / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    unlabeled = class_images(rng.integers(0, 10, n_unlabeled), 96, int(rng.integers(1 << 30)))
    (base / "unlabeled_X.bin").write_bytes(np.ascontiguousarray(unlabeled.transpose(0, 1, 3, 2)).tobytes())
    (base / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return Path(root)


def stl10_unlabeled(root: str | Path) -> np.ndarray:
    """The unlabeled images written by write_stl10, N×3×96×96 row-major (read back independently)."""
    raw = np.fromfile(Path(root) / "stl10_binary" / "unlabeled_X.bin", dtype=np.uint8)
    return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)


def _save(image: np.ndarray, path: Path, gray: bool = False, rgba: bool = False) -> None:
    pil = Image.fromarray(image.transpose(1, 2, 0))
    if gray:
        pil = pil.convert("L")
    elif rgba:
        pil = pil.convert("RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[path.suffix.lower()]
    pil.save(path, kind, **({"quality": 95} if kind == "JPEG" else {}))


def tiny_imagenet_wnids(n_classes: int) -> list[str]:
    """Plausible WordNet ids for the fake Tiny ImageNet classes."""
    return [f"n{1443537 + 1000 * i:08d}" for i in range(n_classes)]


def write_tiny_imagenet(root: str | Path, n_classes: int = 3, per_class: int = 8, n_val_per_class: int = 3,
                        layout: str = "raw", seed: int = 0) -> Path:
    """Write tiny-imagenet-200/ under root; val `layout` is "raw" (as downloaded), "per_class" or "per_class_flat"."""
    if layout not in ("raw", "per_class", "per_class_flat"):
        raise ValueError(f"layout must be raw, per_class or per_class_flat, got {layout!r}")
    base = Path(root) / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    wnids = tiny_imagenet_wnids(n_classes)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    # The real words.txt lists all of WordNet; a few extra entries check that only wnids.txt counts.
    words = [f"{w}\tthing {i}, alias {i}" for i, w in enumerate(wnids)] + ["n99999999\tunused, other"]
    (base / "words.txt").write_text("\n".join(words) + "\n")
    for label, wnid in enumerate(wnids):
        images = class_images(np.full(per_class, label), 64, seed + label)
        for k, image in enumerate(images):
            # The real set has some grayscale JPEGs: the first image of every class is one.
            _save(image, base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", gray=(k == 0))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n" for k in range(per_class)))
    val_labels = np.arange(n_classes * n_val_per_class) % n_classes     # interleaved, as in the real file
    val_images = class_images(val_labels, 64, seed + 10_000)
    annotations = []
    for k, (label, image) in enumerate(zip(val_labels, val_images)):
        name, wnid = f"val_{k}.JPEG", wnids[label]
        folder = {"raw": base / "val" / "images", "per_class": base / "val" / wnid / "images",
                  "per_class_flat": base / "val" / wnid}[layout]
        _save(image, folder / name)
        annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    if layout == "raw":
        (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    for k, image in enumerate(class_images(np.zeros(2, dtype=np.int64), 64, seed + 20_000)):
        _save(image, base / "test" / "images" / f"test_{k}.JPEG")      # unlabelled: must be ignored
    return Path(root)


def write_image_folder(root: str | Path, classes: tuple[str, ...] = ("cat", "dog", "frog"), per_class: int = 10,
                       test_per_class: int = 3, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """Write root/train/<class>/ (and root/test/<class>/ unless test_per_class=0) in mixed formats and modes."""
    root = Path(root)
    suffixes = (".png", ".jpg", ".bmp", ".webp", ".JPEG")
    for split, n in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            if n == 0:
                continue
            # Non-square (width × height) so the resize + centre crop is exercised.
            images = class_images(np.full(n, label), max(size), seed + 97 * label + (split == "test"))
            images = images[:, :, : size[1], : size[0]]
            for k, image in enumerate(images):
                _save(np.ascontiguousarray(image), root / split / name / f"{name}_{k}{suffixes[k % len(suffixes)]}",
                      gray=(k == 1), rgba=(k == 2))
            (root / split / name / "notes.txt").write_text("not an image\n")
            (root / split / name / ".hidden.png").write_bytes(b"not an image either")
    return root
