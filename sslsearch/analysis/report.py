"""The sweep as one self-contained HTML page, to read in any browser or mail to a colleague.

`sslsearch report [SWEEP ...] --out report.html` writes one file with everything inlined (CSS,
PNG plots as data: URIs; no script, no network): the sweep's setup, the verdict and the
leaderboard tables exactly as `sslsearch leaderboard` computes them (its Markdown, rendered, so
whatever the leaderboard adds shows here too), the plots of `leaderboard --plots`, the exported
checkpoint's card when one is given, and provenance. The file is also logged to each sweep's
MLflow parent run as `report.html`.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from sslsearch import __version__
from sslsearch.analysis.export_folder import CARD_JSON, CARD_MD
from sslsearch.analysis.leaderboard import (
    Leaderboard,
    build_leaderboard,
    count_line,
    format_leaderboard,
    load_trials,
    log_verdict,
    write_plots,
)
from sslsearch.errors import InputError, error_line
from sslsearch.records.query import records_client
from sslsearch.records.schema import PROVENANCE

REPORT_FILE = "report.html"
# The sweep's setup as the parent run records it (flattened experiment settings): (label, params).
SETUP = (
    ("data set", ("pretrain.dataset",)),
    ("backbone", ("pretrain.backbone",)),
    ("budget", ("pretrain.epochs", "search.num_samples", "search.time_budget_s", "search.max_concurrent")),
    ("method defaults", ("pretrain.batch_size", "pretrain.optimizer", "pretrain.schedule", "pretrain.normalization",
                         "pretrain.eval_every")),
    ("search", ("search.sampler", "search.seed", "search.paired")),
    ("scheduler", ("scheduler.type", "scheduler.grace_period", "scheduler.reduction_factor")),
    ("resources", ("resources.cpus_per_trial", "resources.gpus_per_trial")),
)
PLOT_CAPTIONS = {
    "val_acc_vs_lmbda": "Final val_acc of every ranked trial against λ (hollow: stopped early).",
    "val_acc_vs_lr": "Final val_acc of every ranked trial against the learning rate (hollow: stopped early).",
    "learning_curves": "val_acc at every report of the top trials per loss (epoch 0: random initialisation).",
    "best_report": "Best val_acc reported so far against the epochs the whole sweep had trained: what more budget bought.",
    "importances": "Optuna's parameter importances for val_acc (from the sweep's study).",
}


# --------------------------------------------------------------------------------------------
# Markdown (as the leaderboard and the model card write it) → HTML
# --------------------------------------------------------------------------------------------

def _inline(text: str) -> str:
    """Escape, then `code` and **bold** (the only inline marks the leaderboard and the card use)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(text: str, *, heading_offset: int = 1) -> str:
    """A small Markdown subset: headings, pipe tables (---: right-aligns a column), lists, code fences, paragraphs."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:end]))}</code></pre>")
            i = end + 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(len(m.group(1)) + heading_offset, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1]):
            headers, rule = _cells(line), _cells(lines[i + 1])
            right = [r.endswith(":") for r in rule]
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1

            def row_html(cells, tag):
                return "".join(f'<{tag}{" class=num" if n < len(right) and right[n] else ""}>{_inline(c)}</{tag}>'
                               for n, c in enumerate(cells))
            body = "".join(f"<tr>{row_html(r, 'td')}</tr>" for r in rows)
            out.append(f"<div class=scroll><table><thead><tr>{row_html(headers, 'th')}</tr></thead>"
                       f"<tbody>{body}</tbody></table></div>")
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                item = re.sub(r"^\s*[-*]\s+", "", lines[i])
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "```")):
                paragraph.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _sections(markdown: str) -> list[tuple[str | None, str]]:
    """Split the leaderboard's Markdown at its `## ` headings: [(title or None, body)]."""
    sections, title, body = [], None, []
    for line in markdown.splitlines():
        if line.startswith("## "):
            sections.append((title, "\n".join(body)))
            title, body = line[3:].strip(), []
        else:
            body.append(line)
    sections.append((title, "\n".join(body)))
    return [(t, b) for t, b in sections if t is not None or b.strip()]


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1f2430; --muted:#5f6b7a; --line:#e3e7ee; --band:#f5f7fa; --barlow:#1f77b4; --hsic:#ff7f0e; --accent:#2d6cdf; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:#fff; }
header { background:linear-gradient(135deg,#1f2a44,#2d4a7a); color:#fff; padding:28px 0 24px; }
.wrap { max-width:1120px; margin:0 auto; padding:0 28px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:.2px; }
header p { margin:0; color:#c9d5ea; }
nav { border-bottom:1px solid var(--line); background:#fff; position:sticky; top:0; z-index:1; }
nav a { display:inline-block; padding:10px 12px; color:var(--muted); text-decoration:none; font-size:14px; }
nav a:hover { color:var(--accent); }
section { padding:22px 0 8px; border-bottom:1px solid var(--line); }
h2 { font-size:20px; margin:0 0 14px; }
h3 { font-size:16px; margin:18px 0 8px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(230px,1fr)); gap:14px; margin-bottom:14px; }
.card { border:1px solid var(--line); border-radius:10px; padding:14px 16px; background:var(--band); }
.card .label { color:var(--muted); font-size:13px; text-transform:uppercase; letter-spacing:.6px; }
.card .value { font-size:30px; font-weight:650; margin:2px 0; font-variant-numeric:tabular-nums; }
.card .detail { color:var(--muted); font-size:13px; }
.card.barlow { border-left:5px solid var(--barlow); } .card.hsic { border-left:5px solid var(--hsic); }
.card.winner { background:#eef4ff; }
.verdict p { margin:10px 0; padding:10px 14px; background:#f3f7ff; border-left:4px solid var(--accent); border-radius:4px; }
.verdict p.sentence { font-size:18px; font-weight:600; line-height:1.45; }
.stage { display:inline-block; font-size:12px; font-weight:600; text-transform:uppercase; letter-spacing:.5px; color:#fff;
         background:var(--accent); border-radius:4px; padding:1px 7px; margin-right:6px; vertical-align:2px; }
ul.evidence { color:var(--muted); font-size:13px; margin:4px 0 12px; padding-left:18px; }
table { border-collapse:collapse; width:100%; font-size:14px; font-variant-numeric:tabular-nums; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--band); font-weight:600; }
td.num, th.num { text-align:right; }
tbody tr:nth-child(even) td { background:#fafbfd; }
.scroll { overflow-x:auto; margin:6px 0 12px; }
dl.setup { display:grid; grid-template-columns:max-content 1fr; gap:6px 18px; margin:0; }
dl.setup dt { color:var(--muted); } dl.setup dd { margin:0; }
code { font:13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:var(--band); padding:1px 4px;
       border-radius:4px; }
pre { background:var(--band); padding:12px; border-radius:8px; overflow-x:auto; } pre code { background:none; padding:0; }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(470px,1fr)); gap:18px; }
figure { margin:0; border:1px solid var(--line); border-radius:10px; padding:10px; background:#fff; }
figure img { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
.note { color:var(--muted); font-size:13px; }
table.keys td:first-child { width:220px; color:var(--muted); }
footer { color:var(--muted); font-size:13px; padding:18px 0 40px; }
"""


def _e(value) -> str:
    return html.escape("—" if value in (None, "") else str(value))


def _setup_html(parent) -> str:
    params = parent.data.params
    rows = []
    for label, keys in SETUP:
        present = [k for k in keys if params.get(k) not in (None, "None")]
        if len(keys) == 1:  # the label names it already
            shown = [f"<code>{_e(params[k])}</code>" for k in present]
        else:
            shown = [f"{k.split('.', 1)[1]} <code>{_e(params[k])}</code>" for k in present]
        if label == "backbone" and not shown:
            dataset = params.get("pretrain.dataset")
            shown = [f"<code>{'small_cnn' if dataset == 'digits' else 'resnet50'}</code> (the default for {_e(dataset)})"]
        if shown:
            rows.append(f"<dt>{_e(label)}</dt><dd>{', '.join(shown)}</dd>")
    started = datetime.datetime.fromtimestamp(parent.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    rows.append(f"<dt>started</dt><dd>{_e(started)} (status {_e(parent.info.status)})</dd>")
    space = sorted((k.split(".", 1)[1], v) for k, v in params.items() if k.startswith("space."))
    table = ""
    if space:
        body = "".join(f"<tr><td><code>{_e(name)}</code></td><td>{_e(spec)}</td></tr>" for name, spec in space)
        table = ("<h3>search space</h3><div class=scroll><table><thead><tr><th>parameter</th><th>distribution</th></tr>"
                 f"</thead><tbody>{body}</tbody></table></div>")
    return f"<dl class=setup>{''.join(rows)}</dl>{table}"


def _verdict_html(board: Leaderboard) -> str:
    """The first screen: the verdict's sentence with its stage, then one card per loss — the confirmed result when
    there is one (the search-stage best beside it, labelled so), else the search-stage best, labelled unconfirmed."""
    verdict = board.verdict
    stage = {"confirm": "confirm stage · test split", "search": "search stage only · val split"}.get(verdict.stage, verdict.stage)
    variants = board.head_to_head.get("variants", {})
    cards = []
    for loss, best in verdict.best.items():
        winner = " winner" if verdict.called and verdict.leader == loss else ""
        searched = variants.get(loss)
        if best["stage"] == "confirm":
            label = f"{_e(loss)} · confirmed test_acc, mean of {best['seeds']} seeds"
            interval = f"[{best['ci_low']:.2f}, {best['ci_high']:.2f}] · " if best["ci_low"] is not None else ""
            detail = (f"{interval}λ {best['lmbda']:.4g}, lr {best['lr']:.4g}, feature_dim {best['feature_dim']}"
                      + (f"<br>search-stage best val_acc {searched['best_val_acc']:.2f} (one run, biased upward)"
                         if searched else ""))
        else:
            label = f"{_e(loss)} · search-stage best val_acc (unconfirmed)"
            detail = (f"trial {_e(best['trial'])}, {best['epochs']} epochs · one run, the best of "
                      f"{searched['trials'] if searched else '?'}: biased upward")
        value = "—" if best["value"] is None else f"{best['value']:.2f}"
        cards.append(f"<div class='card {html.escape(loss)}{winner}'><div class=label>{label}</div>"
                     f"<div class=value>{value}</div><div class=detail>{detail}</div></div>")
    details = "".join(f"<li>{_inline(line.strip())}</li>" for line in verdict.lines()[1:])
    return (f"<p class=sentence><span class=stage>{_e(stage)}</span> {_inline(verdict.sentence)}</p>"
            f"<div class=cards>{''.join(cards)}</div><ul class=evidence>{details}</ul>")


def _plots_html(files: list[str], notes: list[str]) -> str:
    figures = []
    for file in files:
        stem = Path(file).stem
        key = next((k for k in PLOT_CAPTIONS if stem.startswith(k)), None)
        data = base64.b64encode(Path(file).read_bytes()).decode("ascii")
        figures.append(f"<figure><img alt='{_e(stem)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_e(PLOT_CAPTIONS.get(key, stem))}</figcaption></figure>")
    note = "".join(f"<p class=note>{_e(n)}</p>" for n in notes)
    return f"<div class=plots>{''.join(figures)}</div>{note}"


def _card_html(card_dir: Path | None) -> str | None:
    if card_dir is None:
        return None
    md = card_dir / CARD_MD
    card = json.loads((card_dir / CARD_JSON).read_text())
    body = markdown_html(md.read_text(), heading_offset=2) if md.is_file() else f"<pre>{_e(json.dumps(card, indent=2))}</pre>"
    return f"<p class=note>From <code>{_e(card_dir)}</code>.</p>{body}"


def _provenance_html(parents: dict) -> str:
    rows = []
    for sweep, parent in parents.items():
        tags = parent.data.tags
        cells = "".join(f"<tr><td>{_e(label)}</td><td><code>{_e(tags.get(key))}</code></td></tr>" for label, key in PROVENANCE)
        rows.append(f"<h3>sweep {_e(sweep)} (MLflow run <code>{_e(parent.info.run_id)}</code>)</h3>"
                    f"<div class=scroll><table class=keys><tbody>{cells}</tbody></table></div>")
    made = (f"Report made {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by sslsearch {__version__} "
            f"on {platform.node() or 'this machine'} ({platform.platform()}, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}).")
    return "".join(rows) + f"<p class=note>{_e(made)}</p>"


def _check_card(card: str | os.PathLike | None) -> Path | None:
    if card is None:
        return None
    folder = Path(card)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / CARD_JSON).is_file():
        raise InputError(f"--card {card}: no {CARD_JSON} there; give the folder `sslsearch export --out` wrote")
    return folder.resolve()


def render_report(board: Leaderboard, parents: dict, plots: dict, card: Path | None = None) -> str:
    """The HTML page for a built leaderboard, its sweeps' parent runs ({sweep: Run}), `write_plots`' result and a card folder."""
    sections = _sections(format_leaderboard(board, "markdown", verdict=False))
    verdict = [b for t, b in sections if t and t.startswith("head-to-head")]
    tables = [(t, b) for t, b in sections if not (t and t.startswith("head-to-head"))]
    names = ", ".join(board.sweeps)
    first = next(iter(parents.values()))
    dataset = first.data.params.get("pretrain.dataset", "?")
    subtitle = f"{dataset} · {count_line(board.counts)}"
    parts = [("verdict", "Verdict", (f"<div class=verdict>{_verdict_html(board)}"
                                     f"<h3>head-to-head</h3>{''.join(markdown_html(v) for v in verdict)}</div>")),
             ("setup", "Setup", "".join((f"<h3>sweep {_e(s)}</h3>" if len(parents) > 1 else "") + _setup_html(p)
                                        for s, p in parents.items())),
             ("leaderboard", "Leaderboard", "".join((f"<h3>{_inline(t)}</h3>" if t else "") + markdown_html(b)
                                                    for t, b in tables)),
             ("plots", "Plots", _plots_html(plots["files"], plots["notes"]))]
    card_html = _card_html(card)
    if card_html is not None:
        parts.append(("card", "Exported model", card_html))
    parts.append(("provenance", "Provenance", _provenance_html(parents)))
    nav = "".join(f"<a href='#{key}'>{title}</a>" for key, title, _ in parts)
    body = "".join(f"<section id={key}><div class=wrap><h2>{title}</h2>{content}</div></section>"
                   for key, title, content in parts)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>sslsearch report: {_e(names)}</title><style>{CSS}</style></head><body>"
            f"<header><div class=wrap><h1>sslsearch report: {_e(names)}</h1><p>{_e(subtitle)}</p></div></header>"
            f"<nav><div class=wrap>{nav}</div></nav>{body}"
            f"<footer><div class=wrap>Self-contained: every plot is inside this file. "
            f"Ranking and statistics as <code>sslsearch leaderboard</code> computes them.</div></footer></body></html>\n")


def write_report(tracking_uri: str, sweeps: list[str] | None, out: str | os.PathLike, *, storage: str | os.PathLike | None = None,
                 card: str | os.PathLike | None = None, top: int | None = 10, log: bool = True) -> dict:
    """Write the report of `sweeps` (None: the latest with a finished trial) to `out` and log it to each
    sweep's parent run, with the verdict (`log_verdict`). Returns {"file", "sweeps", "notes", "logged", "verdict"}."""
    out = Path(out).resolve()
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / REPORT_FILE}")
    card_dir = _check_card(card)
    board = build_leaderboard(load_trials(tracking_uri, sweeps), top=top)
    client = records_client(tracking_uri)
    parent_ids = dict(board.trials[["sweep", "parent_run_id"]].drop_duplicates().itertuples(index=False))
    parents = {sweep: client.get_run(parent_ids[sweep]) for sweep in board.sweeps}
    with tempfile.TemporaryDirectory() as folder:
        plots = write_plots(board, folder, tracking_uri, storage=storage, log=False)
        page = render_report(board, parents, plots, card_dir)
    staged = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(page, encoding="utf-8")
        staged.replace(out)  # never a half-written report under the real name
    except OSError as error:
        if staged.parent.is_dir():
            staged.unlink(missing_ok=True)
        raise InputError(f"cannot write the report {out} ({error.strerror or error_line(error)}); "
                         "give another --out") from None
    logged = []
    if log:
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / REPORT_FILE  # the same name on every run, whatever --out was
            copy.write_text(page, encoding="utf-8")
            for sweep, parent in parents.items():
                client.log_artifact(parent.info.run_id, str(copy))
                logged.append(parent.info.run_id)
        if len(board.sweeps) == 1:
            log_verdict(board, tracking_uri)   # the same verdict on the parent run: tags, metrics, verdict.md
    return {"file": str(out), "sweeps": board.sweeps, "notes": plots["notes"], "logged": logged,
            "verdict": board.verdict.sentence}
