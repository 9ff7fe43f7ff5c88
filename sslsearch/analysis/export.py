"""The winning backbone in hand: export the best trial's weights with a model card, and load them back.

Which trial, by default: the **confirmed winner** when the sweep was confirmed (`sslsearch
confirm`): the confirmed rank-1 configuration (best mean `val_acc` over its seeds) of the better
loss — the loss the verdict found ahead, or, when the verdict found no evidence of a difference,
the loss whose rank-1 has the higher mean `val_acc` (the card then says there is no evidence that
it is the better loss) — and of its seeds the run whose `val_acc` is closest to that mean (ties:
the lower seed). The typical run, not the luckiest: picking the best seed would select on noise
again, the winner's curse that confirmation removes. The card carries the verdict. Without
confirmation (or with `stage="search"`), the best finished search
trial by `val_acc` (the leaderboard's ranking and tie-break, see sslsearch.analysis.leaderboard).
`export_best` downloads the chosen trial's checkpoint from MLflow and writes:
- `backbone.pt`: a plain state_dict of the backbone only (the `backbone.` prefix stripped), so the
  ResNets keep torchvision's key names; `torch.load(..., weights_only=True)` reads it;
- `model_card.json` and `model_card.md`: configuration, metrics, data set, seed, sweep, MLflow run
  id, versions and the sha256 of `backbone.pt`.

Which checkpoint: `checkpoints/last.pt`, falling back to `checkpoints/best.pt`. The trial was ranked
on its *final* `val_acc`, and `test_acc` was measured once, on the final model; `best.pt` may hold
an earlier epoch whose test accuracy was never measured. The card's metrics are always read from
the exported checkpoint's own history at its epoch, so they describe exactly these weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from sslsearch import __version__
from sslsearch.analysis.export_folder import BACKBONE_FILE, CARD_JSON, CARD_MD, check_export_folder
from sslsearch.analysis.leaderboard import (
    LOSSES,
    TRIAL_ORDER,
    build_leaderboard,
    json_value,
    load_trials,
    rank_trials,
    tie_break_words,
)
from sslsearch.errors import InputError, error_line, first_line, shown_path
from sslsearch.records.query import records_client
from sslsearch.records.schema import SWEEP, TRIAL_ID

CARD_FORMAT = 3  # 2: `selection.stage` and `confirmation`; 3: `verdict`, `selection.loss_choice`
CHECKPOINTS = ("checkpoints/last.pt", "checkpoints/best.pt")   # in order of preference; see the module docstring
ALIAS = "champion"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backbone_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The backbone's weights from an sslsearch checkpoint, keys without the `backbone.` prefix."""
    prefix = "backbone."
    return {k[len(prefix):]: v.detach().clone().contiguous() for k, v in checkpoint["model"].items() if k.startswith(prefix)}


def torchvision_recipe(backbone: str, image_size: int) -> list[str] | None:
    """Code lines that build the same backbone from plain torchvision (ResNets only)."""
    if not backbone.startswith("resnet"):
        return None
    lines = [f"model = torchvision.models.{backbone}()",
             "model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)"]
    if image_size <= 32:
        lines.append("model.maxpool = nn.Identity()")  # the reference drops it at 32 px, keeps it above
    return lines + ["model.fc = nn.Identity()",
                    f"model.load_state_dict(torch.load('{BACKBONE_FILE}', weights_only=True), strict=True)"]


def _history_row(checkpoint: dict) -> dict:
    epoch = checkpoint["epoch"]
    return next((r for r in checkpoint.get("history", []) if r.get("epoch") == epoch), {})


