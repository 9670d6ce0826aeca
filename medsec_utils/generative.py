"""Generative models of medical images: DC-GAN, ProGAN and DDPM, trained one class at a time and cached.

- **DC-GAN** (Radford et al. 2015): transposed-convolution generator, strided-convolution
  discriminator with batch norm, N(0, 0.02) initial weights, non-saturating BCE loss.
- **ProGAN** (Karras et al. 2018): grows from 4 px by doubling; each new level fades in during the first
  half of its epochs; equalised learning rate, pixel norm, minibatch standard deviation; WGAN-GP loss
  with the drift term.
- **DDPM** (Ho et al. 2020): diffusers' ``UNet2DModel`` trained to predict the noise of
  ``DDPMScheduler``; sampled with ``DDIMScheduler`` in a few deterministic steps.

Both GANs can train with **DiffAugment** (Zhao et al. 2020): the same random differentiable transforms on
every image the discriminator sees, real or generated, so that it cannot memorise a few hundred training
images (profile key ``gan_augment``; without it the DC-GAN's discriminator wins at once on the CT slices).

Images are in [0, 1] outside this module; the networks see [-1, 1]. Training budgets are optimiser steps
(profile keys ``gan_steps``, ``progan_steps_per_level``, ``ddpm_steps``), rounded up to whole epochs of
the class's images. Training checkpoints every epoch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn
from tqdm import tqdm

from . import cache
from .data import ImageSet

GENERATORS = ("dcgan", "progan", "ddpm")
DDPM_TIMESTEPS = 1000
SETTING_KEYS = {
    "dcgan": ("latent_dim", "gan_width", "gan_steps", "gan_lr", "gan_augment", "batch_size", "max_train_images"),
    "progan": ("latent_dim", "progan_width", "progan_steps_per_level", "progan_lr", "gan_augment", "batch_size",
               "max_train_images"),
    "ddpm": ("ddpm_width", "ddpm_steps", "ddpm_lr", "batch_size", "max_train_images"),
}
GP_WEIGHT, DRIFT = 10.0, 0.001  # WGAN-GP gradient penalty and ProGAN's drift term
AUGMENTS = ("color", "translation", "cutout")  # DiffAugment's transforms, in the order they apply


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def _levels(size: int) -> int:
    """Doublings from 4 px to ``size``; raises unless ``size`` is a power of two >= 8."""
    if size < 8 or size & (size - 1):
        raise ValueError(f"image size {size} is not supported: use a power of two >= 8 (64 or 128 as in the paper)")
    return int(math.log2(size)) - 2


def _dcgan_init(module: nn.Module) -> None:
    """The DC-GAN paper's initialisation: convolution weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """Latent vector -> image in [-1, 1]: a 4 px seed doubled by transposed convolutions."""

    def __init__(self, channels: int = 1, size: int = 64, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in reversed(range(_levels(size)))]
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for wide, narrow in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(wide, narrow, 4, 2, 1, bias=False), nn.BatchNorm2d(narrow), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Image in [-1, 1] -> one real/fake logit per image; the mirror of the generator."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 64) -> None:
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in range(_levels(size))]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for narrow, wide in zip(widths, widths[1:]):
            layers += [nn.Conv2d(narrow, wide, 4, 2, 1, bias=False), nn.BatchNorm2d(wide), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class EqualizedConv2d(nn.Module):
    """Convolution with N(0, 1) weights scaled by He's constant at run time (equalised learning rate)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = (2 / (in_channels * kernel_size**2)) ** 0.5
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Append the batch's mean standard deviation as one constant feature map (against mode collapse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean()
        return torch.cat([x, std.expand(len(x), 1, *x.shape[2:])], 1)


def _progan_widths(width: int, levels: int) -> list[int]:
    """Channels at 4, 8, ... px: ``width`` up to 32 px, then halved per level (at least 16)."""
    return [max(16, width >> max(0, level - 3)) for level in range(levels + 1)]


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
        self.max_level = _levels(size)
        self.latent_dim = latent_dim
        widths = _progan_widths(width, self.max_level)
        self.norm = PixelNorm()
        self.seed = EqualizedConv2d(latent_dim, widths[0] * 16, 1)
        self.stem = nn.Sequential(nn.LeakyReLU(0.2), PixelNorm(), *_conv_block(widths[0], widths[0], norm=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2), *_conv_block(a, b, True), *_conv_block(b, b, True))
            for a, b in zip(widths, widths[1:]))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, channels, 1) for w in widths)

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
        self.max_level = _levels(size)
        widths = _progan_widths(width, self.max_level)
        self.from_rgb = nn.ModuleList(nn.Sequential(EqualizedConv2d(channels, w, 1), nn.LeakyReLU(0.2)) for w in widths)
        self.blocks = nn.ModuleList(
            nn.Sequential(*_conv_block(b, b, False), *_conv_block(b, a, False), nn.AvgPool2d(2))
            for a, b in zip(widths, widths[1:]))
        self.final = nn.Sequential(MinibatchStdDev(), *_conv_block(widths[0] + 1, widths[0], False),
                                   EqualizedConv2d(widths[0], widths[0], 4), nn.LeakyReLU(0.2),
                                   EqualizedConv2d(widths[0], 1, 1))

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


def make_ddpm(channels: int = 1, size: int = 64, width: int = 64) -> UNet2DModel:
    """diffusers ``UNet2DModel`` with widths (w, 2w, 2w, 4w) and self-attention at the lowest resolution."""
    _levels(size)
    if width % 8:
        raise ValueError(f"DDPM width {width} must be a multiple of 8 (group norm of 8 groups)")
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(width, 2 * width, 2 * width, 4 * width), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))


def build_generative(kind: str, channels: int, size: int,
                     settings: Mapping[str, Any]) -> tuple[nn.Module, nn.Module | None]:
    """Untrained ``(generator, discriminator)`` of ``kind``; DDPM has no discriminator (None).

    Raises:
        ValueError: unknown kind or unsupported size.
    """
    if kind == "dcgan":
        return (DCGANGenerator(channels, size, settings["latent_dim"], settings["gan_width"]),
                DCGANDiscriminator(channels, size, settings["gan_width"]))
    if kind == "progan":
        return (ProGANGenerator(channels, size, settings["latent_dim"], settings["progan_width"]),
                ProGANDiscriminator(channels, size, settings["progan_width"]))
    if kind == "ddpm":
        return make_ddpm(channels, size, settings["ddpm_width"]), None
    raise ValueError(f"unknown generative model {kind!r}; choose from {', '.join(GENERATORS)}")


def diff_augment(x: torch.Tensor, policy: str, rng: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao, Liu, Lin, Zhu & Han, NeurIPS 2020, arXiv:2006.10738) of images in [-1, 1].

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


def epochs_for(steps: int, n: int, batch_size: int) -> int:
    """Whole epochs over ``n`` images that give at least ``steps`` optimiser steps (at least one).

    Generator budgets are steps, not epochs, so a class of 300 CT slices trains as long as one of 2000
    radiographs instead of ten times less.
    """
    return max(1, math.ceil(steps / max(1, n // batch_size)))


def latent(n: int, latent_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Standard normal latent vectors drawn from ``generator`` (CPU), so samples do not depend on the device."""
    return torch.randn(n, latent_dim, generator=generator)


def train_dcgan(generator: DCGANGenerator, discriminator: DCGANDiscriminator, images: torch.Tensor, *, epochs: int,
                batch_size: int, lr: float, seed: int, device: torch.device, augment: str = "",
                progress: bool = True, checkpoint: Path | None = None) -> list[dict[str, float]]:
    """Train a DC-GAN on ``images`` in [0, 1] with Adam (beta1 0.5) and the non-saturating loss; the
    discriminator sees every image through :func:`diff_augment` with policy ``augment``."""
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        real = to_model_range(images[index].to(device))
        fake = generator(latent(len(real), generator.latent_dim, rng).to(device))
        real_score = discriminator(diff_augment(real, augment, rng))
        fake_score = discriminator(diff_augment(fake.detach(), augment, rng))
        loss_d = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        _update(opt_d, loss_d)
        fooled = discriminator(diff_augment(fake, augment, rng))
        loss_g = bce(fooled, torch.ones_like(fooled))
        _update(opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    plan = [{} for _ in range(epochs)]
    return _epochs(plan, len(images), batch_size, seed, step, state=_state(generator, discriminator, opt_g, opt_d),
                   checkpoint=checkpoint, desc="DC-GAN", progress=progress)


def train_progan(generator: ProGANGenerator, discriminator: ProGANDiscriminator, images: torch.Tensor, *,
                 epochs_per_level: int, batch_size: int, lr: float, seed: int, device: torch.device,
                 augment: str = "", progress: bool = True, checkpoint: Path | None = None) -> list[dict[str, Any]]:
    """Grow a ProGAN on ``images`` in [0, 1] from 4 px to their size with WGAN-GP.

    Each level trains ``epochs_per_level`` epochs; above 4 px its first half fades the level in (real
    images are faded the same way). The critic sees every image through :func:`diff_augment` with policy
    ``augment``. The history's ``alpha`` is the epoch's mean fade-in weight.
    """
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.0, 0.99))
    pyramid = [F.adaptive_avg_pool2d(images, 4 * 2**level) for level in range(generator.max_level + 1)]
    fade_epochs = epochs_per_level / 2

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        level = plan["level"]
        alpha = 1.0 if level == 0 else min(1.0, (plan["epoch_in_level"] + fraction) / fade_epochs)
        real = to_model_range(pyramid[level][index].to(device))
        if alpha < 1:
            real = alpha * real + (1 - alpha) * F.interpolate(F.avg_pool2d(real, 2), scale_factor=2)
        fake = generator(latent(len(real), generator.latent_dim, rng).to(device), level, alpha)
        real, seen_fake = diff_augment(real, augment, rng), diff_augment(fake, augment, rng)
        real_score = discriminator(real, level, alpha)
        fake_score = discriminator(seen_fake.detach(), level, alpha)
        loss_d = (fake_score.mean() - real_score.mean() + DRIFT * real_score.pow(2).mean()
                  + GP_WEIGHT * _gradient_penalty(discriminator, real, seen_fake.detach(), level, alpha, rng))
        _update(opt_d, loss_d)
        loss_g = -discriminator(seen_fake, level, alpha).mean()
        _update(opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "alpha": alpha}

    plan = [{"level": level, "resolution": 4 * 2**level, "epoch_in_level": epoch}
            for level in range(generator.max_level + 1) for epoch in range(epochs_per_level)]
    return _epochs(plan, len(images), batch_size, seed, step, state=_state(generator, discriminator, opt_g, opt_d),
                   checkpoint=checkpoint, desc="ProGAN", progress=progress)


