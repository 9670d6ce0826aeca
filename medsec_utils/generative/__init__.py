"""Generative models of medical images, trained one class at a time and cached: DC-GAN, ProGAN and DDPM.

``GENERATORS`` is the table of kinds (:class:`GeneratorKind`: build, train, sample, model class, step budget,
settings, a paragraph for the book). A kind's module registers its entry with :func:`register_generator`, in
the manner of timm's model registry; adding a generator is that one entry plus its sizes in ``profiles.yaml``.

- ``dcgan``: DC-GAN (Radford et al. 2016), :mod:`.dcgan`.
- ``progan``: ProGAN (Karras et al. 2018), :mod:`.progan`.
- ``ddpm``: DDPM (Ho et al. 2020) on diffusers, :mod:`.ddpm`.

Both GANs can train with DiffAugment (Zhao et al. 2020, :mod:`.augment`, profile keys ``gan_augment`` and
``progan_augment``; by default the DC-GAN does, with translation and cutout, and ProGAN, as Karras et al.,
does not). Every
kind samples with the moving average of its weights (:class:`WeightAverage`).
Images are in [0, 1] outside this package; the networks see [-1, 1]. Training budgets are optimiser steps
(each kind's ``steps_key``), rounded up to whole epochs of the class's images. Training checkpoints every
epoch, so an interrupted run resumes where it stopped, and saves the weights it would sample with at
``CURVE_POINTS - 1`` points before its end, so the book can show quality against steps (:class:`TrainedGenerator`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import diffusers
import numpy as np
import torch
from torch import nn

from .. import cache, distributed
from ..data import READER_MODULES, ImageSet
from ._loop import BATCH_NORM_BATCHES, CURVE_POINTS, WeightAverage, curve_epochs
from ._plumbing import (GENERATORS, GeneratorKind, epochs_for, from_uint8, latent, register_generator,
                        to_image_range, to_model_range, to_uint8)
from .augment import AUGMENTS, diff_augment
from . import dcgan, progan, ddpm  # isort: skip  (each registers its kind: this is the table's order)
from .dcgan import DCGANDiscriminator, DCGANGenerator, train_dcgan
from .ddpm import DDPM_TIMESTEPS, make_ddpm, train_ddpm
from .progan import (DRIFT, GP_WEIGHT, EqualizedConv2d, MinibatchStdDev, PixelNorm, ProGANDiscriminator,
                     ProGANGenerator, train_progan)

__all__ = ["AUGMENTS", "BATCH_NORM_BATCHES", "build_generative", "curve_epochs", "CURVE_POINTS",
           "DCGANDiscriminator", "DCGANGenerator", "DDPM_TIMESTEPS", "diff_augment", "DRIFT", "epochs_for",
           "EqualizedConv2d", "from_half_state", "from_uint8", "generator_for", "generator_parts", "GeneratorKind",
           "GENERATORS", "half_state", "GP_WEIGHT", "latent", "load_generator", "make_ddpm", "MinibatchStdDev",
           "PixelNorm", "ProGANDiscriminator", "ProGANGenerator", "register_generator", "sample", "sample_labelled",
           "to_image_range", "to_model_range", "to_uint8", "train_dcgan", "train_ddpm", "train_progan",
           "TrainedGenerator", "WeightAverage"]


def _kind(kind: str) -> GeneratorKind:
    if kind not in GENERATORS:
        raise ValueError(f"unknown generative model {kind!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[kind]


def build_generative(kind: str, channels: int, size: int,
                     settings: Mapping[str, Any]) -> tuple[nn.Module, nn.Module | None]:
    """Untrained ``(generator, discriminator)`` of ``kind``; a kind without one (DDPM) gives None.

    Raises:
        ValueError: unknown kind or unsupported size.
    """
    return _kind(kind).build(channels, size, settings)


@torch.no_grad()
def sample(model: nn.Module, n: int, *, seed: int, device: torch.device, batch_size: int = 64, ddim_steps: int = 50,
           progress: bool = False) -> torch.Tensor:
    """``n`` images in [0, 1] (CPU float) from a trained generator; the same seed gives the same images. They are
    rounded to the 256 grey levels of the real images (8-bit PNGs), as a saved synthetic image would be, so they
    are stored as uint8 without loss and judged like the real ones.

    The sampler is the one of the kind whose model class is nearest ``model``'s: GANs map seeded latents;
    a DDPM U-Net denoises seeded noise in ``ddim_steps`` stochastic steps (DDIM with eta = 1).

    Raises:
        TypeError: no kind in ``GENERATORS`` has a model of this class.
    """
    by_class = {entry.model: entry for entry in GENERATORS.values()}
    kind = next((by_class[cls] for cls in type(model).__mro__ if cls in by_class), None)
    if kind is None:
        raise TypeError(f"no generator kind samples a {type(model).__name__}; kinds: {', '.join(GENERATORS)}")
    model.eval().to(device)
    if not n:
        return torch.zeros(0)
    images = to_image_range(kind.sample(model, n, torch.Generator().manual_seed(seed), device=device,
                                        batch_size=batch_size, ddim_steps=ddim_steps, progress=progress))
    return from_uint8(to_uint8(images))


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


class TrainedGenerator(NamedTuple):
    """What :func:`generator_for` gives: the generator to sample with, its training history, whether it came from
    the artefact cache, and ``curve``, the ``(optimiser steps, weights file)`` of its snapshots before the end
    (:func:`load_generator` builds one), for a curve of quality against steps whose last point is ``model``."""

    model: nn.Module
    history: list[dict[str, Any]]
    hit: bool
    curve: list[tuple[int, Path]]


def load_generator(kind: str, channels: int, size: int, settings: Mapping[str, Any], weights: Path,
                   device: torch.device) -> nn.Module:
    """A ``kind`` generator at the profile's sizes with the saved state dict ``weights``, in eval mode."""
    model, _ = _kind(kind).build(channels, size, settings)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model.to(device).eval()


