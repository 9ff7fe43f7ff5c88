"""The one exception type that means "the user asked for something we cannot do", and how values appear in it."""

from __future__ import annotations

import reprlib
from pathlib import Path

QUOTE_LIMIT = 200   # characters of any one value an error message quotes


class InputError(ValueError):
    """Bad user input: the message is one line saying what was wrong and what is accepted.

    The CLI prints it without a traceback and exits with code 2.
    """


def _bounded_repr() -> reprlib.Repr:
    # reprlib stops at a depth and a count of items, so quoting a nested or huge value costs what it shows,
    # never what the value holds (an expanded YAML alias bomb, a 60k-deep list).
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxtuple, shown.maxdict, shown.maxset = 4, 12, 12, 8, 8
    shown.maxstring = shown.maxother = shown.maxlong = QUOTE_LIMIT
    return shown


_REPR = _bounded_repr()


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` as an error message quotes it: at most `limit` characters, with the full length when cut."""
    text = _REPR.repr(value)
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    if isinstance(value, (str, bytes)) and len(value) > limit - 2:
        text += f" ({len(value):,} characters)"
    elif isinstance(value, (list, tuple, dict)) and len(value) > _REPR.maxlist:
        text += f" ({len(value):,} items)"
    return text


def first_line(error: BaseException | str, limit: int | None = QUOTE_LIMIT) -> str:
    """What a one-line message quotes of an error (or of a text): the first non-blank line of its message, at most
    `limit` characters ("…" when cut; None: uncut). An error with no message gives its type's name, a blank text ""."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    return line if limit is None or len(line) <= limit else line[:limit - 1] + "…"


def error_line(error: BaseException, limit: int | None = QUOTE_LIMIT) -> str:
    """An error as a one-line message names it: "Type: first line of its message", or "Type" when it has none."""
    line = first_line(str(error), limit)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def shown_path(path: object, limit: int = QUOTE_LIMIT) -> str:
    """A path as an error message names it: its last `limit` characters (the end says which file)."""
    text = str(path).replace("\n", "\\n")
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def file_in_the_way(path: Path) -> Path | None:
    """The nearest of `path` and the folders above it that exists, if it is not a folder: a file where `path` or a
    folder holding it would have to be (None: `path` is a folder, or can be made one). The root always exists."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return None if existing.is_dir() else existing
