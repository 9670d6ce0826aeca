"""Benchmark: training cost of each defence per image and epoch, beside plain training of the classifier.

    python benchmarks/bench_defenses.py [--images 64] [--size 64] [--batch 32]

EfficientNet-B3 (random init) on random images; prints seconds per image for one epoch of plain training,
FGSM-RS adversarial training, the HGD denoiser (PGD-5 training images) and MagNet's auto-encoder, so a
profile's defence epochs can be turned into minutes before a run.
"""

from __future__ import annotations

import argparse
import time

import torch

from medsec_utils import defenses, models, training

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.images, 1, args.size, args.size)
    y = torch.arange(args.images) % 2
    common = dict(epochs=1, batch_size=args.batch, seed=0, device=CPU, progress=False)
    classifier = models.build_classifier(1).eval()
    runs = {
        "plain training": lambda: training.train_classifier(
            models.build_classifier(1), (x, y), (x[:8], y[:8]), lr=5e-4, weight_decay=1e-4, **common),
        "adversarial training (FGSM-RS)": lambda: defenses.adversarially_train(
            models.build_classifier(1), (x, y), (x[:8], y[:8]), method="fgsm_rs", eps=2 / 255, steps=5, lr=5e-4,
            weight_decay=1e-4, **common),
        "HGD denoiser (PGD-5 images)": lambda: defenses.train_denoiser(
            defenses.Denoiser(1), classifier, (x, y), eps=[1 / 255, 2 / 255, 4 / 255], steps=5, lr=1e-3, **common),
        "MagNet auto-encoder": lambda: defenses.train_autoencoder(defenses.AutoEncoder(1), x, lr=1e-3, **common),
    }
    runs["plain training"]()  # warm-up: allocator and kernels, not timed
    print(f"{args.images} images at {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, run in runs.items():
        started = time.perf_counter()
        run()
        print(f"{name:<32}{(time.perf_counter() - started) / args.images * 1000:8.1f} ms per image and epoch", flush=True)


if __name__ == "__main__":
    main()
