"""Chapter 4's evaluation of generated images: the feature spaces, the check that a space is fit to judge
images, the feature vectors quality is measured on (at the end of training and along it), the quality figures,
and the memorisation audit. Chapter 4's steps (``steps.synthetic_images``) call them per data set and generator.

Every result is keyed by data set label and, where it has one, by generator kind: ``{(label, kind): ...}``.
Records, tables and figures of these results are built by ``reporting.synthetic_images``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import cache, generative, metrics
from .data import ImageSet

Tensors = tuple[torch.Tensor, torch.Tensor]
Space = tuple[nn.Module, str]
HELDOUT = "test"  # the features key of the held-out real test images
FLOOR = "real train (floor)"  # real training images in a generator's place: the best any generator could do
CLASSES = (0, 1)
QUALITY_TARGETS = {"precision": (0.5, True), "recall": (0.3, True), "diversity": (0.8, True),
                   "machine_reader_accuracy": (0.70, False)}  # per class: (bound, higher is better)
READER_TARGETED = ("dcgan", "ddpm")  # ProGAN is held to the other three
TREND_HORIZON = 1000  # steps_to_reach looks no further than this many times the steps run


def quality_targets(generator: str) -> dict[str, tuple[float, bool]]:
    """The per-class quality targets a generator is held to: precision, recall, diversity relative to real, and
    (DC-GAN, DDPM) the machine reader's accuracy."""
    return {m: t for m, t in QUALITY_TARGETS.items() if m != "machine_reader_accuracy" or generator in READER_TARGETED}


def steps_to_reach(steps: list[float], values: list[float], bound: float, higher_is_better: bool) -> str:
    """Where one measure's curve would meet its target: the least-squares line of the measure against log2(steps)
    over the measured points, followed past the last one. A sparse and noisy curve (GANs are not monotone), so an
    indication of the budget, not a promise; a line that does not head for the target says more steps alone will
    not reach it."""
    def met(value: float) -> bool:
        return (value >= bound) if higher_is_better else (value <= bound)

    points = [(s, v) for s, v in zip(steps, values) if s and s > 0 and math.isfinite(v)]
    if not points:
        return "no finite point"
    if met(points[-1][1]):
        return "met"
    if len({s for s, _ in points}) < 2:
        return "one point: no trend"
    slope, intercept = np.polyfit(np.log2([s for s, _ in points]), [v for _, v in points], 1)
    if slope == 0 or (slope > 0) != higher_is_better:
        return f"not heading for it ({slope:+.3f} per doubling of steps)"
    last, crossing = max(s for s, _ in points), (bound - intercept) / slope
    if crossing <= math.log2(last):
        return f"missed at the last point, though the trend line crosses before it ({slope:+.3f} per doubling)"
    if crossing > math.log2(last * TREND_HORIZON):
        return f"beyond {TREND_HORIZON}x the steps run ({slope:+.3f} per doubling)"
    return f"about {2 ** crossing:,.0f} steps ({slope:+.3f} per doubling)"


def quality_figures(real: torch.Tensor, fake: torch.Tensor, *, seed: int) -> dict[str, Any]:
    """FID, KID, precision and recall of the feature vectors ``fake`` against the held-out ``real`` ones."""
    return {**metrics.fid_kid(real, fake, seed=seed), **metrics.precision_recall(real, fake), "n_samples": len(fake)}


def class_figures(real: torch.Tensor, fake: torch.Tensor, *, seed: int) -> dict[str, Any]:
    """Precision, recall, :func:`metrics.diversity` and the machine reader's accuracy
    (:func:`metrics.real_vs_synthetic_accuracy`) of one class's feature vectors ``fake`` against the held-out real
    ones of that class: a class whose samples collapse shows as a number."""
    return {**metrics.precision_recall(real, fake), "diversity": metrics.diversity(real, fake),
            "machine_reader_accuracy": metrics.real_vs_synthetic_accuracy(real, fake, seed=seed),
            "n_samples": len(fake), "n_real": len(real)}


