"""White-box attacks on the Normal/Pathology classifiers: one table of kinds over torchattacks.

Images are in [0, 1] and the normalisation is inside the model, so a budget ``eps`` is in pixel units
(2/255 = two grey levels of an 8-bit image). Only images the model classifies correctly are attacked;
an image it already gets wrong counts as an error under every attack (the AutoAttack convention).
Robust accuracy is read off the model's predictions on the returned images, never off the
perturbation: torchattacks returns an image unperturbed when its attack fails.

``ATTACKS`` is the table of kinds: each is a small builder of a ``torchattacks`` attack registered with
``register_attack`` (the profile keys that size it, whether it has an L-inf budget, a paragraph for the
book). Adding an attack is one such entry plus its sizes in ``profiles.yaml``.

AutoAttack (Croce & Hein 2020) as torchattacks ships it fails on two-logit models: its targeted
sub-attacks (APGD-T, FAB-T) and the DLR loss rank the third-largest logit. ``two_class_autoattack`` is
the "custom" AutoAttack its authors document: the sub-attacks that are defined for two classes, run in
sequence on the images that survived the previous ones (``AUTOATTACK_PARTS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchattacks
from torch import nn
from torchattacks.attack import Attack
from tqdm import tqdm

from . import cache

AUTOATTACK_PARTS = (
    "APGD-CE (untargeted, cross-entropy loss)",
    "FAB (untargeted; FAB-T needs a third class)",
    "Square (black-box, margin loss)",
)
_AUTOATTACK_KEYS = ("apgd_steps", "apgd_restarts", "fab_steps", "square_queries")
PGD_STEP_FACTOR = 2.5  # PGD step size = 2.5 * eps / steps (Madry et al. 2018)

AttackBuilder = Callable[[nn.Module, float, Mapping[str, Any], int], Attack]
Describer = Callable[[float | None, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class AttackKind:
    """One attack of the table: its builder, the profile keys that size it and a paragraph for the book.

    ``build(model, eps, settings, seed)`` returns the torchattacks object; ``budgeted`` says whether it has an
    L-inf budget ``eps`` (CW minimises the L2 size itself and takes none); ``describe``, when given, replaces
    the default record of ``parameters``.
    """

    name: str
    build: AttackBuilder
    settings_keys: tuple[str, ...]
    budgeted: bool
    about: str
    describe: Describer | None = None

    def parameters(self, eps: float | None, settings: Mapping[str, Any]) -> dict[str, Any]:
        """What ran, for cache keys, ``metrics.json`` and the book: by default the budget and the settings read."""
        if self.describe is not None:
            return self.describe(eps, settings)
        return {**({"eps": eps} if self.budgeted else {}), **{key: settings[key] for key in self.settings_keys}}


ATTACKS: dict[str, AttackKind] = {}


def register_attack(name: str, *, settings_keys: Sequence[str], budgeted: bool, about: str,
                    parameters: Describer | None = None) -> Callable[[AttackBuilder], AttackBuilder]:
    """Decorator: enter the builder below it in ``ATTACKS`` as ``name`` (see ``AttackKind`` for the rest).

    Raises:
        ValueError: ``name`` is taken (its cached outcomes would be mistaken for the new attack's).
    """
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")

    def register(build: AttackBuilder) -> AttackBuilder:
        ATTACKS[name] = AttackKind(name, build, tuple(settings_keys), budgeted, about, parameters)
        return build

    return register


def budgeted_attacks() -> tuple[str, ...]:
    """Names of the attacks with an L-inf budget, in table order."""
    return tuple(name for name, kind in ATTACKS.items() if kind.budgeted)


@register_attack("fgsm", settings_keys=(), budgeted=True, about=(
    "FGSM, the fast gradient sign method (Goodfellow, Shlens & Szegedy 2015): one step of size eps along the "
    "sign of the loss gradient, so every pixel moves by exactly eps (then clipped to [0, 1])."))
def _fgsm(model: nn.Module, eps: float, settings: Mapping[str, Any], seed: int) -> Attack:
    return torchattacks.FGSM(model, eps=eps)


@register_attack("pgd", settings_keys=("pgd_steps",), budgeted=True, about=(
    "PGD, projected gradient descent (Madry et al. 2018): iterated gradient-sign steps of 2.5 eps / steps from a "
    "random start inside the L-inf ball of radius eps, each projected back into the ball."),
    parameters=lambda eps, settings: {"eps": eps, "steps": settings["pgd_steps"],
                                      "step_size": PGD_STEP_FACTOR * eps / settings["pgd_steps"],
                                      "random_start": True})
def _pgd(model: nn.Module, eps: float, settings: Mapping[str, Any], seed: int) -> Attack:
    steps = settings["pgd_steps"]
    return torchattacks.PGD(model, eps=eps, alpha=PGD_STEP_FACTOR * eps / steps, steps=steps, random_start=True)


@register_attack("autoattack", settings_keys=_AUTOATTACK_KEYS, budgeted=True, about=(
    "AutoAttack (Croce & Hein 2020), the parameter-free ensemble used to compare robust models, in the "
    "two-class form its authors document: APGD-CE, then FAB, then the black-box Square attack, each run on the "
    "images the previous ones did not break; the targeted parts and the DLR loss need a third class."),
    parameters=lambda eps, settings: {"eps": eps, "sub_attacks": list(AUTOATTACK_PARTS),
                                      **{key: settings[key] for key in _AUTOATTACK_KEYS}})
def two_class_autoattack(model: nn.Module, eps: float, settings: Mapping[str, Any],
                         seed: int = 0) -> torchattacks.MultiAttack:
    """AutoAttack for two-logit models: APGD-CE, then FAB, then Square, each on the survivors of the last."""
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=settings["apgd_steps"],
                          n_restarts=settings["apgd_restarts"], loss="ce", seed=seed),
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=settings["fab_steps"], n_restarts=1,
                         multi_targeted=False, n_classes=2, seed=seed),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=settings["square_queries"], n_restarts=1,
                            loss="margin", seed=seed),
    ])


@register_attack("cw", settings_keys=("cw_steps", "cw_c", "cw_lr"), budgeted=False, about=(
    "Carlini-Wagner L2 (Carlini & Wagner 2017): Adam on a change of variables that keeps images in [0, 1], "
    "minimising the L2 size of the perturbation plus c times a margin loss (confidence kappa = 0); it has no "
    "L-inf budget and makes the smallest change it can find."),
    parameters=lambda eps, settings: {"c": settings["cw_c"], "kappa": 0, "steps": settings["cw_steps"],
                                      "lr": settings["cw_lr"]})
def _cw(model: nn.Module, eps: float, settings: Mapping[str, Any], seed: int) -> Attack:
    return torchattacks.CW(model, c=settings["cw_c"], kappa=0, steps=settings["cw_steps"], lr=settings["cw_lr"])


def make_attack(name: str, model: nn.Module, eps: float, settings: Mapping[str, Any],
                seed: int = 0) -> Attack:
    """The torchattacks object for ``name`` at L-inf budget ``eps``, sized by the profile ``settings``.

    ``settings`` needs the attack's ``settings_keys``; ``eps`` is ignored by attacks without a budget (CW).

    Raises:
        ValueError: unknown attack name or a budget outside [0, 1].
    """
    return _kind(name, eps).build(model, eps, settings, seed)


def attack_parameters(name: str, eps: float | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What ran, for ``metrics.json`` and the book: the settings ``make_attack`` uses for ``name``.

    Raises:
        ValueError: unknown attack name or a budget outside [0, 1].
    """
    return _kind(name, eps).parameters(eps, settings)


def _kind(name: str, eps: float | None) -> AttackKind:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if eps is not None and not 0 <= eps <= 1:
        raise ValueError(f"eps={eps} is not in [0, 1]: budgets are in pixel units of images in [0, 1] (2/255 ~ 0.0078)")
    return ATTACKS[name]


def changed_images(clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """Mask of the images an attack changed (torchattacks returns an image unchanged when it fails)."""
    return (adversarial != clean).flatten(1).any(1)


@dataclass
class AttackOutcome:
    """Clean and adversarial images of one attack on one set of images, with the model's predictions."""

    attack: str
    epsilon: float | None
    labels: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor
    seconds: float

    @property
    def attacked(self) -> torch.Tensor:
        """Mask of the images that were attacked: those the model classified correctly when clean."""
        return self.clean_pred == self.labels

    @property
    def flipped(self) -> torch.Tensor:
        """Mask of the attacked images whose diagnosis the attack changed."""
        return self.attacked & (self.adv_pred != self.labels)

    @property
    def clean_accuracy(self) -> float:
        return float(self.attacked.float().mean())

    @property
    def robust_correct(self) -> int:
        return int((self.attacked & ~self.flipped).sum())

    @property
    def robust_accuracy(self) -> float:
        return self.robust_correct / len(self.labels)

    def flip_rate(self, true_label: int) -> float:
        """Share of correctly classified images of class ``true_label`` whose diagnosis the attack changed.

        ``flip_rate(1)`` is the Pathology -> Normal rate (missed disease), ``flip_rate(0)`` Normal -> Pathology.
        """
        among = self.attacked & (self.labels == true_label)
        return float((self.flipped & among).sum() / among.sum()) if among.any() else float("nan")

    @property
    def seconds_per_image(self) -> float:
        """Attack time per attacked image on the device it ran on."""
        return self.seconds / max(1, int(self.attacked.sum()))


def evaluate_attack(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | None,
    settings: Mapping[str, Any],
    seed: int = 0,
    device: torch.device | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> AttackOutcome:
    """Attack every correctly classified image of ``(x, y)`` with ``name`` and predict on the results.

    The model is put in eval mode. Each batch is seeded with ``seed`` and its index, so the adversarial
    images are the same on every run with the same inputs, settings and batch size.

    Args:
        x: float images in [0, 1], shape (N, C, H, W); y: int64 labels (0 Normal, 1 Pathology).
        eps: L-inf budget in [0, 1] pixel units (None for CW, which takes none).
    """
    device = device or next(model.parameters()).device
    model.eval().to(device)
    clean_pred = predict_labels(model, x, device, batch_size)
    adversarial = x.clone()
    todo = torch.nonzero(clean_pred == y).flatten()
    attack = make_attack(name, model, eps or 0.0, settings, seed)
    seconds = 0.0
    for number, start in enumerate(tqdm(range(0, len(todo), batch_size), desc=f"{name} eps={_eps_text(eps)}",
                                        disable=not progress, mininterval=5, unit="batch")):
        index = todo[start:start + batch_size]
        torch.manual_seed(seed * 100_003 + number)
        inputs, labels = x[index].to(device), y[index].to(device)
        started = time.perf_counter()
        adversarial[index] = attack(inputs, labels).detach().cpu()
        seconds += time.perf_counter() - started
    adv_pred = clean_pred.clone()
    adv_pred[todo] = predict_labels(model, adversarial[todo], device, batch_size)
    return AttackOutcome(name, eps, y.clone(), clean_pred, adv_pred, x, adversarial, seconds)


def evaluate_attack_cached(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, *, eps: float | None,
                           settings: Mapping[str, Any], seed: int = 0, batch_size: int = 32,
                           **run: Any) -> tuple[AttackOutcome, bool]:
    """``evaluate_attack`` through the artefact cache: ``(outcome, cache_hit)``; ``run`` passes ``device`` and
    ``progress`` on.

    The key holds the model's weights, the images, labels, attack settings, seed, batch size and the
    code of this module, so an interrupted chapter resumes at the first attack it had not finished,
    and later chapters reuse the same adversarial images. ``seconds`` stays the time of the first run.
    """
    parts = {"model": cache.tensor_fingerprint(model.state_dict()), "images": cache.tensor_fingerprint(x, y),
             "attack": name, "parameters": attack_parameters(name, eps, settings), "seed": seed,
             "batch_size": batch_size, "code": cache.code_fingerprint("attacks"),
             "torchattacks": torchattacks.__version__}

    def produce(folder: Path) -> None:
        if (folder / "outcome.pt").is_file():
            return  # attacked to the end by a run killed before the marker: outcome.pt is whole (written atomically)
        outcome = evaluate_attack(model, name, x, y, eps=eps, settings=settings, seed=seed, batch_size=batch_size,
                                  **run)
        cache.torch_save_atomic({"adversarial": outcome.adversarial, "clean_pred": outcome.clean_pred,
                                 "adv_pred": outcome.adv_pred, "seconds": outcome.seconds}, folder / "outcome.pt")

    folder, hit = cache.cached("attack", parts, produce)
    saved = torch.load(folder / "outcome.pt")
    return AttackOutcome(name, eps, y.clone(), saved["clean_pred"], saved["adv_pred"], x, saved["adversarial"],
                         saved["seconds"]), hit


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """Predicted class (0 Normal, 1 Pathology) of every image of ``x``."""
    preds = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def quantized_accuracy(model: nn.Module, outcome: AttackOutcome, device: torch.device | None = None) -> float:
    """Robust accuracy after saving the adversarial images as 8-bit images (rounding to 1/255 steps).

    An attack has to survive this to reach a reader as a PNG or an 8-bit DICOM.
    """
    device = device or next(model.parameters()).device
    rounded = torch.round(outcome.adversarial * 255) / 255
    pred = outcome.clean_pred.clone()
    attacked = outcome.attacked
    pred[attacked] = predict_labels(model, rounded[attacked], device)
    return float(((pred == outcome.labels) & attacked).float().mean())


def _eps_text(eps: float | None) -> str:
    return "none" if eps is None else f"{np.round(eps * 255, 2):g}/255"
