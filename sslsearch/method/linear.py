"""Linear evaluation of a pretraining checkpoint, as one library call (the reference's `linear.py`).

`sslsearch linear` parses and checks its arguments, then calls `evaluate_checkpoint`; the protocol itself
(frozen encoder, augmented views, Adam, a linear layer on train + val, scored on test) is
`evaluate.linear_evaluation`, with the data set's defaults from `evaluate.linear_defaults`.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import torch

from sslsearch.errors import InputError
from sslsearch.method.config import PretrainConfig
from sslsearch.method.data import load_run_data
from sslsearch.method.evaluate import linear_defaults, linear_evaluation
from sslsearch.method.train import load_checkpoint, model_from_checkpoint


def evaluation_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu` or an available `cuda[:N]`; InputError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or (name.startswith("cuda") and torch.cuda.is_available()):
        return torch.device(name)
    raise InputError(f"device must be auto, cpu or an available cuda[:N], got {name!r}")


def evaluate_checkpoint(checkpoint_path: Path, out: Path, *, device: str = "auto", data_dir: str | None = None,
                        overrides: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Linear evaluation of the backbone in `checkpoint_path`; one CSV row per epoch written to `out`.

    `overrides` replaces the data set's defaults (epochs, batch_size, lr, weight_decay); `log` receives the
    settings line and a line per epoch. Returns linear_evaluation's result (test_acc, ...) with the settings."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    checkpoint = load_checkpoint(checkpoint_path)
    config = PretrainConfig.from_dict(checkpoint["config"])
    torch_device = evaluation_device(device)
    if data_dir:
        config = dataclasses.replace(config, data_dir=str(Path(data_dir).resolve()))
    data = load_run_data(config).to(torch_device)
    settings = linear_defaults(config.dataset, data.train_images.shape[0] + data.val_images.shape[0])
    settings.update({k: v for k, v in (overrides or {}).items() if k in settings and v is not None})
    log(f"linear evaluation on {config.dataset}: " + ", ".join(f"{k} {v:g}" for k, v in settings.items()))
    backbone = model_from_checkpoint(checkpoint).backbone.to(torch_device)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        log(f"epoch {row['epoch']}/{settings['epochs']} loss {row['train_loss']:.4f} train_acc {row['train_acc']:.2f} "
            f"test_acc {row['test_acc']:.2f}")

    result = linear_evaluation(backbone, data, **settings, seed=config.seed, on_epoch=on_epoch)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {**result, "settings": settings}