def feature_spaces(name: str, labels: Iterable[str], classifiers: Mapping[str, nn.Module] | None = None,
                   *, inception_weights: str | None = None, seed: int = 0) -> dict[str, Space]:
    """Per data set label, the encoder of feature space ``name`` (``metrics.FEATURE_SPACES``) and its description:
    one shared network, or each data set's own classifier (``classifiers[label]``) for ``"classifier"``.

    Raises:
        ValueError: ``"classifier"`` without a classifier for every label.
    """
    labels = list(labels)
    if name == "classifier":
        missing = [label for label in labels if (classifiers or {}).get(label) is None]
        if missing:
            raise ValueError(f"feature_space 'classifier' needs the chapter-1 classifier of {', '.join(missing)}: "
                             "open the chapter with classifiers=True")
        return {label: metrics.feature_space("classifier", classifier=classifiers[label]) for label in labels}
    shared = metrics.feature_space(name, inception_weights=inception_weights, seed=seed)
    return {label: shared for label in labels}


def reader_features(spaces: Mapping[str, Space], test: Mapping[str, Tensors],
                    samples: Mapping[tuple[str, str], Tensors], chosen: Mapping[str, str], *,
                    device: torch.device) -> dict[tuple[str, str], torch.Tensor]:
    """The feature vectors the reader demonstrations' machine reader rates: each data set's held-out test images
    (key ``HELDOUT``) and the images of its ``chosen`` generator, in its space."""
    found = {}
    for label, (encoder, _) in spaces.items():
        found[label, HELDOUT] = metrics.image_features(encoder, test[label][0], device)
        found[label, chosen[label]] = metrics.image_features(encoder, samples[label, chosen[label]][0], device)
    return found


def feature_check(sets: Mapping[str, ImageSet], train: Mapping[str, Tensors], test: Mapping[str, Tensors],
                  spaces: Mapping[str, Space], classifiers: Mapping[str, nn.Module], settings: Mapping[str, Any], *,
                  seed: int, device: torch.device) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``metrics.degradation_fids`` rows per data set and feature space (its description), in the chosen space
    and the classifier's: twice ``synthetic_images`` held-out test images, degraded, against as many training
    images, with uniform noise and an untrained DC-GAN's images as sentinels."""
    checks = {}
    for label, images in sets.items():
        pick, n = torch.Generator().manual_seed(seed), 2 * settings["synthetic_images"]
        reference = train[label][0][torch.randperm(len(train[label][0]), generator=pick)[:n]]
        heldout = test[label][0][torch.randperm(len(test[label][0]), generator=pick)[:n]]
        torch.manual_seed(seed)
        untrained = generative.build_generative("dcgan", images.channels, images.size, settings)[0]
        sentinels = {"uniform noise": torch.rand(heldout.shape, generator=pick),
                     "untrained DC-GAN": generative.sample(untrained, len(heldout), seed=seed, device=device)}
        compared = {about: encoder for encoder, about in
                    (spaces[label], metrics.feature_space("classifier", classifier=classifiers[label]))}
        for about, encoder in compared.items():
            checks[label, about] = metrics.degradation_fids(encoder, reference, heldout, device, sentinels, seed=seed)
    return checks


def training_seconds(histories: Mapping[tuple[str, str, int], list[dict[str, Any]]], label: str,
                     kind: str) -> float | None:
    """Seconds spent training both classes' ``kind`` generators of data set ``label`` (None: no such generator)."""
    if (label, kind, CLASSES[0]) not in histories:
        return None
    return sum(epoch["seconds"] for c in CLASSES for epoch in histories[label, kind, c])


def _drawn(generators: Mapping[int, nn.Module], per_class: int, *, seed: int, device: torch.device,
           ddim_steps: int) -> dict[str, Any]:
    """``generative.sample_labelled`` of ``per_class`` images of each class in ``generators``, memoised."""
    def draw() -> dict[str, Any]:
        started = time.perf_counter()
        x, y = generative.sample_labelled(generators, {c: per_class for c in generators}, seed=seed, device=device,
                                          ddim_steps=ddim_steps, progress=True)
        return {"images": x, "labels": y, "seconds": time.perf_counter() - started}

    parts = {"generators": {c: cache.module_fingerprint(g) for c, g in generators.items()},
             "per_class": per_class, "seed": seed, "ddim_steps": ddim_steps, "device": device.type,
             "code": cache.code_fingerprint("generative")}
    return cache.memoised("samples", parts, draw)[0]


