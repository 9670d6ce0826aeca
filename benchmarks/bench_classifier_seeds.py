"""Benchmark: how much chapter 1's classifier varies over seeds, and which part of the recipe makes it vary.

    python benchmarks/bench_classifier_seeds.py [--dataset ../shared/data/ct] [--profile cpu] [--seeds 0,1,2,3,4]
        [--flip both]

Trains the chapter-1 classifier (``training.train_classifier``, the profile's settings) once per seed and flip
setting and prints, per run, the test accuracy and AUC of two ways to choose the weights: the epoch of the best
validation AUC (the library's rule) and the last epoch; then mean, standard deviation and range per way. Test
figures of every epoch are taken beside the validation ones while the run trains (``training.evaluate`` is
wrapped for this script), so one run gives both rules. Nothing is cached: each run trains from scratch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from medsec_utils import data, models, profiles, training

CPU = torch.device("cpu")


def one_run(images: data.ImageSet, settings: profiles.Settings, seed: int, flip: bool) -> dict[str, float]:
    """Train one classifier; the test accuracy and AUC at the best-validation epoch and at the last epoch."""
    test = images.tensors("test", settings.max_eval_images, seed)
    val = images.tensors("val", settings.max_eval_images, seed)
    per_epoch: list[dict[str, float]] = []
    evaluate = training.evaluate

    def evaluate_with_test(model: torch.nn.Module, split: training.Tensors, device: torch.device,
                           batch_size: int = 128) -> dict[str, float]:
        if split is val:
            per_epoch.append(evaluate(model, test, device, batch_size))
        return evaluate(model, split, device, batch_size)

    training.seed_everything(seed)
    model = models.build_classifier(images.channels)
    started = time.perf_counter()
    training.evaluate = evaluate_with_test
    try:
        history = training.train_classifier(
            model, images.tensors("train", settings.max_train_images, seed), val, epochs=settings.epochs,
            batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay, seed=seed,
            device=CPU, flip=flip, progress=False)
    finally:
        training.evaluate = evaluate
    best = int(np.argmax([record["val_auc"] for record in history]))
    return {"seed": seed, "flip": flip, "best_epoch": best + 1, "minutes": (time.perf_counter() - started) / 60,
            "val_auc": history[best]["val_auc"],
            "best_val_accuracy": per_epoch[best]["accuracy"], "best_val_auc": per_epoch[best]["auc"],
            "last_accuracy": per_epoch[-1]["accuracy"], "last_auc": per_epoch[-1]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="../shared/data/ct")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--flip", choices=("library", "both"), default="library",
                        help="library: flips for histology only, as chapter 1; both: each run with and without")
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    images = data.load_dataset(args.dataset, size=settings.image_size, seed=0)
    flips = (False, True) if args.flip == "both" else (images.modality == "histology",)
    print(f"{images.name} ({images.modality}), profile {args.profile}: {settings.epochs} epochs, lr {settings.lr}, "
          f"batch {settings.batch_size}, {settings.image_size} px; test = {len(images.indices('test', None, 0))} "
          f"images, val = {len(images.indices('val', None, 0))}", flush=True)
    runs = []
    for flip in flips:
        for seed in (int(s) for s in args.seeds.split(",")):
            run = one_run(images, settings, seed, flip)
            runs.append(run)
            print(f"seed {seed} flip {flip!s:5s}: best-val epoch {run['best_epoch']:2d} (val AUC {run['val_auc']:.3f})"
                  f" test acc {run['best_val_accuracy']:.3f} AUC {run['best_val_auc']:.3f} | last epoch test acc "
                  f"{run['last_accuracy']:.3f} AUC {run['last_auc']:.3f} | {run['minutes']:.1f} min", flush=True)
    print(f"\n{'flip':5s} {'weights':16s} {'accuracy mean':>13s} {'sd':>6s} {'range':>13s} {'AUC mean':>9s} {'sd':>6s}")
    for flip in flips:
        chosen = [r for r in runs if r["flip"] == flip]
        for way, label in (("best_val", "best validation"), ("last", "last epoch")):
            acc = np.array([r[f"{way}_accuracy"] for r in chosen])
            auc = np.array([r[f"{way}_auc"] for r in chosen])
            print(f"{flip!s:5s} {label:16s} {acc.mean():13.3f} {acc.std(ddof=1):6.3f} "
                  f"{acc.min():6.3f}-{acc.max():.3f} {auc.mean():9.3f} {auc.std(ddof=1):6.3f}")


if __name__ == "__main__":
    main()
