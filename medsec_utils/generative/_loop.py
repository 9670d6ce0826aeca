"""The checkpointed epoch loop every generator trains in, and the optimiser set-up of the GANs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import cache

Step = Callable[[torch.Tensor, dict[str, Any], float, torch.Generator], dict[str, float]]


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def gan_optimisers(generator: nn.Module, discriminator: nn.Module, device: torch.device, lr: float,
                   betas: tuple[float, float]) -> tuple[torch.optim.Adam, torch.optim.Adam, dict[str, Any]]:
    """Both networks in training mode on ``device``, an Adam optimiser for each, and the state to checkpoint."""
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    return opt_g, opt_d, {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}


def run_epochs(plan: list[dict[str, Any]], n: int, batch_size: int, seed: int, step: Step, *, state: dict[str, Any],
               checkpoint: Path | None, desc: str, progress: bool) -> list[dict[str, Any]]:
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
        means = {key: total / steps for key, total in sums.items()}
        history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps, **public, **means,
                        "seconds": time.perf_counter() - started})
        if checkpoint is not None:
            cache.torch_save_atomic({"state": {name: obj.state_dict() for name, obj in state.items()},
                                     "history": history, "rng": rng.get_state()}, checkpoint)
    bar.close()
    return history
