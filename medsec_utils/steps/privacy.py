"""Chapter 6's steps, per data set: the membership models (chapter 1's classifier trained on half of the training
split, ``privacy_models`` of them), the DP-SGD models at each budget of ``dp_epsilons``, then the attack step that
reads all of them.

Membership is drawn per patient: each patient of the training split is in exactly half of the models (Carlini et
al.'s protocol), so a model's members and non-members are the two halves of one split, of one distribution, and
never the test split, on which each model's accuracy is reported. The DP models train on model 0's half, so they
have its members. Every model stores its logits on the whole training split, which is all the attacks read.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from .. import training
from ..data import ImageSet
from ..models import build_classifier
from ..privacy import dp
from ..privacy.outputs import model_logits
from ..privacy.audit import audit
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name

MODEL_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "max_train_images", "max_eval_images", "bootstrap")
DP_KEYS = ("dp_epochs", "dp_delta", "dp_lr", "dp_max_grad_norm", "batch_size", "max_train_images",
           "max_eval_images", "bootstrap")
MIN_NONMEMBERS = 100  # a model's other half must resolve a TPR at 1 % FPR (its DP twins are judged alone)
PRIVACY_MODULES = ("models", "training", "metrics", "privacy.outputs")  # what a model step's logits depend on


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set: ``model0`` ... ``model<k-1>``, ``dp_eps<e>`` per budget, then ``attacks`` after all of them.
    Raises ValueError for a membership split or privacy budget that cannot work, before anything is trained."""
    seed = params["seed"]
    made = []
    for images in sets:
        inside = membership(images, settings, seed)
        n_pool, n_half = inside.shape[1], int(inside[0].sum())
        for epsilon in settings["dp_epsilons"]:  # refused here, before any model of the chapter is trained
            dp.check_privacy_budget(epsilon, settings["dp_delta"], n_half)
        n_val = len(images.indices("val", settings["max_eval_images"], seed))
        n_test = len(images.indices("test", settings["max_eval_images"], seed))
        common = dict(images=images, settings=settings, seed=seed, device=device)
        models = [Step(
            id=f"06_privacy/{step_name(images)}/model{k}",
            parts={"data": images.checksum, "size": images.size, "model": k, "models": len(inside), "seed": seed,
                   **{key: settings[key] for key in MODEL_KEYS}},
            modules=(*data_modules(images), *PRIVACY_MODULES), recipe=membership_model_result,
            inputs=dict(**common, k=k), packages=(*CORE_PACKAGES, "timm", "scikit-learn"),
            units={"classifier_train": settings["epochs"] * n_half,
                   "predict": n_pool + n_test + settings["epochs"] * n_val}) for k in range(len(inside))]
        private = [Step(
            id=f"06_privacy/{step_name(images)}/dp_eps{epsilon:g}",
            parts={"data": images.checksum, "size": images.size, "epsilon": epsilon, "models": len(inside),
                   "seed": seed, **{key: settings[key] for key in DP_KEYS}},
            modules=(*data_modules(images), *PRIVACY_MODULES, "privacy.dp"), recipe=dp_model_result,
            inputs=dict(**common, epsilon=float(epsilon)), packages=(*CORE_PACKAGES, "timm", "scikit-learn", "opacus"),
            units={"classifier_train": dp.DP_STEP_COST * settings["dp_epochs"] * n_half, "predict": n_pool + n_test})
            for epsilon in settings["dp_epsilons"]]
        made += [*models, *private, Step(
            id=f"06_privacy/{step_name(images)}/attacks",
            parts={"seed": seed, "bootstrap": settings["bootstrap"], "models": len(inside),
                   "epsilons": list(settings["dp_epsilons"])},
            modules=("metrics", "privacy.membership", "privacy.attacks", "privacy.audit"), recipe=attacks_result,
            inputs=dict(images=images, settings=settings, seed=seed), packages=(*CORE_PACKAGES, "scikit-learn"),
            after=[*models, *private])]
    return made


