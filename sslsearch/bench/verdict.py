"""The verdict's error rate: the whole pipeline — search with ASHA's selection, confirm, verdict —
simulated many times on synthetic losses whose truth is known (`python benchmarks/verdict_error_rate.py`).

What is real here: the rung logic (`PairedASHA`, driven report by report as Ray drives it in a
paired sweep, 2 slots, one pair at a time), the choice of configurations to confirm
(`rank_search_rows` then `plan_confirmation`, as `sslsearch confirm` does), the seed blocks
(`block_differences`) and the statistics and gate (`paired_statistics`, through `confirm_verdict`).
What is synthetic: the accuracies. The default search space is sampled at random (λ, lr log-uniform,
feature_dim uniform over its choices), and each trained network has

    quality = μ(λ, lr, feature_dim) + effect·[hsic] + σ_loss · (√ρ · z_seed + √(1 − ρ) · z_run)

where μ is one landscape for both losses (peak PEAK at the reference's λ = 1/128, lr = 1e-3; a random
configuration of the default space lands 0–10 points lower), z_seed is shared by the two runs that use
the same seed (twins in the search, a seed block in confirmation: same initialisation and data order)
and z_run is the run's own. A report at epoch e sees a learning curve rising to the quality, plus the
val split's own noise (sd SPLIT_SD), rounded to whole images of the VAL_IMAGES-image val split; the
final test_acc is the quality plus independent test-split noise, rounded to TEST_IMAGES images. The
figures are those of the digits default until 2026-12-05 (val_fraction 0.2: 287 val and 360 test images; the seed-to-seed
sd of one configuration's test_acc is 0.2–0.6 points in docs/sweeps.md; SD_RUN and SPLIT_SD give 0.4).

A verdict "claims a difference" when it calls one (≥ 6 non-zero differences and exact Wilcoxon
p < α). With effect = 0 that is a false positive; its rate must be ≤ α + its Monte Carlo error.
The sampler is random search (TPE would only move where the pairs are; the losses stay symmetric).

    .venv/bin/python benchmarks/verdict_error_rate.py [--sweeps 2000] [--seeds 8] [--top 1] [--design shared]
"""

from __future__ import annotations

import math

import numpy as np

from sslsearch.analysis.stats import ALPHA
from sslsearch.analysis.verdict import confirm_verdict
from sslsearch.search.asha import PairedASHA
from sslsearch.search.confirm import plan_confirmation, rank_search_rows
from sslsearch.search.outcomes import METRIC

PEAK = 98.5                  # % test accuracy of the best configuration (digits: 98–99 %)
VAL_IMAGES, TEST_IMAGES = 287, 360
SD_RUN = 0.3                 # points: one configuration's quality from seed to seed (equal-noise case)
SPLIT_SD = 0.25              # points: what a split's particular images add to one run's score
RHO = 0.5                    # share of the seed-to-seed variance that two runs with the same seed share
# (name, hsic − barlow effect in points, sd of barlow runs, sd of hsic runs)
SCENARIOS = (("equal losses, equal noise", 0.0, SD_RUN, SD_RUN),
             ("equal losses, hsic twice as noisy", 0.0, SD_RUN, 2 * SD_RUN),
             ("equal losses, barlow twice as noisy", 0.0, 2 * SD_RUN, SD_RUN),
             ("hsic +0.25 points", 0.25, SD_RUN, SD_RUN),
             ("hsic +0.5 points", 0.5, SD_RUN, SD_RUN),
             ("hsic +1.0 point", 1.0, SD_RUN, SD_RUN))


def landscape(lmbda: float, lr: float, feature_dim: int) -> float:
    """μ: the expected final accuracy of a configuration (both losses alike)."""
    return (PEAK - 4.0 * math.log10(lr / 1e-3) ** 2 - 1.5 * math.log10(lmbda / 0.0078125) ** 2
            - 0.3 * abs(math.log2(feature_dim / 256)))