def _gradient_penalty(critic: ProGANDiscriminator, real: torch.Tensor, fake: torch.Tensor, level: int, alpha: float,
                      rng: torch.Generator) -> torch.Tensor:
    """WGAN-GP: (|grad of the critic| - 1)^2 at random points between real and fake images."""
    mix = torch.rand(len(real), 1, 1, 1, generator=rng).to(real.device)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(between, level, alpha).sum(), between, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def _noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule="linear")


def train_ddpm(unet: UNet2DModel, images: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
               device: torch.device, progress: bool = True, checkpoint: Path | None = None) -> list[dict[str, float]]:
    """Train a DDPM noise predictor on ``images`` in [0, 1] (MSE on the noise, AdamW)."""
    unet.to(device).train()
    scheduler = _noise_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        clean = to_model_range(images[index])
        noise = torch.randn(clean.shape, generator=rng)
        t = torch.randint(0, DDPM_TIMESTEPS, (len(clean),), generator=rng)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(unet(noisy.to(device), t.to(device)).sample, noise.to(device))
        _update(optimizer, loss)
        return {"loss": loss.item()}

    plan = [{} for _ in range(epochs)]
    return _epochs(plan, len(images), batch_size, seed, step, state={"unet": unet, "optimizer": optimizer},
                   checkpoint=checkpoint, desc="DDPM", progress=progress)


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _state(generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer,
           opt_d: torch.optim.Optimizer) -> dict[str, Any]:
    return {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}


