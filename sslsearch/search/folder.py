"""The files of a sweep's folder (`<storage>/<name>/`), named once and free of Ray.

The search writes them; the records and the command line read them, some before Ray or MLflow is
imported (sslsearch.records.catalog), so their names live here rather than in the modules that write them.
"""

SWEEP_FILE = "sslsearch-sweep.json"      # what run_sweep was given: experiment, search space, storage, name
STUDY_FILE = "optuna-study.journal"      # the Optuna study, for optuna-dashboard and the importances
LOCK_FILE = "sslsearch.lock"             # the writer's lock (search.sweeplock)
CONFIRM_DIR = "confirm"                  # Ray's records of the confirmation stage (search.confirm)
PLAN_FILE = "confirm-plan.json"          # in CONFIRM_DIR: what was asked (top, seeds) and the configurations chosen
OUTBOX_FILE = "mlflow-outbox.jsonl"      # records waiting for MLflow (records.tracking); gone once all are sent
