"""DiffAugment (Zhao, Liu, Lin, Zhu & Han, *Differentiable augmentation for data-efficient GAN training*,
NeurIPS 2020, arXiv:2006.10738) for the GANs' discriminators.

The same random differentiable transforms apply to every image the discriminator sees, real or generated,
so that it cannot memorise a few hundred training images (profile keys ``gan_augment``, ``progan_augment``;
without it the DC-GAN's discriminator wins at once on the CT slices; ProGAN's WGAN-GP critic does better
without it, as Karras et al. train). The profiles leave out **color**: redrawing each image's brightness and
contrast hides from the discriminator a generator whose images all share one exposure (the DC-GAN's recall on
chest X-ray Normal was 0.05 with it, 0.38 without, ``benchmarks/bench_generator_quality.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("color", "translation", "cutout")  # DiffAugment's transforms, in the order they apply


def diff_augment(x: torch.Tensor, policy: str, rng: torch.Generator) -> torch.Tensor:
    """DiffAugment of images in [-1, 1], after the paper's reference code.

    ``policy`` names transforms from ``AUGMENTS``, comma-separated ("" for none): **color** (random
    brightness, saturation for RGB, contrast), **translation** (up to 1/8 of the side, zero fill) and
    **cutout** (a zeroed square of half the side). Each image draws its own parameters from ``rng``;
    every transform is differentiable, so the generator learns through it.

    Raises:
        ValueError: an unknown transform, named.
    """
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = sorted(set(names) - set(AUGMENTS))
    if unknown:
        raise ValueError(f"gan_augment {policy!r}: unknown transform(s) {', '.join(unknown)}; "
                         f"use a comma-separated subset of {', '.join(AUGMENTS)} or '' for none")
    n, channels, height, width = x.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=rng).to(x.device)

    if "color" in names:
        x = x + (uniform(1, 1, 1) - 0.5)
        if channels > 1:
            grey = x.mean(1, keepdim=True)
            x = (x - grey) * (uniform(1, 1, 1) * 2) + grey
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (uniform(1, 1, 1) + 0.5) + mean
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    if "translation" in names:
        shift_y, shift_x = int(height * 0.125 + 0.5), int(width * 0.125 + 0.5)
        dy = torch.randint(-shift_y, shift_y + 1, (n, 1, 1), generator=rng).to(x.device)
        dx = torch.randint(-shift_x, shift_x + 1, (n, 1, 1), generator=rng).to(x.device)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # a zero border that shifted-in pixels read
        batch = torch.arange(n, device=x.device).view(-1, 1, 1)
        x = padded[batch, (rows + dy + 1).clamp(0, height + 1), (cols + dx + 1).clamp(0, width + 1)].permute(0, 3, 1, 2)
    if "cutout" in names:
        side_y, side_x = int(height * 0.5 + 0.5), int(width * 0.5 + 0.5)
        top = torch.randint(0, height + 1 - side_y % 2, (n, 1, 1), generator=rng).to(x.device) - side_y // 2
        left = torch.randint(0, width + 1 - side_x % 2, (n, 1, 1), generator=rng).to(x.device) - side_x // 2
        inside = (rows >= top) & (rows < top + side_y) & (cols >= left) & (cols < left + side_x)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x
