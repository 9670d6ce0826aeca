"""What each process does in the torchrun tests (``test_distributed``): functions ``distributed.run`` starts by name.

Each writes what its own process saw into ``<folder>/rank<r>.pt`` with ``torch.save`` (not through the cache,
which lets rank 0 alone write), and logs every file the library itself wrote, so a test can tell the ranks apart.
"""

import os
from pathlib import Path

import torch
from torch import nn

from medsec_utils import cache, distributed, generative, training

IMAGES = 32  # image i is the constant (i + 1) / 64, so a model can tell which images it was shown
CPU = torch.device("cpu")


def identifiable_images() -> tuple[torch.Tensor, torch.Tensor]:
    """32 constant 8 px images, each of its own grey value, labels alternating."""
    x = ((torch.arange(IMAGES) + 1) / 64).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return x, torch.arange(IMAGES) % 2


class Recorder(nn.Module):
    """A batch-norm-free CNN that remembers which images it was trained on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += (x[:, 0, 0, 0] * 64 - 1).round().long().tolist()
        return self.net(x)


def _log_writes(folder: Path) -> list[str]:
    """Record the targets of ``os.replace``, the last step of every atomic write of the library."""
    written: list[str] = []
    replace = os.replace

    def logged(source, target):
        written.append(str(target))
        return replace(source, target)

    cache.os.replace = logged
    return written


def train_recorder(folder: Path, *, device: torch.device, progress: bool) -> None:
    """One epoch of ``training.train_classifier`` (batch 8, flips on) with a checkpoint under ``folder``."""
    written = _log_writes(folder)
    model, data = Recorder(), identifiable_images()
    training.train_classifier(model, data, data, epochs=1, batch_size=8, lr=1e-2, weight_decay=0.0, seed=0,
                              device=device, flip=True, checkpoint=folder / "checkpoint.pt", progress=progress)
    torch.save({"world": distributed.world_size(), "seen": model.seen, "written": written,
                "weights": model.net.state_dict()}, folder / f"rank{distributed.rank()}.pt")


def train_generators(folder: Path, settings: dict, *, device: torch.device, progress: bool) -> None:
    """One epoch of each generator on 16 grey 16 px images; every process saves the weights each ends with and,
    per generator, the image indices of each batch its share held (what ``distributed.shard`` gave it)."""
    written = _log_writes(folder)
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    weights, seen = {}, {}
    shard = distributed.shard

    def recorded(index: torch.Tensor) -> torch.Tensor:
        share = shard(index)
        batches.append(share.tolist())
        return share

    distributed.shard = recorded  # restored below: with one process this runs in the caller's own process
    try:
        for kind, entry in generative.GENERATORS.items():
            torch.manual_seed(0)
            batches = seen[kind] = []
            generator, discriminator = generative.build_generative(kind, 1, 16, settings)
            entry.train(generator, discriminator, images, settings, epochs=1, batch_size=4, seed=0, device=device,
                        progress=progress, checkpoint=folder / kind / "checkpoint.pt")
            weights[kind] = generator.state_dict()
    finally:
        distributed.shard = shard
    torch.save({"world": distributed.world_size(), "written": written, "weights": weights, "seen": seen},
               folder / f"rank{distributed.rank()}.pt")
