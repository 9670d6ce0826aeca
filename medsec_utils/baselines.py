"""The classical baseline of the replacement experiment: LBP texture histograms + a Random Forest.

Uniform local binary patterns (Ojala et al. 2002, scikit-image) at radii 1, 2 and 3 with 8 neighbours
each give a 10-bin histogram per radius; a class-balanced scikit-learn Random Forest classifies the
concatenated 30-bin vector.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import local_binary_pattern
from sklearn.ensemble import RandomForestClassifier

LBP_RADII = (1, 2, 3)
LBP_POINTS = 8


def lbp_histograms(images: torch.Tensor) -> np.ndarray:
    """``(N, 30)`` normalised uniform-LBP histograms of images in [0, 1] (colour is averaged to grey)."""
    grey = (images.float().mean(1) * 255).round().to(torch.uint8).numpy()
    bins = LBP_POINTS + 2  # P + 1 uniform patterns and one bin for all others
    rows = []
    for image in grey:
        histograms = [np.bincount(local_binary_pattern(image, LBP_POINTS, radius, "uniform").astype(int).ravel(),
                                  minlength=bins) for radius in LBP_RADII]
        rows.append(np.concatenate(histograms) / image.size)
    return np.asarray(rows, dtype=np.float64).reshape(len(grey), bins * len(LBP_RADII))


def train_lbp_forest(images: torch.Tensor, labels: torch.Tensor, *, seed: int,
                     n_trees: int = 300) -> RandomForestClassifier:
    """A class-balanced Random Forest on the LBP histograms of ``images``."""
    forest = RandomForestClassifier(n_estimators=n_trees, class_weight="balanced", random_state=seed, n_jobs=-1)
    return forest.fit(lbp_histograms(images), labels.numpy())


def lbp_forest_proba(forest: RandomForestClassifier, images: torch.Tensor) -> np.ndarray:
    """Probability of Pathology for each image."""
    return forest.predict_proba(lbp_histograms(images))[:, list(forest.classes_).index(1)]
