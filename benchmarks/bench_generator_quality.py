"""Benchmark: the generative-quality targets on real images, per generator and class, and an ablation of
DC-GAN's sampling weights.

    python benchmarks/bench_generator_quality.py [--dataset ../shared/data/chest_xray] [--profile cpu]
        [--kind dcgan --kind progan --kind ddpm] [--ablation]

Trains each kind's generator of both classes at the profile's settings, or loads it from the artefact cache (an
interrupted run resumes from its last epoch), samples ``synthetic_images`` per class, embeds them and the
held-out real test images in chapter 4's feature space (random-init VGG-16), and prints per generator and class
the precision, recall, diversity and machine reader's accuracy against the targets of the generative-quality
issue (recall >= 0.3, precision >= 0.5, diversity >= 0.8; machine reader <= 0.70 for DC-GAN and DDPM), beside
the floor of as many real training images.

``--ablation`` trains one DC-GAN of ``--ablation-class`` outside the cache, keeps its last raw weights, and
compares samples of the raw weights with the batch-norm statistics of training (how the library sampled before
the moving average), of the raw weights with statistics re-estimated for them, and of the moving average with
re-estimated statistics (how it samples now).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from medsec_utils import data, generative, metrics, profiles, synthetic_eval

CPU = torch.device("cpu")
TARGETS = {"precision": (">=", 0.5), "recall": (">=", 0.3), "diversity": (">=", 0.8)}
MACHINE_READER_TARGET = {"dcgan": 0.70, "ddpm": 0.70}
CLASS_NAMES = ("Normal", "Pathology")


def figures(real: torch.Tensor, fake: torch.Tensor, seed: int) -> dict[str, float]:
    """The targets' figures of one set of generated feature vectors against real ones."""
    return {**{k: v for k, v in metrics.precision_recall(real, fake).items() if k != "k"},
            "diversity": metrics.diversity(real, fake),
            "machine_reader": metrics.real_vs_synthetic_accuracy(real, fake, seed=seed)}


def verdict(kind: str, row: dict[str, float]) -> str:
    misses = [name for name, (_, bound) in TARGETS.items() if row[name] < bound]
    if kind in MACHINE_READER_TARGET and row["machine_reader"] > MACHINE_READER_TARGET[kind]:
        misses.append("machine_reader")
    return "meets every target" if not misses else "misses " + ", ".join(misses)


def print_row(label: str, row: dict[str, float], note: str = "") -> None:
    print(f"{label:34s} {row['precision']:9.2f} {row['recall']:7.2f} {row['diversity']:9.2f} "
          f"{row['machine_reader']:14.2f}  {note}", flush=True)


def header() -> None:
    print(f"{'generator, class':34s} {'precision':>9s} {'recall':>7s} {'diversity':>9s} {'machine reader':>14s}")


def ablation(images: data.ImageSet, settings: profiles.Settings, label: int, real: torch.Tensor,
             encoder: torch.nn.Module, n: int, seed: int) -> None:
    """DC-GAN of class ``label`` sampled three ways (see the module docstring)."""
    x, y = images.tensors("train", settings.max_train_images, seed)
    x = x[y == label]
    torch.manual_seed(seed)
    averaged, discriminator = generative.build_generative("dcgan", images.channels, images.size, settings)
    epochs = generative.epochs_for(settings.gan_steps, len(x), settings.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        generative.GENERATORS["dcgan"].train(averaged, discriminator, x, settings, epochs=epochs,
                                             batch_size=settings.batch_size, seed=seed, device=CPU, progress=True,
                                             checkpoint=checkpoint)
        raw_state = torch.load(checkpoint, weights_only=False)["state"]["generator"]
    raw = generative.build_generative("dcgan", images.channels, images.size, settings)[0]
    raw.load_state_dict(raw_state)
    re_estimated = generative.build_generative("dcgan", images.channels, images.size, settings)[0]
    re_estimated.load_state_dict(raw_state)
    latents = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        update_bn([generative.latent(settings.batch_size, settings.latent_dim, latents)
                   for _ in range(generative.BATCH_NORM_BATCHES)], re_estimated)
    print(f"\nablation: DC-GAN, {CLASS_NAMES[label]}, {epochs} epochs of {len(x)} images")
    header()
    for about, model in (("raw weights, training BN statistics", raw),
                         ("raw weights, re-estimated BN", re_estimated),
                         ("moving average, re-estimated BN", averaged)):
        fake = metrics.image_features(encoder, generative.sample(model, n, seed=seed, device=CPU), CPU, keep=False)
        print_row(about, figures(real, fake, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="../shared/data/chest_xray")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--kind", action="append", default=[], help="generator kind (default: every kind)")
    parser.add_argument("--ablation", action="store_true", help="also the DC-GAN sampling-weights ablation")
    parser.add_argument("--ablation-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    images = data.load_dataset(args.dataset, size=settings.image_size, seed=args.seed)
    test_x, test_y = images.tensors("test", settings.max_eval_images, args.seed)
    train_x, train_y = images.tensors("train", settings.max_train_images, args.seed)
    encoder, about = metrics.feature_space("random_vgg16", seed=args.seed)
    real = metrics.image_features(encoder, test_x, CPU)
    n = settings.synthetic_images
    print(f"{images.name}, {settings.image_size} px, profile {args.profile}: {n} generated images per class against "
          f"{len(test_y)} held-out test images in {about}")
    if args.ablation:
        ablation(images, settings, args.ablation_class, real[test_y == args.ablation_class], encoder, n, args.seed)
    header()
    for c in (0, 1):
        pick = torch.randperm(int((train_y == c).sum()), generator=torch.Generator().manual_seed(args.seed))[:n]
        floor = metrics.image_features(encoder, train_x[train_y == c][pick], CPU)
        print_row(f"real train (floor), {CLASS_NAMES[c]}", figures(real[test_y == c], floor, args.seed))
    for kind in args.kind or list(generative.GENERATORS):
        trained = {c: generative.generator_for(kind, images, c, settings, seed=args.seed, device=CPU)[0] for c in (0, 1)}
        samples, _ = synthetic_eval.sample_generators({(images.name, kind): trained}, n, seed=args.seed, device=CPU,
                                                      ddim_steps=settings.ddim_steps)
        fake_x, fake_y = samples[images.name, kind]
        fake = metrics.image_features(encoder, fake_x, CPU)
        for c in (0, 1):
            row = figures(real[test_y == c], fake[fake_y == c], args.seed)
            print_row(f"{kind}, {CLASS_NAMES[c]}", row, verdict(kind, row))


if __name__ == "__main__":
    main()
