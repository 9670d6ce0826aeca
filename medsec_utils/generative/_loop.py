"""The checkpointed epoch loop every generator trains in, the optimiser set-up of the GANs, the moving
average of weights every generator samples with, and the snapshots of those weights a quality curve is drawn from."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from .. import cache, distributed

Step = Callable[[torch.Tensor, dict[str, Any], float, torch.Generator], dict[str, float]]
EMA_DECAY = 0.999  # ProGAN's generator average (Karras et al. 2018): the ceiling of the warm-up below
EMA_POWER = 3 / 4  # diffusers' warm-up exponent for runs of fewer than about 100k steps
BATCH_NORM_BATCHES = 32  # latent batches that re-estimate batch-norm statistics for the averaged weights
CURVE_POINTS = 4  # a quality curve's points: the trained generator and snapshots at 1/4, 2/4 and 3/4 of the way
_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # a pass-through: plain backward and optimiser step


class WeightAverage:
    """Exponential moving average of a generator's weights, the weights it samples with: ProGAN's generator
    average (Karras et al. 2018), the weight averaging Yazici et al. found to help GANs in general (ICLR 2019,
    arXiv:1806.04498), and diffusers' ``EMAModel`` for diffusion models, whose warm-up (decay
    ``1 - (1 + step)^-3/4``, at most ``EMA_DECAY``) averages the recent weights of a short run instead of
    remembering its random start. Checkpointed with the optimisers (``state_dict``)."""

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY) -> None:
        self.model, self.decay = model, decay
        self.average = EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, power=EMA_POWER)
        self.since: Any = None  # what the last restart was for (ProGAN: the level), checkpointed

    def update(self) -> None:
        """Fold the model's current weights into the average (after each optimiser step)."""
        self.average.step(self.model.parameters())

    def restart(self, since: Any) -> None:
        """Start the average afresh from the current weights, warm-up included, unless it already started at
        ``since``: a grown ProGAN averages only weights trained for the network it samples with."""
        if self.since != since:
            self.average = EMAModel(self.model.parameters(), decay=self.decay, use_ema_warmup=True, power=EMA_POWER)
            self.since = since

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict(), "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["average"])
        self.since = state["since"]

    def averaged_state(self, latents: Callable[[], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The state dict the model would sample with if training stopped now (:meth:`copy_to_model` applied to
        a copy), on the CPU; the model itself keeps training."""
        snapshot = copy.deepcopy(self.model)
        self._average_into(snapshot, latents)
        return {key: value.detach().cpu().clone() for key, value in snapshot.state_dict().items()}

    def copy_to_model(self, latents: Callable[[], torch.Tensor] | None = None) -> None:
        """Put the averaged weights into the model. Batch-norm statistics belong to the weights that produced
        them, so a model with batch norm gets them re-estimated for the averaged weights from
        ``BATCH_NORM_BATCHES`` batches of ``latents()`` (as ``torch.optim.swa_utils.update_bn`` does for SWA)."""
        self._average_into(self.model, latents)

    def _average_into(self, model: nn.Module, latents: Callable[[], torch.Tensor] | None) -> None:
        self.average.copy_to(model.parameters())
        if latents is not None:
            with torch.no_grad():
                update_bn([latents() for _ in range(BATCH_NORM_BATCHES)], model)


@dataclass(frozen=True)
class Curve:
    """Snapshots of the weights a generator would sample with, saved at the end of ``epochs`` (numbered from
    1) as ``folder/step_NNNNNNN.pt``, so the chapter can draw image quality against optimiser steps.
    ``weights`` gives the state dict to save (:meth:`WeightAverage.averaged_state`)."""

    folder: Path
    epochs: frozenset[int]
    weights: Callable[[], dict[str, torch.Tensor]]

    def after_epoch(self, epoch: int, step: int) -> None:
        if epoch in self.epochs:
            cache.torch_save_atomic(self.weights(), self.folder / f"step_{step:07d}.pt")


def curve_epochs(first: int, last: int, points: int = CURVE_POINTS) -> frozenset[int]:
    """The epochs after ``first`` that split the epochs up to ``last`` into ``points`` about equal parts, the
    ends excluded (``last`` is the trained generator itself): ``curve_epochs(0, 8)`` is {2, 4, 6}."""
    return frozenset(first + math.ceil((last - first) * k / points) for k in range(1, points)) - {first, last}


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimiser step on ``loss``, with gradients averaged over the processes under torchrun; ``scaler``: the
    gradient scaling of float16 mixed precision (:class:`..training.Precision`)."""
    scaler = _NO_SCALING if scaler is None else scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.average_gradients(p for group in optimizer.param_groups for p in group["params"])
    scaler.step(optimizer)
    scaler.update()


def gan_optimisers(generator: nn.Module, discriminator: nn.Module, device: torch.device, lr: float,
                   betas: tuple[float, float]) -> tuple[torch.optim.Adam, torch.optim.Adam, dict[str, Any]]:
    """Both networks in training mode on ``device``, an Adam optimiser for each, and the state to checkpoint."""
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    return opt_g, opt_d, {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}


def run_epochs(plan: list[dict[str, Any]], n: int, batch_size: int, seed: int, step: Step, *, state: dict[str, Any],
               checkpoint: Path | None, desc: str, progress: bool, curve: Curve | None = None) -> list[dict[str, Any]]:
    """One epoch per entry of ``plan`` over seeded shuffles of ``n`` items; each batch calls
    ``step(index, plan_entry, fraction_of_epoch, rng)``; under torchrun ``index`` is this process's share of the
    batch and ``rng`` its own noise generator (:mod:`..distributed`). Every epoch is checkpointed (models, optimisers,
    history, random state), so a rerun with the same ``checkpoint`` resumes after the last finished epoch; ``curve``
    snapshots are saved before the checkpoint, so a resumed run never lacks one.
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
        noise = distributed.draws(rng, seed, epoch)
        for i in range(steps):
            index = distributed.shard(order[i * batch_size:(i + 1) * batch_size])
            losses = step(index, plan[epoch], (i + 0.5) / steps, noise)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update()
        public = {key: value for key, value in plan[epoch].items() if key != "epoch_in_level"}
        means = {key: total / steps for key, total in sums.items()}
        history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps, **public, **means,
                        "seconds": time.perf_counter() - started})
        if curve is not None:
            curve.after_epoch(epoch + 1, (epoch + 1) * steps)
        if checkpoint is not None:
            cache.torch_save_atomic({"state": {name: obj.state_dict() for name, obj in state.items()},
                                     "history": history, "rng": rng.get_state()}, checkpoint)
    bar.close()
    return history
