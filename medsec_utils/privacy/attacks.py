"""Membership-inference attacks, one entry each in ``MEMBERSHIP_ATTACKS`` (as torchattacks has one class per
attack): each maps what its attacker observes to one score per queried image, higher for "was in the training set".

- ``loss`` (Yeom, Giacomelli, Fredrikson & Jha, CSF 2018): the classifier's loss on the image, negated. Needs the
  model's output and the true label.
- ``lira`` (Carlini et al., IEEE S&P 2022): the likelihood-ratio test on the logit-scaled confidence of the true
  class, against Gaussians fitted to shadow models that did (online) or did not (offline) train on the image. With
  few shadow models the variance is one for all images, as the paper recommends below 64 shadow models.
- ``gan_leaks`` (Chen, Yu, Zhang & Fritz, *GAN-Leaks*, ACM CCS 2020, full black-box): the distance from the image
  to its nearest generated sample, negated; calibrated by the distance to the nearest sample of a reference (a
  generator that never saw the image, or images of the same population), which cancels how typical the image is.
- ``denoising_error`` (Matsumoto, Miura & Yanai, IEEE SPW 2023; calibrated as Zhao et al. 2025 do against a
  reference model): a DDPM's noise-prediction error on the image at chosen noise levels, negated. White-box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm

from ..generative._plumbing import to_model_range


@dataclass(frozen=True)
class MembershipAttack:
    """One attack: ``score(...) -> one float per queried image`` (higher: member), what it attacks and what its
    attacker must observe, in words for the page."""

    name: str
    target: str
    observes: str
    score: Callable[..., np.ndarray]


MEMBERSHIP_ATTACKS: dict[str, MembershipAttack] = {}


def _register(name: str, target: str, observes: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    def add(score: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        MEMBERSHIP_ATTACKS[name] = MembershipAttack(name, target, observes, score)
        return score
    return add


def true_class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Carlini et al.'s logit-scaled confidence log(p_y / (1 - p_y)) = z_y - logsumexp(z_other), computed from
    the logits so that it stays finite where p_y rounds to 1."""
    logits = logits.double()
    own = logits.gather(1, labels[:, None].long()).squeeze(1)
    others = logits.scatter(1, labels[:, None].long(), float("-inf"))
    return (own - torch.logsumexp(others, dim=1)).numpy()


@_register("loss", "classifier", "the model's output on the image and its true label")
def loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Minus the cross-entropy of each image: a model fits its training images better than unseen ones. Computed as
    -log(1 + exp(-confidence)) so that losses far below float precision of the logits stay apart (no ties at 0)."""
    return -F.softplus(-torch.from_numpy(true_class_confidence(logits, labels))).numpy()


@_register("lira", "classifier", "the model's output and true label, and shadow models trained like it")
def lira_scores(logits: torch.Tensor, labels: torch.Tensor, shadow_logits: torch.Tensor, shadow_in: np.ndarray, *,
                online: bool = False, fixed_variance: bool = True, used: np.ndarray | None = None) -> np.ndarray:
    """LiRA: per image, how much likelier its confidence is under the shadow models that trained on it than under
    those that did not (online), or how far it lies above the latter (offline: log P(confidence of an OUT model
    <= observed)).

    With few shadow models, every image should rest on as many IN as OUT models (``used``; see
    :func:`balanced_shadows`): a Gaussian mean estimated from fewer models is further from a new model's
    confidence, so an image with 1 IN and 2 OUT models scores lower than one with 2 IN and 1 OUT with no membership
    signal at all (AUC 0.31 and 8 % TPR at 1 % FPR on four untrained models, pooled; ``tests/test_privacy.py``).

    Args:
        logits, labels: the target model's logits ``(n, classes)`` on the queried images and their labels.
        shadow_logits: ``(shadow models, n, classes)``, each shadow model's logits on the same images.
        shadow_in: bool ``(shadow models, n)``, whether each shadow model trained on each image.
        used: bool ``(shadow models, n)``, which shadow model counts for which image (None: all).

    Raises:
        ValueError: an image without a shadow model that left it out (or, online, one that trained on it).
    """
    shadow_in = np.asarray(shadow_in, bool)
    if shadow_in.shape != tuple(shadow_logits.shape[:2]):
        raise ValueError(f"shadow_in has shape {shadow_in.shape}; it must be (shadow models, images) = "
                         f"{tuple(shadow_logits.shape[:2])}")
    used = np.ones_like(shadow_in) if used is None else np.asarray(used, bool)
    observed = true_class_confidence(logits, labels)
    shadow = np.stack([true_class_confidence(z, labels) for z in shadow_logits])
    out_mean, out_std = _gaussian(shadow, ~shadow_in & used, fixed_variance, "left it out")
    if not online:
        return norm.logcdf(observed, out_mean, out_std)
    in_mean, in_std = _gaussian(shadow, shadow_in & used, fixed_variance, "trained on it")
    return norm.logpdf(observed, in_mean, in_std) - norm.logpdf(observed, out_mean, out_std)


def balanced_shadows(shadow_in: np.ndarray, per_side: int, seed: int = 0) -> np.ndarray:
    """Bool ``(shadow models, n)``: for every image, ``per_side`` shadow models that trained on it and as many that
    did not, drawn at random (seeded) from those it has; an image with fewer on a side gets none at all."""
    shadow_in = np.asarray(shadow_in, bool)
    rng = np.random.default_rng(seed)
    used = np.zeros_like(shadow_in)
    for column in range(shadow_in.shape[1]):
        inside, outside = np.flatnonzero(shadow_in[:, column]), np.flatnonzero(~shadow_in[:, column])
        if min(len(inside), len(outside)) >= per_side:
            used[rng.choice(inside, per_side, replace=False), column] = True
            used[rng.choice(outside, per_side, replace=False), column] = True
    return used


def _gaussian(values: np.ndarray, chosen: np.ndarray, fixed_variance: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    counts = chosen.sum(0)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} image(s) have no shadow model that {what}; train more shadow "
                         "models (each on a random half of the pool)")
    mean = np.where(chosen, values, 0.0).sum(0) / counts
    deviations = np.where(chosen, values - mean, 0.0)
    if fixed_variance or (counts < 2).any():
        std = np.full_like(mean, np.sqrt((deviations ** 2).sum() / max(chosen.sum() - 1, 1)))
    else:
        std = np.sqrt((deviations ** 2).sum(0) / (counts - 1))
    return mean, np.maximum(std, 1e-8)


def nearest_distances(queries: torch.Tensor, samples: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Euclidean distance in pixel space from each query image to its nearest sample."""
    flat = samples.flatten(1).double()
    return np.concatenate([torch.cdist(queries[i:i + batch_size].flatten(1).double(), flat).min(1).values.numpy()
                           for i in range(0, len(queries), batch_size)])


