"""Leaderboards over trial runs written to a temporary MLflow store in the tracking layout.

The store is written here directly with MlflowClient (parent run per sweep, nested child run per
trial, the tags, params and per-epoch metrics the tracking callback writes), so these tests read
records exactly as they are left after Ray's folders are gone.
"""

import csv
import io
import json
import math
import os
import time

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from sslsearch.analysis.leaderboard import (  # noqa: E402
    best_report_curve,
    build_leaderboard,
    format_leaderboard,
    importance_groups,
    load_trials,
    log_verdict,
    rank_trials,
    write_plots,
)
from sslsearch.errors import InputError  # noqa: E402
from sslsearch.records.schema import EXPERIMENT_NAME  # noqa: E402

BASE = {"dataset": "digits", "epochs": 4, "backbone": "small_cnn", "batch_size": 128, "eval_every": 1}


def open_store(folder):
    """A fresh SQLite MLflow store in `folder` with the `sslsearch` experiment: (client, uri, experiment id)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT_NAME, artifact_location=(folder / "mlartifacts").as_uri())
    return client, uri, experiment_id


def write_sweep(client, experiment_id, name, trials, *, base=BASE, started=None):
    """Write a sweep as the tracking callback does; returns (parent run id, {trial_id: run id}).

    Each trial is a dict: trial_id, loss, lmbda, lr, feature_dim, seed, pair (or None), outcome,
    history {epoch: val_acc} (epoch 0 = random initialisation), test_acc (or None), seconds,
    artifacts {artifact folder: [local files]}.
    """
    from mlflow.entities import Metric, Param

    started = started or int(time.time() * 1000)
    parent = client.create_run(experiment_id, start_time=started, run_name=name,
                               tags={"sslsearch.role": "sweep", "sslsearch.sweep": name})
    client.log_batch(parent.info.run_id, params=[Param(f"pretrain.{k}", str(v)) for k, v in base.items()])
    run_ids = {}
    for i, t in enumerate(trials):
        tags = {"mlflow.parentRunId": parent.info.run_id, "sslsearch.role": "trial", "sslsearch.sweep": name,
                "sslsearch.trial_id": t["trial_id"], "sslsearch.loss": t["loss"], "sslsearch.outcome": t["outcome"]}
        if t.get("stage"):
            tags["sslsearch.stage"] = t["stage"]
        elif t.get("pair") is not None:  # the callback tags pairs of paired sweeps; a confirm trial has its param
            tags["sslsearch.pair"] = str(t["pair"])
        run = client.create_run(experiment_id, start_time=started + 1 + i, run_name=t["trial_id"], tags=tags)
        params = {"lmbda": t["lmbda"], "lr": t["lr"], "feature_dim": t["feature_dim"], "loss": t["loss"],
                  "seed": t["seed"], **{f"base.{k}": v for k, v in base.items()}}
        if t.get("pair") is not None:
            params["pair"] = t["pair"]
        metrics, clock = [], started
        epochs = sorted(t["history"])
        for e in epochs:
            clock += 10
            seconds = t["seconds"] * e / max(max(epochs), 1)
            metrics += [Metric("epoch", e, clock, e), Metric("val_acc", t["history"][e], clock, e),
                        Metric("knn_acc", t["history"][e] - 5, clock, e), Metric("trial_seconds", seconds, clock, e)]
            if e > 0:
                metrics += [Metric("loss", 10.0 / e, clock, e), Metric("images_per_s", 1000.0, clock, e)]
        if t.get("test_acc") is not None:
            metrics.append(Metric("test_acc", t["test_acc"], clock, max(epochs)))
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        for folder, files in t.get("artifacts", {}).items():
            for file in files:
                client.log_artifact(run.info.run_id, str(file), artifact_path=folder)
        if t["outcome"] != "running":
            client.set_terminated(run.info.run_id, "FAILED" if t["outcome"] == "errored" else "FINISHED")
        run_ids[t["trial_id"]] = run.info.run_id
    return parent.info.run_id, run_ids


def trial(trial_id, loss, pair, history, outcome="completed", lmbda=0.01, lr=1e-3, feature_dim=64, seed=None,
          test_acc=None, seconds=100.0, **extra):
    return {"trial_id": trial_id, "loss": loss, "pair": pair, "history": history, "outcome": outcome, "lmbda": lmbda,
            "lr": lr, "feature_dim": feature_dim, "seed": seed if seed is not None else (pair or 0), "test_acc": test_acc,
            "seconds": seconds, **extra}


def curve(*values):
    """History with epoch 0 at 30 (the random-init baseline) and the given values at epochs 1, 2, …"""
    return {0: 30.0, **{e: float(v) for e, v in enumerate(values, start=1)}}


# The paired sweep the hand computations below refer to (4 epochs, evaluated every epoch).
PAIRED = [
    trial("p0b", "barlow", 0, curve(50, 60, 70, 80), test_acc=78, lmbda=0.01, lr=1e-3),
    trial("p0h", "hsic", 0, curve(52, 63, 72, 85), test_acc=83, lmbda=0.01, lr=1e-3, seconds=110),
    trial("p1b", "barlow", 1, curve(40, 45, 50, 55), test_acc=54, lmbda=0.1, lr=3e-3, feature_dim=32, seconds=90),
    trial("p1h", "hsic", 1, curve(41, 47), "stopped early", lmbda=0.1, lr=3e-3, feature_dim=32, seconds=40),
    trial("p2b", "barlow", 2, curve(20), "errored", lmbda=1.0, seconds=10),
    trial("p2h", "hsic", 2, curve(60, 70, 80, 85), test_acc=84, lmbda=1.0, seconds=90),
    trial("p3b", "barlow", 3, curve(50, 55, 58, 60), test_acc=59, lmbda=0.001, seconds=95),
    trial("p3h", "hsic", 3, curve(50, 55, 58, 60), test_acc=61, lmbda=0.001, seconds=95),
    trial("p4h", "hsic", 4, curve(45), "running", lmbda=0.05),
    trial("p5b", "barlow", 5, curve(40, 44, 48, 50), test_acc=49, lmbda=0.3, seconds=80),
    trial("p5h", "hsic", 5, curve(70, 85), "stopped early", lmbda=0.3, seconds=50),
]
# By hand: compared at the full budget (epoch 4) only — pair 0: 85 − 80 = 5; pair 3: 0 (a tie). Pairs 1 and 5
# (hsic stopped at epoch 2), pair 2 (barlow errored) and pair 4 (no partner) are left out.
DIFFERENCES = [5.0, 0.0]
# Each epoch on its own, every pair that reached it: epoch 1: pairs 0, 1, 3, 5; epoch 2 likewise; epochs 3, 4: 0 and 3.
BY_EPOCH = {1: [2.0, 1.0, 0.0, 30.0], 2: [3.0, 2.0, 0.0, 41.0], 3: [2.0, 0.0], 4: [5.0, 0.0]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    client, uri, experiment_id = open_store(folder)
    now = int(time.time() * 1000)
    write_sweep(client, experiment_id, "old-sweep", [
        trial("o0", "barlow", None, curve(61, 66)), trial("o1", "hsic", None, curve(62, 64)),
    ], base={**BASE, "epochs": 2}, started=now - 50_000)
    write_sweep(client, experiment_id, "all-errored", [
        trial("e0", "barlow", None, curve(10), "errored"), trial("e1", "hsic", None, {0: 30.0}, "errored"),
    ], started=now - 40_000)
    write_sweep(client, experiment_id, "still-running", [
        trial("r0", "barlow", None, curve(10), "running"), trial("r1", "hsic", None, {0: 30.0}, "errored"),
    ], started=now - 30_000)
    write_sweep(client, experiment_id, "cifar", [trial("c0", "barlow", None, curve(40, 50))],
                base={**BASE, "dataset": "cifar10"}, started=now - 20_000)
    parent, run_ids = write_sweep(client, experiment_id, "paired", PAIRED, started=now - 10_000)
    return {"client": client, "uri": uri, "folder": folder, "parent": parent, "run_ids": run_ids}


@pytest.mark.slow
def test_trials_are_read_back_from_mlflow_alone(store):
    trials = load_trials(store["uri"], ["paired"])
    assert len(trials) == len(PAIRED)
    row = trials.set_index("trial_id").loc["p1h"]
    assert (row["loss"], row["outcome"], row["epochs"], row["pair"]) == ("hsic", "stopped early", 2, 1)
    assert (row["lmbda"], row["lr"], row["feature_dim"]) == (0.1, 3e-3, 32)
    assert row["val_acc"] == 47 and row["best_val_acc"] == 47 and math.isnan(row["test_acc"])
    assert row["history"] == {0: 30.0, 1: 41.0, 2: 47.0}
    p0b = trials.set_index("trial_id").loc["p0b"]
    assert (p0b["val_acc"], p0b["test_acc"], p0b["trial_seconds"], p0b["dataset"]) == (80, 78, 100, "digits")
    assert row["run_id"] == store["run_ids"]["p1h"] and row["parent_run_id"] == store["parent"]


@pytest.mark.slow
def test_no_sweep_named_means_the_most_recent_one(store):
    assert set(load_trials(store["uri"])["sweep"]) == {"paired"}


@pytest.mark.slow
def test_the_default_skips_newer_sweeps_without_a_finished_trial(tmp_path):
    client, uri, experiment_id = open_store(tmp_path)
    now = int(time.time() * 1000)
    write_sweep(client, experiment_id, "older", [trial("o0", "barlow", None, curve(61, 66))], started=now - 30_000)
    write_sweep(client, experiment_id, "killed", [trial("k0", "barlow", None, curve(10), "running")], started=now - 20_000)
    write_sweep(client, experiment_id, "empty", [], started=now - 10_000)
    assert set(load_trials(uri)["sweep"]) == {"older"}
    with pytest.raises(InputError, match="sweep 'empty' has no trials recorded"):
        load_trials(uri, ["empty"])  # named: no fallback


@pytest.mark.slow
def test_no_rankable_sweep_at_all_is_one_line(tmp_path):
    client, uri, experiment_id = open_store(tmp_path)
    now = int(time.time() * 1000)
    write_sweep(client, experiment_id, "killed", [trial("k0", "barlow", None, curve(10), "running")], started=now - 20_000)
    write_sweep(client, experiment_id, "empty", [], started=now - 10_000)
    with pytest.raises(InputError, match=r"^sweep 'empty' has no trials recorded; no other sweep has a finished trial"):
        load_trials(uri)


@pytest.mark.slow
def test_several_sweeps_pool_into_one_leaderboard(store):
    board = build_leaderboard(load_trials(store["uri"], ["old-sweep", "paired"]))
    assert board.sweeps == ["old-sweep", "paired"]
    assert len(board.trials) == len(PAIRED) + 2
    header = next(line for line in format_leaderboard(board, "table").splitlines() if line.startswith("rank "))
    assert header.split()[:3] == ["rank", "sweep", "trial"]  # with several sweeps, a sweep column
    assert board.head_to_head["variants"]["barlow"]["trials"] == 5  # 4 finished paired + 1 old


@pytest.mark.slow
def test_bad_sweeps_are_one_clear_line(store):
    with pytest.raises(InputError, match=r"unknown sweep 'nope'; known sweeps: paired, cifar, still-running") as error:
        load_trials(store["uri"], ["nope"])
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="all 2 trials of sweep 'all-errored' errored"):
        load_trials(store["uri"], ["all-errored"])
    with pytest.raises(InputError, match="different data sets"):
        build_leaderboard(load_trials(store["uri"], ["paired", "cifar"]))
    with pytest.raises(InputError, match="no MLflow records"):
        load_trials(f"sqlite:///{store['folder'] / 'missing.db'}")
    assert not (store["folder"] / "missing.db").exists()


@pytest.mark.slow
def test_a_sweep_without_a_finished_trial_is_refused(store):
    expected = r"sweep 'still-running' has no finished trial with a val_acc after epoch 0 yet \(1 errored, 1 running\)"
    with pytest.raises(InputError, match=expected):
        load_trials(store["uri"], ["still-running"])


@pytest.mark.slow
def test_ranks_follow_val_acc_then_the_documented_tie_breaks(store):
    board = build_leaderboard(load_trials(store["uri"], ["paired"]))
    ranked = board.ranked
    # hsic: p2h and p0h tie at 85 over 4 epochs: the smaller trial id first (never wall time); p5h has 85 after 2 epochs only.
    assert list(ranked[ranked["loss"] == "hsic"]["trial_id"]) == ["p0h", "p2h", "p5h", "p3h", "p1h"]
    assert list(ranked[ranked["loss"] == "barlow"]["trial_id"]) == ["p0b", "p3b", "p1b", "p5b"]
    assert list(ranked[ranked["loss"] == "barlow"]["rank"]) == [1, 2, 3, 4]
    assert "p2b" not in set(ranked["trial_id"]) and "p4h" not in set(ranked["trial_id"])  # errored, running


def test_trial_id_is_the_last_tie_break():
    rows = pd.DataFrame({"sweep": "s", "loss": "barlow", "trial_id": ["b", "a", "c"], "val_acc": [50.0, 50.0, 50.0],
                         "epochs": [4, 4, 4], "trial_seconds": [10.0, 10.0, 10.0], "outcome": "completed"})
    assert list(rank_trials(rows)["trial_id"]) == ["a", "b", "c"]


@pytest.mark.slow
def test_head_to_head_matches_a_hand_computation(store):
    board = build_leaderboard(load_trials(store["uri"], ["paired"]))
    h2h = board.head_to_head
    assert h2h["variants"]["barlow"] == {"trials": 4, "best_val_acc": 80.0, "median_val_acc": 57.5, "best_trial": "p0b"}
    assert h2h["variants"]["hsic"] == {"trials": 5, "best_val_acc": 85.0, "median_val_acc": 85.0, "best_trial": "p0h"}
    paired = h2h["paired"]
    assert sorted(board.pairs["difference"]) == sorted(DIFFERENCES)
    assert list(board.pairs["epoch"]) == [4, 4] and paired["epochs"] == [4]   # never a pair stopped early
    assert paired["pairs"] == 2 and paired["mean_difference"] == pytest.approx(np.mean(DIFFERENCES))
    assert paired["hsic_wins"] == 1.5 and paired["hsic_win_rate"] == pytest.approx(1.5 / 2)  # the tie counts half
    assert paired["excluded"] == {"stopped before the full budget": 2, "with an errored or running trial": 1,
                                  "without its partner": 1}
    # 1 non-zero difference: the exact test cannot go below p = 1; nothing is called.
    assert paired["nonzero_pairs"] == 1 and paired["smallest_p"] == 1.0 and not paired["called"]
    by_epoch = {e["epoch"]: e for e in h2h["paired_by_epoch"]}
    assert {e: by_epoch[e]["pairs"] for e in by_epoch} == {e: len(d) for e, d in BY_EPOCH.items()}
    for epoch, differences in BY_EPOCH.items():
        assert by_epoch[epoch]["mean_difference"] == pytest.approx(np.mean(differences))
    verdict = board.verdict
    assert verdict.stage == "search" and verdict.metric == "val_acc" and verdict.epochs == 4
    assert verdict.sentence.startswith("Search stage only — run `sslsearch confirm paired`: HSIC − Barlow = +2.50 points")
    assert "n = 2 twin pairs at the full budget" in verdict.sentence
    assert verdict.counts == {"search": {"trials": 11, "completed": 7, "stopped early": 2, "diverged": 0, "errored": 1,
                                         "running": 1}}
    table = format_leaderboard(board, "table")
    assert "search pairs at the full budget (hsic − barlow val_acc): n = 2" in table
    assert "  at epoch 2 (every pair that reached it): n = 4, mean +11.50 points" in table
    assert table.splitlines()[-len(verdict.lines()):] == verdict.lines()   # the terminal ends with the verdict
    assert "11 search trials (7 completed, 2 stopped early, 1 errored, 1 running)" in table.splitlines()[0]
    markdown = format_leaderboard(board, "markdown")
    assert markdown.startswith(f"**{verdict.sentence}**")   # the Markdown (report, MLflow) leads with it
    assert "## hsic (top 5 of 5 ranked)" in markdown and "| rank | trial | λ |" in markdown


def test_small_n_is_refused_in_words():
    board = build_leaderboard(_frame_of_pairs([0.35, 1.39]))
    text = format_leaderboard(board, "table")
    line = next(x for x in text.splitlines() if x.startswith("search pairs"))
    assert "n = 2, mean +0.87 points" in line and "(2 non-zero: p ≥ 0.5; not called below 6 non-zero)" in line
    assert "sslsearch confirm s" in board.verdict.sentence and "next: sslsearch confirm s" in text
    # Five agreeing differences and three zeros: eight pairs, but p cannot go below 0.0625; not called.
    board = build_leaderboard(_frame_of_pairs([0.35] * 5 + [0.0] * 3))
    p = board.head_to_head["paired"]
    assert (p["pairs"], p["nonzero_pairs"], p["called"]) == (8, 5, False) and p["p_value"] == pytest.approx(0.0625)
    assert "(5 non-zero: p ≥ 0.0625; not called below 6 non-zero)" in format_leaderboard(board, "table")
    enough = format_leaderboard(build_leaderboard(_frame_of_pairs([0.4, 1.2, -0.3, 0.8, 0.5, 1.0])), "table")
    line = next(x for x in enough.splitlines() if x.startswith("search pairs"))
    assert "n = 6, mean +0.60 points, 95% t [" in line and "exact Wilcoxon p = 0.0625 (6 non-zero: p ≥ 0.0312)" in line


def test_one_confirmed_seed_gives_a_verdict_without_an_interval():
    frame = _frame_of_pairs([0.35, 1.39])
    confirm = frame[frame["pair"] == 0].assign(stage="confirm", seed=9, pair=0, trial_id=lambda f: "c" + f["trial_id"])
    board = build_leaderboard(pd.concat([frame, confirm], ignore_index=True))
    assert board.verdict.stage == "confirm" and board.verdict.statistics["pairs"] == 1
    assert "n = 1 seed," in board.verdict.sentence
    assert "test_acc 80.00 (1 seed, no interval)" in board.verdict.best["barlow"]["text"]
    assert format_leaderboard(board, "table").splitlines()[-1].startswith("  next: sslsearch export s")


def _frame_of_pairs(differences):
    """A finished, paired search stage in load_trials' layout, one pair per difference."""
    rows = []
    for i, d in enumerate(differences):
        for loss, acc in (("barlow", 80.0), ("hsic", 80.0 + d)):
            rows.append({"sweep": "s", "stage": "search", "trial_id": f"{loss}{i}", "run_id": f"r{loss}{i}", "loss": loss,
                         "lmbda": 0.01 * (i + 1), "lr": 1e-3, "feature_dim": 64, "seed": i, "pair": i, "val_acc": acc,
                         "best_val_acc": acc, "test_acc": acc, "knn_acc": None, "epochs": 4, "trial_seconds": 10.0,
                         "outcome": "completed", "dataset": "digits", "max_epochs": 4, "parent_run_id": "p",
                         "history": {0: 10.0, 4: acc}})
    return pd.DataFrame(rows)


