"""The table of generator kinds and the helpers the kinds share; the public names are re-exported by
``generative``. The table follows timm's model registry (``timm.models._registry``): each kind's module
registers its builder with a decorator, so adding a generator is one entry and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Build = Callable[[int, int, Mapping[str, Any]], tuple[nn.Module, nn.Module | None]]
Train = Callable[..., list[dict[str, Any]]]
Sample = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class GeneratorKind:
    """Everything the library needs to build, train, cache, sample and describe one kind of generator.

    Attributes:
        name: its key in ``GENERATORS`` (and in the profiles' ``replacement_generators``).
        build: ``(channels, size, settings) -> (generator, discriminator or None)``, untrained.
        train: ``(generator, discriminator, images, settings, *, epochs, batch_size, seed, device, progress,
            checkpoint, curve) -> history``: trains on ``images`` in [0, 1] for ``epochs`` per stage (ProGAN: per
            level), one history dict per epoch, resuming from ``checkpoint`` when it exists, and saves the weights
            it would sample with at a few points before the end into the folder ``curve`` (``_loop.Curve``).
        sample: ``(generator, n, rng, *, device, batch_size, ddim_steps, progress) -> images``: ``n >= 1``
            images in [-1, 1] on the CPU, every random draw from the CPU generator ``rng``.
        model: the generator's class; ``sample`` finds a trained model's kind by it.
        steps_key: the setting holding the optimiser-step budget (per stage), rounded up to whole epochs.
        settings_keys: every setting training reads; they key the cached generator.
        about: a paragraph for the book: what the kind is, with its citation.
    """

    name: str
    build: Build
    train: Train
    sample: Sample
    model: type[nn.Module]
    steps_key: str
    settings_keys: tuple[str, ...]
    about: str


GENERATORS: dict[str, GeneratorKind] = {}


def register_generator(name: str, *, model: type[nn.Module], train: Train, sample: Sample, steps_key: str,
                       settings_keys: tuple[str, ...], about: str) -> Callable[[Build], Build]:
    """Decorator that adds the builder it wraps to ``GENERATORS`` as kind ``name``, with the rest of its entry.

    Raises:
        ValueError: ``name`` is taken, or ``steps_key`` is not among ``settings_keys``.
    """
    if name in GENERATORS:
        raise ValueError(f"generator kind {name!r} is registered already")
    if steps_key not in settings_keys:
        raise ValueError(f"generator kind {name!r}: steps_key {steps_key!r} must be one of its settings_keys")

    def add(build: Build) -> Build:
        GENERATORS[name] = GeneratorKind(name, build, train, sample, model, steps_key, tuple(settings_keys), about)
        return build

    return add


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the nearest of 256 levels, as uint8 (how a PNG keeps them)."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; exact inverse of :func:`to_uint8` on its results."""
    return x.float() / 255


def levels(size: int) -> int:
    """Doublings from 4 px to ``size``; raises unless ``size`` is a power of two >= 8."""
    if size < 8 or size & (size - 1):
        raise ValueError(f"image size {size} is not supported: use a power of two >= 8 (64 or 128 as in the paper; "
                         "the profile key generator_size sets chapter 4's)")
    return int(math.log2(size)) - 2


def epochs_for(steps: int, n: int, batch_size: int) -> int:
    """Whole epochs over ``n`` images that give at least ``steps`` optimiser steps (at least one).

    Generator budgets are steps, not epochs, so a class of 300 CT slices trains as long as one of 2000
    radiographs instead of ten times less.
    """
    return max(1, math.ceil(steps / max(1, n // batch_size)))


def latent(n: int, latent_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Standard normal latent vectors drawn from ``generator`` (CPU), so samples do not depend on the device."""
    return torch.randn(n, latent_dim, generator=generator)


def sample_latents(model: nn.Module, n: int, rng: torch.Generator, *, device: torch.device, batch_size: int,
                   ddim_steps: int, progress: bool) -> torch.Tensor:
    """A GAN's sampler: the generator maps seeded latent vectors (``ddim_steps`` and ``progress`` unused)."""
    z = latent(n, model.latent_dim, rng)
    return torch.cat([model(z[start:start + batch_size].to(device)).cpu() for start in range(0, n, batch_size)])