def half_state(model: nn.Module) -> dict[str, np.ndarray]:
    """``model``'s state dict as numpy arrays, floating ones rounded to float16: the small form the results store
    keeps of a trained generator, so later steps sample from it without training it again."""
    return {key: value.detach().cpu().half().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
            for key, value in model.state_dict().items()}


def from_half_state(kind: str, channels: int, size: int, settings: Mapping[str, Any], state: Mapping[str, np.ndarray],
                    device: torch.device) -> nn.Module:
    """A ``kind`` generator with the weights of :func:`half_state` (float16 values, computed in float32), in eval
    mode."""
    model, _ = _kind(kind).build(channels, size, settings)
    model.load_state_dict({key: torch.from_numpy(value).float() if value.dtype == np.float16
                           else torch.from_numpy(value) for key, value in state.items()})
    return model.to(device).eval()


def generator_for(kind: str, images: ImageSet, label: int, settings: Mapping[str, Any], *, seed: int,
                  device: torch.device, progress: bool = True, nproc: int = 1) -> TrainedGenerator:
    """The ``kind`` generator of class ``label`` (0 Normal, 1 Pathology) of ``images``' training split:
    from the artefact cache, or trained now and cached (on ``nproc`` processes under torchrun if more than one).

    The key holds the data checksum, image size, class, the kind's ``settings_keys``, the seed and the code
    of this package and the data layer. An interrupted training resumes from its last epoch.

    Raises:
        ValueError: unknown kind, or no training image of that class.
    """
    parts = generator_parts(kind, images, label, settings, seed=seed)
    folder, hit = cache.cached("generator", parts, lambda folder: distributed.run(
        nproc, train_generator_into, folder, kind, images, label, settings, seed=seed, device=device,
        progress=progress))
    curve = sorted((int(path.stem.removeprefix("step_")), path) for path in (folder / "curve").glob("step_*.pt"))
    model = load_generator(kind, images.channels, images.size, settings, folder / "generator.pt", device)
    return TrainedGenerator(model, json.loads((folder / "history.json").read_text()), hit, curve)


def generator_parts(kind: str, images: ImageSet, label: int, settings: Mapping[str, Any], *,
                    seed: int) -> dict[str, Any]:
    """The artefact-cache key parts of :func:`generator_for`'s generator, without building or training it (the
    results store keys steps on them)."""
    entry = _kind(kind)
    return {"kind": kind, "data": images.checksum, "size": images.size, "channels": images.channels,
            "label": label, "seed": seed, "settings": {key: settings[key] for key in entry.settings_keys},
            "code": cache.code_fingerprint("generative", *READER_MODULES), "diffusers": diffusers.__version__}


def train_generator_into(folder: Path, kind: str, images: ImageSet, label: int, settings: Mapping[str, Any], *,
                         seed: int, device: torch.device, progress: bool) -> None:
    """Train the generator of :func:`generator_for` and write ``generator.pt``, ``history.json`` and the
    snapshots of ``curve/`` into ``folder``, resuming from its ``checkpoint.pt``."""
    if (folder / "history.json").is_file():
        return  # trained to the end by a run killed before the marker: generator.pt and history.json are whole
    entry = _kind(kind)
    x, y = images.tensors("train", settings["max_train_images"], seed)
    if not (y == label).any():
        raise ValueError(f"{images.spec}: no training image of class {label}; cannot train a generator for it")
    x = x[y == label]
    torch.manual_seed(seed)
    generator, discriminator = entry.build(images.channels, images.size, settings)
    history = entry.train(generator, discriminator, x, settings,
                          epochs=epochs_for(settings[entry.steps_key], len(x), settings["batch_size"]),
                          batch_size=settings["batch_size"], seed=seed, device=device, progress=progress,
                          checkpoint=folder / "checkpoint.pt", curve=folder / "curve")
    cache.torch_save_atomic({k: v.detach().cpu() for k, v in generator.state_dict().items()}, folder / "generator.pt")
    cache.write_json_atomic(folder / "history.json", history)
    cache.discard(folder / "checkpoint.pt")
