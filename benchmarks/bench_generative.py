"""Benchmark: training and sampling cost of each generator, to turn a profile into minutes before a run.

    python benchmarks/bench_generative.py [--profile cpu] [--images 64] [--size 64] [--channels 1] [--kind dcgan ...]

Builds every kind in ``generative.GENERATORS`` at the profile's widths (random images, CPU; the GANs with the
profile's DiffAugment), trains one epoch of ``--images`` images (ProGAN: one epoch at each level from 4 px up),
and prints seconds per optimiser step, milliseconds per sampled image (DDPM: the profile's DDIM steps) and the
minutes one class takes at the profile's step budget (each kind's ``steps_key``: ``gan_steps``,
``progan_steps_per_level`` per level, ``ddpm_steps``).
"""

from __future__ import annotations

import argparse
import time

import torch

from medsec_utils import generative, profiles

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--kind", action="append", choices=list(generative.GENERATORS),
                        help="generator kind (default: every kind)")
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    torch.manual_seed(0)
    x = torch.rand(args.images, args.channels, args.size, args.size)
    steps_per_epoch = max(1, args.images // settings.batch_size)
    print(f"profile {args.profile}: {args.images} images at {args.size} px, {args.channels} channel(s), "
          f"batch {settings.batch_size}, {torch.get_num_threads()} threads")
    for kind in args.kind or list(generative.GENERATORS):
        entry = generative.GENERATORS[kind]
        generator, discriminator = entry.build(args.channels, args.size, settings)
        started = time.perf_counter()
        history = entry.train(generator, discriminator, x, settings, epochs=1, batch_size=settings.batch_size, seed=0,
                              device=CPU, progress=False, checkpoint=None)
        levels = len(history)  # one epoch per stage (ProGAN: per level); the budget is per stage
        step_s = (time.perf_counter() - started) / (steps_per_epoch * levels)
        budget = settings[entry.steps_key] * levels
        started = time.perf_counter()
        generative.sample(generator, args.images, seed=0, device=CPU, ddim_steps=settings.ddim_steps)
        sample_ms = (time.perf_counter() - started) / args.images * 1000
        print(f"{kind:<8} train {step_s:7.3f} s per step{' (mean over levels)' if levels > 1 else ''} | "
              f"sample {sample_ms:8.1f} ms per image | one class, {budget} steps: {step_s * budget / 60:6.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
