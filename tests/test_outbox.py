"""An outbox that cannot jam: every line `sync` or `resume` cannot replay is set aside with one warning naming it,
and every other record still reaches MLflow, in order (issue 22, item 4). Real files, a real SQLite MLflow store."""

import json
import logging

from mlflow import MlflowClient

from sslsearch.records.tracking import QUARANTINE_FILE, MlflowTracking, Outbox, default_tracking_uri, unsent_records
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space

TINY = ["pretrain.epochs=2", "pretrain.eval_every=1", "search.num_samples=2"]
CONFIG = {"loss": "barlow", "lmbda": 0.01, "base": {"epochs": 2, "loss": "barlow"}}


def _line(seq, record) -> str:
    return json.dumps({"seq": seq, "record": record})


# (line, what the warning or the quarantine file says about it); the good records are interleaved with them.
MALFORMED = [
    ("not json {", "not JSON"),
    ("{}", "no 'seq'"),
    ('{"record": ["end", "FINISHED"]}', "no 'seq'"),
    ('{"seq": "3", "record": ["end", "FINISHED"]}', "'seq' is '3'"),
    ('{"seq": true, "record": ["end", "FINISHED"]}', "'seq' is True"),
    ('{"seq": 0, "record": ["end", "FINISHED"]}', "'seq' is 0"),
    ('{"seq": 9, "record": "metrics"}', "'record' is 'metrics'"),
    ('{"seq": 9, "record": []}', "'record' is []"),
    ('{"seq": 9, "record": [7, 1]}', "'record' is [7, 1]"),
    ('{"seq": 9, "record": ["rm_rf", "/"]}', "unknown record kind 'rm_rf'"),
    ("[1, 2]", "a JSON list"),
    ('"text"', "a JSON str"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
]


def test_malformed_outbox_lines_are_quarantined_with_one_warning_and_the_rest_is_replayed(tmp_path, caplog):
    experiment = load_experiment(None, TINY)
    folder = tmp_path / "s"
    folder.mkdir()
    good = [_line(1, ["trial", "aaaa0001", CONFIG]), _line(2, ["metrics", "aaaa0001", 0, {"val_acc": 50.0}, {}]),
            # a kind MLflow knows, with arguments no writer takes: set aside when it is sent, not retried forever
            _line(3, ["metrics", "aaaa0001"]),
            _line(4, ["metrics", "aaaa0001", 1, {"val_acc": 60.0}, {}])]
    lines = [good[0], *(text for text, _ in MALFORMED[:7]), good[1], good[2], *(text for text, _ in MALFORMED[7:]), good[3]]
    (folder / "mlflow-outbox.jsonl").write_text("\n".join(lines) + "\n")

    caplog.set_level(logging.WARNING, logger="sslsearch.records.tracking")
    tracking = MlflowTracking(experiment, load_search_space(experiment.space_path()), sweep="s", storage=str(tmp_path))
    assert [number for number, _ in tracking.outbox.pending] == [1, 2, 3, 4]
    assert tracking.drain() == 0

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings   # one for the lines read back, one for the record no writer takes
    assert f"skipped {len(MALFORMED)} malformed line(s)" in warnings[0] and str(folder / QUARANTINE_FILE) in warnings[0]
    assert "line 2: not JSON; line 3: no 'seq'; line 4: no 'seq'" in warnings[0]
    assert warnings[1].startswith("MLflow outbox record 3 ('metrics') cannot be written (missing a required argument")
    quarantined = [json.loads(line) for line in (folder / QUARANTINE_FILE).read_text().splitlines()]
    assert len(quarantined) == len(MALFORMED) + 1
    for entry, (text, problem) in zip(quarantined, MALFORMED):
        assert entry["text"] == text and problem in entry["problem"], entry["problem"]
    assert quarantined[-1]["seq"] == 3 and quarantined[-1]["record"] == ["metrics", "aaaa0001"]

    client = MlflowClient(default_tracking_uri(str(tmp_path)))
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id])
              if r.data.tags.get("sslsearch.trial_id") == "aaaa0001"]
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(0, 50.0), (1, 60.0)]
    assert unsent_records(str(folder)) == 0 and not (folder / "mlflow-outbox.jsonl").exists()


def test_a_reread_outbox_is_clean_and_warns_no_more(tmp_path, caplog):
    (tmp_path / "mlflow-outbox.jsonl").write_text("{}\n" + _line(1, ["end", "FINISHED"]) + "\n")
    caplog.set_level(logging.WARNING, logger="sslsearch.records.tracking")
    assert [n for n, _ in Outbox(tmp_path).pending] == [1]
    assert [n for n, _ in Outbox(tmp_path).pending] == [1]
    assert len(caplog.records) == 1   # the bad line left the outbox the first time
    assert (tmp_path / "mlflow-outbox.jsonl").read_text() == _line(1, ["end", "FINISHED"]) + "\n"