def _optuna_trial(value, pair, **params):
    import optuna

    distributions = {"lmbda": optuna.distributions.FloatDistribution(1e-4, 1, log=True),
                     "lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True),
                     "feature_dim": optuna.distributions.CategoricalDistribution([64, 128, 256]),
                     "loss": optuna.distributions.CategoricalDistribution(["barlow", "hsic"])}
    return optuna.trial.create_trial(params=params, distributions={k: distributions[k] for k in params}, value=value,
                                     user_attrs={} if pair is None else {"pair": pair})


def test_importances_refuse_collinear_and_too_few_trials_and_use_one_trial_per_pair():
    names = ["feature_dim", "lmbda", "loss", "lr"]
    # The case: 2 pairs, 4 completed trials, twins share λ and lr.
    twins = [_optuna_trial(90.0 + i + (loss == "hsic"), i, lmbda=0.01 * (i + 1), lr=1e-3 * (i + 1), feature_dim=64, loss=loss)
             for i in range(2) for loss in ("barlow", "hsic")]
    groups, notes = importance_groups(twins, names)
    assert groups == {} and [n.split(";")[0] for n in notes] == [
        "2 completed barlow trial(s) for 3 parameters (need ≥ 6: two per parameter",
        "2 completed hsic trial(s) for 3 parameters (need ≥ 6: two per parameter"]
    assert all("optuna-dashboard shows importances from 2 completed trials on, with both losses pooled" in n for n in notes)
    # Enough trials, but λ rises with lr in every one of them (collinear): refused, with the names.
    collinear = [_optuna_trial(90.0 + i, None, lmbda=0.001 * (i + 1), lr=1e-4 * (i + 1) ** 2, feature_dim=[64, 128, 256][i % 3],
                               loss=["barlow", "hsic"][i % 2]) for i in range(8)]
    groups, notes = importance_groups(collinear, names)
    assert groups == {} and notes == ["lmbda and lr are collinear in the 8 completed trials: how importance splits "
                                      "between them is meaningless"]
    # Paired and independent: one group per loss, one trial per pair, loss itself not a parameter there.
    rng = np.random.default_rng(0)
    paired = [_optuna_trial(float(rng.normal(90, 2)), i, lmbda=float(rng.uniform(1e-3, 1e-1)), lr=float(rng.uniform(1e-4, 1e-2)),
                            feature_dim=[64, 128, 256][int(rng.integers(3))], loss=loss)
              for i in range(6) for loss in ("barlow", "hsic")]
    groups, notes = importance_groups(paired, names)
    assert notes == [] and set(groups) == {"barlow", "hsic"}
    for loss, (trials, params) in groups.items():
        assert len(trials) == 6 and {t.params["loss"] for t in trials} == {loss} and "loss" not in params