def curve_features(sets: Mapping[str, ImageSet], spaces: Mapping[str, Space],
                   curves: Mapping[tuple[str, str, int], list[tuple[int, Path]]],
                   histories: Mapping[tuple[str, str, int], list[dict[str, Any]]],
                   samples: Mapping[tuple[str, str], Tensors], settings: Mapping[str, Any], *, per_class: int,
                   seed: int, device: torch.device) -> dict[tuple[str, str, int], list[tuple[int, torch.Tensor]]]:
    """Feature vectors of ``per_class`` images of each class at every point of its generator's training curve:
    each snapshot of :func:`train_generators` sampled now (with the class's seed, as :func:`sample_generators`),
    and the trained generator, whose first ``per_class`` images of ``samples`` serve, so every point is judged on
    as many images.

    Returns:
        ``{(label, kind, class): [(optimiser steps, features)]}``, in order of steps.
    """
    found = {}
    for (label, kind, c), snapshots in curves.items():
        images, (encoder, _) = sets[label], spaces[label]
        points = []
        for step, weights in snapshots:
            model = generative.load_generator(kind, images.channels, images.size, settings, weights, device)
            x = _drawn({c: model}, per_class, seed=seed, device=device, ddim_steps=settings["ddim_steps"])["images"]
            points.append((step, metrics.image_features(encoder, x, device)))
        x, y = samples[label, kind]
        points.append((histories[label, kind, c][-1]["step"], metrics.image_features(encoder, x[y == c][:per_class],
                                                                                   device)))
        found[label, kind, c] = points
    return found


def quality_features(spaces: Mapping[str, Space], train: Mapping[str, Tensors], test: Mapping[str, Tensors],
                     samples: Mapping[tuple[str, str], Tensors], *, n_floor: int, seed: int,
                     device: torch.device) -> dict[tuple[str, str], torch.Tensor]:
    """Feature vectors of each data set's held-out test images (key ``HELDOUT``), of ``n_floor`` random training
    images (``FLOOR``) and of every generator's images, each in its data set's space.

    Returns:
        ``{(label, HELDOUT | FLOOR | kind): features}``, a data set's floor and generators in sample order.
    """
    features = {}
    for label, (encoder, _) in spaces.items():
        features[label, HELDOUT] = metrics.image_features(encoder, test[label][0], device)
        floor = train[label][0][_floor_pick(len(train[label][0]), n_floor, seed)]
        judged = {FLOOR: floor, **{kind: x for (of, kind), (x, _) in samples.items() if of == label}}
        for kind, x in judged.items():
            features[label, kind] = metrics.image_features(encoder, x, device)
    return features


def quality_labels(train: Mapping[str, Tensors], test: Mapping[str, Tensors],
                   samples: Mapping[tuple[str, str], Tensors], *, n_floor: int,
                   seed: int) -> dict[tuple[str, str], torch.Tensor]:
    """The class of every feature vector of :func:`quality_features` (same keys, same order), so quality can be
    judged per class: a generator pair can be fine for one class and collapsed for the other."""
    labels = {}
    for label in test:
        labels[label, HELDOUT] = test[label][1]
        labels[label, FLOOR] = train[label][1][_floor_pick(len(train[label][1]), n_floor, seed)]
    labels.update({(label, kind): y for (label, kind), (_, y) in samples.items()})
    return labels


def _floor_pick(n: int, n_floor: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_floor]


def memorisation_audits(spaces: Mapping[str, Space], train: Mapping[str, Tensors], test: Mapping[str, Tensors],
                        samples: Mapping[tuple[str, str], Tensors], features: Mapping[tuple[str, str], torch.Tensor],
                        *, device: torch.device) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``metrics.memorisation_audit`` of every generator's images against its data set's training images, with
    the held-out test images as the yardstick, in the feature space (``features``, from
    :func:`quality_features`) and in pixel space.

    Returns:
        ``{(label, kind, "features" | "pixels"): audit}``.
    """
    audits = {}
    for label, (encoder, _) in spaces.items():
        train_x, test_x = train[label][0], test[label][0]
        train_features = metrics.image_features(encoder, train_x, device)
        for kind, synthetic in [(kind, x) for (of, kind), (x, _) in samples.items() if of == label]:
            vectors = {"features": (train_features, features[label, HELDOUT], features[label, kind]),
                       "pixels": (train_x.flatten(1), test_x.flatten(1), synthetic.flatten(1))}
            for space, (train_v, heldout_v, synthetic_v) in vectors.items():
                audits[label, kind, space] = metrics.memorisation_audit(train_v, heldout_v, synthetic_v)
    return audits
