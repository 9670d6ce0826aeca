"""Benchmark: the two costs of every FID here, embedding images and the distance on their features.

    python benchmarks/bench_fid.py [--width 4096] [--sizes 32 256 1000 2000] [--images 256] [--px 64 128]

First, images per second each feature space embeds (``metrics.feature_space``: the default random-init
VGG-16 and the chapter-1 EfficientNet-B3 classifier's features) at each of ``--px``. Then, for each set
size, two random sets of ``--width``-d float64 features (4096: the VGG-16 fc2 width), the seconds
``metrics.frechet_distance`` and torchmetrics' FID take, their ratio and the relative difference of the
values. Chapters 4 and 5 compute hundreds of FIDs per run, so this is where their metric time goes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from medsec_utils import metrics
from medsec_utils.models import build_classifier


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
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1000, 2000])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--px", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads; embedding {args.images} grey images")
    spaces = {"random_vgg16": metrics.feature_space("random_vgg16")[0],
              "classifier (efficientnet_b3)": metrics.feature_space("classifier", classifier=build_classifier(1))[0]}
    for name, encoder in spaces.items():
        for px in args.px:
            images = torch.rand(args.images, 1, px, px, generator=generator)
            _, seconds = _timed(metrics.image_features, encoder, images, torch.device("cpu"))
            print(f"{name:>30} at {px:>3} px: {args.images / seconds:7.1f} images/s")
    print(f"\n{args.width}-d features")
    print(f"{'vectors per set':>16} {'ours s':>8} {'torchmetrics s':>15} {'speed-up':>9} {'relative diff':>14}")
    for n in args.sizes:
        real = torch.randn(n, args.width, generator=generator, dtype=torch.float64)
        fake = 1.2 * torch.randn(n, args.width, generator=generator, dtype=torch.float64) + 0.1
        ours, ours_s = _timed(metrics.frechet_distance, real, fake)
        theirs, theirs_s = _timed(_torchmetrics_fid, real, fake)
        print(f"{n:>16} {ours_s:>8.3f} {theirs_s:>15.3f} {theirs_s / ours_s:>8.1f}x {abs(ours - theirs) / theirs:>14.1e}")


if __name__ == "__main__":
    main()