@pytest.mark.slow
def test_formats_parse(store):
    board = build_leaderboard(load_trials(store["uri"], ["paired"]), top=3)
    document = json.loads(format_leaderboard(board, "json"))
    assert [r["trial_id"] for r in document["variants"]["hsic"]] == ["p0h", "p2h", "p5h"]
    assert document["head_to_head"]["paired"]["hsic_win_rate"] == pytest.approx(0.75)  # (5, 0): the tie counts half
    assert document["verdict"]["stage"] == "search" and document["verdict"]["statistics"]["pairs"] == 2
    assert document["variants"]["hsic"][2]["test_acc"] is None  # NaN becomes null: strict JSON
    rows = list(csv.DictReader(io.StringIO(format_leaderboard(board, "csv"))))
    assert [(r["loss"], r["rank"], r["trial_id"]) for r in rows] == [
        ("barlow", "1", "p0b"), ("barlow", "2", "p3b"), ("barlow", "3", "p1b"),
        ("hsic", "1", "p0h"), ("hsic", "2", "p2h"), ("hsic", "3", "p5h")]
    assert float(rows[0]["val_acc"]) == 80 and float(rows[0]["test_acc"]) == 78
    table = format_leaderboard(board, "table")
    assert "barlow (top 3 of 4 ranked)" in table
    assert "mean +2.50 points" in table
    markdown = format_leaderboard(board, "markdown")
    assert "## hsic (top 3 of 5 ranked)" in markdown and "| rank | trial | λ |" in markdown
    with pytest.raises(InputError, match="unknown format 'xml'"):
        format_leaderboard(board, "xml")


