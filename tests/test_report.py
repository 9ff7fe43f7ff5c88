"""`sslsearch report`: one self-contained HTML page, rendered in a real headless Chromium."""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from browser import find_browser, open_page  # noqa: E402
from test_leaderboard import PAIRED, open_store, write_sweep  # noqa: E402

from sslsearch.analysis.leaderboard import build_leaderboard, format_leaderboard, load_trials  # noqa: E402
from sslsearch.analysis.report import markdown_html  # noqa: E402
from sslsearch.cli import main  # noqa: E402

CARD_MD = """# small_cnn pretrained with hsic on digits

Best trial of sweep `paired` by `val_acc`.

| metric | value |
| --- | ---: |
| val_acc | 85.00 |

```python
backbone.load_state_dict(torch.load("backbone.pt", weights_only=True))
```
"""
PROBE = """(() => ({
  sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
  tables: document.querySelectorAll('table').length,
  rows: document.querySelectorAll('tbody tr').length,
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  text: document.body.innerText,
}))()"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-records")
    client, uri, experiment_id = open_store(folder)
    parent, _ = write_sweep(client, experiment_id, "paired", PAIRED)
    return {"client": client, "uri": uri, "parent": parent, "folder": folder}


def test_markdown_tables_headings_and_code_become_html():
    page = markdown_html(CARD_MD)
    assert "<h2>small_cnn pretrained with hsic on digits</h2>" in page
    assert "<th>metric</th><th class=num>value</th>" in page and "<td class=num>85.00</td>" in page
    assert "<code>paired</code>" in page and "<pre><code>backbone.load_state_dict(" in page
    assert "<script" not in markdown_html("<script>alert(1)</script> `<b>`")  # escaped, never markup


@pytest.mark.slow
def test_report_is_one_self_contained_file_logged_to_the_sweep_run(records, tmp_path, capsys, tmp_path_factory):
    card = tmp_path / "exported"
    card.mkdir()
    (card / "model_card.json").write_text("{}")
    (card / "model_card.md").write_text(CARD_MD)
    out = tmp_path / "report.html"
    code = main(["report", "paired", "--tracking-uri", records["uri"], "--out", str(out), "--card", str(card)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == f"report of paired: {out} (also logged to the sweep's MLflow run as report.html)"
    page = out.read_text()
    # Self-contained: nothing is fetched when it is opened (every src/href is inline or an anchor).
    targets = re.findall(r"""(?:src|href)=['"]?([^'"\s>]+)""", page)
    assert targets and all(t.startswith(("data:image/png;base64,", "#")) for t in targets), targets
    assert "<script" not in page
    # Whatever the leaderboard computes is there: its Markdown, rendered.
    board = build_leaderboard(load_trials(records["uri"], ["paired"]))
    assert "search pairs (hsic − barlow val_acc at the last epoch both evaluated): n = 4 pairs" in format_leaderboard(board, "markdown")
    assert "search pairs (hsic − barlow val_acc at the last epoch both evaluated): n = 4 pairs" in page
    logged = [a.path for a in records["client"].list_artifacts(records["parent"])]
    assert "report.html" in logged

    if find_browser() is None:
        pytest.fail("no Chromium to render the report: apt-get install chromium (.ci/run does)")
    rendered = open_page(out.as_uri(), PROBE, width=1280)
    shot = tmp_path_factory.getbasetemp() / "screenshots"
    shot.mkdir(exist_ok=True)
    (shot / "report.png").write_bytes(rendered.screenshot)
    print(f"screenshot: {shot / 'report.png'}")
    found = rendered.probe
    assert rendered.errors == []
    assert found["sections"] == ["Verdict", "Setup", "Leaderboard", "Plots", "Exported model", "Provenance"]
    # head-to-head, barlow, hsic, the card's metrics, one provenance table.
    assert found["tables"] == 5 and found["rows"] >= 4 + 4 + 2 + 1
    assert [i["alt"].split("-")[0] for i in found["images"]] == ["val_acc_vs_lmbda", "val_acc_vs_lr", "learning_curves",
                                                                 "best_report"]
    assert all(i["complete"] and i["width"] >= 600 for i in found["images"]), found["images"]  # no broken image
    assert "HSIC · BEST VAL_ACC\n85.00" in found["text"]
    assert "importances for paired: skipped" in found["text"]  # no study file here: said, not hidden


@pytest.mark.slow
def test_bad_report_requests_are_one_line(records, tmp_path, capsys):
    for argv, message in ((["--out", str(tmp_path)], "is a folder; give the HTML file"),
                          (["--card", str(tmp_path)], "no model_card.json there"),
                          (["nosuch"], "unknown sweep 'nosuch'")):
        code = main(["report", "--tracking-uri", records["uri"], "--out", str(tmp_path / "r.html"), *argv]
                    if argv[0] != "--out" else ["report", "--tracking-uri", records["uri"], *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r.html").exists()
