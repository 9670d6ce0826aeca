"""Benchmark: the generative-quality targets on real images, per generator and class, against training steps.

    python benchmarks/bench_generator_quality.py [--dataset ../shared/data/chest_xray] [--profile cpu]
        [--kind dcgan --kind ddpm ...] [--budgets 0.25,0.5,1] [--label 0] [--work DIR] [--param gan_augment= ...]

For each kind and class, trains a generator at the profile's settings to each fraction of the profile's step
budget in turn (DC-GAN and DDPM continue one run from its checkpoint; ProGAN, whose budget is per level, trains
each fraction from scratch), samples ``synthetic_images`` and embeds them, with the held-out real test images
of the class, in chapter 4's feature space (random-init VGG-16). Prints per point the optimiser steps, training
minutes, precision, recall, diversity and the machine reader's accuracy against the targets of the
generative-quality issue (recall >= 0.3, precision >= 0.5, diversity >= 0.8; machine reader <= 0.70 for DC-GAN
and DDPM), beside the floor of as many real training images: the curve shows where more training would help.
Last, per generator and class, the budget at which the curve's trend would meet each target missed
(``synthetic_eval.steps_to_reach``, as chapter 4), or that it does not head for it.
The same real images, slightly degraded (``SLIGHT_DEGRADATIONS``: pixel noise of 2 and 5 % of the range, a 3 px
blur), show how strict each target is in this space: what a generator's small artefacts alone would cost.

Each point is sampled three ways where they differ: with the moving average of the weights and batch-norm
statistics re-estimated for them (how the library samples), with the last raw weights and the statistics of
training (how it sampled before the moving average), and (DC-GAN) the raw weights with re-estimated statistics.
Checkpoints and finished points are kept in ``--work`` (default: in the artefact cache), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.optim.swa_utils import update_bn

from medsec_utils import cache, data, generative, metrics, profiles
from medsec_utils.reporting import CLASS_NAMES
from medsec_utils.synthetic_eval import quality_targets, steps_to_reach

CPU = torch.device("cpu")
BENCH_NAMES = {"machine_reader_accuracy": "machine_reader"}  # chapter 4's measure names, as this script's rows say them
RAW_KEYS = {"ddpm": "unet"}
SLIGHT_DEGRADATIONS = (("gaussian noise (std)", 0.02), ("gaussian noise (std)", 0.05), ("box blur (px)", 3))


def figures(real: torch.Tensor, fake: torch.Tensor, seed: int) -> dict[str, float]:
    """The targets' figures of generated feature vectors against real ones."""
    found = metrics.precision_recall(real, fake)
    return {"precision": found["precision"], "recall": found["recall"], "diversity": metrics.diversity(real, fake),
            "machine_reader": metrics.real_vs_synthetic_accuracy(real, fake, seed=seed)}


def targets(kind: str) -> dict[str, tuple[float, bool]]:
    """Chapter 4's quality targets for ``kind``, by this script's measure names."""
    return {BENCH_NAMES.get(m, m): t for m, t in quality_targets(kind).items()}


def verdict(kind: str, row: dict[str, float]) -> str:
    misses = [name.replace("_", " ") for name, (bound, higher) in targets(kind).items()
              if (row[name] < bound if higher else row[name] > bound)]
    return "meets every target" if not misses else "misses " + ", ".join(misses)


def samplings(kind: str, averaged: nn.Module, raw_state: dict, images: data.ImageSet,
              settings: profiles.Settings, seed: int) -> dict[str, nn.Module]:
    """The ways one trained point is sampled (see the module docstring)."""
    def raw() -> nn.Module:
        model = generative.build_generative(kind, images.channels, images.size, settings)[0]
        model.load_state_dict(raw_state)
        return model

    ways = {"moving average": averaged, "raw weights": raw()}
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in averaged.modules()):
        ways["raw, re-estimated BN"] = raw()
        latents = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            update_bn([generative.latent(settings.batch_size, settings.latent_dim, latents)
                       for _ in range(generative.BATCH_NORM_BATCHES)], ways["raw, re-estimated BN"])
    return ways