@pytest.mark.slow
def test_plots_are_written_and_logged_to_the_sweep_run(store, tmp_path):
    import optuna

    storage = tmp_path / "runs"
    (storage / "paired").mkdir(parents=True)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage / "paired" / "optuna-study.journal")))
    study = optuna.create_study(storage=journal, study_name="paired", direction="maximize")
    distributions = {"lmbda": optuna.distributions.FloatDistribution(1e-3, 1, log=True),
                     "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                     "loss": optuna.distributions.CategoricalDistribution(["barlow", "hsic"])}
    for t in PAIRED:
        if t["outcome"] == "completed":
            study.add_trial(optuna.trial.create_trial(params={"lmbda": t["lmbda"], "lr": t["lr"], "loss": t["loss"]},
                                                      distributions=distributions, value=max(t["history"].values())))
    # The journal is found through the sweep folder the parent run records (tracking.py writes this tag).
    store["client"].set_tag(store["parent"], "sslsearch.sweep_path", str(storage / "paired"))
    board = build_leaderboard(load_trials(store["uri"], ["paired", "old-sweep"]))
    result = write_plots(board, tmp_path / "plots", store["uri"])
    names = sorted(os.path.basename(f) for f in result["files"])
    # Every file carries the sweep names: the next sweep's plots land beside these, not over them.
    label = "+".join(board.sweeps)  # in the order the leaderboard holds them
    assert names == sorted([f"best_report-{label}.png", "importances-paired.png", f"learning_curves-{label}.png",
                            f"val_acc_vs_lmbda-{label}.png", f"val_acc_vs_lr-{label}.png"])
    for file in result["files"]:
        assert open(file, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    missing = store["folder"] / "old-sweep" / "optuna-study.journal"  # no tag: next to the SQLite store
    assert result["notes"] == [f"importances for old-sweep: skipped, no Optuna study file at {missing}"]
    logged = {os.path.basename(f.path) for f in store["client"].list_artifacts(store["parent"], "leaderboard")}
    assert logged == set(names)


# A paired sweep, then `confirm --top 2 --seeds 3`: the two best settings, each with both losses and seeds 10, 11, 12
# (pair numbers k·3 + j). Search-time scores are inflated (the winner's curse); the confirmed ones are not.
SEARCH = [
    trial("s0b", "barlow", 0, curve(70, 90), lmbda=0.01, lr=1e-3), trial("s0h", "hsic", 0, curve(71, 92), lmbda=0.01, lr=1e-3),
    trial("s1b", "barlow", 1, curve(60, 85), lmbda=0.1, lr=2e-3), trial("s1h", "hsic", 1, curve(60, 80), lmbda=0.1, lr=2e-3),
    trial("s2b", "barlow", 2, curve(50), "stopped early", lmbda=0.5),
    trial("s2h", "hsic", 2, curve(55), "stopped early", lmbda=0.5),
    # Stopped (by the time budget) before any real report: its 99 is the untrained network's, never ranked.
    trial("s3b", "barlow", 3, {0: 99.0}, "stopped early", lmbda=0.7),
    trial("s3h", "hsic", 3, {0: 98.0}, "stopped early", lmbda=0.7),
]
CONFIRMED = {  # (loss, search trial): final val_acc per seed 10, 11, 12
    ("barlow", "s0b"): [86.0, 88.0, 87.0], ("barlow", "s1b"): [84.0, 85.0, 83.0],
    ("hsic", "s0h"): [88.0, 87.5, 89.0], ("hsic", "s1h"): [80.0, 82.0, 81.0],
}


def _confirm_trials():
    by_id = {t["trial_id"]: t for t in SEARCH}
    trials = []
    for (loss, source), values in CONFIRMED.items():
        k = 0 if source.startswith("s0") else 1
        for j, value in enumerate(values):
            s = by_id[source]
            trials.append(trial(f"c{source}{j}", loss, 3 * k + j, curve(value - 10, value), test_acc=value - 1, lmbda=s["lmbda"],
                                lr=s["lr"], feature_dim=s["feature_dim"], seed=10 + j, stage="confirm"))
    return trials


@pytest.fixture(scope="module")
def confirmed_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("confirmed")
    client, uri, experiment_id = open_store(folder)
    parent, _ = write_sweep(client, experiment_id, "conf", SEARCH + _confirm_trials())
    return {"client": client, "uri": uri, "parent": parent, "folder": folder}


@pytest.mark.slow
def test_an_epoch_0_only_trial_is_never_ranked(confirmed_store):
    board = build_leaderboard(load_trials(confirmed_store["uri"], ["conf"]))
    assert list(board.ranked[board.ranked["loss"] == "barlow"]["trial_id"]) == ["s0b", "s1b", "s2b"]
    assert "s3b" not in set(board.ranked["trial_id"]) and "s3h" not in set(board.ranked["trial_id"])
    assert not set(board.ranked["trial_id"]) & {t["trial_id"] for t in _confirm_trials()}  # confirm runs: their own table


@pytest.mark.slow
def test_confirmed_configurations_rank_by_mean_over_seeds_with_a_t_interval(confirmed_store):
    from scipy import stats

    board = build_leaderboard(load_trials(confirmed_store["uri"], ["conf"]))
    c = board.confirmed.set_index("search_trial")
    assert list(board.confirmed[board.confirmed["loss"] == "barlow"]["search_trial"]) == ["s0b", "s1b"]
    row = c.loc["s0b"]
    assert (row["seeds"], row["val_acc_mean"], row["search_val_acc"]) == (3, 87.0, 90.0)
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of (86, 88, 87) is 1
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(87 - half), pytest.approx(87 + half))
    assert row["test_acc_mean"] == 86.0 and row["test_acc_sd"] == pytest.approx(1.0)
    assert (row["test_ci_low"], row["test_ci_high"]) == (pytest.approx(86 - half), pytest.approx(86 + half))
    assert row["seed_val_acc"] == {10: 86.0, 11: 88.0, 12: 87.0}
    table = format_leaderboard(board, "table")
    assert "barlow: confirmed configurations (ranked by mean val_acc over seeds)" in table
    assert f"87.00 [{87 - half:.2f}, {87 + half:.2f}]" in table
    # The search trials ran 2 of 4 epochs: their val_acc is not set beside the full-budget mean (equal budgets only).
    assert "stopped at epoch 2" in table
    assert "8 search trials (4 completed, 4 stopped early) + 12 confirmation runs (12 completed)" in table


@pytest.mark.slow
def test_n_is_the_number_of_seed_blocks_whatever_top_is(confirmed_store):
    """--top 2 --seeds 3 is 3 independent blocks, not 6 pairs: a block's difference is the mean of its hsic runs
    minus the mean of its barlow runs, on test_acc (= val_acc − 1 here)."""
    from scipy import stats

    board = build_leaderboard(load_trials(confirmed_store["uri"], ["conf"]))
    verdict = board.verdict
    # Seed 10: (87 + 79)/2 − (85 + 83)/2 = −1; seed 11: (86.5 + 81)/2 − (87 + 84)/2 = −1.75; seed 12: 84 − 84 = 0.
    expected = [-1.0, -1.75, 0.0]
    s = verdict.statistics
    assert verdict.stage == "confirm" and verdict.metric == "test_acc" and verdict.split == "test" and verdict.top == 2
    assert s["pairs"] == 3 and s["nonzero_pairs"] == 2 and s["mean_difference"] == pytest.approx(np.mean(expected))
    assert s["p_value"] == pytest.approx(stats.wilcoxon([-1.0, -1.75], method="exact").pvalue)
    assert s["smallest_p"] == 0.5 and not s["called"]
    assert verdict.sentence.startswith("Too few non-zero differences to tell HSIC and Barlow apart: HSIC − Barlow = -0.92")
    assert "n = 3 seeds (each: the mean of the top 2 per loss)" in verdict.sentence
    assert "confirmed on the test split, which no selection step saw" in verdict.sentence
    # Each setting on its own, on the same 3 blocks (never pooled into 6).
    assert {k: r["pairs"] for k, r in verdict.per_rank.items()} == {1: 3, 2: 3}
    assert verdict.per_rank[1]["mean_difference"] == pytest.approx(np.mean([2.0, -0.5, 2.0]))
    assert verdict.per_rank[2]["mean_difference"] == pytest.approx(-3.0)
    assert "  setting 2 alone, same blocks: HSIC − Barlow = -3.00 points, n = 3" in "\n".join(verdict.lines())
    # The same runs with one setting per loss (top 1): still one difference per seed, n = 3.
    trials = load_trials(confirmed_store["uri"], ["conf"])
    top1 = trials[~((trials["stage"] == "confirm") & (trials["lmbda"] == 0.1))]
    one = build_leaderboard(top1).verdict
    assert one.top == 1 and one.statistics["pairs"] == 3 and one.unit == "seeds"
    assert one.statistics["mean_difference"] == pytest.approx(np.mean([87 - 85, 86.5 - 87, 88 - 86]))
    json_verdict = json.loads(format_leaderboard(board, "json"))["verdict"]
    assert json_verdict["statistics"]["pairs"] == 3 and json_verdict["stage"] == "confirm"


@pytest.mark.slow
def test_the_verdict_is_logged_on_the_parent_run(confirmed_store):
    board = build_leaderboard(load_trials(confirmed_store["uri"], ["conf"]))
    logged = log_verdict(board, confirmed_store["uri"])
    run = confirmed_store["client"].get_run(confirmed_store["parent"])
    assert "verdict.p_value" in logged and run.data.metrics["verdict.n"] == 3
    assert run.data.metrics["verdict.smallest_p"] == 0.5 and run.data.metrics["verdict.called"] == 0
    assert run.data.metrics["best.confirm.test_acc.barlow"] == 86.0
    assert run.data.metrics["verdict.ci_low"] < run.data.metrics["verdict.mean_difference"] < run.data.metrics["verdict.ci_high"]
    assert run.data.tags["sslsearch.verdict_stage"] == "confirm"
    assert run.data.tags["sslsearch.verdict"] == board.verdict.sentence
    client = confirmed_store["client"]
    files = {os.path.basename(f.path) for f in client.list_artifacts(confirmed_store["parent"], "leaderboard")}
    assert {"leaderboard.md", "leaderboard.json"} <= files
    text = open(client.download_artifacts(confirmed_store["parent"], "verdict.md", str(confirmed_store["folder"]))).read()
    assert text.startswith("# Verdict: conf") and f"**{board.verdict.sentence}**" in text and "Stage: confirm stage." in text


@pytest.mark.slow
def test_best_report_curve_counts_the_epochs_of_every_trial_in_report_order(tmp_path):
    client, uri, experiment_id = open_store(tmp_path)
    write_sweep(client, experiment_id, "anytime", [
        trial("a", "barlow", None, curve(50, 60)),            # reports epochs 0, 1, 2 at t+10, t+20, t+30
        trial("b", "hsic", None, curve(70)),                  # epochs 0, 1 at t+10, t+20
        trial("c", "barlow", None, curve(20), "errored"),     # costs an epoch, never best
    ])
    curve_ = best_report_curve(client, load_trials(uri, ["anytime"]))
    barlow = curve_[curve_["loss"] == "barlow"]
    hsic = curve_[curve_["loss"] == "hsic"]
    assert curve_["epochs"].is_monotonic_increasing and curve_["epochs"].max() == 4  # 2 + 1 + 1 epochs trained
    assert barlow["best_val_acc"].iloc[-1] == 60.0 and barlow["epochs"].iloc[-1] == 4
    assert barlow["best_val_acc"].is_monotonic_increasing and set(barlow["best_val_acc"]) == {50.0, 60.0}
    assert list(hsic["best_val_acc"]) == [70.0] and hsic["epochs"].iloc[0] <= 3


@pytest.mark.slow
def test_csv_piped_into_head_exits_quietly(store, tmp_path):
    """`sslsearch leaderboard --format csv | head -3` once ended in a BrokenPipeError traceback."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    command = (f"{shlex.quote(sys.executable)} -m sslsearch.cli leaderboard paired --format csv "
               f"--tracking-uri {shlex.quote(store['uri'])} 2> {shlex.quote(str(tmp_path / 'err'))}")
    # `head -c 0` leaves before the leaderboard writes: the write meets a closed pipe every time.
    done = subprocess.run(["bash", "-c", f"{command} | head -c 0; echo ${{PIPESTATUS[0]}}"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert done.stdout.strip() == "141"  # 128 + SIGPIPE, as a shell reports any writer its reader left
    assert (tmp_path / "err").read_text() == ""


def tied_trials(sweep="s"):
    """Load_trials-shaped rows of two finished barlow trials tied on val_acc and epochs: `b` took 10 s, `a` 500 s."""
    from sslsearch.analysis.leaderboard import TRIAL_COLUMNS

    return [{**dict.fromkeys(TRIAL_COLUMNS), "sweep": sweep, "stage": "search", "trial_id": trial_id,
             "run_id": f"{sweep}-{trial_id}", "loss": "barlow", "lmbda": 0.01, "lr": 1e-3, "feature_dim": 64, "seed": 0,
             "val_acc": 80.0, "best_val_acc": 80.0, "epochs": 4, "trial_seconds": seconds, "outcome": "completed",
             "dataset": "digits", "max_epochs": 4, "history": {}}
            for trial_id, seconds in (("b", 10.0), ("a", 500.0))]


def test_the_header_states_the_tie_breaks_the_ranking_uses():
    """The header once said "ties: more epochs, then less wall time, then trial id"; no ranking uses wall time."""
    board = build_leaderboard(pd.DataFrame(tied_trials()))
    assert list(board.ranked["trial_id"]) == ["a", "b"]   # 50 times slower, yet first: the trial id breaks the tie
    header = format_leaderboard(board, "table").splitlines()[1]
    assert header.startswith("ranked by val_acc (final report") and "wall" not in header
    assert header.split("ties: ", 1)[1].split(". ", 1)[0] == "more epochs, then the smaller trial id"
    order = json.loads(format_leaderboard(board, "json"))["ranking"]["order"]
    assert order == ["val_acc desc", "epochs desc", "trial_id asc", "sweep asc"]   # the words above, in this order
    # Pooled sweeps with the same trial ids: the sweep name comes last, in the ranking and in the header.
    pooled = build_leaderboard(pd.DataFrame(tied_trials("s") + tied_trials("t")))
    assert list(zip(pooled.ranked["trial_id"], pooled.ranked["sweep"])) == [("a", "s"), ("a", "t"), ("b", "s"), ("b", "t")]
    assert "ties: more epochs, then the smaller trial id, then the sweep name. " in format_leaderboard(pooled, "markdown")
