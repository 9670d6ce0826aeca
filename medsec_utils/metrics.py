"""Classification metrics with 95 % confidence intervals, and the size of image perturbations.

Accuracy gets a Wilson score interval (a binomial proportion); balanced accuracy and AUC get a
percentile bootstrap that resamples within each class, so every resample keeps both classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

Z95 = float(norm.ppf(0.975))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not off by rounding
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, score: np.ndarray,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, score)``, resampling within each class."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == label) for label in np.unique(y_true)]
    values = np.empty(n_boot)
    for b in range(n_boot):
        index = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        values[b] = metric(y_true[index], score[index])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def binary_report(
    y_true: np.ndarray, p_pathology: np.ndarray, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
) -> dict[str, object]:
    """Accuracy, balanced accuracy, AUC (each with a 95 % CI), sensitivity, specificity, confusion matrix."""
    y_true = np.asarray(y_true).astype(int)
    p_pathology = np.asarray(p_pathology, dtype=float)
    pred = (p_pathology >= threshold).astype(int)
    n = len(y_true)
    correct = int((pred == y_true).sum())
    matrix = confusion_matrix(y_true, pred, labels=[0, 1])
    both = len(np.unique(y_true)) == 2
    report: dict[str, object] = {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci": wilson_interval(correct, n),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)) if both else float("nan"),
        "balanced_accuracy_ci": bootstrap_interval(balanced_accuracy_score, y_true, pred, n_boot, seed)
        if both else (float("nan"), float("nan")),
        "auc": float(roc_auc_score(y_true, p_pathology)) if both else float("nan"),
        "auc_ci": bootstrap_interval(roc_auc_score, y_true, p_pathology, n_boot, seed)
        if both else (float("nan"), float("nan")),
        "sensitivity": float(matrix[1, 1] / max(1, matrix[1].sum())),
        "specificity": float(matrix[0, 0] / max(1, matrix[0].sum())),
        "confusion_matrix": matrix.tolist(),
    }
    return report


def roc_points(y_true: np.ndarray, p_pathology: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(y_true, p_pathology)
    return fpr, tpr


def perturbation_sizes(clean: torch.Tensor, adversarial: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image size of ``adversarial - clean`` (images in [0, 1]): L-inf, L2, PSNR (dB) and SSIM.

    PSNR and SSIM come from torchmetrics (data range 1, SSIM with its 11-px Gaussian window); an image
    left unchanged has PSNR ``inf`` and SSIM 1.
    """
    if len(clean) == 0:
        return {key: np.zeros(0) for key in ("linf", "l2", "psnr", "ssim")}
    clean, adversarial = clean.double(), adversarial.double()
    delta = (adversarial - clean).flatten(1)
    psnr = peak_signal_noise_ratio(adversarial, clean, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(adversarial, clean, data_range=1.0, reduction="none")
    return {"linf": delta.abs().amax(1).numpy(), "l2": delta.norm(dim=1).numpy(), "psnr": psnr.numpy(),
            "ssim": ssim.numpy()}
