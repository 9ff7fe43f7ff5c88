"""The layout of sslsearch's MLflow records: experiment, tag and metric names, written by the tracking
callback (records/tracking.py) and read by the leaderboard, report and export (analysis/).

No MLflow here (plain names), so the command line and analysis/ import it without paying for MLflow.

- experiment EXPERIMENT_NAME, tagged EXPERIMENT_KIND;
- a parent run per sweep: ROLE=sweep, SWEEP, the provenance tags (PROVENANCE), SWEEP_PATH; metrics
  SUMMARY_METRIC per loss; once a leaderboard ran, VERDICT and VERDICT_STAGE;
- a child run per trial, nested (PARENT_RUN_ID): ROLE=trial, SWEEP, TRIAL_ID, LOSS, PAIR (paired sweeps),
  OUTCOME (sslsearch.search.outcomes.OUTCOMES), STAGE (a stage after the search, e.g. confirm),
  BEST_EPOCH / BEST_VAL_ACC (of checkpoints/best.pt), ERROR, RETRIES, NODE_ID; metrics METRICS at step = epoch.
"""

from __future__ import annotations

EXPERIMENT_NAME = "sslsearch"
# MLflow 3's UI opens an experiment on GenAI traces unless this tag says it is model training
# (key and value as the UI's bundle reads them, mlflow/server/js in MLflow 3.17).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
PARENT_RUN_ID = "mlflow.parentRunId"

ROLE = "sslsearch.role"                 # "sweep" (parent run) or "trial" (child run)
SWEEP_ROLE, TRIAL_ROLE = "sweep", "trial"
SWEEP = "sslsearch.sweep"
TRIAL_ID = "sslsearch.trial_id"
LOSS = "sslsearch.loss"
PAIR = "sslsearch.pair"
OUTCOME = "sslsearch.outcome"
STAGE = "sslsearch.stage"               # on child runs of a stage after the search, e.g. "confirm"
REMOVED = "sslsearch.removed"           # on a child run `sync` removed: why (an orphan, or merged into another run)
BEST_EPOCH, BEST_VAL_ACC = "sslsearch.best_epoch", "sslsearch.best_val_acc"
ERROR = "sslsearch.error"
RETRIES = "sslsearch.retries"
NODE_ID = "sslsearch.node_id"
SWEEP_PATH = "sslsearch.sweep_path"     # the sweep's folder in Ray's storage (where its Optuna study lives)
VERDICT, VERDICT_STAGE = "sslsearch.verdict", "sslsearch.verdict_stage"

# On the parent run: what ran the sweep, and where.
SSLSEARCH_VERSION, TORCH_VERSION, RAY_VERSION, MLFLOW_VERSION, OPTUNA_VERSION = (
    "sslsearch.version", "sslsearch.torch_version", "sslsearch.ray_version", "sslsearch.mlflow_version",
    "sslsearch.optuna_version")
GIT_COMMIT, GIT_DIRTY = "sslsearch.git_commit", "sslsearch.git_dirty"
CLUSTER_RESOURCES, CLUSTER_CPUS, CLUSTER_GPUS = ("sslsearch.cluster_resources", "sslsearch.cluster_cpus",
                                                 "sslsearch.cluster_gpus")
EXPERIMENT_SOURCE, SPACE_SOURCE = "sslsearch.experiment_source", "sslsearch.space_source"
# (label, tag) in the order the report shows them.
PROVENANCE = (("sslsearch", SSLSEARCH_VERSION), ("torch", TORCH_VERSION), ("Ray", RAY_VERSION),
              ("MLflow", MLFLOW_VERSION), ("Optuna", OPTUNA_VERSION), ("git commit", GIT_COMMIT),
              ("uncommitted changes", GIT_DIRTY), ("cluster CPUs", CLUSTER_CPUS), ("cluster GPUs", CLUSTER_GPUS),
              ("experiment file", EXPERIMENT_SOURCE), ("sweep folder", SWEEP_PATH))

# The trainable's reported metrics (search/trainable.py); Ray's own bookkeeping keys are not logged.
METRICS = ("epoch", "loss", "val_acc", "knn_acc", "images_per_s", "test_acc", "trial_seconds")
SUMMARY_METRIC = "best_val_acc_{loss}"  # on the parent run: best final val_acc of the loss's finished search trials


def runs_filter(sweep: str, role: str = SWEEP_ROLE) -> str:
    """MLflow's filter for a sweep's parent run (role "sweep") or its trials' runs (role "trial").
    (A recorded sweep name holds no quotes: the tracking callback refuses them.)"""
    return f"tags.`{ROLE}` = '{role}' AND tags.`{SWEEP}` = '{sweep}'"