def curve(quality: float, epoch: int) -> float:
    """The expected accuracy after `epoch` epochs of a run whose final quality is `quality`."""
    rate = 0.25 + 0.02 * max(0.0, quality - 60.0)    # better configurations also learn faster
    return 60.0 + (quality - 60.0) * (1 - math.exp(-rate * epoch))


def _observed(rng, value: float, images: int) -> float:
    value = min(100.0, max(0.0, value + rng.normal(0.0, SPLIT_SD)))
    return 100.0 * round(value * images / 100.0) / images


class _Trial:
    """What PairedASHA reads of a Ray Trial: its id, config and status."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.status = trial_id, config, "PENDING"


class _Controller:
    """What PairedASHA calls on Ray's controller: the trials, and stopping a paused one."""

    def __init__(self):
        self.trials: list[_Trial] = []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial: _Trial) -> None:
        trial.status = "TERMINATED"


def simulate_search(rng, *, pairs: int, epochs: int, eval_every: int, grace: int, factor: float,
                    effect: float, sd: dict[str, float], seed_base: int = 0) -> tuple[list[dict], dict]:
    """One paired sweep with PairedASHA: ranking rows (as `search_ranking` makes them, with the epochs each trial
    ran) and each run's quality."""
    asha = PairedASHA(metric=METRIC, max_epochs=epochs, eval_every=eval_every, grace_period=grace,
                      reduction_factor=factor, paired=True)
    controller = _Controller()
    rows, quality = [], {}
    for pair in range(pairs):   # 2 slots, one pair at a time: both twins run side by side, as the default sweep does
        config = {"lmbda": float(10 ** rng.uniform(-4, -1)), "lr": float(10 ** rng.uniform(-4, -2)),
                  "feature_dim": int(rng.choice([64, 128, 256, 512, 1024]))}
        seed, z_seed = seed_base + pair, rng.normal()
        twins = {}
        for loss in ("barlow", "hsic"):
            trial = _Trial(f"{pair}-{loss}", {**config, "loss": loss, "pair": pair, "seed": seed})
            controller.trials.append(trial)
            asha.on_trial_add(controller, trial)
            trial.status = "RUNNING"
            run_noise = math.sqrt(RHO) * z_seed + math.sqrt(1 - RHO) * rng.normal()
            quality[trial.trial_id] = landscape(**config) + (effect if loss == "hsic" else 0.0) + sd[loss] * run_noise
            twins[loss] = trial
        last = {}
        for epoch in range(eval_every, epochs + 1, eval_every):
            for loss, trial in twins.items():
                if trial.status != "RUNNING":
                    continue
                value = _observed(rng, curve(quality[trial.trial_id], epoch), VAL_IMAGES)
                last[loss] = (epoch, value)
                decision = asha.on_trial_result(controller, trial, {"epoch": epoch, METRIC: value})
                trial.status = {"STOP": "TERMINATED", "PAUSE": "PAUSED"}.get(decision, "RUNNING")
            for trial in twins.values():   # a twin released at its rung runs on (choose_trial_to_run)
                if trial.status == "PAUSED" and trial.trial_id not in asha.waiting:
                    trial.status = "RUNNING"
            if all(t.status == "TERMINATED" for t in twins.values()):
                break
        for loss, trial in twins.items():
            trial.status = "TERMINATED"
            asha.on_trial_complete(controller, trial, {})
            epoch, value = last[loss]
            rows.append({"trial_id": trial.trial_id, "loss": loss, "params": {**config, "loss": loss}, "seed": seed,
                         "val_acc": value, "epoch": epoch, "trial_seconds": float(epoch)})
    return rank_search_rows(rows), quality