@_register("gan_leaks", "generator", "generated samples only (and a reference set for the calibration)")
def gan_leaks_scores(queries: torch.Tensor, generated: torch.Tensor,
                     reference: torch.Tensor | None = None) -> np.ndarray:
    """Minus the distance to the nearest generated sample, plus the distance to the nearest ``reference`` image
    when given (the calibrated attack)."""
    scores = -nearest_distances(queries, generated)
    return scores if reference is None else scores + nearest_distances(queries, reference)


@_register("denoising_error", "ddpm", "the DDPM's noise predictor (white-box)")
def denoising_error_scores(unet: torch.nn.Module, queries: torch.Tensor, timesteps: Sequence[int], *, draws: int = 4,
                           seed: int = 0, reference: torch.nn.Module | None = None, batch_size: int = 64,
                           device: torch.device | None = None) -> np.ndarray:
    """Minus the mean squared error of the noise ``unet`` predicts for each image noised to each of ``timesteps``
    (``draws`` seeded noises each, the same for every model), as in its training loss; minus the same error of
    ``reference`` when given (the calibrated attack)."""
    from diffusers import DDPMScheduler

    from ..generative.ddpm import DDPM_SCHEDULE, DDPM_TIMESTEPS

    if not timesteps or min(timesteps) < 0 or max(timesteps) >= DDPM_TIMESTEPS:
        raise ValueError(f"timesteps {list(timesteps)}: give noise levels in 0..{DDPM_TIMESTEPS - 1}")
    scheduler = DDPMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE)
    device = device or torch.device("cpu")

    @torch.no_grad()
    def errors(model: torch.nn.Module) -> np.ndarray:
        model.to(device).eval()
        rng = torch.Generator().manual_seed(seed)
        total = torch.zeros(len(queries), dtype=torch.float64)
        for t in timesteps:
            for _ in range(draws):
                noise = torch.randn(queries.shape, generator=rng)
                for i in range(0, len(queries), batch_size):
                    clean = to_model_range(queries[i:i + batch_size])
                    level = torch.full((len(clean),), int(t))
                    noisy = scheduler.add_noise(clean, noise[i:i + batch_size], level)
                    predicted = model(noisy.to(device), level.to(device)).sample.float().cpu()
                    total[i:i + batch_size] += (predicted - noise[i:i + batch_size]).pow(2).flatten(1).mean(1).double()
        return (total / (len(timesteps) * draws)).numpy()

    scores = -errors(unet)
    return scores if reference is None else scores + errors(reference)