def membership(images: ImageSet, settings: dict[str, Any], seed: int) -> np.ndarray:
    """Bool ``(privacy_models, training images)``: which model trains on which image. Each patient is in exactly
    half of the models, with all their images: patients, largest first (in random order within a size), take the
    ways of choosing half of the models in turn (in a random order), so every model gets about half of the images
    and no two models train on the same half. Raises ValueError, before anything is trained, for an odd or too
    small number of models, or a training split that leaves a model fewer than ``MIN_NONMEMBERS`` non-members."""
    count = settings["privacy_models"]
    if count < 4 or count % 2:
        raise ValueError(f"privacy_models {count}: give an even number of at least 4 (each image in half of them, "
                         "every target with shadow models that did and did not train on each image)")
    pool = images.indices("train", settings["max_train_images"], seed)
    unique, which, sizes = np.unique(images.patient_ids[pool], return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    halves = list(itertools.combinations(range(count), count // 2))
    order = rng.permutation(len(halves))
    shuffled = rng.permutation(len(unique))
    largest_first = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    by_patient = np.zeros((count, len(unique)), bool)
    for rank, patient in enumerate(largest_first):  # every half in turn: each model gets its share of images
        by_patient[list(halves[order[rank % len(halves)]]), patient] = True
    inside = by_patient[:, which]
    fewest = int((~inside).sum(1).min())
    if fewest < MIN_NONMEMBERS:
        raise ValueError(f"{images.spec}: {len(pool)} training images leave a model only {fewest} non-members; "
                         f"membership at 1 % FPR needs at least {MIN_NONMEMBERS}: give at least "
                         f"{2 * MIN_NONMEMBERS + 20} training images (max_train_images, or a larger data set)")
    return inside


def membership_model_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                            k: int) -> StepResult:
    """Chapter 1's classifier trained on model ``k``'s half of the training split (selected on the val split as
    there): its logits on the whole split and its test report."""
    x, y = images.tensors("train", settings["max_train_images"], seed)
    inside = torch.as_tensor(membership(images, settings, seed)[k])
    training.seed_everything(seed + k)
    model = build_classifier(images.channels)
    history = training.train_classifier(
        model, (x[inside], y[inside]), images.tensors("val", settings["max_eval_images"], seed),
        epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
        weight_decay=settings["weight_decay"], seed=seed + k, device=device, flip=images.modality == "histology")
    return _model_result(model.eval(), images, settings, seed, device, x, {"history": history})


def dp_model_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                    epsilon: float) -> StepResult:
    """The classifier trained with DP-SGD to ``(epsilon, dp_delta)`` on model 0's half: logits on the whole
    training split, test report, the guarantee spent and what Opacus needed changed."""
    x, y = images.tensors("train", settings["max_train_images"], seed)
    inside = torch.as_tensor(membership(images, settings, seed)[0])
    training.seed_everything(seed)
    model, changes = dp.dp_compatible(build_classifier(images.channels))
    history, spent = dp.train_dp_classifier(
        model, (x[inside], y[inside]), epsilon=epsilon, delta=settings["dp_delta"], epochs=settings["dp_epochs"],
        batch_size=settings["batch_size"], lr=settings["dp_lr"], max_grad_norm=settings["dp_max_grad_norm"],
        seed=seed, device=device)
    return _model_result(model.eval(), images, settings, seed, device, x,
                         {"history": history, "privacy": dp.describe(spent), "changes": changes})


def _model_result(model: torch.nn.Module, images: ImageSet, settings: dict[str, Any], seed: int,
                  device: torch.device, pool: torch.Tensor, record: dict[str, Any]) -> StepResult:
    report, _ = training.test_report(model, images, settings, seed=seed, device=device)
    logits = model_logits(model, pool, device)
    return StepResult({**record, "report": report}, {"logits": logits.numpy().astype(np.float32)})


def attacks_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any],
                   seed: int) -> StepResult:
    """Every attack on every stored model of this data set (:func:`medsec_utils.privacy.audit.audit`)."""
    prefix = f"06_privacy/{step_name(images)}"
    count = settings["privacy_models"]
    logits = torch.stack([torch.from_numpy(upstream[f"{prefix}/model{k}"].arrays["logits"]).double()
                          for k in range(count)])
    private = {float(e): torch.from_numpy(upstream[f"{prefix}/dp_eps{e:g}"].arrays["logits"]).double()
               for e in settings["dp_epsilons"]}
    pool = images.indices("train", settings["max_train_images"], seed)
    records, arrays = audit(logits, private, images.labels[pool], membership(images, settings, seed),
                            images.patient_ids[pool], n_boot=settings["bootstrap"], seed=seed)
    return StepResult({"records": records}, arrays)