def simulate_pipeline(rng, *, effect: float, sd: dict[str, float], seeds: int, top: int = 1, design: str = "shared",
                      pairs: int = 8,
                      epochs: int = 16, eval_every: int = 2, grace: int = 2, factor: float = 2,
                      alpha: float = ALPHA) -> dict:
    """Search, confirm, verdict once: whether a difference was called, its direction, and the true difference."""
    ranking, _ = simulate_search(rng, pairs=pairs, epochs=epochs, eval_every=eval_every, grace=grace, factor=factor,
                                 effect=effect, sd=sd)
    plan = plan_confirmation(ranking, {r["seed"] for r in ranking}, top, seeds, design)
    ranks = {(c["loss"], tuple(sorted(c["params"].items()))): c["rank"] for c in plan["configurations"]}
    z_seed = {seed: rng.normal() for seed in plan["seeds"]}
    runs, truth = [], {"barlow": [], "hsic": []}
    for point in plan["points"]:
        loss = point["loss"]
        params = {k: v for k, v in point.items() if k not in ("seed", "pair")}
        mean = landscape(point["lmbda"], point["lr"], point["feature_dim"]) + (effect if loss == "hsic" else 0.0)
        if point["seed"] == plan["seeds"][0]:
            truth[loss].append(mean)
        quality = mean + sd[loss] * (math.sqrt(RHO) * z_seed[point["seed"]] + math.sqrt(1 - RHO) * rng.normal())
        runs.append({"loss": loss, "rank": ranks[(loss, tuple(sorted(params.items())))], "seed": point["seed"],
                     "outcome": "completed", "test_acc": _observed(rng, quality, TEST_IMAGES),
                     "val_acc": _observed(rng, quality, VAL_IMAGES)})
    verdict = confirm_verdict("simulated", runs, top=top, epochs=epochs, alpha=alpha)
    return {"called": verdict.called, "leader": verdict.leader, "n": verdict.statistics["pairs"],
            "nonzero": verdict.statistics["nonzero_pairs"],
            "true_difference": float(np.mean(truth["hsic"]) - np.mean(truth["barlow"]))}


def error_rates(*, sweeps: int = 2000, seeds: int = 8, top: int = 1, design: str = "shared", seed: int = 0,
                scenarios=SCENARIOS,
                alpha: float = ALPHA, progress=None) -> list[dict]:
    """Per scenario: how often the verdict called a difference (and which way), over `sweeps` simulated sweeps."""
    results = []
    for name, effect, sd_barlow, sd_hsic in scenarios:
        rng = np.random.default_rng([seed, round(1000 * effect), round(1000 * sd_barlow), round(1000 * sd_hsic)])
        outcomes = [simulate_pipeline(rng, effect=effect, sd={"barlow": sd_barlow, "hsic": sd_hsic}, seeds=seeds, top=top,
                                      design=design, alpha=alpha) for _ in range(sweeps)]
        called = sum(o["called"] for o in outcomes)
        right = sum(o["called"] and o["leader"] == "hsic" for o in outcomes)
        rate = called / sweeps
        results.append({"scenario": name, "effect": effect, "sd_barlow": sd_barlow, "sd_hsic": sd_hsic, "sweeps": sweeps,
                        "seeds": seeds, "top": top, "design": design, "called": called, "rate": rate,
                        "mc_error": math.sqrt(max(rate * (1 - rate), 1e-12) / sweeps),
                        "called_hsic": right,
                        "mean_true_difference": float(np.mean([o["true_difference"] for o in outcomes])),
                        "mean_nonzero": float(np.mean([o["nonzero"] for o in outcomes]))})
        if progress:
            progress(format_error_rates(results[-1:], header=False))
    return results


def format_error_rates(results: list[dict], header: bool = True) -> str:
    lines = ["scenario                               effect  sd b/h     sweeps  seeds  called  rate ± MC se     "
             "hsic ahead  mean true diff of the confirmed configs"] if header else []
    for r in results:
        lines.append(f"{r['scenario']:38s} {r['effect']:+5.2f}  {r['sd_barlow']:.2f}/{r['sd_hsic']:.2f}  {r['sweeps']:6d}  "
                     f"{r['seeds']:5d}  {r['called']:6d}  {r['rate']:.3f} ± {r['mc_error']:.3f}  {r['called_hsic']:10d}  "
                     f"{r['mean_true_difference']:+.3f}")
    return "\n".join(lines)
