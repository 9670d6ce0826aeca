"""Chapter 3's steps: per data set and pipeline (the bare classifier, then each defence), the pipeline with every
cell the page needs from it: clean, each attack under both threat models, the gray-box budget sweep and, for
MagNet, the detector-aware attack."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import attacks, defenses, training
from ..data import ImageSet
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name
from .attacks import BATCH_SIZE, attack_units
from .classifiers import classifier_need

THREAT_MODELS = ("gray-box", "adaptive")
BARE = "none"  # the pipeline without a defence
DETECTOR_AWARE = "detector_aware_pgd"


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set, the bare classifier's step, then one per defence of ``params["defenses"]``."""
    seed, weights = params["seed"], params.get("weights")
    made = []
    for images in sets:
        model, rebuild = classifier_need(images, settings, seed, weights)
        n = len(images.indices("test", settings["attack_images"], seed))
        n_train = len(images.indices("train", settings["max_train_images"], seed))
        for kind in (BARE, *params["defenses"]):
            keys = () if kind == BARE else defenses.DEFENSES[kind].settings_keys
            made.append(Step(
                id=f"03_defenses/{step_name(images)}/{kind}",
                parts={"classifier": {k: v for k, v in model.items() if k != "code"}, "defense": kind,
                       "defense_settings": {key: settings[key] for key in keys},
                       "attacks": {a: attacks.attack_parameters(a, _budget(a, params["epsilon"]), settings)
                                   for a in params["attacks"]},
                       "budgets": [attacks.attack_parameters(a, eps, settings) for a in _budgeted(params["attacks"])
                                   for eps in params["budgets"]],
                       "seed": seed, "attack_images": settings["attack_images"], "batch_size": BATCH_SIZE},
                modules=(*data_modules(images), "models", "training", "attacks", "defenses", "metrics"),
                recipe=defense_result,
                inputs=dict(images=images, settings=settings, kind=kind, attack_names=list(params["attacks"]),
                            epsilon=params["epsilon"], budgets=list(params["budgets"]), seed=seed, device=device,
                            weights=weights, nproc=params.get("nproc", 1)),
                packages=(*CORE_PACKAGES, "timm", "torchattacks"),
                units=_units(kind, params, n, n_train, settings), needs=[rebuild]))
    return made


def defense_result(images: ImageSet, settings: dict[str, Any], kind: str, attack_names: list[str], epsilon: float,
                   budgets: list[float], seed: int, device: torch.device, weights: str | None,
                   nproc: int) -> StepResult:
    """The recipe of a chapter-3 step: the pipeline (the chapter-1 classifier, or its defence from the artefact
    cache or trained now), its training history, and a cell per attack and threat model: gray-box attacks are the
    bare classifier's adversarial images (chapter 2's, from the cache when there), adaptive ones are made on the
    pipeline itself."""
    classifier, _, _ = training.classifier_for(images, settings, seed=seed, device=device, weights=weights,
                                               nproc=nproc)
    model, history = classifier, []
    if kind != BARE:
        model, history, _ = defenses.defense_for(kind, images, classifier, settings, seed=seed, device=device,
                                                 nproc=nproc)
    x, y = images.tensors("test", settings["attack_images"], seed)
    cells = [score_cell(model, BARE, threat_model, x, y, attacks.changed_images(x, x), None)
             for threat_model in THREAT_MODELS]
    for attack in attack_names:
        eps = _budget(attack, epsilon)
        for threat_model, target in (("gray-box", classifier), ("adaptive", model)):
            outcome, _ = attacks.evaluate_attack_cached(target, attack, x, y, eps=eps, settings=settings, seed=seed,
                                                        batch_size=BATCH_SIZE, device=device)
            cells.append(score_cell(model, attack, threat_model, x, y, attacks.changed_images(x, outcome.adversarial),
                                    eps, outcome.seconds_per_image, outcome.adversarial))
    if kind == "magnet":
        adversarial = defenses.detector_aware_attack(model, x, y, eps=epsilon, steps=settings["pgd_steps"],
                                                     batch_size=settings["batch_size"], seed=seed, device=device)
        cells.append(score_cell(model, DETECTOR_AWARE, "adaptive", x, y, attacks.changed_images(x, adversarial),
                                epsilon, None, adversarial))
    return StepResult({"history": history, "cells": cells,
                       "budget_cells": gray_box_cells(classifier, model, attack_names, budgets, x, y, settings,
                                                      seed=seed, device=device)})


