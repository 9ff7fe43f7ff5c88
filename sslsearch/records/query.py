"""Reading sslsearch's MLflow records: the client, the experiment, every page of a run search.

Plain names and MLflow's client only (imported when first used: it takes seconds), no Ray, so the
leaderboard, report and export use it as the tracking callback and `sync` do.
"""

from __future__ import annotations

from sslsearch.errors import InputError
from sslsearch.records.schema import EXPERIMENT_NAME
from sslsearch.records.store import require_records

PAGE = 1000  # runs per request: MLflow's largest page


def records_client(tracking_uri: str):
    """An MlflowClient over existing records; InputError when a SQLite store does not exist
    (opening a missing SQLite file would silently create an empty store)."""
    require_records(tracking_uri)
    from mlflow import MlflowClient  # after the check: importing MLflow takes seconds

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def find_experiment(client):
    """The `sslsearch` experiment, or None where nothing was recorded yet."""
    return client.get_experiment_by_name(EXPERIMENT_NAME)


def recorded_experiment_id(client, tracking_uri: str) -> str:
    """The `sslsearch` experiment's id; InputError where there is none."""
    experiment = find_experiment(client)
    if experiment is None:
        raise InputError(f"no sslsearch records at {tracking_uri} (no MLflow experiment {EXPERIMENT_NAME!r}); "
                         "run a sweep first")
    return experiment.experiment_id


def search_all_runs(client, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
    """Every run of the experiment that matches `filter_string`, all pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token, order_by=order_by)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
