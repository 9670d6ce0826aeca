"""Training of the Normal/Pathology classifiers, resumable and cached.

``train_classifier`` is a plain AdamW loop (warm-up, cosine decay, gradient clipping) with
class-weighted cross-entropy (X-ray is imbalanced about 1:3) that keeps the weights of the epoch
with the best validation AUC (threshold-free, so it still ranks epochs whose predictions all fall on
one side of 0.5). It checkpoints every epoch, so an interrupted run resumes where it stopped.
``classifier_for`` wraps it in the artefact cache: an unchanged rerun loads the model instead of
training it again. Under torchrun it trains data-parallel (:mod:`.distributed`).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn
from tqdm import tqdm

from . import cache, distributed, metrics
from .data import READER_MODULES, ImageSet
from .models import DEFAULT_ARCH, build_classifier

Tensors = tuple[torch.Tensor, torch.Tensor]
Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
GRAD_CLIP = 2.0  # gradient-norm clip: random-init EfficientNets diverge without it at these learning rates


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random shift of up to 1/16 of the side (reflect padding) and, if ``flip``, random flips per image."""
    pad = max(1, x.shape[-1] // 16)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    if flip:
        mask = torch.rand(x.shape[0], 1, 1, 1, generator=generator) < 0.5
        x = torch.where(mask, x.flip(-1), x)
    return x


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights for two classes, mean 1."""
    counts = torch.bincount(labels, minlength=2).clamp(min=1).float()
    return counts.sum() / (2 * counts)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Probability of Pathology for every image of ``x`` (images in [0, 1])."""
    model.eval().to(device)
    probs = [F.softmax(model(x[i:i + batch_size].to(device)), dim=1)[:, 1].cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(probs).numpy() if probs else np.zeros(0)


def evaluate(model: nn.Module, data: Tensors, device: torch.device, batch_size: int = 128) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy and AUC on ``(x, y)``."""
    x, y = data
    p = predict_proba(model, x, device, batch_size)
    labels = y.numpy()
    eps = 1e-7
    loss = float(-np.mean(labels * np.log(p + eps) + (1 - labels) * np.log(1 - p + eps)))
    pred = (p >= 0.5).astype(int)
    auc = float(roc_auc_score(labels, p)) if len(set(labels)) == 2 else float("nan")
    return {"loss": loss, "accuracy": float((pred == labels).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)), "auc": auc}


def test_report(model: nn.Module, images: ImageSet, settings: dict[str, Any], *, seed: int,
                device: torch.device) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """``metrics.binary_report`` of ``model`` on the test split of ``images`` (at most ``max_eval_images``, with
    ``bootstrap`` resamples for the intervals) and its ROC points ``(fpr, tpr)``."""
    x, y = images.tensors("test", settings["max_eval_images"], seed)
    p = predict_proba(model, x, device)
    report = metrics.binary_report(y.numpy(), p, n_boot=settings["bootstrap"], seed=seed)
    return report, metrics.roc_points(y.numpy(), p)


def train_classifier(
    model: nn.Module,
    train: Tensors,
    val: Tensors,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    flip: bool = False,
    checkpoint: Path | None = None,
    perturb: Perturb | None = None,
    progress: bool = True,
    mixed_precision: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` in place; return one record per epoch and keep the weights of the best validation AUC.

    Args:
        train, val: float images in [0, 1] and int64 labels.
        flip: random flips as augmentation (histology has no orientation; radiographs do).
        checkpoint: file to save after every epoch and resume from if it exists.
        perturb: ``perturb(model, images, labels)`` replaces every training batch after augmentation,
            e.g. by adversarial images (adversarial training); None trains on the clean batch. It runs outside
            autocast: attacks keep full-precision gradients.
        mixed_precision: forward and loss under ``torch.autocast`` (float16 with a gradient scaler on CUDA,
            bfloat16 elsewhere); weights, optimiser and gradients stay float32 (the ``gpu`` profile).
    """
    seed_everything(seed)
    model.to(device)
    x, y = train
    steps = len(x) // batch_size or 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, total=epochs * steps, warmup=max(1, steps // 2))
    generator = torch.Generator().manual_seed(seed)
    state = {"epoch": 0, "history": [], "best": None, "best_score": -1.0}
    if checkpoint is not None and checkpoint.is_file():
        state = _resume(checkpoint, model, optimizer, scheduler, generator)
    weights = class_weights(y).to(device)
    precision = Precision(device, mixed_precision)
    bar = tqdm(total=epochs * steps, initial=state["epoch"] * steps, desc="train", disable=not progress,
               mininterval=5, unit="batch")
    for epoch in range(state["epoch"], epochs):
        started = time.perf_counter()
        train_loss = _train_epoch(model, x, y, optimizer, scheduler, weights, batch_size, generator, flip, device, bar,
                                  perturb, precision)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "seconds": time.perf_counter() - started}
        record.update({f"val_{k}": v for k, v in evaluate(model, val, device).items()})
        state["history"].append(record)
        score = record["val_auc"] if math.isfinite(record["val_auc"]) else record["val_balanced_accuracy"]
        if score > state["best_score"]:
            state["best_score"] = score
            state["best"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["epoch"] = epoch + 1
        bar.set_postfix(loss=f"{train_loss:.3f}", val_bacc=f"{record['val_balanced_accuracy']:.3f}")
        if checkpoint is not None:
            _save_checkpoint(checkpoint, state, model, optimizer, scheduler, generator)
    bar.close()
    if state["best"] is not None:
        model.load_state_dict(state["best"])
    return state["history"]


class Precision:
    """Mixed precision for one device: ``autocast()`` (float16 on CUDA, bfloat16 elsewhere, off unless ``enabled``)
    and the gradient ``scaler`` float16 needs (a pass-through otherwise), as PyTorch's AMP recipe sets them up."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device_type, self.enabled = device.type, enabled
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, weights: torch.Tensor, batch_size: int,
                 generator: torch.Generator, flip: bool, device: torch.device, bar: tqdm,
                 perturb: Perturb | None, precision: Precision) -> float:
    model.train()
    network = distributed.parallel(model)
    order = torch.randperm(len(x), generator=generator)
    steps = len(x) // batch_size or 1
    total = torch.zeros((), device=device)
    for step in range(steps):
        index = order[step * batch_size:(step + 1) * batch_size]
        batch_weight = weights[y[index].to(device)].sum()  # of the global batch: N processes step as one would
        inputs = distributed.shard(augment(x[index], generator, flip))
        if device.type == "cuda":  # page-locked, so the copy to the GPU overlaps the previous step
            inputs = inputs.pin_memory()
        inputs = inputs.to(device, non_blocking=True)
        labels = distributed.shard(y[index]).to(device)
        if perturb is not None:
            inputs = perturb(model, inputs, labels)
            model.train()
        with precision.autocast():
            logits = network(inputs)
        losses = F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")
        loss = losses * distributed.world_size() / batch_weight
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRAD_CLIP)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        scheduler.step()
        total += loss.detach()
        bar.update()
    return float(total) / steps


def _save_checkpoint(path: Path, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, generator: torch.Generator) -> None:
    cache.torch_save_atomic({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                             "torch_rng": torch.get_rng_state()}, path)


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            generator: torch.Generator) -> dict[str, Any]:
    saved = torch.load(path, weights_only=False)
    model.load_state_dict(saved.pop("model"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    generator.set_state(saved.pop("generator"))
    torch.set_rng_state(saved.pop("torch_rng"))
    return saved


def classifier_parts(images: ImageSet, settings: dict[str, Any], *, seed: int, arch: str = DEFAULT_ARCH,
                     weights: str | Path | None = None) -> dict[str, Any]:
    """The artefact-cache key parts of :func:`classifier_for`'s model: everything that determines it, known
    without training it (the results store keys its steps by them and asks the cache whether it holds it)."""
    return {
        "data": images.checksum, "size": images.size, "channels": images.channels, "arch": arch,
        "weights": str(weights) if weights else None, "seed": seed,
        "max_train_images": settings["max_train_images"], "max_eval_images": settings["max_eval_images"],
        **{k: settings[k] for k in ("epochs", "batch_size", "lr", "weight_decay")},
        "mixed_precision": settings.get("mixed_precision", False),
        "code": cache.code_fingerprint(*READER_MODULES, "models", "training"),
    }


def classifier_for(
    images: ImageSet,
    settings: dict[str, Any],
    *,
    seed: int,
    device: torch.device,
    arch: str = DEFAULT_ARCH,
    weights: str | Path | None = None,
    progress: bool = True,
    nproc: int = 1,
) -> tuple[nn.Module, list[dict[str, float]], bool]:
    """The chapter-1 classifier of ``images``: from the artefact cache, or trained now and cached.

    The cache key holds everything that determines the model: data checksum, image size, settings,
    seed, architecture, pretrained weights file and the code of the modules that train it. With ``nproc`` > 1
    the training runs on that many processes under torchrun (:func:`.distributed.run`); the number of processes
    is not part of the key, so a run resumes on any number.

    Returns:
        ``(model in eval mode, training history, cache_hit)``.

    Raises:
        DataError: a split without images of both classes, in one line stating the minimum.
    """
    images.require_both_classes()
    parts = classifier_parts(images, settings, seed=seed, arch=arch, weights=weights)
    folder, hit = cache.cached("classifier", parts, lambda folder: distributed.run(
        nproc, train_classifier_into, folder, images, settings, seed=seed, device=device, arch=arch, weights=weights,
        progress=progress))
    model = build_classifier(images.channels, arch)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
    history = json.loads((folder / "history.json").read_text())
    return model.to(device).eval(), history, hit


def train_classifier_into(folder: Path, images: ImageSet, settings: dict[str, Any], *, seed: int, device: torch.device,
                          arch: str, weights: str | Path | None, progress: bool) -> None:
    """Train the classifier of :func:`classifier_for` and write ``model.pt`` and ``history.json`` into ``folder``,
    resuming from its ``checkpoint.pt``."""
    if (folder / "history.json").is_file():
        return  # trained to the end by a run killed before the marker: model.pt and history.json are whole
    seed_everything(seed)  # the initial weights depend on the seed only, not on what the process did before
    model = build_classifier(images.channels, arch, weights)
    history = train_classifier(
        model, images.tensors("train", settings["max_train_images"], seed),
        images.tensors("val", settings["max_eval_images"], seed), epochs=settings["epochs"],
        batch_size=settings["batch_size"], lr=settings["lr"], weight_decay=settings["weight_decay"],
        seed=seed, device=device, flip=images.modality == "histology", checkpoint=folder / "checkpoint.pt",
        progress=progress, mixed_precision=settings.get("mixed_precision", False),
    )
    cache.torch_save_atomic(model.state_dict(), folder / "model.pt")
    cache.write_json_atomic(folder / "history.json", history)
    cache.discard(folder / "checkpoint.pt")
