"""Benchmark: one DP-SGD step of the chapter-1 classifier against one ordinary training step, per Opacus mode;
and a DC-GAN step with a private discriminator against an ordinary DC-GAN step.

    python benchmarks/bench_dp.py [--size 32] [--batch 16] [--modes functorch hooks] [--gan-size 64 --gan-steps 20]

An EfficientNet-B3 (``models.build_classifier(1)``, made ``privacy.dp.dp_compatible``) takes one step on
``--batch`` random 1-channel images: plainly (forward, backward, SGD), and under Opacus with each per-image
gradient mode of ``--modes`` (per-image gradients, clipping, noise). Each is timed after one warm-up step; the
table gives seconds per step and how many times slower than the plain step it is, measured in this one run.
``dp.GRAD_SAMPLE_MODE`` is the faster mode. Measured 2026-12-07 on a 2-core AMD EPYC at one thread, 32 px, batch
16: plain 0.29 s, functorch 1.40 s (4.8x), hooks 19.0 s (65x).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from medsec_utils.models import build_classifier
from medsec_utils.privacy import dp


def step_seconds(size: int, batch: int, mode: str | None) -> float:
    """Seconds of the second of two steps (the first warms up), plain when ``mode`` is None."""
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model, _ = dp.dp_compatible(build_classifier(1))
    model = model.to(memory_format=torch.contiguous_format).train()
    x, y = torch.rand(2 * batch, 1, size, size), torch.arange(2 * batch) % 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if mode is not None:
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode=mode)
    times = []
    for images, labels in loader:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[-1]


def gan_step_seconds(size: int, batch: int, steps: int, private: bool) -> float:
    """Seconds per step of a DC-GAN (the ``cpu`` profile's width) on random 1-channel images, trained ``steps``
    steps by ``generative.dcgan.train_dcgan`` (no augmentation or weight average) or ``dp.train_dp_dcgan``."""
    from medsec_utils import generative, profiles
    from medsec_utils.generative.dcgan import train_dcgan

    settings = profiles.resolve_profile("cpu")
    torch.manual_seed(0)
    generator, discriminator = generative.GENERATORS["dcgan"].build(1, size, settings)
    images = torch.rand(batch * steps, 1, size, size)
    started = time.perf_counter()
    if private:
        dp.train_dp_dcgan(generator, discriminator, images, epsilon=8, delta=1 / (10 * len(images)), steps=steps,
                          batch_size=batch, lr=2e-4, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
                          progress=False)
    else:
        train_dcgan(generator, discriminator, images, epochs=1, batch_size=batch, lr=2e-4, seed=0,
                    device=torch.device("cpu"), progress=False, average=False)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=["functorch", "hooks"])
    parser.add_argument("--gan-size", type=int, default=64)
    parser.add_argument("--gan-steps", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"{args.batch} images of {args.size} px a step")
    plain = step_seconds(args.size, args.batch, None)
    print(f"{'step':<22}{'s/step':>10}{'x plain':>10}")
    print(f"{'plain SGD':<22}{plain:>10.2f}{1.0:>10.1f}")
    for mode in args.modes:
        seconds = step_seconds(args.size, args.batch, mode)
        print(f"{'DP-SGD, ' + mode:<22}{seconds:>10.2f}{seconds / plain:>10.1f}")
    plain_gan = gan_step_seconds(args.gan_size, args.batch, args.gan_steps, private=False)
    private_gan = gan_step_seconds(args.gan_size, args.batch, args.gan_steps, private=True)
    print(f"DC-GAN, {args.gan_size} px, mean of {args.gan_steps} steps (the private one: about that many, Poisson)")
    print(f"{'DC-GAN step':<22}{plain_gan:>10.2f}{1.0:>10.1f}")
    print(f"{'DP discriminator':<22}{private_gan:>10.2f}{private_gan / plain_gan:>10.1f}")


if __name__ == "__main__":
    main()
