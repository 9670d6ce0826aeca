"""ProGAN (Karras, Aila, Laine & Lehtinen, ICLR 2018, arXiv:1710.10196), after the paper's reference code:
grows from 4 px by doubling; each new level fades in during the first half of its epochs; equalised
learning rate, pixel norm, minibatch standard deviation; WGAN-GP loss (Gulrajani et al. 2017) with the
drift term."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._loop import Curve, WeightAverage, curve_epochs, gan_optimisers, run_epochs, update
from ._plumbing import latent, levels, register_generator, sample_latents, to_model_range
from .augment import diff_augment

GP_WEIGHT, DRIFT = 10.0, 0.001  # WGAN-GP gradient penalty and ProGAN's drift term
ABOUT = (
    "**ProGAN** (Karras, Aila, Laine & Lehtinen, *Progressive growing of GANs for improved quality, stability, "
    "and variation*, ICLR 2018, arXiv:1710.10196): starts at 4 px and doubles; every new resolution fades in "
    "during the first half of its steps; equalised learning rate, pixel norm, minibatch standard deviation, "
    "the WGAN-GP loss with the drift term.")


HE_GAIN = 2**0.5


class EqualizedConv2d(nn.Module):
    """Convolution with N(0, 1) weights scaled at run time by ``gain / sqrt(fan_in)`` (equalised learning rate).
    The gains are the reference code's: He's sqrt(2) before a leaky ReLU, 1 for the linear output layers
    (to-RGB, the critic's score) and sqrt(2) / 4 for the generator's first, latent-to-4-px layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 gain: float = HE_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / (in_channels * kernel_size**2) ** 0.5
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Append one constant feature map per image: the mean standard deviation of its group of ``group_size``
    images (against mode collapse). Image ``i`` of ``N`` is in group ``i % (N / group_size)``, as in the reference
    code's ``minibatch_stddev_layer``; a batch that groups do not divide is one group."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        group = min(self.group_size, n)
        group = group if n % group == 0 else n
        grouped = x.reshape(group, -1, channels, height, width)
        std = torch.sqrt(grouped.var(0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))
        return torch.cat([x, std.repeat(group).view(n, 1, 1, 1).expand(n, 1, height, width)], 1)


def _progan_widths(width: int, max_level: int) -> list[int]:
    """Channels at 4, 8, ... px: ``width`` up to 32 px, then halved per level (at least 16)."""
    return [max(16, width >> max(0, level - 3)) for level in range(max_level + 1)]


def _conv_block(in_channels: int, out_channels: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [EqualizedConv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2)]
    return layers + [PixelNorm()] if norm else layers


class ProGANGenerator(nn.Module):
    """Progressively grown generator; ``forward(z, level, alpha)`` makes ``4 * 2**level`` px images.

    ``alpha`` < 1 fades the newest level in: the output mixes the new level with the previous level's
    image upsampled.
    """

    def __init__(self, channels: int = 1, size: int = 64, latent_dim: int = 100, width: int = 128) -> None:
        super().__init__()
        self.max_level = levels(size)
        self.latent_dim = latent_dim
        widths = _progan_widths(width, self.max_level)
        self.norm = PixelNorm()
        self.seed = EqualizedConv2d(latent_dim, widths[0] * 16, 1, gain=HE_GAIN / 4)
        self.stem = nn.Sequential(nn.LeakyReLU(0.2), PixelNorm(), *_conv_block(widths[0], widths[0], norm=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2), *_conv_block(a, b, True), *_conv_block(b, b, True))
            for a, b in zip(widths, widths[1:]))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, channels, 1, gain=1.0) for w in widths)

    def forward(self, z: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.max_level if level is None else level
        z = z.view(len(z), self.latent_dim, 1, 1)
        h = self.stem(self.seed(self.norm(z)).view(len(z), -1, 4, 4))
        for block in self.blocks[:max(0, level - 1)]:
            h = block(h)
        if level == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[level](self.blocks[level - 1](h))
        if alpha >= 1:
            return new
        return alpha * new + (1 - alpha) * F.interpolate(self.to_rgb[level - 1](h), scale_factor=2)


class ProGANDiscriminator(nn.Module):
    """Progressively grown critic; ``forward(x, level, alpha)`` scores ``4 * 2**level`` px images."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 128) -> None:
        super().__init__()
        self.max_level = levels(size)
        widths = _progan_widths(width, self.max_level)
        self.from_rgb = nn.ModuleList(nn.Sequential(EqualizedConv2d(channels, w, 1), nn.LeakyReLU(0.2)) for w in widths)
        self.blocks = nn.ModuleList(
            nn.Sequential(*_conv_block(b, b, False), *_conv_block(b, a, False), nn.AvgPool2d(2))
            for a, b in zip(widths, widths[1:]))
        self.final = nn.Sequential(MinibatchStdDev(), *_conv_block(widths[0] + 1, widths[0], False),
                                   EqualizedConv2d(widths[0], widths[0], 4), nn.LeakyReLU(0.2),
                                   EqualizedConv2d(widths[0], 1, 1, gain=1.0))

    def forward(self, x: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.max_level if level is None else level
        h = self.from_rgb[level](x)
        if level > 0:
            h = self.blocks[level - 1](h)
            if alpha < 1:
                h = alpha * h + (1 - alpha) * self.from_rgb[level - 1](F.avg_pool2d(x, 2))
            for block in reversed(self.blocks[:level - 1]):
                h = block(h)
        return self.final(h).view(-1)


def train_progan(generator: ProGANGenerator, discriminator: ProGANDiscriminator, images: torch.Tensor, *,
                 epochs_per_level: int, batch_size: int, lr: float, seed: int, device: torch.device,
                 augment: str = "", progress: bool = True, checkpoint: Path | None = None,
                 curve: Path | None = None) -> list[dict[str, Any]]:
    """Grow a ProGAN on ``images`` in [0, 1] from 4 px to their size with WGAN-GP.

    Each level trains ``epochs_per_level`` epochs; above 4 px its first half fades the level in (real
    images are faded the same way). The critic sees every image through :func:`diff_augment` with policy
    ``augment``. The history's ``alpha`` is the epoch's mean fade-in weight. Leaves the generator with its
    moving average of weights (:class:`WeightAverage`), as the paper samples. The average restarts when each
    level's fade-in ends, so it holds only weights of the finished network it samples with: Karras et al. average
    over about 1000 steps of 37,500 per phase, while a level here lasts a few hundred steps, about as long as
    the average's window. ``curve`` gets the averaged weights at three points of the last level's steps after its
    fade-in (:class:`Curve`): earlier snapshots are networks for smaller images.
    """
    opt_g, opt_d, state = gan_optimisers(generator, discriminator, device, lr, betas=(0.0, 0.99))
    state["average"] = average = WeightAverage(generator)
    pyramid = [F.adaptive_avg_pool2d(images, 4 * 2**level) for level in range(generator.max_level + 1)]
    fade_epochs = epochs_per_level / 2

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        level = plan["level"]
        alpha = 1.0 if level == 0 else min(1.0, (plan["epoch_in_level"] + fraction) / fade_epochs)
        if alpha >= 1:
            average.restart(since=level)
        real = to_model_range(pyramid[level][index].to(device))
        if alpha < 1:
            real = alpha * real + (1 - alpha) * F.interpolate(F.avg_pool2d(real, 2), scale_factor=2)
        fake = generator(latent(len(real), generator.latent_dim, rng).to(device), level, alpha)
        real, seen_fake = diff_augment(real, augment, rng), diff_augment(fake, augment, rng)
        real_score = discriminator(real, level, alpha)
        fake_score = discriminator(seen_fake.detach(), level, alpha)
        loss_d = (fake_score.mean() - real_score.mean() + DRIFT * real_score.pow(2).mean()
                  + GP_WEIGHT * _gradient_penalty(discriminator, real, seen_fake.detach(), level, alpha, rng))
        update(opt_d, loss_d)
        loss_g = -discriminator(seen_fake, level, alpha).mean()
        update(opt_g, loss_g)
        average.update()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "alpha": alpha}

    plan = [{"level": level, "resolution": 4 * 2**level, "epoch_in_level": epoch}
            for level in range(generator.max_level + 1) for epoch in range(epochs_per_level)]
    faded_in = generator.max_level * epochs_per_level + epochs_per_level // 2 + 1  # the epoch whose steps reach alpha 1
    snapshots = None if curve is None else Curve(curve, curve_epochs(faded_in, len(plan)), average.averaged_state)
    history = run_epochs(plan, len(images), batch_size, seed, step, state=state, checkpoint=checkpoint,
                         desc="ProGAN", progress=progress, curve=snapshots)
    average.copy_to_model()
    return history


def _gradient_penalty(critic: ProGANDiscriminator, real: torch.Tensor, fake: torch.Tensor, level: int, alpha: float,
                      rng: torch.Generator) -> torch.Tensor:
    """WGAN-GP: (|grad of the critic| - 1)^2 at random points between real and fake images."""
    mix = torch.rand(len(real), 1, 1, 1, generator=rng).to(real.device)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(between, level, alpha).sum(), between, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def _train(generator: ProGANGenerator, discriminator: ProGANDiscriminator, images: torch.Tensor,
           settings: Mapping[str, Any], *, epochs: int, **loop: Any) -> list[dict[str, Any]]:
    return train_progan(generator, discriminator, images, epochs_per_level=epochs, lr=settings["progan_lr"],
                        augment=settings["progan_augment"], **loop)


@register_generator("progan", model=ProGANGenerator, train=_train, sample=sample_latents,
                    steps_key="progan_steps_per_level",
                    settings_keys=("latent_dim", "progan_width", "progan_steps_per_level", "progan_lr",
                                   "progan_augment", "batch_size", "max_train_images"), about=ABOUT)
def build_progan(channels: int, size: int,
                 settings: Mapping[str, Any]) -> tuple[ProGANGenerator, ProGANDiscriminator]:
    """Untrained ProGAN generator and critic at the profile's ``latent_dim`` and ``progan_width``."""
    return (ProGANGenerator(channels, size, settings["latent_dim"], settings["progan_width"]),
            ProGANDiscriminator(channels, size, settings["progan_width"]))
