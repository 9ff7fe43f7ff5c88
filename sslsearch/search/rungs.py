"""Where ASHA decides: its rungs, checked against the epochs at which trials report.

Plain arithmetic (no Ray), so the experiment's validation can refuse a bad schedule before anything starts.
"""

from __future__ import annotations

import numpy as np

from sslsearch.errors import InputError

MAX_RUNGS = 64


def _exact_rungs(max_epochs: int, grace_period: float, reduction_factor: float) -> list[float]:
    """grace·factorᵏ below the last epoch (Ray's rung formula; a rung at the last epoch decides nothing)."""
    if not 1 <= grace_period <= max_epochs:
        raise InputError(f"scheduler.grace_period must be between 1 and pretrain.epochs ({max_epochs}), got {grace_period:g}")
    if not reduction_factor > 1:
        raise InputError(f"scheduler.reduction_factor must be > 1, got {reduction_factor:g}")
    count = int(np.log(max_epochs / grace_period) / np.log(reduction_factor) + 1)
    if count > MAX_RUNGS:   # a reduction factor a hair above 1: thousands of rungs, each keeping all but a sliver
        raise InputError(f"scheduler.reduction_factor {reduction_factor:.10g} gives {count:,} ASHA rungs between "
                         f"scheduler.grace_period {grace_period:g} and {max_epochs} epochs; at most {MAX_RUNGS}: use a "
                         "reduction_factor of 2 to 4")
    return [r for r in (grace_period * reduction_factor ** k for k in range(count)) if r < max_epochs]


def _listed(epochs: list[float], most: int = 8) -> str:
    text = ", ".join(f"{r:g}" for r in epochs[:most])
    return text + (f" … ({len(epochs)} in all)" if len(epochs) > most else "")


def rung_epochs(max_epochs: int, eval_every: int, grace_period: float, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA decides, or one InputError line if any falls between two reports.

    A trial reports every `eval_every` epochs (and at its last); a rung between two reports would be
    judged at the next report, and two rungs between the same reports would collapse into one.
    """
    exact = _exact_rungs(max_epochs, grace_period, reduction_factor)
    off = [r for r in exact if not float(r).is_integer() or int(r) % eval_every]
    if off:
        raise InputError(
            f"ASHA's rungs fall at epochs {_listed(exact)} (scheduler.grace_period "
            f"{grace_period:g} × scheduler.reduction_factor {reduction_factor:g}^k), but trials report every "
            f"{eval_every} epochs (pretrain.eval_every): {_listed(off)} "
            f"{'is not a report epoch' if len(off) == 1 else 'are not report epochs'}; "
            f"choose a grace_period that is a multiple of eval_every and an integer reduction_factor")
    return [int(r) for r in exact]
