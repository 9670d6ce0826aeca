"""The replacement experiment: can a classifier learn from synthetic images instead of patients?

Three training sets per data set: ``real`` (the training split), ``synthetic`` (generated images only)
and ``mixed`` (both). Two model types learn from each: the chapter-1 EfficientNet-B3 (same recipe, same
real validation split for choosing the epoch) and LBP + Random Forest. The test set is always the same
real test split, so the accuracy drop from ``real`` is what replacing patients costs. :func:`run_experiment`
runs it for every data set and generator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import baselines, cache, distributed, generative
from .data import ImageSet
from .models import DEFAULT_ARCH, build_classifier
from .training import Tensors, predict_proba, seed_everything, train_classifier

TRAINING_SETS = ("real", "synthetic", "mixed")
LBP_FOREST = "lbp_random_forest"


def training_set(kind: str, real: Tensors, synthetic: Tensors | None) -> Tensors:
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
                  flip: bool, arch: str = DEFAULT_ARCH, progress: bool = True,
                  nproc: int = 1) -> tuple[nn.Module, list[dict], bool]:
    """A chapter-1 classifier trained on the tensors ``train`` (epoch chosen on ``val``): cached by content;
    trained on ``nproc`` processes under torchrun if more than one.

    The key holds fingerprints of the training and validation tensors, the training settings, the seed,
    the architecture and the code of the modules that train it; an interrupted training resumes.

    Returns:
        ``(model in eval mode, training history, cache_hit)``.
    """
    parts = {"train": cache.tensor_fingerprint(*train), "val": cache.tensor_fingerprint(*val), "arch": arch,
             "seed": seed, "flip": flip, **{k: settings[k] for k in ("epochs", "batch_size", "lr", "weight_decay")},
             "mixed_precision": settings.get("mixed_precision", False),
             "code": cache.code_fingerprint("models", "training", "replacement")}
    channels = int(train[0].shape[1])
    folder, hit = cache.cached("replacement_classifier", parts, lambda folder: distributed.run(
        nproc, train_replacement_into, folder, train, val, settings, seed=seed, device=device, flip=flip, arch=arch,
        progress=progress))
    model = build_classifier(channels, arch)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
    return model.to(device).eval(), json.loads((folder / "history.json").read_text()), hit


def train_replacement_into(folder: Path, train: Tensors, val: Tensors, settings: Mapping[str, Any], *, seed: int,
                           device: torch.device, flip: bool, arch: str, progress: bool) -> None:
    """Train the classifier of :func:`classifier_on` and write ``model.pt`` and ``history.json`` into ``folder``,
    resuming from its ``checkpoint.pt``."""
    seed_everything(seed)  # the initial weights depend on the seed only, not on what the process did before
    model = build_classifier(int(train[0].shape[1]), arch)
    history = train_classifier(model, train, val, epochs=settings["epochs"], batch_size=settings["batch_size"],
                               lr=settings["lr"], weight_decay=settings["weight_decay"], seed=seed, device=device,
                               flip=flip, checkpoint=folder / "checkpoint.pt", progress=progress,
                               mixed_precision=settings.get("mixed_precision", False))
    cache.torch_save_atomic(model.state_dict(), folder / "model.pt")
    cache.write_json_atomic(folder / "history.json", history)
    cache.discard(folder / "checkpoint.pt")


def run_experiment(sets: Mapping[str, ImageSet], generators: Mapping[tuple[str, str], Mapping[int, nn.Module]],
                   train: Mapping[str, Tensors], val: Mapping[str, Tensors], test: Mapping[str, Tensors],
                   classifiers: Mapping[str, nn.Module], settings: Mapping[str, Any], *, seed: int,
                   device: torch.device, arch: str = DEFAULT_ARCH, nproc: int = 1) -> list[dict[str, Any]]:
    """Each data set's test predictions of both model types trained on each training set, for every generator
    of ``settings["replacement_generators"]`` among ``generators`` (``{(label, kind): {class: generator}}``).

    The synthetic set has as many images per class as the real one (seed ``seed + 100``); the deep model
    trained on ``real`` is the data set's classifier in ``classifiers`` (of architecture ``arch``); the others
    train on ``nproc`` processes (:func:`classifier_on`).

    Returns:
        One result per data set, generator, training set and model: ``dataset`` (its label), ``generator``,
        ``training_set``, ``model``, ``n_train`` and ``p_pathology`` of every test image.
    """
    results = []
    for label, images in sets.items():
        for kind in [k for k in settings["replacement_generators"] if (label, k) in generators]:
            parts = {"generators": {c: cache.module_fingerprint(g) for c, g in generators[label, kind].items()},
                     "data": [cache.tensor_fingerprint(*split[label]) for split in (train, val, test)],
                     "classifier": cache.module_fingerprint(classifiers[label]), "arch": arch,
                     "seed": seed, "flip": images.modality == "histology", "device": device.type,
                     "settings": {k: settings[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "ddim_steps",
                                                           "rf_trees")},
                     "code": cache.code_fingerprint("models", "training", "replacement", "baselines", "generative")}
            rows, _ = cache.memoised("replacement", parts, lambda: _replace(
                label, kind, images, generators[label, kind], train[label], val[label], test[label][0],
                classifiers[label], settings, seed=seed, device=device, arch=arch, nproc=nproc))
            results += rows
    return results


def _replace(label: str, kind: str, images: ImageSet, generators: Mapping[int, nn.Module], real: Tensors,
             val: Tensors, test_x: torch.Tensor, classifier: nn.Module, settings: Mapping[str, Any], *, seed: int,
             device: torch.device, arch: str, nproc: int) -> list[dict[str, Any]]:
    """One data set and generator of :func:`run_experiment`: both model types on each training set."""
    synthetic = synthetic_set(generators, real[1], settings, seed=seed, device=device)
    return [{"dataset": label, "generator": kind, **row} for set_name in TRAINING_SETS
            for row in train_on(set_name, real, synthetic, val, test_x, classifier, settings,
                                flip=images.modality == "histology", seed=seed, device=device, arch=arch, nproc=nproc)]


def synthetic_set(generators: Mapping[int, nn.Module], real_labels: torch.Tensor, settings: Mapping[str, Any], *,
                  seed: int, device: torch.device) -> Tensors:
    """The synthetic training set: as many images of each class from its generator as the real labels hold
    (seed ``seed + 100``); kept in the artefact cache, so the synthetic and mixed training sets of one run share
    it."""
    counts = {c: int((real_labels == c).sum()) for c in sorted(generators)}
    parts = {"generators": {c: cache.module_fingerprint(g) for c, g in generators.items()}, "counts": counts,
             "seed": seed + 100, "ddim_steps": settings["ddim_steps"], "device": device.type,
             "code": cache.code_fingerprint("generative")}
    found, _ = cache.memoised("replacement_images", parts, lambda: generative.sample_labelled(
        generators, counts, seed=seed + 100, device=device, ddim_steps=settings["ddim_steps"], progress=True))
    return found


def train_on(set_name: str, real: Tensors, synthetic: Tensors | None, val: Tensors, test_x: torch.Tensor,
             classifier: nn.Module | None, settings: Mapping[str, Any], *, flip: bool, seed: int, device: torch.device,
             arch: str = DEFAULT_ARCH, nproc: int = 1) -> list[dict[str, Any]]:
    """Both model types trained on training set ``set_name``, scored on ``test_x``: the deep model (on ``real``,
    the chapter-1 ``classifier``; else :func:`classifier_on`) and LBP + Random Forest.

    Returns:
        Two rows: ``training_set``, ``model``, ``n_train`` and ``p_pathology`` of every test image.
    """
    x, y = training_set(set_name, real, synthetic)
    deep = classifier if set_name == "real" else classifier_on((x, y), val, settings, seed=seed, device=device,
                                                               flip=flip, arch=arch, nproc=nproc)[0]
    forest = baselines.train_lbp_forest(x, y, seed=seed, n_trees=settings["rf_trees"])
    return [{"training_set": set_name, "model": model, "n_train": len(y), "p_pathology": p}
            for model, p in ((arch, predict_proba(deep, test_x, device)),
                             (LBP_FOREST, baselines.lbp_forest_proba(forest, test_x)))]