def _epochs(plan: list[dict[str, Any]], n: int, batch_size: int, seed: int,
            step: Callable[[torch.Tensor, dict[str, Any], float, torch.Generator], dict[str, float]], *,
            state: dict[str, Any], checkpoint: Path | None, desc: str, progress: bool) -> list[dict[str, Any]]:
    """One epoch per entry of ``plan`` over seeded shuffles of ``n`` items; each batch calls
    ``step(index, plan_entry, fraction_of_epoch, rng)``. Every epoch is checkpointed (models, optimisers,
    history, random state), so a rerun with the same ``checkpoint`` resumes after the last finished epoch.
    """
    rng = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        for name, obj in state.items():
            obj.load_state_dict(saved["state"][name])
        history = saved["history"]
        rng.set_state(saved["rng"])
    steps = max(1, n // batch_size)
    bar = tqdm(total=len(plan) * steps, initial=len(history) * steps, desc=desc, disable=not progress, mininterval=5,
               unit="batch")
    for epoch in range(len(history), len(plan)):
        started, sums = time.perf_counter(), {}
        order = torch.randperm(n, generator=rng)
        for i in range(steps):
            losses = step(order[i * batch_size:(i + 1) * batch_size], plan[epoch], (i + 0.5) / steps, rng)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update()
        public = {key: value for key, value in plan[epoch].items() if key != "epoch_in_level"}
        history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps, **public, **{key: total / steps for key, total in sums.items()},
                        "seconds": time.perf_counter() - started})
        if checkpoint is not None:
            cache.torch_save_atomic({"state": {name: obj.state_dict() for name, obj in state.items()},
                                     "history": history, "rng": rng.get_state()}, checkpoint)
    bar.close()
    return history