def _model_card(checkpoint: dict, trial, rank_overall: int, candidates: int, skipped: list[str], source: str,
                tracking_uri: str, weights_sha256: str, n_tensors: int, n_parameters: int) -> dict:
    import torchvision

    from sslsearch.method.augment import PRESETS
    from sslsearch.method.train import PretrainConfig

    config = PretrainConfig.from_dict(checkpoint["config"])
    row = _history_row(checkpoint)
    preset = PRESETS[checkpoint["preset"]]
    backbone = config.resolved_backbone()
    return {
        "card_format": CARD_FORMAT,
        "sweep": trial["sweep"],
        "trial_id": trial["trial_id"],
        "mlflow_run_id": trial["run_id"],
        "tracking_uri": tracking_uri,
        "checkpoint": {"artifact": source, "epoch": int(checkpoint["epoch"])},
        "loss": config.loss,
        "hyperparameters": {"lmbda": config.lmbda, "lr": config.lr, "feature_dim": config.feature_dim,
                            "loss": config.loss, "seed": config.seed},
        # Of these weights: the checkpoint's own evaluation at its epoch. test_acc is None unless
        # that epoch was the trial's final one (test data is evaluated once, at the end).
        "metrics": {"val_acc": row.get("val_acc"), "test_acc": row.get("test_acc"), "knn_acc": row.get("knn_acc"),
                    "epoch": int(checkpoint["epoch"])},
        "selection": {"stage": "search", "metric": "val_acc (final report)", "mode": "max",
                      "tie_break": tie_break_words(TRIAL_ORDER),
                      "ranked_outcomes": ["completed", "stopped early"], "rank": rank_overall, "candidates": candidates,
                      "skipped_without_checkpoint": skipped, "loss_filter": None,
                      "val_acc": json_value(trial["val_acc"]), "test_acc": json_value(trial["test_acc"]),
                      "epochs": int(trial["epochs"]), "outcome": trial["outcome"]},
        "confirmation": None,
        "dataset": config.dataset,
        "classes": list(checkpoint.get("classes", [])),
        "seed": config.seed,
        "split_seed": config.split_seed,
        "val_fraction": config.val_fraction,
        "backbone": backbone,
        "image_size": int(checkpoint["image_size"]),
        "preset": checkpoint["preset"],
        "input": {"eval_resize": preset.eval_resize, "eval_crop": preset.eval_crop,
                  "input_size": preset.eval_crop or int(checkpoint["image_size"]),
                  "mean": list(preset.mean), "std": list(preset.std),
                  "scale": "RGB in [0, 1] (uint8 / 255), then (x - mean) / std per channel"},
        "torchvision": torchvision_recipe(backbone, int(checkpoint["image_size"])),
        "config": checkpoint["config"],
        "weights": {"file": BACKBONE_FILE, "sha256": weights_sha256, "tensors": n_tensors, "parameters": n_parameters,
                    "format": "state_dict of the backbone only; torch.load(path, weights_only=True)"},
        "versions": {"sslsearch": __version__, "torch": str(torch.__version__), "torchvision": torchvision.__version__,
                     "trained_with": {"sslsearch": checkpoint.get("sslsearch_version"),
                                      "torch": checkpoint.get("torch_version")}},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fmt(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def card_markdown(card: dict) -> str:
    """The model card as Markdown (the JSON card is the complete one)."""
    m, s, h, c = card["metrics"], card["selection"], card["hyperparameters"], card.get("confirmation")
    if c:
        chosen = (f"Confirmed winner of sweep `{card['sweep']}`: the {card['loss']} configuration with the best mean "
                  f"`val_acc` over {c['seeds']} fresh seeds (rank {s['rank']} of {s['candidates']} confirmed {card['loss']} "
                  "configurations"
                  f"{', loss ' + s['loss_filter'] if s['loss_filter'] else ''}), its seed {h['seed']} run (the one closest "
                  f"to the mean); trial `{card['trial_id']}`, ")
    else:
        chosen = (f"Best trial of sweep `{card['sweep']}` by `val_acc` (rank {s['rank']} of {s['candidates']} finished "
                  f"trials{', loss ' + s['loss_filter'] if s['loss_filter'] else ''}; not confirmed with fresh seeds, so "
                  f"its score is the best of many noisy runs); trial `{card['trial_id']}`, ")
    verdict = card.get("verdict") or {}
    lines = [
        f"# {card['backbone']} pretrained with {card['loss']} on {card['dataset']}",
        "",
        *([f"**Verdict ({verdict['stage']} stage): {verdict['sentence']}**", "",
           f"Why {card['loss']}: {s.get('loss_choice')}.", ""] if verdict else []),
        chosen + f"MLflow run `{card['mlflow_run_id']}`, checkpoint `{card['checkpoint']['artifact']}` "
        f"(epoch {card['checkpoint']['epoch']}).",
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| val_acc (fast linear probe, validation split) | {_fmt(m['val_acc'])} |",
        f"| test_acc (same probe, test split; reported, never used to choose) | {_fmt(m['test_acc'])} |",
        f"| knn_acc (weighted kNN, k={card['config'].get('knn_k')}, T={card['config'].get('knn_temperature')}) "
        f"| {_fmt(m['knn_acc'])} |",
        f"| epochs | {m['epoch']} |",
        "",
    ]
    if c:
        interval = (f" (95% t-interval [{c['val_acc_ci_low']:.2f}, {c['val_acc_ci_high']:.2f}])"
                    if c["val_acc_ci_low"] is not None else "")
        test_interval = (f" (95% t-interval [{c['test_acc_ci_low']:.2f}, {c['test_acc_ci_high']:.2f}])"
                         if c.get("test_acc_ci_low") is not None else "")
        lines += [f"Confirmation over {c['seeds']} seeds ({', '.join(str(k) for k in c['seed_val_acc'])}): val_acc mean "
                  f"{c['val_acc_mean']:.2f}{interval}, test_acc mean {_fmt(c['test_acc_mean'])}{test_interval}; "
                  f"search-time val_acc of this configuration {_fmt(c['search_val_acc'])} (trial `{c['search_trial']}`, "
                  f"{c.get('search_epochs')} epochs).", ""]
    lines += [
        f"Hyperparameters: loss {h['loss']}, λ {h['lmbda']:.6g}, lr {h['lr']:.6g}, feature_dim {h['feature_dim']}, "
        f"seed {h['seed']}.",
        "",
        f"Weights: `{card['weights']['file']}`, {card['weights']['parameters']:,} parameters, "
        f"sha256 `{card['weights']['sha256']}`.",
        f"Input: {card['input']['input_size']} px, {card['input']['scale']}; mean {card['input']['mean']}, "
        f"std {card['input']['std']}"
        + (f"; resize the shorter side to {card['input']['eval_resize']} then centre-crop {card['input']['eval_crop']}"
           if card["input"]["eval_resize"] else "") + ".",
        "",
    ]
    if card["torchvision"]:
        lines += ["Plain torchvision equivalent:", "", "```python", *card["torchvision"], "```", ""]
    lines += ["In sslsearch: `sslsearch.load_backbone(folder)` (checks the sha256 first).", "",
              f"Versions: sslsearch {card['versions']['sslsearch']}, torch {card['versions']['torch']}, "
              f"torchvision {card['versions']['torchvision']}. Exported {card['exported_at']}.", ""]
    return "\n".join(lines)


def _with_checkpoint(client, run_id: str) -> str | None:
    present = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    return next((c for c in CHECKPOINTS if c in present), None)


def _check_loss(loss: str | None) -> None:
    if loss is not None and loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


def _pick(trials, loss: str | None, client) -> tuple[object, str, int, int, list[str]]:
    """The best ranked search trial that has a checkpoint: (row, artifact path, overall rank, candidates, skipped trial ids)."""
    _check_loss(loss)
    ranked = rank_trials(trials)
    if loss is not None:
        ranked = ranked[ranked["loss"] == loss]
        if ranked.empty:
            raise InputError(f"sweep {', '.join(trials['sweep'].unique())} has no finished {loss} trial")
    skipped = []
    for position, (_, row) in enumerate(ranked.iterrows(), start=1):
        source = _with_checkpoint(client, row["run_id"])
        if source is not None:
            return row, source, position, len(ranked), skipped
        skipped.append(row["trial_id"])
    raise InputError(f"no finished trial of sweep {', '.join(trials['sweep'].unique())} has a checkpoint in MLflow "
                     f"({' or '.join(CHECKPOINTS)})")


def _pick_confirmed(trials, loss: str | None, client) -> tuple | None:
    """The confirmed winner (see the module docstring): (row, artifact, rank, candidates, skipped, confirmation, verdict,
    loss_choice); None when the sweep has no confirmed configuration (of `loss`)."""
    _check_loss(loss)
    board = build_leaderboard(trials, top=None)
    confirmed, verdict = board.confirmed, board.verdict
    if not len(confirmed):
        return None
    if loss is not None:
        choice = f"asked for (--loss {loss})"
    elif verdict.called:
        loss, choice = verdict.leader, "the verdict's leader (the loss it found ahead)"
    else:
        firsts = confirmed[confirmed["rank"] == 1].sort_values(["val_acc_mean", "loss"], ascending=[False, True],
                                                               kind="mergesort")
        loss = firsts.iloc[0]["loss"]
        choice = (f"no evidence that {loss} is the better loss (see the verdict); of the two, its confirmed rank-1 has "
                  "the higher mean val_acc")
    confirmed = confirmed[confirmed["loss"] == loss]
    if not len(confirmed):
        return None
    skipped = []
    by_id = trials.set_index("trial_id")
    # confirmed_configurations orders the rows by mean val_acc (then seeds, then search rank): rank 1 first.
    for position, (_, conf) in enumerate(confirmed.iterrows(), start=1):
        runs = by_id.loc[conf["trials"]].reset_index()
        if (runs["outcome"] != "diverged").any():   # a diverged seed counts in the mean, but is never the model shipped
            runs = runs[runs["outcome"] != "diverged"]
        runs["distance"] = (runs["val_acc"] - conf["val_acc_mean"]).abs()
        for _, row in runs.sort_values(["distance", "seed"], kind="mergesort").iterrows():
            source = _with_checkpoint(client, row["run_id"])
            if source is None:
                skipped.append(row["trial_id"])
                continue
            confirmation = {"seeds": int(conf["seeds"]), "seed_val_acc": {str(k): v for k, v in conf["seed_val_acc"].items()},
                            "seed_test_acc": {str(k): v for k, v in conf["seed_test_acc"].items()},
                            "val_acc_mean": json_value(conf["val_acc_mean"]), "val_acc_sd": json_value(conf["val_acc_sd"]),
                            "val_acc_ci_low": json_value(conf["ci_low"]), "val_acc_ci_high": json_value(conf["ci_high"]),
                            "level": 0.95, "interval": "t over seeds, inside [0, 100]",
                            "test_acc_mean": json_value(conf["test_acc_mean"]), "test_acc_sd": json_value(conf["test_acc_sd"]),
                            "test_acc_ci_low": json_value(conf["test_ci_low"]),
                            "test_acc_ci_high": json_value(conf["test_ci_high"]),
                            "search_trial": conf["search_trial"], "search_val_acc": json_value(conf["search_val_acc"]),
                            "search_epochs": json_value(conf["search_epochs"]),
                            "seed_choice": "the seed whose val_acc is closest to the configuration's mean (ties: lower seed)"}
            return row, source, position, len(confirmed), skipped, confirmation, verdict.to_dict(), choice
    raise InputError(f"no confirmed {loss} trial of sweep {', '.join(trials['sweep'].unique())} has a checkpoint in MLflow "
                     f"({' or '.join(CHECKPOINTS)})")


def _swap_into_place(staged: Path, out: Path) -> None:
    """Replace `out` by the finished `staged` folder: no half-written export is ever at `out`."""
    if not out.exists():
        os.replace(staged, out)
        return
    aside = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.replace(out, aside)
    try:
        os.replace(staged, out)
    except OSError:
        os.replace(aside, out)  # put the previous export back
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_best(tracking_uri: str, sweep: str | None, out_dir: str | os.PathLike, *, loss: str | None = None,
                force: bool = False, register: str | None = None, stage: str = "auto") -> dict:
    """Export the winner's backbone of `sweep` (None: the most recent) to `out_dir`.

    `stage`: "auto" (the confirmed winner if the sweep was confirmed, else the best search trial by
    val_acc), "confirm" (refused without confirmation) or "search".

    Returns the model card; with `register`, the card returned (not the file) also holds the
    registered model's name, version and alias under "registered".
    """
    from sslsearch.method.train import load_checkpoint, model_from_checkpoint

    out = Path(out_dir).resolve()
    check_export_folder(out, force)
    if stage not in ("auto", "confirm", "search"):
        raise InputError(f"unknown stage {stage!r}; expected auto, confirm or search")
    trials = load_trials(tracking_uri, [sweep] if sweep else None)
    client = records_client(tracking_uri)
    picked = _pick_confirmed(trials, loss, client) if stage != "search" else None
    if picked is None and stage == "confirm":
        which = f"confirmed {loss}" if loss else "confirmed"
        raise InputError(f"sweep {', '.join(trials['sweep'].unique())} has no {which} configuration; "
                         "run `sslsearch confirm` first")
    if picked is None:
        verdict = build_leaderboard(trials, top=None).verdict.to_dict()
        picked = (*_pick(trials, loss, client), None, verdict, "the best search trial by val_acc (not confirmed)")
    trial, source, rank, candidates, skipped, confirmation, verdict, loss_choice = picked

    # Next to `out`, so the final rename stays on one file system; os.mkdir (unlike mkdtemp, which
    # makes 0700 folders) gives the export the permissions of any folder the user creates.
    staged = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(staged)
    except OSError as error:
        raise InputError(f"cannot write the export folder {shown_path(out)} ({error.strerror or error_line(error)}); "
                         "choose another --out") from None
    try:
        with tempfile.TemporaryDirectory(prefix="sslsearch-export-") as download:
            local = client.download_artifacts(trial["run_id"], source, dst_path=download)
            checkpoint = load_checkpoint(local)
        model = model_from_checkpoint(checkpoint)  # also proves the weights fit the recorded configuration
        weights = backbone_state_dict(checkpoint)
        torch.save(weights, staged / BACKBONE_FILE)
        card = _model_card(checkpoint, trial, rank, candidates, skipped, source, tracking_uri,
                           sha256_of(staged / BACKBONE_FILE), len(weights),
                           sum(p.numel() for p in model.backbone.parameters()))
        card["selection"]["loss_filter"] = loss
        card["selection"]["loss_choice"] = loss_choice
        card["verdict"] = verdict
        if confirmation is not None:
            card["confirmation"] = confirmation
            card["selection"].update({"stage": "confirm", "metric": "mean val_acc over seeds (confirmation)",
                                      "tie_break": "more seeds, then the better search rank",
                                      "ranked_outcomes": ["completed", "diverged"]})
        (staged / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
        (staged / CARD_MD).write_text(card_markdown(card))
        registered = _register(client, register, staged, model.backbone, card) if register else None
        check_export_folder(out, force)  # again: another process may have written there meanwhile
        _swap_into_place(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if registered:
        card = {**card, "registered": registered}
    return card


def _register(client, name: str, folder: Path, backbone: nn.Module, card: dict) -> dict:
    """Log the backbone as an MLflow model (pytorch flavour, with the export files) and register it, alias `champion`."""
    import mlflow.pytorch
    import torchvision
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    experiment_id = client.get_run(card["mlflow_run_id"]).info.experiment_id
    logged = client.create_logged_model(experiment_id, name="backbone", source_run_id=card["mlflow_run_id"],
                                        tags={SWEEP: card["sweep"], TRIAL_ID: card["trial_id"]},
                                        params={k: str(v) for k, v in card["hyperparameters"].items()})
    try:
        with tempfile.TemporaryDirectory(prefix="sslsearch-model-") as tmp:
            # Pickle (not 'pt2'): the loaded model is the backbone module itself, any batch size,
            # eval()/train() as usual. small_cnn needs sslsearch importable; the ResNets only torchvision.
            mlflow.pytorch.save_model(
                backbone.eval(), os.path.join(tmp, "model"), serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}"],
                extra_files=[str(folder / f) for f in (BACKBONE_FILE, CARD_JSON, CARD_MD)])
            client.log_model_artifacts(logged.model_id, os.path.join(tmp, "model"))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    try:
        client.create_registered_model(name, description="Backbones exported by sslsearch (Barlow Twins / HSIC).")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    metrics = card["metrics"]
    version = client.create_model_version(
        # The storage location, not models:/<id>: MLflow's SQL registry resolves a models:/ source
        # through the *global* tracking URI, not this client's.
        name, source=logged.artifact_location, run_id=card["mlflow_run_id"], model_id=logged.model_id,
        tags={SWEEP: card["sweep"], TRIAL_ID: card["trial_id"], "sha256": card["weights"]["sha256"],
              "val_acc": str(metrics["val_acc"]), "test_acc": str(metrics["test_acc"])},
        description=f"{card['backbone']} ({card['loss']}, λ={card['hyperparameters']['lmbda']:.4g}) from sweep {card['sweep']}")
    client.set_registered_model_alias(name, ALIAS, version.version)
    return {"name": name, "version": str(version.version), "alias": ALIAS, "uri": f"models:/{name}@{ALIAS}",
            "model_id": logged.model_id}


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path / BACKBONE_FILE, path / CARD_JSON
    return path, path.with_name(CARD_JSON)


def load_backbone(path: str | os.PathLike) -> nn.Module:
    """The exported backbone, ready to use (eval mode, CPU), from an export folder or its backbone.pt.

    The sha256 of the weights is checked against the model card next to them first.
    """
    from sslsearch.method.models import build_backbone

    weights_path, card_path = _locate(Path(path).resolve())
    for needed in (weights_path, card_path):
        if not needed.is_file():
            raise InputError(f"{needed} not found; expected an export folder written by `sslsearch export`")
    try:
        card = json.loads(card_path.read_text())
        expected, name, image_size = card["weights"]["sha256"], card["backbone"], int(card["image_size"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{card_path} is not an sslsearch model card ({type(error).__name__}: {error})") from None
    actual = sha256_of(weights_path)
    if actual != expected:
        raise InputError(f"{weights_path} has sha256 {actual[:16]}… but its model card expects {expected[:16]}…; "
                         "the file was changed or corrupted")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 — UnpicklingError, EOFError, RuntimeError (zip), OSError: all one line
        raise InputError(f"cannot load {weights_path} ({error_line(error)}); weights_only refuses "
                         "anything but tensors and plain values") from None
    if not isinstance(state, dict):
        raise InputError(f"{weights_path} holds a {type(state).__name__}, not a backbone's state dict")
    backbone = build_backbone(name, image_size)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"{weights_path} does not fit a {name} backbone: {first_line(error)}") from None
    return backbone.eval()
