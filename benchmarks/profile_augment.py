"""Where `augment_views` spends its time, stage by stage, against another version (docs/benchmarks.md).

Each stage's function is wrapped with a timer of this thread's CPU time (`time.thread_time`:
time the scheduler gives to other processes on shared cores does not count; torch.profiler's
wall times do). Times are inclusive (a stage's time contains the stages it calls) and given per
view of `--batch` images. With `--baseline` (an augment.py file, e.g. from `git show
REV:sslsearch/augment.py`), the two versions alternate pass by pass on the same images with the
same torch threads, and the median pass of each is reported.

    python benchmarks/profile_augment.py --threads 1 --baseline /tmp/augment_before.py
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslsearch.bench.kernels.kernels import SOURCE_SIZES, _natural_images  # noqa: E402

from sslsearch.method import augment  # noqa: E402

# (label, alternative groups of functions whose times add up to it): each version counts the
# group it spends the most in (the others exist but the pipeline does not call them).
STAGES = (
    ("whole view (augment_views)", ("augment_views",)),
    ("random parameters (sample_view_params)", ("sample_view_params",)),
    ("crop + resize (resized_crop)", ("resized_crop",)),
    ("colour jitter (all of it)", ("color_jitter", "_jitter_table+_jitter_group+_jitter_sorted_")),
    ("  blend steps (brightness, contrast, saturation)", ("_blend", "_blend_map")),
    ("  hue", ("adjust_hue",)),
    ("3x3 colour maps, all (blends' and grayscale+normalise)", ("_color_map",)),
)


def load(path: str | None):
    if path is None:
        return augment
    spec = importlib.util.spec_from_file_location("augment_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def instrument(module) -> collections.Counter:
    spent = collections.Counter()
    names = {name for _, alternatives in STAGES for group in alternatives for name in group.split("+")}
    for name in names:
        function = getattr(module, name, None)
        if function is None:
            continue

        def timed(*args, _function=function, _name=name, **kwargs):
            start = time.thread_time()
            try:
                return _function(*args, **kwargs)
            finally:
                spent[_name] += time.thread_time() - start
        setattr(module, name, timed)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar", choices=sorted(augment.PRESETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--views", type=int, default=16, help="views per pass (default 16: 2,048 pairs' worth at 256)")
    parser.add_argument("--passes", type=int, default=9)
    parser.add_argument("--baseline", help="another augment.py to profile alternately")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = SOURCE_SIZES[args.preset]
    data = _natural_images(args.batch * 4, source, seed=0)
    versions = {"this": load(None)}
    if args.baseline:
        versions["baseline"] = load(args.baseline)
    spent = {name: instrument(module) for name, module in versions.items()}
    passes = {name: [] for name in versions}

    def one_pass(name: str) -> None:
        module = versions[name]
        preset = module.PRESETS[args.preset]
        generator = torch.Generator().manual_seed(0)
        spent[name].clear()
        start = time.thread_time()
        for i in range(args.views):
            batch = data[(i % 4) * args.batch:(i % 4 + 1) * args.batch]
            module.augment_views(batch, preset, generator)
        passes[name].append((time.thread_time() - start, dict(spent[name])))

    for name in versions:  # warm-up
        one_pass(name)
        passes[name].clear()
    for p in range(args.passes):
        for name in (list(versions) if p % 2 == 0 else list(versions)[::-1]):
            one_pass(name)

    print(f"augment_views, preset {args.preset}, {args.batch} images of {source} px per view, "
          f"{args.threads} thread(s), median of {args.passes} passes of {args.views} views, ms of CPU time per view")
    header = f"{'stage':58s}" + "".join(f"{name:>12s}" for name in versions)
    print(header)
    for label, alternatives in STAGES:
        cells = []
        for name, module in versions.items():
            medians = [statistics.median(sum(times.get(n, 0.0) for n in group.split("+")) for _, times in passes[name])
                       for group in alternatives if all(hasattr(module, n) for n in group.split("+"))]
            cells.append(f"{max(medians) / args.views * 1e3:12.2f}" if medians else f"{'-':>12s}")
        print(f"{label:58s}" + "".join(cells))
    if len(versions) == 2:
        this, base = (statistics.median(t for t, _ in passes[name]) for name in ("this", "baseline"))
        print(f"speed-up of this version over the baseline (median pass): {base / this:.2f}x")


if __name__ == "__main__":
    main()