@torch.no_grad()
def sample(model: nn.Module, n: int, *, seed: int, device: torch.device, batch_size: int = 64, ddim_steps: int = 50,
           progress: bool = False) -> torch.Tensor:
    """``n`` images in [0, 1] (CPU float) from a trained generator; the same seed gives the same images.

    GANs map seeded latents; a DDPM U-Net denoises seeded noise with ``ddim_steps`` DDIM steps (eta 0).
    """
    model.eval().to(device)
    rng = torch.Generator().manual_seed(seed)
    starts = range(0, n, batch_size)
    if isinstance(model, UNet2DModel):
        config = model.config
        noise = torch.randn(n, config.in_channels, config.sample_size, config.sample_size, generator=rng)
        scheduler = DDIMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule="linear")
        scheduler.set_timesteps(ddim_steps)
        batches = []
        for start in tqdm(starts, desc="DDPM sampling", disable=not progress, mininterval=5, unit="batch"):
            x = noise[start:start + batch_size].to(device)
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t).sample, t, x).prev_sample
            batches.append(x.cpu())
    else:
        z = latent(n, model.latent_dim, rng)
        batches = [model(z[start:start + batch_size].to(device)).cpu() for start in starts]
    return to_image_range(torch.cat(batches)) if batches else torch.zeros(0)


def sample_labelled(models: Mapping[int, nn.Module], counts: Mapping[int, int], *, seed: int, device: torch.device,
                    batch_size: int = 64, ddim_steps: int = 50,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``counts[label]`` images from each class's generator ``models[label]``, with their labels.

    Class ``label`` is sampled with seed ``seed + label``, so each class's images do not depend on the others.
    """
    parts = [(sample(models[label], counts[label], seed=seed + label, device=device, batch_size=batch_size,
                     ddim_steps=ddim_steps, progress=progress), torch.full((counts[label],), label, dtype=torch.long))
             for label in sorted(counts)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def generator_for(kind: str, images: ImageSet, label: int, settings: Mapping[str, Any], *, seed: int,
                  device: torch.device, progress: bool = True) -> tuple[nn.Module, list[dict[str, Any]], bool]:
    """The ``kind`` generator of class ``label`` (0 Normal, 1 Pathology) of ``images``' training split:
    from the artefact cache, or trained now and cached.

    The key holds the data checksum, image size, class, the settings the model uses, the seed and the code
    of this module and the data layer. An interrupted training resumes from its last epoch.

    Returns:
        ``(generator in eval mode, training history, cache_hit)``.

    Raises:
        ValueError: unknown kind, or no training image of that class.
    """
    if kind not in GENERATORS:
        raise ValueError(f"unknown generative model {kind!r}; choose from {', '.join(GENERATORS)}")
    parts = {"kind": kind, "data": images.checksum, "size": images.size, "channels": images.channels,
             "label": label, "seed": seed, "settings": {key: settings[key] for key in SETTING_KEYS[kind]},
             "code": cache.code_fingerprint("generative", "data", "_io"), "diffusers": diffusers.__version__}

    def produce(folder: Path) -> None:
        x, y = images.tensors("train", settings["max_train_images"], seed)
        if not (y == label).any():
            raise ValueError(f"{images.spec}: no training image of class {label}; cannot train a generator for it")
        model, history = _train(kind, x[y == label], images, settings, seed, device, progress, folder / "checkpoint.pt")
        cache.torch_save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "generator.pt")
        cache.write_json_atomic(folder / "history.json", history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)

    folder, hit = cache.cached("generator", parts, produce)
    model, _ = build_generative(kind, images.channels, images.size, settings)
    model.load_state_dict(torch.load(folder / "generator.pt", map_location="cpu"))
    return model.to(device).eval(), json.loads((folder / "history.json").read_text()), hit


def _train(kind: str, x: torch.Tensor, images: ImageSet, settings: Mapping[str, Any], seed: int, device: torch.device,
           progress: bool, checkpoint: Path) -> tuple[nn.Module, list[dict[str, Any]]]:
    torch.manual_seed(seed)
    generator, discriminator = build_generative(kind, images.channels, images.size, settings)
    common = {"batch_size": settings["batch_size"], "seed": seed, "device": device, "progress": progress,
              "checkpoint": checkpoint}

    def epochs(steps_key: str) -> int:
        return epochs_for(settings[steps_key], len(x), settings["batch_size"])

    if kind == "dcgan":
        history = train_dcgan(generator, discriminator, x, epochs=epochs("gan_steps"), lr=settings["gan_lr"],
                              augment=settings["gan_augment"], **common)
    elif kind == "progan":
        history = train_progan(generator, discriminator, x, epochs_per_level=epochs("progan_steps_per_level"),
                               lr=settings["progan_lr"], augment=settings["gan_augment"], **common)
    else:
        history = train_ddpm(generator, x, epochs=epochs("ddpm_steps"), lr=settings["ddpm_lr"], **common)
    return generator, history
