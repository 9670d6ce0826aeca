"""A toy Normal/Pathology task and a tiny CNN for fast attack and defence tests."""

import torch
from torch import nn


def bright_centre_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 px images; a brighter centre means Pathology. The contrast varies, so small budgets leave survivors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3 + 0.35
    y = torch.arange(n) % 2
    contrast = torch.rand(n, generator=g) * 0.2 + 0.1
    x[:, :, 4:12, 4:12] += (2 * y - 1).view(-1, 1, 1, 1).float() * contrast.view(-1, 1, 1, 1)
    return x.clamp(0, 1), y


def tiny_cnn() -> nn.Module:
    """A seeded two-logit CNN small enough to train in a second."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 2))


def trained_tiny_cnn() -> nn.Module:
    """``tiny_cnn`` trained on ``bright_centre_task`` (about 95 % accuracy), in eval mode."""
    from medsec_utils import training

    net = tiny_cnn()
    training.train_classifier(net, bright_centre_task(256, 0), bright_centre_task(64, 1), epochs=30, batch_size=32,
                              lr=0.01, weight_decay=0.0, seed=0, device=torch.device("cpu"), progress=False)
    return net.eval()
