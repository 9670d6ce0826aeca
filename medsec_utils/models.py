"""Classifiers: timm backbones with two logits and the input normalisation inside the model.

Attacks and defences work on images in [0, 1]; keeping the normalisation in the model means every
attack library sees the same input space as the data layer produces.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

DEFAULT_ARCH = "efficientnet_b3"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizedClassifier(nn.Module):
    """``backbone((x - mean) / std)`` for ``x`` in [0, 1]; returns two logits (Normal, Pathology)."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))


def build_classifier(
    in_chans: int, arch: str = DEFAULT_ARCH, weights: str | Path | None = None, drop_rate: float = 0.2
) -> NormalizedClassifier:
    """A timm ``arch`` with ``in_chans`` input channels and two logits, normalisation included.

    Args:
        in_chans: 1 for X-ray and CT, 3 for histology.
        arch: a timm model name.
        weights: a local pretrained weights file (``.safetensors``/``.pth``); None means random init.
            Nothing is ever downloaded.
        drop_rate: dropout before the classifier head.

    Weights and activations are kept ``channels_last``: on 2 CPU cores training, input gradients (attacks)
    and inference ran 1.27x, 1.28x and 1.55x as fast as the default layout, with logits within 2e-6
    (``benchmarks/bench_speedups.py``). Saved weights are the same tensors either way.
    """
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: pretrained weights file not found; give a local file or None")
    overlay = {"file": str(weights)} if weights else None
    backbone = timm.create_model(arch, pretrained=weights is not None, pretrained_cfg_overlay=overlay,
                                 num_classes=2, in_chans=in_chans, drop_rate=drop_rate)
    mean = IMAGENET_MEAN if in_chans == 3 else (sum(IMAGENET_MEAN) / 3,) * in_chans
    std = IMAGENET_STD if in_chans == 3 else (sum(IMAGENET_STD) / 3,) * in_chans
    return NormalizedClassifier(backbone, mean, std).to(memory_format=torch.channels_last)

