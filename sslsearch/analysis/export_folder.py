"""The folder `sslsearch export --out` writes: its files, and when an existing folder may be replaced.

Light on purpose (no torch, no MLflow): the command line checks --out before it imports anything heavy, and
report.py reads a card without importing the exporter.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslsearch.errors import InputError, file_in_the_way, shown_path

BACKBONE_FILE = "backbone.pt"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
EXPORT_FILES = (BACKBONE_FILE, CARD_JSON, CARD_MD)


def check_export_folder(out: Path, force: bool) -> None:
    """Refuse, in one line, an --out that exporting to would lose anything. `--force` replaces an earlier export only
    (a folder holding nothing but export files), never a folder that holds other files (a sweep store, someone's work)
    nor the current folder or one that holds it. `out` is resolved."""
    if out.exists() and not out.is_dir():
        raise InputError(f"export path {shown_path(out)} exists and is not a folder")
    try:
        here = Path.cwd().resolve()
    except OSError:
        here = None
    if here is not None and (out == here or out in here.parents):
        raise InputError(f"export folder {shown_path(out)} is the current folder or holds it; an export replaces its "
                         "folder whole: give a new folder, e.g. --out export")
    blocked = file_in_the_way(out.parent)
    if blocked is not None:
        raise InputError(f"export folder {shown_path(out)} cannot be made: {shown_path(blocked)} is a file")
    if not out.is_dir():
        return
    try:
        entries = sorted(os.listdir(out))
    except OSError as error:
        raise InputError(f"export folder {shown_path(out)} cannot be read ({error.strerror or error})") from None
    if not entries:
        return
    if not force:
        raise InputError(f"export folder {shown_path(out)} exists and is not empty; pass --force to replace it")
    other = [name for name in entries if name not in EXPORT_FILES]
    if other:
        raise InputError(f"export folder {shown_path(out)} holds files an export did not write ({', '.join(other[:3])}"
                         f"{', …' if len(other) > 3 else ''}); --force replaces an earlier export only: give another --out")
