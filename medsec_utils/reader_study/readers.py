"""Readers that are not people, and the chapter's demonstration of the scoring before any human has read a kit.

:func:`simulate_reader` rates cases like a reader of a set ROC AUC (binormal, equal variance);
:func:`machine_reader` is a cross-validated logistic regression on image features that tells real from synthetic.
Both answer in the reader app's format (:data:`.scoring.COLUMNS`), so the same scoring applies to them.
:func:`demonstrate` builds a kit and scores :data:`SIMULATED_READERS` and the machine reader on it; these
readers are demonstrations only and are labelled as such wherever they are reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .kit import build_reader_study
from .scoring import CONFIDENCE, pooled_auc, readers_agreement, score_readers

if TYPE_CHECKING:
    from ..data import ImageSet

SIMULATED_READERS = {"simulated A": 0.75, "simulated B": 0.65, "simulated C": 0.5}  # name -> ROC AUC
MACHINE_READER = "machine (logistic regression)"
CUTS = np.array([-1.5, -0.5, 0.5, 1.5])  # latent-score cuts between the five ratings, around the midpoint d'/2


def _answers(key: pd.DataFrame, name: str, confidence: np.ndarray) -> pd.DataFrame:
    """Ratings in the reader app's answer format, without seconds."""
    return pd.DataFrame({"reader": name, "case": key["case"].to_numpy(), "confidence": confidence.astype(int),
                         "seconds": np.nan})


def simulate_reader(key: pd.DataFrame, *, auc: float, seed: int, name: str) -> pd.DataFrame:
    """Ratings of a simulated reader whose latent score has ROC AUC ``auc``, in the answer format.

    Binormal model with equal variance: the latent score is N(d', 1) for synthetic cases and N(0, 1) for real
    ones, d' = sqrt(2) * Phi^-1(auc), cut at d'/2 + (-1.5, -0.5, 0.5, 1.5) into ratings 1 to 5, so 'unsure'
    (3) covers the unit around the midpoint between the two classes. Binning into five levels loses a little:
    the expected AUC of the ratings is 0.733 for ``auc`` = 0.75 and 0.639 for 0.65 (0.5 stays 0.5).
    """
    synthetic = (key["truth"] == "synthetic").to_numpy()
    separation = np.sqrt(2) * norm.ppf(auc)
    latent = np.random.default_rng(seed).normal(size=len(key)) + separation * synthetic
    return _answers(key, name, min(CONFIDENCE) + np.searchsorted(separation / 2 + CUTS, latent))


def machine_reader(key: pd.DataFrame, real_features: np.ndarray, synthetic_features: np.ndarray, *, seed: int,
                   folds: int = 5) -> pd.DataFrame:
    """A logistic regression on image features that tells real from synthetic, as a reader of the kit.

    Each case is rated by a model that never saw it (``folds``-fold cross-validation), so its score is an honest
    estimate of how separable the two sets are in that feature space. Its P(synthetic) becomes a rating by
    fifths: [0, 0.2) is 1 (definitely real), ..., [0.8, 1] is 5 (definitely synthetic).
    """
    sets = {"real": np.asarray(real_features), "synthetic": np.asarray(synthetic_features)}
    features = np.stack([sets[truth][index] for truth, index in zip(key["truth"], key["source_index"])])
    labels = (key["truth"] == "synthetic").to_numpy().astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p_synthetic = cross_val_predict(model, features, labels, method="predict_proba",
                                    cv=StratifiedKFold(folds, shuffle=True, random_state=seed))[:, 1]
    return _answers(key, MACHINE_READER, 1 + np.minimum(np.floor(p_synthetic * 5), 4))


@dataclass
class Demonstration:
    """A data set's kit (``paths`` as :func:`.kit.build_reader_study` gives them, and its ``key``) made with the
    images of ``generator``; the ``answers`` of :data:`SIMULATED_READERS` and the machine reader, by name, and
    their ``scores``; the simulated readers' ``pooled`` AUC (:func:`.scoring.pooled_auc`) and their Fleiss'
    kappa on the five ratings (``agreement``)."""

    generator: str
    paths: dict[str, Path]
    key: pd.DataFrame
    answers: dict[str, pd.DataFrame]
    scores: pd.DataFrame
    pooled: dict
    agreement: float


def demonstrate(real: torch.Tensor, synthetic: torch.Tensor, real_features: torch.Tensor,
                synthetic_features: torch.Tensor, folder: Path | str, *, generator: str, n: int, seed: int,
                reader_seed: int) -> Demonstration:
    """A kit of up to ``n`` real and ``n`` synthetic images (random picks) in ``folder/kit``, its key in
    ``folder/sealed_key``, rated by :data:`SIMULATED_READERS` (seeds from ``reader_seed``) and by
    :func:`machine_reader` on the images' feature vectors, and scored (bootstraps seeded with ``seed``).

    The kit is shuffled from the operating system's randomness (it may go to real readers), and the key is
    put back in image order before anyone reads it, so the demonstration's figures depend on the seeds only."""
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
    fake = torch.randperm(len(synthetic), generator=torch.Generator().manual_seed(seed + 1))[:n]
    folder = Path(folder)
    paths = build_reader_study(real[pick], synthetic[fake], folder / "kit", folder / "sealed_key")
    key = pd.read_csv(paths["key"], dtype={"case": str, "truth": str}).sort_values(["truth", "source_index"])
    simulated = {who: simulate_reader(key, auc=auc, seed=reader_seed + i, name=who)
                 for i, (who, auc) in enumerate(SIMULATED_READERS.items())}
    machine = machine_reader(key, real_features[pick].numpy(), synthetic_features[fake].numpy(), seed=seed)
    answers = {**simulated, MACHINE_READER: machine}
    return Demonstration(generator, paths, key, answers, score_readers(key, answers, seed=seed),
                         pooled_auc(key, simulated, seed=seed), readers_agreement(key, simulated))


def demonstrations(sets: Mapping[str, ImageSet], test: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   samples: Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor]],
                   features: Mapping[tuple[str, str], torch.Tensor], generators: Mapping[str, str],
                   kit_root: Path | str, *, n: int, seed: int) -> dict[str, Demonstration]:
    """:func:`demonstrate` for every data set, with its test images and the images of its ``generators[label]``
    (``samples`` and ``features`` as ``synthetic_eval`` keys them), the kit in ``kit_root/<data set name>``."""
    from ..synthetic_eval import HELDOUT  # here, not at the top: scoring a study must not load the generators

    shown = {}
    for index, (label, images) in enumerate(sets.items()):
        kind = generators[label]
        shown[label] = demonstrate(test[label][0], samples[label, kind][0], features[label, HELDOUT],
                                   features[label, kind], Path(kit_root) / images.name, generator=kind, n=n,
                                   seed=seed, reader_seed=seed + 10 * index)
        print(f"{label}: kit of {len(shown[label].key)} images ({kind}) in {shown[label].paths['kit']}")
    return shown
