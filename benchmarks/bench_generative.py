"""Benchmark: training and sampling cost of each generator, to turn a profile into minutes before a run.

    python benchmarks/bench_generative.py [--profile cpu] [--images 64] [--size 64] [--channels 1]

Builds DC-GAN, ProGAN and DDPM at the profile's widths (random images, CPU) and prints milliseconds per
image for one training epoch (ProGAN: one epoch at each level from 4 px up) and for sampling (DDPM: the
profile's DDIM steps), then the minutes one class of ``--images`` images would take at the profile's epochs.
"""

from __future__ import annotations

import argparse
import time

import torch

from medsec_utils import generative, profiles

CPU = torch.device("cpu")


def _train_one_epoch(kind: str, generator, discriminator, x: torch.Tensor, settings: profiles.Settings) -> int:
    """One epoch of ``kind`` (ProGAN: one at every level); returns the epochs a run of the profile trains."""
    common = dict(batch_size=settings.batch_size, seed=0, device=CPU, progress=False)
    if kind == "dcgan":
        generative.train_dcgan(generator, discriminator, x, epochs=1, lr=settings.gan_lr, **common)
        return settings.gan_epochs
    if kind == "progan":
        generative.train_progan(generator, discriminator, x, epochs_per_level=1, lr=settings.progan_lr, **common)
        return settings.progan_epochs_per_level
    generative.train_ddpm(generator, x, epochs=1, lr=settings.ddpm_lr, **common)
    return settings.ddpm_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    torch.manual_seed(0)
    x = torch.rand(args.images, args.channels, args.size, args.size)
    print(f"profile {args.profile}: {args.images} images at {args.size} px, {args.channels} channel(s), "
          f"batch {settings.batch_size}, {torch.get_num_threads()} threads")
    for kind in generative.GENERATORS:
        generator, discriminator = generative.build_generative(kind, args.channels, args.size, settings)
        started = time.perf_counter()
        epochs = _train_one_epoch(kind, generator, discriminator, x, settings)
        train_ms = (time.perf_counter() - started) / args.images * 1000
        started = time.perf_counter()
        generative.sample(generator, args.images, seed=0, device=CPU, ddim_steps=settings.ddim_steps)
        sample_ms = (time.perf_counter() - started) / args.images * 1000
        print(f"{kind:<8} train {train_ms:8.1f} ms per image and epoch | sample {sample_ms:8.1f} ms per image | "
              f"one class of {args.images} images x {epochs} epochs: {train_ms * args.images * epochs / 60000:6.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
