"""Benchmark: training cost of each defence per image and epoch, beside plain training of the classifier.

    python benchmarks/bench_defenses.py [--images 64] [--size 64] [--batch 32] [--profile cpu]

EfficientNet-B3 (random init) on phantom CT images; trains every kind of ``defenses.DEFENSES`` through its table
entry at the profile's settings with one epoch, and prints seconds per training image beside one epoch of plain
training, so a profile's defence epochs can be turned into minutes before a run. A defence's once-per-run work
(MagNet's calibration, adversarial training's validation) is timed with it, on at most ``--batch`` images.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from medsec_utils import data, defenses, models, profiles, training

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    one_epoch = {key: 1 for key in profiles.resolve_profile(args.profile) if key.endswith("_epochs")}
    settings = profiles.resolve_profile(args.profile, batch_size=args.batch, max_train_images=args.images,
                                        max_eval_images=args.batch, **one_epoch)
    n = max(2 * args.images, 64)  # enough phantoms for a validation split
    images = data.load_dataset(f"phantom:ct?n={n}", size=args.size, use_cache=False, progress=False)
    train, val = images.tensors("train", args.images), images.tensors("val", args.batch)
    torch.manual_seed(0)
    classifier = models.build_classifier(images.channels).eval()
    runs = {"plain training": lambda: training.train_classifier(
        models.build_classifier(images.channels), train, val, epochs=1, batch_size=args.batch, lr=settings["lr"],
        weight_decay=settings["weight_decay"], seed=0, device=CPU, progress=False)}
    runs |= {kind: partial(defense.train, images, classifier, train, settings, 0, CPU, False)
             for kind, defense in defenses.DEFENSES.items()}
    runs["plain training"]()  # warm-up: allocator and kernels, not timed
    print(f"{len(train[1])} images at {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"profile {args.profile}")
    for name, run in runs.items():
        started = time.perf_counter()
        run()
        print(f"{name:<24}{(time.perf_counter() - started) / len(train[1]) * 1000:8.1f} ms per image and epoch",
              flush=True)


if __name__ == "__main__":
    main()
