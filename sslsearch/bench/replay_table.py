"""The replay table: real learning curves of a space-filling design, for `sslsearch bench search --replay`.

Trains every configuration of a scrambled Sobol design over (λ, lr, feature_dim), with each loss and
several seeds, and records every report's val_acc, the final test_acc, the epoch at which a run
diverged and its training seconds: the tabular benchmark (LCBench / Syne Tune blackbox style) on
which the searcher and scheduler are judged over many seeds.

The setting is not written here: the pretraining settings and the search space are read from an
experiment file, by default experiments/digits.yaml (the embedded default sweep), and recorded in
the table's metadata, where the replay reads them back (`sslsearch.bench.replay.Table` refuses an
experiment or a space the table was not recorded on).

It imports `sslsearch.method` and the Ray-free experiment and search-space readers (torch, numpy,
scikit-learn, PyYAML), so it runs on a bare GPU machine without Ray, Optuna or MLflow, and it trains
many runs at once in worker processes (`--workers`). The table is written (atomically) every few
seconds with a `done` mask, so a run stopped by `--time-limit`, Ctrl-C or SIGTERM still leaves an honest,
smaller table (Ctrl-C and SIGTERM stop the runs in progress and the workers at once), and `--resume` continues it.

    python -m sslsearch.bench.replay_table --out table.npz --configs 256 --seeds 3 --workers 16 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslsearch import presets
from sslsearch.errors import InputError
from sslsearch.method.config import LOSSES, PretrainConfig
from sslsearch.method.data import load_run_data
from sslsearch.method.train import TrainingDiverged, pretrain
from sslsearch.search.experiment import load_experiment
from sslsearch.search.space import load_search_space

TABLE_FORMAT = 2
# The pretraining settings a table run does not take from its experiment: the device is the builder's, the searched
# parameters and the seed are the table's axes, and data_dir is a path on the building machine.
NOT_RECORDED = ("device", "data_dir", "seed")
# The only space the design covers: two log-uniform reals, a choice of widths, and the loss as a table axis.
DESIGN_SPACE = {"lmbda": "loguniform", "lr": "loguniform", "feature_dim": "choice", "loss": "choice"}


@dataclass(frozen=True)
class Setting:
    """What a table is recorded on, taken from one experiment file (by default the embedded digits sweep's), so the
    table and the sweep it replays cannot drift apart: its pretraining settings and its search space."""

    experiment: str                    # the file, relative to the project root where it lies inside it
    base: dict                         # PretrainConfig settings but the searched ones, the seed and the device
    space: dict                        # the search space: {name: {distribution, low, high | values}}

    @property
    def losses(self) -> tuple[str, ...]:
        return tuple(self.space["loss"]["values"])

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.space["feature_dim"]["values"])

    def bounds(self, name: str) -> tuple[float, float]:
        return float(self.space[name]["low"]), float(self.space[name]["high"])

    def differences(self, other: Setting) -> list[str]:
        """What `other` (an existing table's setting) records differently, as `key mine (table: theirs)`."""
        out = [f"{k} {self.base.get(k)} (table: {other.base.get(k)})"
               for k in sorted(set(self.base) | set(other.base)) if self.base.get(k) != other.base.get(k)]
        if self.space != other.space:
            out.append(f"search space {json.dumps(self.space)} (table: {json.dumps(other.space)})")
        return out


def space_mapping(space) -> dict:
    """A SearchSpace as the plain mapping a search-space file holds (JSON for the table's metadata)."""
    out = {}
    for p in space.parameters:
        spec = {"distribution": p.distribution}
        if p.distribution == "choice":
            spec["values"] = list(p.values)
        else:
            spec.update(low=p.low, high=p.high, **({"log": True} if p.log else {}))
        out[p.name] = spec
    return out


def experiment_setting(path: str | os.PathLike | None = None, epochs: int | None = None) -> Setting:
    """The setting of an experiment file (None: experiments/digits.yaml, the embedded default sweep), validated as a
    sweep validates it; `epochs` replaces its pretrain.epochs. InputError for a space the design cannot cover."""
    experiment = load_experiment(path, [f"pretrain.epochs={epochs}"] if epochs is not None else [])
    space = load_search_space(experiment.space_path())
    kinds = {p.name: p.distribution for p in space.parameters}
    if kinds != DESIGN_SPACE or not set(space.choices("loss")) <= set(LOSSES):
        raise InputError(f"the replay design covers a space of exactly {', '.join(f'{k} ({v})' for k, v in DESIGN_SPACE.items())}"
                         f" with loss in {', '.join(LOSSES)}; {experiment.space_path().name} has "
                         f"{', '.join(f'{k} ({v})' for k, v in kinds.items())}")
    base = {k: v for k, v in experiment.pretrain.to_dict().items() if k not in (*NOT_RECORDED, *kinds)}
    source = Path(experiment.source).resolve()
    # A shipped experiment as the repository's link names it (experiments/digits.yaml), wherever the package lives.
    shown = str(source.relative_to(presets.FOLDER)) if source.is_relative_to(presets.FOLDER) else str(source)
    return Setting(shown, base, space_mapping(space))


def sobol_design(setting: Setting, n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` configurations of a scrambled Sobol sequence over (log λ, log lr, feature_dim index) of `setting`'s space."""
    points = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(n).double().numpy()

    def log_scale(u: np.ndarray, low: float, high: float) -> np.ndarray:
        return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))

    widths = setting.feature_dims
    index = np.minimum((points[:, 2] * len(widths)).astype(int), len(widths) - 1)
    return {"lmbda": log_scale(points[:, 0], *setting.bounds("lmbda")), "lr": log_scale(points[:, 1], *setting.bounds("lr")),
            "feature_dim": np.asarray(widths)[index]}


# -- one training per task, in a worker process that keeps the data set on its device ------------------

_WORKER: dict = {}


def _init_worker(base: dict, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    config = PretrainConfig.from_dict({**base, "device": device})
    _WORKER["data"] = load_run_data(config)
    _WORKER["base"] = {**base, "device": device}


def train_one(task: tuple[int, int, int, str, float, float, int]) -> dict:
    """One run (configuration c, loss index k, seed s): its val_acc per report epoch, test_acc, divergence."""
    c, k, s, loss, lmbda, lr, feature_dim = task
    config = PretrainConfig.from_dict({**_WORKER["base"], "loss": loss, "lmbda": float(lmbda), "lr": float(lr),
                                       "feature_dim": int(feature_dim), "seed": s})
    reports: dict[int, float] = {}
    test_acc, diverged = math.nan, 0

    def on_report(row: dict, _path) -> None:
        reports[int(row["epoch"])] = float(row["val_acc"])

    started = time.perf_counter()
    try:
        result = pretrain(config, data=_WORKER["data"], on_report=on_report, progress=False, final_test=True)
        test_acc = float(result.history[-1]["test_acc"])
    except TrainingDiverged as error:
        diverged = error.epoch
    return {"c": c, "l": k, "s": s, "reports": reports, "test_acc": test_acc, "diverged": diverged,
            "seconds": time.perf_counter() - started}


# -- the table -------------------------------------------------------------------------------------------------

def report_epochs(epochs: int, eval_every: int) -> list[int]:
    """The epochs at which a run reports: 0 (random initialisation), every eval_every, and the last."""
    return sorted({0, *range(eval_every, epochs + 1, eval_every), epochs})


def _empty_table(design: dict, losses: tuple[str, ...], seeds: int, epochs: list[int]) -> dict[str, np.ndarray]:
    shape = (len(design["lr"]), len(losses), seeds)
    return {"lmbda": design["lmbda"], "lr": design["lr"], "feature_dim": design["feature_dim"],
            "losses": np.asarray(losses), "seeds": np.arange(seeds), "epochs": np.asarray(epochs),
            "val_acc": np.full(shape + (len(epochs),), np.nan, dtype=np.float32),
            "test_acc": np.full(shape, np.nan, dtype=np.float32),
            "diverged_epoch": np.zeros(shape, dtype=np.int16),   # 0: did not diverge
            "seconds": np.full(shape, np.nan, dtype=np.float32),
            "done": np.zeros(shape, dtype=bool)}


def _fill(table: dict, row: dict) -> None:
    at = (row["c"], row["l"], row["s"])
    for i, epoch in enumerate(table["epochs"]):
        if int(epoch) in row["reports"]:
            table["val_acc"][at + (i,)] = row["reports"][int(epoch)]
    table["test_acc"][at] = row["test_acc"]
    table["diverged_epoch"][at] = row["diverged"]
    table["seconds"][at] = row["seconds"]
    table["done"][at] = True


def remaining_tasks(table: dict) -> list[tuple[int, int, int, str, float, float, int]]:
    """The runs the table lacks (its `done` mask), configuration-major: a table cut short holds whole configurations
    (every loss and seed)."""
    configs, losses, seeds = table["done"].shape
    return [(c, k, s, str(table["losses"][k]), float(table["lmbda"][c]), float(table["lr"][c]), int(table["feature_dim"][c]))
            for c in range(configs) for s in range(seeds) for k in range(losses) if not table["done"][c, k, s]]


def write_table(table: dict, meta: dict, out: Path) -> None:
    """The table as one compressed .npz (atomic replace); `meta` as JSON in its `meta` entry."""
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **table, meta=np.asarray(json.dumps(meta)))
    os.replace(tmp, out)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _resumed(out: Path, setting: Setting, configs: int, seeds: int, design_seed: int) -> tuple[dict, dict]:
    """The existing table at `out` to continue, or one InputError line if it was built with other settings."""
    if not out.is_file():
        raise InputError(f"--resume: {out} does not exist; leave out --resume to start a table")
    table, meta = load_table(out)
    recorded = Setting(meta.get("experiment", "?"), meta["base"], meta["space"])
    differ = setting.differences(recorded)
    shape = table["done"].shape
    if shape != (configs, len(setting.losses), seeds):
        differ.append(f"configs × losses × seeds {configs} × {len(setting.losses)} × {seeds} (table: "
                      f"{' × '.join(map(str, shape))})")
    if meta.get("design_seed") != design_seed:
        differ.append(f"design seed {design_seed} (table: {meta.get('design_seed')})")
    if differ:
        raise InputError(f"--resume: {out} was built with other settings: {'; '.join(differ)}; "
                         "give the table's settings or leave out --resume to start over")
    return table, meta


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the build after the table was written with `done` of its `total` runs."""

    def __init__(self, done: int, total: int):
        super().__init__(done, total)
        self.done, self.total = done, total


def build_table(*, out: Path, configs: int, seeds: int, workers: int, device: str, setting: Setting | None = None,
                design_seed: int = 0, time_limit: float | None = None, threads: int = 1, command: str = "",
                resume: bool = False) -> dict:
    """Train the design in `workers` processes and write the table to `out`; returns it. With `resume`, continue the
    table at `out` (its `done` mask) if it was built with the same setting, design and sizes."""
    setting = setting or experiment_setting()
    base = setting.base
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    session = {"command": command, "started": now, "device": device, "workers": workers, "load_average": _load_average()}
    if resume:
        table, meta = _resumed(out, setting, configs, seeds, design_seed)
        before = float(meta.get("wall_seconds", 0.0))
        meta["sessions"] = [*meta.get("sessions", []), session]
    else:
        design = sobol_design(setting, configs, design_seed)
        table = _empty_table(design, setting.losses, seeds, report_epochs(base["epochs"], base["eval_every"]))
        data = load_run_data(PretrainConfig.from_dict({**base, "device": "cpu"}))
        before = 0.0
        meta = {"format": TABLE_FORMAT, "command": command, "experiment": setting.experiment, "base": base,
                "space": setting.space, "design": "scrambled Sobol", "design_seed": design_seed,
                "device": device, "workers": workers,
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs"
                           + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""),
                "torch": torch.__version__, "python": platform.python_version(), "started": now,
                "val_images": int(data.val_labels.numel()), "test_images": int(data.test_labels.numel()),
                "chance_val_acc": 100.0 * torch.bincount(data.val_labels).max().item() / data.val_labels.numel(),
                "sessions": [session]}
    tasks = remaining_tasks(table)
    started = time.monotonic()
    last_write = started
    total = table["done"].size

    def progress() -> dict:
        session.update(wall_seconds=round(time.monotonic() - started, 1), load_average_end=_load_average())
        return {**meta, "wall_seconds": before + time.monotonic() - started, "complete": bool(table["done"].all())}

    interrupted = False
    if tasks:
        context = multiprocessing.get_context("spawn")   # CUDA cannot be forked into workers
        others = set(multiprocessing.active_children())
        with _children_ignore_ctrl_c():   # the workers and multiprocessing's resource tracker start here
            pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                               initargs=(base, device, threads))
            pending = {pool.submit(train_one, task) for task in tasks}
        with pool:
            try:
                while pending:
                    finished, pending = futures.wait(pending, timeout=5, return_when=futures.FIRST_COMPLETED)
                    for future in finished:
                        _fill(table, future.result())
                    if time_limit is not None and time.monotonic() - started > time_limit:
                        for future in pending:
                            future.cancel()
                        print(f"time limit {time_limit:g}s reached: waiting for the runs in progress", file=sys.stderr)
                        for future in futures.as_completed([f for f in pending if not f.cancelled()]):
                            _fill(table, future.result())
                        break
                    if time.monotonic() - last_write > 15:
                        last_write = time.monotonic()
                        write_table(table, progress(), out)
                        print(f"{int(table['done'].sum())}/{total} runs, {last_write - started:.0f}s", file=sys.stderr,
                              flush=True)
            except KeyboardInterrupt:   # Ctrl-C, or SIGTERM (main): keep the finished runs, stop the others now
                interrupted = True
                pool.shutdown(wait=False, cancel_futures=True)   # (cancelling futures ourselves races the pool's thread)
                _stop_workers(set(multiprocessing.active_children()) - others)
    meta.update(progress())
    write_table(table, meta, out)
    if interrupted:
        raise BuildInterrupted(int(table["done"].sum()), int(table["done"].size))
    return table


@contextlib.contextmanager
def _children_ignore_ctrl_c():
    """Processes started in the body inherit SIGINT ignored (exec keeps SIG_IGN), so that a Ctrl-C, which the terminal
    sends to the whole group, is the driver's alone, even while a worker is still importing (a traceback each before).
    The driver's handler is back once they have started (a Ctrl-C within those milliseconds is lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_workers(workers: set, grace_s: float = 10.0) -> None:
    """Terminate the pool's worker processes (the runs in progress are lost; `--resume` trains them again), killing
    any still alive after `grace_s`; the pool's own shutdown would wait for every run in progress to finish."""
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()


def load_table(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a table written by `build_table`; InputError for a file that is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the replay table {path}: {error}") from None
    if "meta" not in arrays or "val_acc" not in arrays:
        raise InputError(f"{path} is not a replay table (written by python -m sslsearch.bench.replay_table)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != TABLE_FORMAT:
        raise InputError(f"{path} is a replay table of format {meta.get('format')}, expected {TABLE_FORMAT}; "
                         "rebuild it with python -m sslsearch.bench.replay_table")
    return arrays, meta


def table_quality(table: dict) -> dict[str, float]:
    """What makes the table worth searching: seed noise against the spread of configuration means, over the
    (configuration, loss) cells whose every seed finished without diverging."""
    final = table["val_acc"][..., -1]                              # (configs, losses, seeds); NaN: diverged
    whole = table["done"].all(axis=2) & np.isfinite(final).all(axis=2)
    means = final.mean(axis=2)[whole]
    seed_sd = float(np.sqrt(np.mean(final.var(axis=2, ddof=1)[whole]))) if whole.any() else math.nan
    spread = float(means.std(ddof=1)) if means.size > 1 else math.nan
    return {"configs x losses": int(whole.sum()), "seed_sd": seed_sd, "config_mean_sd": spread,
            "spread/seed_sd": spread / seed_sd if seed_sd > 0 else math.nan,
            "best_mean": float(means.max()) if means.size else math.nan,
            "diverged_runs": int((table["diverged_epoch"] > 0).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sslsearch.bench.replay_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--experiment", default=None,
                        help="the experiment whose pretraining settings and search space the table records "
                             "(default: experiments/digits.yaml, the embedded default sweep)")
    parser.add_argument("--configs", type=int, default=256, help="Sobol design points (a power of 2 keeps it balanced)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration and loss")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="training processes at once")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (all workers share it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--epochs", type=int, default=None, help="replace the experiment's pretrain.epochs (a table "
                        "of another setting: the sweep it replays must be run with the same)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; then finish the runs in progress and write")
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue the table at --out (the runs it lacks); refused if it was built with other settings")
    args = parser.parse_args(argv)
    try:
        if args.configs < 2 or args.seeds < 2 or args.workers < 1 or args.threads < 1:
            raise InputError("--configs and --seeds must be ≥ 2, --workers and --threads ≥ 1")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {args.device} requested but CUDA is not available; use --device cpu")
        out = Path(args.out)
        if not out.parent.is_dir():
            raise InputError(f"--out {out}: folder {out.parent} does not exist")
        setting = experiment_setting(args.experiment, args.epochs)
        if args.resume:   # refuse here, before any worker starts, if the table is not this one
            _resumed(out, setting, args.configs, args.seeds, args.design_seed)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m sslsearch.bench.replay_table " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    # SIGTERM (a job scheduler's stop, `kill`) takes Ctrl-C's path: the finished runs are written and the workers
    # stopped; before, the driver died at once and left its workers running, idle, as orphans.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        table = build_table(out=out, configs=args.configs, seeds=args.seeds, workers=args.workers, device=args.device,
                            setting=setting, design_seed=args.design_seed, time_limit=args.time_limit,
                            threads=args.threads, command=command, resume=args.resume)
    except BuildInterrupted as stop:
        print(f"interrupted: {out} holds {stop.done}/{stop.total} runs; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the first run started: nothing written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    quality = table_quality(table)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {int(table['done'].sum())}/{table['done'].size} runs; "
          + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in quality.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
