"""Chapter 1's steps: per data set and seed, the classifier with its test evaluation."""

from __future__ import annotations

from typing import Any

import torch

from .. import training
from ..data import ImageSet
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set and seed (``seed`` to ``seed + classifier_seeds - 1``), the classifier and its test report on
    the chapter seed's test images, so every seed is judged on the same ones. Seed by seed, so that the chapter
    seed's classifiers, which later chapters use, come first. The store keeps those (43 MB each at the cpu size),
    so a later session attacks the weights chapter 1 measured; the other seeds' only their own step uses."""
    first, weights = params["seed"], params.get("weights")
    made = []
    for seed in range(first, first + settings["classifier_seeds"]):
        for images in sets:
            n_test = len(images.indices("test", settings["max_eval_images"], first))
            model, rebuild = classifier_need(images, settings, seed, weights)
            made.append(Step(
                id=f"01_classifiers/{step_name(images)}/seed{seed}",
                parts={**{k: v for k, v in model.items() if k != "code"}, "eval_seed": first,
                       "bootstrap": settings["bootstrap"]},
                modules=(*data_modules(images), "models", "training", "metrics"), recipe=classifier_result,
                inputs=dict(images=images, settings=settings, seed=seed, eval_seed=first, device=device,
                            weights=weights, nproc=params.get("nproc", 1)),
                packages=(*CORE_PACKAGES, "timm", "scikit-learn"), units={"predict": n_test},
                needs=[rebuild], keep_needs=seed == first))
    return made


def classifier_need(images: ImageSet, settings: dict[str, Any], seed: int,
                    weights: str | None) -> tuple[dict[str, Any], tuple[str, dict[str, Any], dict[str, float]]]:
    """The chapter-1 classifier's cache key parts, and what a step rebuilds when the artefact cache lacks it:
    ``("classifier", parts, plan units of its training)``."""
    parts = training.classifier_parts(images, settings, seed=seed, weights=weights)
    n_train = len(images.indices("train", settings["max_train_images"], seed))
    n_val = len(images.indices("val", settings["max_eval_images"], seed))
    return parts, ("classifier", parts, {"classifier_train": settings["epochs"] * n_train,
                                         "predict": settings["epochs"] * n_val})


def classifier_result(images: ImageSet, settings: dict[str, Any], seed: int, eval_seed: int, device: torch.device,
                      weights: str | None, nproc: int) -> StepResult:
    """The recipe of a chapter-1 step: the classifier (artefact cache, or trained now), its test report, ROC
    points and training history."""
    model, history, _ = training.classifier_for(images, settings, seed=seed, device=device, weights=weights,
                                                nproc=nproc)
    report, (fpr, tpr) = training.test_report(model, images, settings, seed=eval_seed, device=device)
    return StepResult({"report": report, "history": history}, {"fpr": fpr, "tpr": tpr})
