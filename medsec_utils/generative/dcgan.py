"""DC-GAN (Radford, Metz & Chintala, ICLR 2016, arXiv:1511.06434), following the architecture guidelines of
the paper: an all-convolutional generator, strided-convolution discriminator with batch norm, N(0, 0.02)
initial weights, non-saturating BCE loss, Adam with beta1 = 0.5. The generator doubles its resolution by
resize-convolution (nearest-neighbour upsampling, then a 3x3 convolution; Odena, Dumoulin & Olah, *Deconvolution
and checkerboard artifacts*, Distill 2016) instead of the paper's stride-2 transposed convolutions, whose
checkerboard (power at the 2 px period) gave CT slices a textured background that the checked feature space
and the machine reader see at once (``benchmarks/bench_generator_quality.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._loop import Curve, WeightAverage, curve_epochs, gan_optimisers, run_epochs, update
from ._plumbing import latent, levels, register_generator, sample_latents, to_model_range
from .augment import diff_augment

ABOUT = (
    "**DC-GAN** (Radford, Metz & Chintala, *Unsupervised representation learning with deep convolutional "
    "generative adversarial networks*, ICLR 2016, arXiv:1511.06434): convolutions from a 4 px seed, batch norm, "
    "N(0, 0.02) initial weights, the non-saturating GAN loss, Adam with beta1 = 0.5; the generator upsamples by "
    "resize-convolution instead of transposed convolution, against checkerboard artefacts (Odena, Dumoulin & Olah, "
    "Distill 2016).")


def _dcgan_init(module: nn.Module) -> None:
    """The DC-GAN paper's initialisation: convolution weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _resize_convolution(wide: int, narrow: int) -> tuple[nn.Module, nn.Module]:
    """Twice the resolution: nearest-neighbour upsampling, then a 3x3 convolution (Odena et al. 2016)."""
    return nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(wide, narrow, 3, 1, 1, bias=False)


class DCGANGenerator(nn.Module):
    """Latent vector -> image in [-1, 1]: a 4 px seed, doubled by nearest-neighbour upsampling and a 3x3
    convolution per level (resize-convolution: every output pixel is made by the same weights, so no 2 px period)."""

    def __init__(self, channels: int = 1, size: int = 64, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in reversed(range(levels(size)))]
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for wide, narrow in zip(widths, widths[1:]):
            layers += [*_resize_convolution(wide, narrow), nn.BatchNorm2d(narrow), nn.ReLU(True)]
        layers += [*_resize_convolution(widths[-1], channels), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Image in [-1, 1] -> one real/fake logit per image; the mirror of the generator."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 64) -> None:
        super().__init__()
        widths = [width * 2 ** min(i, 3) for i in range(levels(size))]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for narrow, wide in zip(widths, widths[1:]):
            layers += [nn.Conv2d(narrow, wide, 4, 2, 1, bias=False), nn.BatchNorm2d(wide), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def train_dcgan(generator: DCGANGenerator, discriminator: DCGANDiscriminator, images: torch.Tensor, *, epochs: int,
                batch_size: int, lr: float, seed: int, device: torch.device, augment: str = "",
                progress: bool = True, checkpoint: Path | None = None, average: bool = True,
                curve: Path | None = None) -> list[dict[str, float]]:
    """Train a DC-GAN on ``images`` in [0, 1] with Adam (beta1 0.5) and the non-saturating loss; the
    discriminator sees every image through :func:`diff_augment` with policy ``augment``. With ``average``, leaves
    the generator with its moving average of weights (:class:`WeightAverage`) and batch-norm statistics
    re-estimated for them, the weights to sample with, and saves the same at a quarter, half and three quarters of
    the epochs into ``curve`` (:class:`Curve`); without, with its last weights (a FedAvg site's reply)."""
    opt_g, opt_d, state = gan_optimisers(generator, discriminator, device, lr, betas=(0.5, 0.999))
    averaged = WeightAverage(generator) if average else None
    if averaged is not None:
        state["average"] = averaged
    bce = F.binary_cross_entropy_with_logits

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        real = to_model_range(images[index].to(device))
        fake = generator(latent(len(real), generator.latent_dim, rng).to(device))
        real_score = discriminator(diff_augment(real, augment, rng))
        fake_score = discriminator(diff_augment(fake.detach(), augment, rng))
        loss_d = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        update(opt_d, loss_d)
        fooled = discriminator(diff_augment(fake, augment, rng))
        loss_g = bce(fooled, torch.ones_like(fooled))
        update(opt_g, loss_g)
        if averaged is not None:
            averaged.update()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def statistics_latents() -> Callable[[], torch.Tensor]:
        statistics = torch.Generator().manual_seed(seed)
        return lambda: latent(batch_size, generator.latent_dim, statistics).to(device)

    snapshots = None if curve is None or averaged is None else Curve(
        curve, curve_epochs(0, epochs), lambda: averaged.averaged_state(statistics_latents()))
    history = run_epochs([{} for _ in range(epochs)], len(images), batch_size, seed, step, state=state,
                         checkpoint=checkpoint, desc="DC-GAN", progress=progress, curve=snapshots)
    if averaged is not None:
        averaged.copy_to_model(statistics_latents())
    return history


def _train(generator: DCGANGenerator, discriminator: DCGANDiscriminator, images: torch.Tensor,
           settings: Mapping[str, Any], **loop: Any) -> list[dict[str, float]]:
    return train_dcgan(generator, discriminator, images, lr=settings["gan_lr"], augment=settings["gan_augment"], **loop)


@register_generator("dcgan", model=DCGANGenerator, train=_train, sample=sample_latents, steps_key="gan_steps",
                    settings_keys=("latent_dim", "gan_width", "gan_steps", "gan_lr", "gan_augment", "batch_size",
                                   "max_train_images"), about=ABOUT)
def build_dcgan(channels: int, size: int, settings: Mapping[str, Any]) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    """Untrained DC-GAN generator and discriminator at the profile's ``latent_dim`` and ``gan_width``."""
    return (DCGANGenerator(channels, size, settings["latent_dim"], settings["gan_width"]),
            DCGANDiscriminator(channels, size, settings["gan_width"]))