def point(kind: str, images: data.ImageSet, label: int, settings: profiles.Settings, fraction: float, folder: Path,
          real: torch.Tensor, encoder: nn.Module, seed: int) -> dict:
    """Train class ``label``'s ``kind`` generator to ``fraction`` of the budget and measure it (kept in
    ``folder``)."""
    entry = generative.GENERATORS[kind]
    x, y = images.tensors("train", settings.max_train_images, seed)
    x = x[y == label]
    epochs = generative.epochs_for(round(settings[entry.steps_key] * fraction), len(x), settings.batch_size)
    run = folder / (f"budget_{fraction:g}" if kind == "progan" else "run")
    done = run / f"epochs_{epochs}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, critic = generative.build_generative(kind, images.channels, images.size, settings)
    history = entry.train(model, critic, x, settings, epochs=epochs, batch_size=settings.batch_size, seed=seed,
                          device=CPU, progress=True, checkpoint=run / "checkpoint.pt")
    raw_state = torch.load(run / "checkpoint.pt", weights_only=False)["state"][RAW_KEYS.get(kind, "generator")]
    n = settings.synthetic_images
    measured = {way: figures(real, metrics.image_features(encoder, generative.sample(
        sampler, n, seed=seed, device=CPU, ddim_steps=settings.ddim_steps), CPU, keep=False), seed)
                for way, sampler in samplings(kind, model.eval(), raw_state, images, settings, seed).items()}
    result = {"kind": kind, "class": CLASS_NAMES[label], "fraction": fraction, "epochs": epochs,
              "steps": history[-1]["step"],
              "minutes": sum(h["seconds"] for h in history) / 60, "figures": measured}
    cache.write_json_atomic(done, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="../shared/data/chest_xray")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--kind", action="append", default=[], help="generator kind (default: every kind)")
    parser.add_argument("--budgets", default="1", help="fractions of the profile's step budget, e.g. 0.25,0.5,1")
    parser.add_argument("--work", type=Path, help="checkpoints and finished points (default: in the cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", type=int, action="append", choices=(0, 1), help="class to train (default: both)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a profile setting to override, for an ablation (its own work folder)")
    args = parser.parse_args()
    overrides = {name.strip(): yaml.safe_load(value) for name, value in (p.split("=", 1) for p in args.param)}
    settings = profiles.resolve_profile(args.profile, **overrides)
    budgets = sorted(float(b) for b in args.budgets.split(","))
    images = data.load_dataset(args.dataset, size=settings.image_size, seed=args.seed)
    work = args.work or cache.cache_root() / "bench_generator_quality" / cache.artefact_key(
        {"data": images.checksum, "settings": dict(settings), "seed": args.seed,
         "code": cache.code_fingerprint("generative")})
    test_x, test_y = images.tensors("test", settings.max_eval_images, args.seed)
    train_x, train_y = images.tensors("train", settings.max_train_images, args.seed)
    encoder, about = metrics.feature_space("random_vgg16", seed=args.seed)
    real = metrics.image_features(encoder, test_x, CPU)
    n = settings.synthetic_images
    print(f"{images.name}, {settings.image_size} px, profile {args.profile} {overrides or ''}: {n} generated images per "
          f"class against the class's held-out test images in {about}; work folder {work}", flush=True)
    rows = []
    for c in (0, 1):
        pick = torch.randperm(int((train_y == c).sum()), generator=torch.Generator().manual_seed(args.seed))[:n]
        floor = train_x[train_y == c][pick]
        rows.append(("real train (floor)", CLASS_NAMES[c], "", "", "", figures(
            real[test_y == c], metrics.image_features(encoder, floor, CPU), args.seed), ""))
        for kind, level in SLIGHT_DEGRADATIONS:
            degraded = metrics.image_features(encoder, metrics.degrade(floor, kind, level, args.seed), CPU)
            rows.append(("real train, degraded", CLASS_NAMES[c], "", "", "", figures(real[test_y == c], degraded,
                                                                                     args.seed), f"{kind} {level:g}"))
    for kind in args.kind or list(generative.GENERATORS):
        for c in args.label or (0, 1):
            for fraction in budgets:
                found = point(kind, images, c, settings, fraction, work / kind / str(c), real[test_y == c], encoder,
                              args.seed)
                for way, row in found["figures"].items():
                    rows.append((kind, CLASS_NAMES[c], f"{fraction:g}", found["steps"], f"{found['minutes']:.1f}", row,
                                 f"{way}: {verdict(kind, row)}"))
    print(f"\n{'generator':20s} {'class':9s} {'budget':>6s} {'steps':>6s} {'min':>6s} {'precision':>9s} {'recall':>7s} "
          f"{'diversity':>9s} {'machine reader':>14s}  sampled with")
    for kind, name, fraction, steps, minutes, row, note in rows:
        print(f"{kind:20s} {name:9s} {fraction:>6s} {steps!s:>6s} {minutes:>6s} {row['precision']:9.2f} "
              f"{row['recall']:7.2f} {row['diversity']:9.2f} {row['machine_reader']:14.2f}  {note}")
    curves: dict[tuple[str, str], list[tuple[int, dict[str, float]]]] = {}
    for kind, name, _, steps, _, row, note in rows:
        if note.startswith("moving average"):
            curves.setdefault((kind, name), []).append((steps, row))
    print("\nwhere the moving-average curve would meet each target (least squares against log2 steps):")
    for (kind, name), points in curves.items():
        for measure, (bound, higher) in targets(kind).items():
            reach = steps_to_reach([s for s, _ in points], [r[measure] for _, r in points], bound, higher)
            print(f"  {kind:8s} {name:9s} {measure:14s} {'>=' if higher else '<='} {bound:.2f}: {reach}")


if __name__ == "__main__":
    main()
