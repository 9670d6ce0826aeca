"""DDPM (Ho, Jain & Abbeel, NeurIPS 2020, arXiv:2006.11239) on diffusers: ``UNet2DModel`` trained to predict
the noise of ``DDPMScheduler``, sampled in a few stochastic steps (DDIM with eta = 1, Song, Meng & Ermon, ICLR
2021).

The noise schedule is the cosine one of Nichol & Dhariwal (*Improved denoising diffusion probabilistic
models*, ICML 2021, arXiv:2102.09672; diffusers' ``squaredcos_cap_v2``): the linear schedule of Ho et al.
destroys the content of 32 and 64 px images in its last few hundred levels, which then teach the network
nothing. The sampler's steps are spaced "trailing", so the first starts from the last training level (pure
noise), as Lin, Liu, Li & Yang recommend for few sampling steps (*Common diffusion noise schedules and sample
steps are flawed*, WACV 2024, arXiv:2305.08891) and diffusers supports.

Every sampling step adds fresh noise: DDIM with eta = 1, which on a subsequence of levels is DDPM's own ancestral
sampler (Song et al., section 4.1), computed with diffusers' ``DDPMScheduler`` on the ``ddim_steps`` trailing
levels. From the same weights, deterministic DDIM (eta = 0) in 25 steps made chest X-rays that a machine reader
told from real ones more easily and fewer of which lay among the real images (see
``benchmarks/bench_generator_quality.py``). They were not smoother (eta = 1 gave the smaller mean absolute
Laplacian); Karras, Aittala, Aila & Laine found that fresh noise corrects errors an imperfect noise predictor
made in earlier steps (*Elucidating the design space of diffusion-based generative models*, NeurIPS 2022,
arXiv:2206.00364). ``DDIMScheduler`` with eta = 1 is not used: its step takes the square root of
1 - alpha_prev - sigma^2, which rounds below zero at the first step from pure noise (NaN images with 5 steps)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from tqdm import tqdm

from ..training import Precision
from ._loop import Curve, WeightAverage, curve_epochs, run_epochs, update
from ._plumbing import levels, register_generator, to_model_range

DDPM_TIMESTEPS = 1000
DDPM_SCHEDULE = "squaredcos_cap_v2"  # Nichol & Dhariwal's cosine schedule, for training and sampling alike
ABOUT = (
    "**DDPM** (Ho, Jain & Abbeel, *Denoising diffusion probabilistic models*, NeurIPS 2020, arXiv:2006.11239): "
    "diffusers' `UNet2DModel` learns to predict the noise of `DDPMScheduler` (1000 noise levels on the cosine "
    "schedule of Nichol & Dhariwal 2021, which suits small images); images are sampled in `ddim_steps` steps "
    "spaced to start from pure noise (Lin et al. 2024), each adding fresh noise: DDIM with eta = 1 (Song et al. "
    "2021), i.e. DDPM's ancestral sampler on those levels. From the same weights, deterministic DDIM (eta = 0) made "
    "images that a machine reader told from real ones more easily (fresh noise corrects earlier steps' errors, "
    "Karras et al. 2022).")


def make_ddpm(channels: int = 1, size: int = 64, width: int = 64) -> UNet2DModel:
    """diffusers ``UNet2DModel`` with widths (w, 2w, 2w, 4w) and self-attention at the lowest resolution."""
    levels(size)
    if width % 8:
        raise ValueError(f"DDPM width {width} must be a multiple of 8 (group norm of 8 groups)")
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(width, 2 * width, 2 * width, 4 * width), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_ddpm(unet: UNet2DModel, images: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
               device: torch.device, progress: bool = True, checkpoint: Path | None = None,
               mixed_precision: bool = False, curve: Path | None = None) -> list[dict[str, float]]:
    """Train a DDPM noise predictor on ``images`` in [0, 1] (MSE on the noise, AdamW). Leaves the U-Net with its
    moving average of weights (:class:`WeightAverage`, diffusers' ``EMAModel``), as diffusers' training examples
    sample, and saves the same at a quarter, half and three quarters of the epochs into ``curve`` (:class:`Curve`).
    ``mixed_precision`` runs the U-Net under autocast (float16 with gradient scaling on CUDA), as diffusers'
    ``train_unconditional.py`` offers; the loss and the weights stay float32."""
    unet.to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    average = WeightAverage(unet)
    precision = Precision(device, mixed_precision)

    def step(index: torch.Tensor, plan: dict[str, Any], fraction: float, rng: torch.Generator) -> dict[str, float]:
        clean = to_model_range(images[index])
        noise = torch.randn(clean.shape, generator=rng)
        t = torch.randint(0, DDPM_TIMESTEPS, (len(clean),), generator=rng)
        noisy = scheduler.add_noise(clean, noise, t)
        with precision.autocast():
            predicted = unet(noisy.to(device), t.to(device)).sample
        loss = F.mse_loss(predicted.float(), noise.to(device))
        update(optimizer, loss, precision.scaler)
        average.update()
        return {"loss": loss.item()}

    history = run_epochs([{} for _ in range(epochs)], len(images), batch_size, seed, step,
                         state={"unet": unet, "optimizer": optimizer, "average": average}, checkpoint=checkpoint,
                         desc="DDPM", progress=progress,
                         curve=None if curve is None else Curve(curve, curve_epochs(0, epochs), average.averaged_state))
    average.copy_to_model()
    return history


def sample_ddpm(unet: UNet2DModel, n: int, rng: torch.Generator, *, device: torch.device, batch_size: int,
                ddim_steps: int, progress: bool) -> torch.Tensor:
    """Denoise seeded Gaussian noise in ``ddim_steps`` stochastic steps (:func:`sampling_scheduler`); the noise of
    each step comes from ``rng`` too, batch after batch, so the same seed and batch size give the same images."""
    config = unet.config
    noise = torch.randn(n, config.in_channels, config.sample_size, config.sample_size, generator=rng)
    scheduler = sampling_scheduler(ddim_steps)
    batches = []
    for start in tqdm(range(0, n, batch_size), desc="DDPM sampling", disable=not progress, mininterval=5,
                      unit="batch"):
        x = noise[start:start + batch_size].to(device)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=rng).prev_sample
        batches.append(x.cpu())
    return torch.cat(batches)


def sampling_scheduler(ddim_steps: int) -> DDPMScheduler:
    """DDIM with eta = 1 on the training schedule (as DDPM's ancestral sampler), its ``ddim_steps`` steps spaced
    from the last noise level."""
    scheduler = DDPMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE,
                              timestep_spacing="trailing")
    scheduler.set_timesteps(ddim_steps)
    return scheduler


def _train(unet: UNet2DModel, discriminator: None, images: torch.Tensor, settings: Mapping[str, Any],
           **loop: Any) -> list[dict[str, float]]:
    return train_ddpm(unet, images, lr=settings["ddpm_lr"], mixed_precision=settings.get("mixed_precision", False),
                      **loop)


@register_generator("ddpm", model=UNet2DModel, train=_train, sample=sample_ddpm, steps_key="ddpm_steps",
                    settings_keys=("ddpm_width", "ddpm_steps", "ddpm_lr", "batch_size", "max_train_images",
                                   "mixed_precision"),
                    about=ABOUT)
def build_ddpm(channels: int, size: int, settings: Mapping[str, Any]) -> tuple[UNet2DModel, None]:
    """An untrained noise-predicting U-Net at the profile's ``ddpm_width``; a DDPM has no discriminator."""
    return make_ddpm(channels, size, settings["ddpm_width"]), None
