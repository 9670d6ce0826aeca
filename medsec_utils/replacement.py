"""The replacement experiment: can a classifier learn from synthetic images instead of patients?

Three training sets per data set: ``real`` (the training split), ``synthetic`` (generated images only)
and ``mixed`` (both). Two model types learn from each: the chapter-1 EfficientNet-B3 (same recipe, same
real validation split for choosing the epoch) and LBP + Random Forest. The test set is always the same
real test split, so the accuracy drop from ``real`` is what replacing patients costs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import cache
from .models import DEFAULT_ARCH, build_classifier
from .training import Tensors, train_classifier

TRAINING_SETS = ("real", "synthetic", "mixed")


def training_set(kind: str, real: Tensors, synthetic: Tensors) -> Tensors:
    """Images and labels of training set ``kind`` from the real and the synthetic ``(x, y)``.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "real":
        return real
    if kind == "synthetic":
        return synthetic
    if kind == "mixed":
        return torch.cat([real[0], synthetic[0]]), torch.cat([real[1], synthetic[1]])
    raise ValueError(f"unknown training set {kind!r}; choose from {', '.join(TRAINING_SETS)}")


def classifier_on(train: Tensors, val: Tensors, settings: Mapping[str, Any], *, seed: int, device: torch.device,
                  flip: bool, arch: str = DEFAULT_ARCH, progress: bool = True) -> tuple[nn.Module, list[dict], bool]:
    """A chapter-1 classifier trained on the tensors ``train`` (epoch chosen on ``val``): cached by content.

    The key holds fingerprints of the training and validation tensors, the training settings, the seed,
    the architecture and the code of the modules that train it; an interrupted training resumes.

    Returns:
        ``(model in eval mode, training history, cache_hit)``.
    """
    parts = {"train": cache.tensor_fingerprint(*train), "val": cache.tensor_fingerprint(*val), "arch": arch,
             "seed": seed, "flip": flip, **{k: settings[k] for k in ("epochs", "batch_size", "lr", "weight_decay")},
             "code": cache.code_fingerprint("models", "training", "replacement")}
    channels = int(train[0].shape[1])

    def produce(folder: Path) -> None:
        model = build_classifier(channels, arch)
        history = train_classifier(model, train, val, epochs=settings["epochs"], batch_size=settings["batch_size"],
                                   lr=settings["lr"], weight_decay=settings["weight_decay"], seed=seed, device=device,
                                   flip=flip, checkpoint=folder / "checkpoint.pt", progress=progress)
        cache.torch_save_atomic(model.state_dict(), folder / "model.pt")
        cache.write_json_atomic(folder / "history.json", history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)

    folder, hit = cache.cached("replacement_classifier", parts, produce)
    model = build_classifier(channels, arch)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
    return model.to(device).eval(), json.loads((folder / "history.json").read_text()), hit
