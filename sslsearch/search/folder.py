"""The files of a sweep's folder (`<storage>/<name>/`), named once and free of Ray.

The search writes them; the records and the command line read them, some before Ray or MLflow is
imported (sslsearch.records.catalog), so their names live here rather than in the modules that write them.
"""

from pathlib import Path

SWEEP_FILE = "sslsearch-sweep.json"      # what run_sweep was given: experiment, search space, storage, name
STUDY_FILE = "optuna-study.journal"      # the Optuna study, for optuna-dashboard and the importances
LOCK_FILE = "sslsearch.lock"             # the writer's lock (search.sweeplock)
CONFIRM_DIR = "confirm"                  # Ray's records of the confirmation stage (search.confirm)
PLAN_FILE = "confirm-plan.json"          # in CONFIRM_DIR: what was asked (top, seeds) and the configurations chosen
OUTBOX_FILE = "mlflow-outbox.jsonl"      # records waiting for MLflow (records.tracking); gone once all are sent

# Ray's saved state of an experiment (a sweep, or its confirmation stage), as Ray 2.x names the files of one save;
# Ray restores each part from the newest file of its pattern (sync_down_experiment_state copies every top-level
# .json and .pkl). The first is JSON; the others are pickles, two of them named .json: the search generator's
# (the sweep's searcher) and BasicVariantGenerator's (the confirmation stage's list of points).
RAY_TUNER_FILE = "tuner.pkl"   # Ray's Tuner, written when the sweep's Tuner is made; Tuner.restore needs it
RAY_EXPERIMENT_STATE = "experiment_state-*.json"
RAY_PICKLED_STATES = ("search_gen_state-*.json", "basic-variant-state-*.json", "searcher-state-*.pkl",
                      "callback-states-*.pkl")


def ray_state_saved(folder: Path) -> bool:
    """Ray has saved the sweep (or stage) in `folder` at least once, its Tuner and its experiment state: `resume`
    can continue it. Between `sslsearch-sweep.json` and Ray's first save there is nothing to resume."""
    return (folder / RAY_TUNER_FILE).is_file() and any(folder.glob(RAY_EXPERIMENT_STATE))
