"""Where a sweep's records live: the MLflow tracking URI and the checks made before anything runs.

No MLflow, Ray or torch here (only `requests`, for a server's /health): the command line checks
the store before it pays for those imports, so a dead server or an unusable URI is refused in a
fraction of a second. `sslsearch.records.tracking.check_tracking` adds the checks that need MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslsearch.errors import InputError, first_line

STORE_FILE = "mlflow.db"          # the default SQLite store, in the storage folder beside the sweeps' folders
ARTIFACTS_FOLDER = "mlartifacts"  # where that store keeps artifacts, beside it


def storage_entry(name: str) -> bool:
    """Whether `name` is one of the storage folder's own entries (the store, its SQLite side files, its artifacts),
    which a sweep's folder must never be named."""
    return name == ARTIFACTS_FOLDER or name == STORE_FILE or name.startswith(f"{STORE_FILE}-")


def default_tracking_uri(storage: str) -> str:
    """SQLite at `<storage>/mlflow.db` (absolute); artifacts go next to it, in `<storage>/mlartifacts`."""
    if "://" in storage:
        raise InputError(f"storage {storage} is remote: SQLite needs a local folder; pass --tracking-uri http://host:port")
    return f"sqlite:///{Path(storage).resolve() / STORE_FILE}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store keeps artifacts; None for a server, which decides itself."""
    path = sqlite_path(uri)
    return (path.parent / ARTIFACTS_FOLDER).as_uri() if path is not None else None


def require_records(uri: str) -> None:
    """InputError when `uri` names a SQLite store that does not exist (opening it would silently create an empty one)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise InputError(f"no MLflow records at {path} (tracking URI {uri}); run a sweep first "
                         "or pass the tracking URI of the sweep's records")


def _connection_reason(error: Exception) -> str:
    """The root cause of a failed request in a few words ("Connection refused"), not urllib3's
    page-long repr of the pool, the URL and the socket object."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    text = first_line(error, None)
    return text if len(text) <= 160 else f"{type(error).__name__}: {text.rsplit(':', 1)[-1].strip()}"


def check_store(uri: str, *, reading: bool = False) -> None:
    """InputError (one line) if the tracking store at `uri` cannot be used: a server that does not
    answer, a relative or unwritable SQLite path, a scheme MLflow 3 refuses. `reading`: only check
    that the store can be reached, creating nothing."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=5)
            response.raise_for_status()
        except requests.HTTPError as error:
            raise InputError(f"MLflow tracking server {uri} answered /health with HTTP {error.response.status_code}; "
                             "check the URI or pass another --tracking-uri") from None
        except requests.RequestException as error:
            raise InputError(f"MLflow tracking server {uri} is unreachable ({_connection_reason(error)}); start it or "
                             "pass another --tracking-uri") from None
    elif (path := sqlite_path(uri)) is not None:
        if not path.is_absolute():
            raise InputError(f"tracking URI {uri} must name an absolute path (Ray moves trials' working directories)")
        if reading:
            require_records(uri)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create the MLflow store folder {path.parent}: {error.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise InputError(f"cannot write the MLflow store in {path.parent}")
    elif uri.startswith("file:"):
        raise InputError(f"MLflow 3 refuses the file store ({uri}); use sqlite:///ABSOLUTE/PATH/mlflow.db or http://host:port")
    else:
        raise InputError(f"tracking URI must be http(s)://host:port or sqlite:///absolute/path.db, got {uri!r}")