def gray_box_cells(classifier: nn.Module, model: nn.Module, attack_names: list[str], budgets: list[float],
                   x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any], *, seed: int,
                   device: torch.device) -> list[dict[str, Any]]:
    """Gray-box cells of every budgeted attack at every budget: the bare ``classifier``'s adversarial images
    (chapter 2's, from the artefact cache when it ran these budgets) through ``model``: forward passes only."""
    cells = []
    for attack in _budgeted(attack_names):
        for eps in budgets:
            outcome, _ = attacks.evaluate_attack_cached(classifier, attack, x, y, eps=eps, settings=settings, seed=seed,
                                                        batch_size=BATCH_SIZE, device=device)
            cells.append(score_cell(model, attack, "gray-box", x, y, attacks.changed_images(x, outcome.adversarial),
                                    eps, None, outcome.adversarial))
    return cells


def score_cell(model: nn.Module, attack: str, threat_model: str, x: torch.Tensor, y: torch.Tensor,
               changed: torch.Tensor, epsilon: float | None, attack_seconds_per_image: float | None = None,
               adversarial: torch.Tensor | None = None) -> dict[str, Any]:
    """One cell of the modality x attack x defence table, as counts: ``model`` on the images (``adversarial``, or
    the clean ``x``) scored by :func:`medsec_utils.defenses.score_defense`, where ``changed`` marks the images an
    attack moved."""
    scored = defenses.score_defense(model, x if adversarial is None else adversarial, y, changed)
    return {"attack": attack, "threat_model": threat_model, "epsilon": epsilon, "n": len(y),
            "n_adversarial": int(changed.sum()), "attack_seconds_per_image": attack_seconds_per_image, **scored}


def _budget(attack: str, epsilon: float) -> float | None:
    return epsilon if attacks.ATTACKS[attack].budgeted else None


def _budgeted(names: list[str]) -> list[str]:
    return [name for name in names if attacks.ATTACKS[name].budgeted]


def _units(kind: str, params: dict[str, Any], n: int, n_train: int, settings: dict[str, Any]) -> dict[str, float]:
    """The plan's units of one pipeline's step (:mod:`medsec_utils.plan` counts chapter 3 the same way): its
    defence's training, the adaptive attacks on it and forward passes for every cell; gray-box attacks are
    chapter 2's, counted in the bare classifier's step (an upper bound where chapter 2 ran on this machine)."""
    units: dict[str, float] = {"predict": n * (2 + 2 * len(params["attacks"]) + len(params["budgets"]) * len(
        _budgeted(params["attacks"])))}
    if kind == BARE:  # the gray-box attacks, when chapter 2 did not leave them in this machine's cache
        for attack in params["attacks"]:
            for _ in (params["budgets"] if attacks.ATTACKS[attack].budgeted else [None]):
                for unit, count in attack_units(attack, n, settings).items():
                    units[unit] = units.get(unit, 0.0) + count
        return units
    for attack in params["attacks"]:
        for unit, count in attack_units(attack, n, settings).items():
            units[unit] = units.get(unit, 0.0) + count
    perturb = 1 if settings["adv_train_method"] == "fgsm_rs" else settings["defense_pgd_steps"]
    if kind == "adversarial_training":
        units["classifier_train"] = settings["adv_train_epochs"] * n_train
        units["input_gradient"] = units.get("input_gradient", 0.0) + settings["adv_train_epochs"] * n_train * perturb
    elif kind == "hgd":
        units["input_gradient"] = units.get("input_gradient", 0.0) + settings["hgd_epochs"] * n_train * (
            settings["defense_pgd_steps"] + 1)
    elif kind == "magnet":
        units["predict"] += settings["magnet_epochs"] * n_train
        units["input_gradient"] = units.get("input_gradient", 0.0) + n * settings["pgd_steps"]
    return units
