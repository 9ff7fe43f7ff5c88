"""`sslsearch report`: one self-contained HTML page, rendered in a real headless Chromium."""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from browser import find_browser, open_page  # noqa: E402
from sslsearch.analysis.leaderboard import build_leaderboard, format_leaderboard, load_trials  # noqa: E402
from sslsearch.analysis.report import markdown_html  # noqa: E402
from sslsearch.cli import main  # noqa: E402
from test_leaderboard import PAIRED, SEARCH, _confirm_trials, open_store, write_sweep  # noqa: E402

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
  sentence: (() => { const p = document.querySelector('p.sentence'); const r = p.getBoundingClientRect();
                     return {text: p.innerText, top: r.top, bottom: r.bottom}; })(),
  cards: Array.from(document.querySelectorAll('.card')).map(c => {
    const r = c.getBoundingClientRect(); return {text: c.innerText, bottom: r.bottom}; }),
}))()"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-records")
    client, uri, experiment_id = open_store(folder)
    parent, _ = write_sweep(client, experiment_id, "paired", PAIRED)
    confirmed, _ = write_sweep(client, experiment_id, "conf", SEARCH + _confirm_trials())
    return {"client": client, "uri": uri, "parent": parent, "folder": folder, "confirmed_parent": confirmed}


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
    board = build_leaderboard(load_trials(records["uri"], ["paired"]))
    assert captured.out.strip().splitlines() == [
        f"report of paired: {out} (also logged to the sweep's MLflow run as report.html)", f"verdict: {board.verdict.sentence}"]
    page = out.read_text()
    # Self-contained: nothing is fetched when it is opened (every src/href is inline or an anchor).
    targets = re.findall(r"""(?:src|href)=['"]?([^'"\s>]+)""", page)
    assert targets and all(t.startswith(("data:image/png;base64,", "#")) for t in targets), targets
    assert "<script" not in page
    # Whatever the leaderboard computes is there: its Markdown, rendered.
    assert "search pairs at the full budget (hsic − barlow val_acc): n = 2" in format_leaderboard(board, "markdown")
    assert "search pairs at the full budget (hsic − barlow val_acc): n = 2" in page
    assert "digits · 11 search trials (7 completed, 2 stopped early, 1 errored, 1 running)" in page   # counts add up
    logged = [a.path for a in records["client"].list_artifacts(records["parent"])]
    assert "report.html" in logged and "verdict.md" in logged

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
    # The first screen (1280 × 800): the verdict's sentence with its stage, then the cards, labelled by stage.
    assert found["sentence"]["text"].startswith("SEARCH STAGE ONLY · VAL SPLIT Search stage only — run sslsearch confirm paired")
    assert found["sentence"]["bottom"] < 800 and all(c["bottom"] < 800 for c in found["cards"]), found
    assert "HSIC · SEARCH-STAGE BEST VAL_ACC (UNCONFIRMED)\n85.00" in found["text"]
    assert "importances for paired: skipped" in found["text"]  # no study file here: said, not hidden


@pytest.mark.slow
def test_after_a_confirm_the_headline_is_the_confirmed_result(records, tmp_path):
    out = tmp_path / "confirmed.html"
    assert main(["report", "conf", "--tracking-uri", records["uri"], "--out", str(out), "--no-log"]) == 0
    board = build_leaderboard(load_trials(records["uri"], ["conf"]))
    if find_browser() is None:
        pytest.fail("no Chromium to render the report: apt-get install chromium (.ci/run does)")
    found = open_page(out.as_uri(), PROBE, width=1280, height=800).probe
    assert found["sentence"]["text"] == f"CONFIRM STAGE · TEST SPLIT {board.verdict.sentence}"
    assert found["sentence"]["bottom"] < 800 and all(c["bottom"] < 800 for c in found["cards"]), found
    barlow = next(c["text"] for c in found["cards"] if c["text"].startswith("BARLOW"))
    # The confirmed test_acc mean over its 3 seeds (87, 86 − 1 = 85, 87, 86 → 86.00); the search-stage best beside it.
    assert barlow.startswith("BARLOW · CONFIRMED TEST_ACC, MEAN OF 3 SEEDS\n86.00")
    assert "search-stage best val_acc 90.00 (one run, biased upward)" in barlow
    assert "8 search trials (4 completed, 4 stopped early) + 12 confirmation runs (12 completed)" in found["text"]


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


def test_the_report_states_the_tie_breaks_the_ranking_uses():
    """The report shows the leaderboard's own header: the tie-breaks `rank_trials` uses, never wall time."""
    import types

    import pandas as pd

    from sslsearch.analysis.report import render_report
    from test_leaderboard import tied_trials

    board = build_leaderboard(pd.DataFrame(tied_trials()))
    parent = types.SimpleNamespace(data=types.SimpleNamespace(params={"pretrain.dataset": "digits"}, tags={}),
                                   info=types.SimpleNamespace(start_time=0, status="FINISHED", run_id="parent"))
    page = render_report(board, {"s": parent}, {"files": [], "notes": []})
    assert "ties: more epochs, then the smaller trial id." in page and "wall time" not in page
