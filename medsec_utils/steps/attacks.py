"""Chapter 2's steps: one attack at one budget on one data set's chapter-1 classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import attacks, metrics, plan, training
from ..data import ImageSet
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name
from .classifiers import classifier_need

EXAMPLES = 4  # attacked Pathology images whose adversarial versions a step keeps for the example figure
BATCH_SIZE = 32  # images per attack batch (each batch is seeded: part of the result)


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set, attack of ``params["attacks"]`` and budget (``epsilons`` and the headline ``epsilon``; CW
    takes none), the attack on the chapter seed's classifier over ``attack_images`` stratified test images."""
    seed, weights = params["seed"], params.get("weights")
    budgets = sorted(set(params["epsilons"]) | {params["epsilon"]})
    made = []
    for images in sets:
        model, rebuild = classifier_need(images, settings, seed, weights)
        n = len(images.indices("test", settings["attack_images"], seed))
        for attack in params["attacks"]:
            for eps in budgets if attacks.ATTACKS[attack].budgeted else [None]:
                made.append(Step(
                    id=f"02_attacks/{step_name(images)}/{attack}/{budget_name(eps)}",
                    parts={"classifier": {k: v for k, v in model.items() if k != "code"}, "attack": attack,
                           "parameters": attacks.attack_parameters(attack, eps, settings), "seed": seed,
                           "attack_images": settings["attack_images"], "batch_size": BATCH_SIZE, "examples": EXAMPLES},
                    modules=(*data_modules(images), "models", "training", "attacks", "metrics"), recipe=attack_result,
                    inputs=dict(images=images, settings=settings, attack=attack, eps=eps, seed=seed, device=device,
                                weights=weights, nproc=params.get("nproc", 1)),
                    packages=(*CORE_PACKAGES, "timm", "torchattacks", "torchmetrics"),
                    units=attack_units(attack, n, settings), needs=[rebuild]))
    return made


def budget_name(eps: float | None) -> str:
    """``eps2`` for 2/255, ``eps0.5`` for 0.5/255, ``unbudgeted`` for CW."""
    return "unbudgeted" if eps is None else f"eps{round(eps * 255, 3):g}"


def attack_units(attack: str, n: int, settings: dict[str, Any]) -> dict[str, float]:
    """The plan's units of one attack on ``n`` images (every image attacked, every iteration run; AutoAttack's
    FAB and Square on the share of images APGD leaves unbroken, as :mod:`medsec_utils.plan` counts them)."""
    unbroken = plan.UNBROKEN_OVER_BUDGETS / plan.ATTACK_BUDGETS
    gradients = {"fgsm": 1, "pgd": settings["pgd_steps"], "cw": settings["cw_steps"],
                 "autoattack": settings["apgd_steps"] * settings["apgd_restarts"] + unbroken * 2 * settings["fab_steps"]}
    units = {"input_gradient": n * gradients[attack], "predict": 2 * n}
    if attack == "autoattack":
        units["predict"] += n * unbroken * settings["square_queries"]
    return units


def attack_result(images: ImageSet, settings: dict[str, Any], attack: str, eps: float | None, seed: int,
                  device: torch.device, weights: str | None, nproc: int) -> StepResult:
    """The recipe of a chapter-2 step: predictions before and after the attack, the size of every perturbation
    that changed a diagnosis, accuracy after saving as 8-bit images, and the adversarial versions of a few
    attacked Pathology images (as float16 perturbations) for the example figure."""
    model, _, _ = training.classifier_for(images, settings, seed=seed, device=device, weights=weights, nproc=nproc)
    x, y = images.tensors("test", settings["attack_images"], seed)
    outcome, _ = attacks.evaluate_attack_cached(model, attack, x, y, eps=eps, settings=settings, seed=seed,
                                                batch_size=BATCH_SIZE, device=device)
    flipped = outcome.flipped
    sizes = metrics.perturbation_sizes(outcome.clean[flipped], outcome.adversarial[flipped])
    pool = example_pool(outcome.labels, outcome.clean_pred)
    arrays = {"labels": outcome.labels.numpy().astype(np.int8), "clean_pred": outcome.clean_pred.numpy().astype(np.int8),
              "adv_pred": outcome.adv_pred.numpy().astype(np.int8), "example_index": pool,
              "example_perturbation": (outcome.adversarial[pool] - outcome.clean[pool]).numpy().astype(np.float16),
              **{f"size_{name}": values for name, values in sizes.items()}}
    return StepResult({"seconds": outcome.seconds,
                       "robust_accuracy_8bit": attacks.quantized_accuracy(model, outcome, device)}, arrays)


def example_pool(labels: torch.Tensor, clean_pred: torch.Tensor, count: int = EXAMPLES) -> np.ndarray:
    """The first ``count`` correctly diagnosed Pathology images (else correctly diagnosed ones, else any): the
    same for every attack on one classifier, so the figure can show one image under all of them."""
    attacked = clean_pred == labels
    for candidates in (attacked & (labels == 1), attacked, torch.ones_like(attacked)):
        if candidates.any():
            return torch.nonzero(candidates).flatten()[:count].numpy()
    return np.zeros(0, dtype=np.int64)
