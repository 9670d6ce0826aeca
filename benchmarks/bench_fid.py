"""Benchmark: FID on feature vectors, ``metrics.frechet_distance`` against torchmetrics' FID.

    python benchmarks/bench_fid.py [--width 1536] [--sizes 32 256 1000 2000]

For each set size, two random sets of ``--width``-d float64 features (the width of EfficientNet-B3's
pooled features), the seconds each implementation takes, their ratio and the relative difference of the
values. Chapters 4 and 5 compute hundreds of FIDs per run, so this is where their metric time goes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from medsec_utils import metrics


def _torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=metrics._Precomputed(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def _timed(function, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1000, 2000])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {args.width}-d features")
    print(f"{'vectors per set':>16} {'ours s':>8} {'torchmetrics s':>15} {'speed-up':>9} {'relative diff':>14}")
    for n in args.sizes:
        real = torch.randn(n, args.width, generator=generator, dtype=torch.float64)
        fake = 1.2 * torch.randn(n, args.width, generator=generator, dtype=torch.float64) + 0.1
        ours, ours_s = _timed(metrics.frechet_distance, real, fake)
        theirs, theirs_s = _timed(_torchmetrics_fid, real, fake)
        print(f"{n:>16} {ours_s:>8.3f} {theirs_s:>15.3f} {theirs_s / ours_s:>8.1f}x {abs(ours - theirs) / theirs:>14.1e}")


if __name__ == "__main__":
    main()
