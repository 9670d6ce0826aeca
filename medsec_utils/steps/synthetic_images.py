"""Chapter 4's steps, per data set: the feature-space check; per generator kind and class, the generator with its
images and its quality curve; the replacement experiment, one step per training set (real once; synthetic and
mixed per replacement generator); and last the quality step, which judges every generator's stored images against
the held-out real ones and audits them for copies.

A class step stores what later steps and the page need from its generator: the training history, the weights it
samples with as float16 (a few MB: 0.8 M parameters for the DC-GAN, 0.4 M for ProGAN, 3.2 M for the DDPM's U-Net),
``synthetic_images`` images as uint8 (``generative.sample`` rounds them to 8-bit levels, so nothing is lost) and
the figures of its quality curve; it samples from the float16 weights itself, so every image of the chapter comes
from the stored generator. The quality and replacement steps read those results (``Step.after``), so no step
after a class step needs the artefact cache or trains a generator again, and each fits in one run by the plan.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .. import generative, metrics, replacement, synthetic_eval, training
from ..data import ImageSet
from ..plan import generator_steps
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name
from .classifiers import classifier_need

CLASS_STEPS = {0: "normal", 1: "pathology"}  # a class step's last id part
FEATURE_CHECK, QUALITY, REPLACEMENT = "feature_check", "quality", "replacement"
WEIGHTS = "weights/"  # a class step's arrays of generator weights
FEATURE_PACKAGES = (*CORE_PACKAGES, "torchvision", "torchmetrics", "scikit-learn")
Need = tuple[str, dict[str, Any], dict[str, float]]


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set: the feature check; the replacement experiment's real training set; for each kind of
    ``params["generators"]`` its two class steps and, for a replacement generator, its synthetic and mixed training
    sets right after them; the quality step last."""
    seed, weights = params["seed"], params.get("weights")
    made = []
    for images in sets:
        name = step_name(images)
        classifier, rebuild = classifier_need(images, settings, seed, weights)
        by_classifier = params["feature_space"] == "classifier"
        space = {"feature_space": params["feature_space"], "inception_weights": params.get("inception_weights"),
                 "space_classifier": _without_code(classifier) if by_classifier else None}
        space_modules = ("models", "training") if by_classifier else ()
        space_needs = [rebuild] if by_classifier else []
        inputs = dict(images=images, settings=settings, seed=seed, device=device, weights=weights,
                      nproc=params.get("nproc", 1), feature_space=params["feature_space"],
                      inception_weights=params.get("inception_weights"))
        n_train, n_test = _count(images, "train", settings, seed), _count(images, "test", settings, seed)
        n_check = 2 * settings["synthetic_images"]
        levels = sum(len(levels) for levels in metrics.DEGRADATIONS.values())
        made.append(Step(
            id=f"04_synthetic_images/{name}/{FEATURE_CHECK}",
            parts={"classifier": _without_code(classifier), **space, "n_check": n_check, "seed": seed,
                   "untrained_dcgan": {key: settings[key] for key in generative.GENERATORS["dcgan"].settings_keys}},
            modules=(*data_modules(images), "models", "training", "generative", "metrics", "synthetic_eval"),
            recipe=feature_check_result, inputs=inputs, packages=(*FEATURE_PACKAGES, "timm", "diffusers"),
            units={"features": 2 * n_check * (1 + levels + 2)}, needs=[rebuild]))
        made.append(_real_training_step(images, settings, classifier, rebuild, inputs))
        class_steps = []
        for kind in params["generators"]:
            pair = [_class_step(images, kind, label, settings, space, space_modules, space_needs, inputs, n_test)
                    for label in CLASS_STEPS]
            class_steps += pair
            made += pair
            if kind in settings["replacement_generators"]:
                made += [_replacement_step(images, kind, set_name, pair, settings, inputs, n_train)
                         for set_name in replacement.TRAINING_SETS[1:]]
        made.append(Step(
            id=f"04_synthetic_images/{name}/{QUALITY}",
            parts={**space, "n_floor": 2 * settings["synthetic_images"], "seed": seed,
                   **{key: settings[key] for key in ("max_train_images", "max_eval_images")}},
            modules=(*data_modules(images), "metrics", "synthetic_eval", *space_modules),
            recipe=quality_result, inputs=dict(inputs, kinds=list(params["generators"])), packages=FEATURE_PACKAGES,
            units={"features": n_test + n_train + 2 * settings["synthetic_images"] * (1 + len(params["generators"]))},
            needs=space_needs, after=class_steps))
    return made


def _class_step(images: ImageSet, kind: str, label: int, settings: dict[str, Any], space: dict[str, Any],
                space_modules: tuple[str, ...], space_needs: list[Need], inputs: dict[str, Any], n_test: int) -> Step:
    seed = inputs["seed"]
    n_class = int((images.labels[images.indices("train", settings["max_train_images"], seed)] == label).sum())
    curve = settings["curve_images"]
    return Step(
        id=f"04_synthetic_images/{step_name(images)}/{kind}/{CLASS_STEPS[label]}",
        parts={"generator": _without_code(generative.generator_parts(kind, images, label, settings, seed=seed)),
               **space, **{key: settings[key] for key in ("synthetic_images", "curve_images", "ddim_steps",
                                                          "max_eval_images")}},
        modules=(*data_modules(images), "generative", "metrics", "synthetic_eval", *space_modules),
        recipe=generator_result, inputs=dict(inputs, kind=kind, label=label),
        packages=(*FEATURE_PACKAGES, "diffusers"),
        units={f"{kind}_step": generator_steps(kind, n_class, settings),
               f"{kind}_sample": settings["synthetic_images"] + (generative.CURVE_POINTS - 1) * curve,
               "features": n_test + generative.CURVE_POINTS * curve},
        needs=space_needs)


REPLACEMENT_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "ddim_steps", "rf_trees", "max_train_images",
                    "max_eval_images")


def _real_training_step(images: ImageSet, settings: dict[str, Any], classifier: dict[str, Any], rebuild: Need,
                        inputs: dict[str, Any]) -> Step:
    n_test = _count(images, "test", settings, inputs["seed"])
    return Step(
        id=f"04_synthetic_images/{step_name(images)}/{REPLACEMENT}_real",
        parts={"classifier": _without_code(classifier), **{key: settings[key] for key in REPLACEMENT_KEYS},
               "seed": inputs["seed"]},
        modules=(*data_modules(images), "models", "training", "replacement", "baselines"),
        recipe=real_training_result, inputs=inputs, packages=(*CORE_PACKAGES, "timm", "scikit-learn", "scikit-image"),
        units={"predict": n_test}, needs=[rebuild])


def _replacement_step(images: ImageSet, kind: str, set_name: str, pair: list[Step], settings: dict[str, Any],
                      inputs: dict[str, Any], n_train: int) -> Step:
    """The ``synthetic`` or ``mixed`` training set of one replacement generator: its class steps' stored weights
    sample the synthetic images (shared by both sets within a run through the artefact cache)."""
    n_sets = 1 if set_name == "synthetic" else 2
    return Step(
        id=f"04_synthetic_images/{step_name(images)}/{kind}/{REPLACEMENT}_{set_name}",
        parts={**{key: settings[key] for key in REPLACEMENT_KEYS}, "training_set": set_name, "seed": inputs["seed"]},
        modules=(*data_modules(images), "models", "training", "generative", "replacement", "baselines"),
        recipe=replacement_result, inputs=dict(inputs, kind=kind, set_name=set_name),
        packages=(*CORE_PACKAGES, "timm", "diffusers", "scikit-learn", "scikit-image"),
        units={f"{kind}_sample": n_train, "classifier_train": settings["epochs"] * n_sets * n_train,
               "predict": 2 * _count(images, "test", settings, inputs["seed"])},
        after=pair)


def feature_check_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                         weights: str | None, nproc: int, feature_space: str,
                         inception_weights: str | None) -> StepResult:
    """The recipe of the feature-check step: ``synthetic_eval.feature_check`` in the chosen space and the
    classifier's, one list of rows per space (``spaces``, in that order)."""
    classifier = _classifier(images, settings, seed, device, weights, nproc)
    label = step_name(images)
    space = synthetic_eval.feature_spaces(feature_space, [label], {label: classifier},
                                          inception_weights=inception_weights, seed=seed)
    train, test = _split(images, "train", settings, seed), _split(images, "test", settings, seed)
    checks = synthetic_eval.feature_check({label: images}, {label: train}, {label: test}, space, {label: classifier},
                                          settings, seed=seed, device=device)
    return StepResult({"spaces": [about for _, about in checks], "rows": list(checks.values())})


def generator_result(images: ImageSet, settings: dict[str, Any], kind: str, label: int, seed: int,
                     device: torch.device, weights: str | None, nproc: int, feature_space: str,
                     inception_weights: str | None) -> StepResult:
    """The recipe of a class step: the class's generator (artefact cache, or trained now), its weights as float16
    (arrays ``weights/<name>``), ``synthetic_images`` of its images from those weights (seed ``seed + label``, as
    ``generative.sample_labelled`` draws a class), the seconds per image,
    and the figures of ``synthetic_eval.class_figures`` at every point of its quality curve against the held-out
    real images of the class (the last point: the first ``curve_images`` of its images)."""
    found = generative.generator_for(kind, images, label, settings, seed=seed, device=device, nproc=nproc)
    weights = generative.half_state(found.model)
    model = generative.from_half_state(kind, images.channels, images.size, settings, weights, device)
    started = time.perf_counter()
    x = generative.sample(model, settings["synthetic_images"], seed=seed + label, device=device,
                          ddim_steps=settings["ddim_steps"], progress=True)
    seconds = (time.perf_counter() - started) / max(1, len(x))
    name = step_name(images)
    encoder, about = _space(images, settings, seed, device, weights, nproc, feature_space, inception_weights)
    test_x, test_y = _split(images, "test", settings, seed)
    real = metrics.image_features(encoder, test_x[test_y == label], device)
    y = torch.full((len(x),), label, dtype=torch.long)
    points = synthetic_eval.curve_features({name: images}, {name: (encoder, about)}, {(name, kind, label): found.curve},
                                           {(name, kind, label): found.history}, {(name, kind): (x, y)}, settings,
                                           per_class=settings["curve_images"], seed=seed, device=device)
    curve = [{"step": step, "trained": i == len(points[name, kind, label]) - 1,
              **synthetic_eval.class_figures(real, fake, seed=seed)}
             for i, (step, fake) in enumerate(points[name, kind, label])]
    return StepResult({"history": found.history, "seconds_per_image": seconds, "curve": curve,
                       "feature_extractor": about},
                      {"images": generative.to_uint8(x).numpy(), **{f"{WEIGHTS}{k}": v for k, v in weights.items()}})


def real_training_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                         weights: str | None, nproc: int, feature_space: str,
                         inception_weights: str | None) -> StepResult:
    """The recipe of the replacement experiment's real training set: the chapter-1 classifier's test predictions
    and LBP + Random Forest trained on the real images (arrays ``p/<model>``)."""
    classifier = _classifier(images, settings, seed, device, weights, nproc)
    rows = replacement.train_on("real", _split(images, "train", settings, seed), None,
                                _split(images, "val", settings, seed), _split(images, "test", settings, seed)[0],
                                classifier, settings, flip=images.modality == "histology", seed=seed, device=device,
                                nproc=nproc)
    return _rows_result(rows)


def replacement_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any], kind: str,
                       set_name: str, seed: int, device: torch.device, weights: str | None, nproc: int,
                       feature_space: str, inception_weights: str | None) -> StepResult:
    """The recipe of a synthetic or mixed training set: ``replacement.synthetic_set`` from the class steps' stored
    generators, then ``replacement.train_on`` (arrays ``p/<model>``)."""
    generators = {label: stored_generator(upstream, images, kind, label, settings, device) for label in CLASS_STEPS}
    real = _split(images, "train", settings, seed)
    synthetic = replacement.synthetic_set(generators, real[1], settings, seed=seed, device=device)
    rows = replacement.train_on(set_name, real, synthetic, _split(images, "val", settings, seed),
                                _split(images, "test", settings, seed)[0], None, settings,
                                flip=images.modality == "histology", seed=seed, device=device, nproc=nproc)
    return _rows_result(rows)


def _rows_result(rows: list[dict[str, Any]]) -> StepResult:
    return StepResult({"rows": [{k: v for k, v in row.items() if k != "p_pathology"} for row in rows]},
                      {f"p/{row['model']}": np.asarray(row["p_pathology"]) for row in rows})


def stored_generator(results: dict[str, StepResult], images: ImageSet, kind: str, label: int,
                     settings: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The ``kind`` generator of class ``label`` from its class step's stored float16 weights."""
    arrays = results[f"04_synthetic_images/{step_name(images)}/{kind}/{CLASS_STEPS[label]}"].arrays
    state = {name.removeprefix(WEIGHTS): array for name, array in arrays.items() if name.startswith(WEIGHTS)}
    return generative.from_half_state(kind, images.channels, images.size, settings, state, device)


def quality_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any], kinds: list[str],
                   seed: int, device: torch.device, weights: str | None, nproc: int, feature_space: str,
                   inception_weights: str | None) -> StepResult:
    """The recipe of the quality step, from the class steps' stored images: FID, KID, precision and recall of each
    generator and of the floor (``2 x synthetic_images`` real training images), their figures per class and the
    floor's at the curves' sample size, and the memorisation audit of each generator in the feature space and in
    pixel space (its distances and flags are the arrays ``audit/<kind>/<space>/<field>``)."""
    name = step_name(images)
    space = {name: _space(images, settings, seed, device, weights, nproc, feature_space, inception_weights)}
    train, test = {name: _split(images, "train", settings, seed)}, {name: _split(images, "test", settings, seed)}
    samples = {(name, kind): stored_samples(upstream, name, kind) for kind in kinds}
    n_floor = 2 * settings["synthetic_images"]
    features = synthetic_eval.quality_features(space, train, test, samples, n_floor=n_floor, seed=seed, device=device)
    labels = synthetic_eval.quality_labels(train, test, samples, n_floor=n_floor, seed=seed)
    real, real_y = features[name, synthetic_eval.HELDOUT], labels[name, synthetic_eval.HELDOUT]
    quality, class_quality = {}, []
    for (_, kind), fake in features.items():
        if kind == synthetic_eval.HELDOUT:
            continue
        quality[kind] = synthetic_eval.quality_figures(real, fake, seed=seed)
        class_quality += [{"generator": kind, "class": label, **synthetic_eval.class_figures(
            real[real_y == label], fake[labels[name, kind] == label], seed=seed)} for label in CLASS_STEPS]
    floor, floor_y = features[name, synthetic_eval.FLOOR], labels[name, synthetic_eval.FLOOR]
    floor_curve = [{"class": label, **synthetic_eval.class_figures(
        real[real_y == label], floor[floor_y == label][:settings["curve_images"]], seed=seed)} for label in CLASS_STEPS]
    audits = synthetic_eval.memorisation_audits(space, train, test, samples, features, device=device)
    scalars, arrays = {}, {}
    for (_, kind, where), audit in audits.items():
        scalars[f"{kind}/{where}"] = {k: v for k, v in audit.items() if not isinstance(v, np.ndarray)}
        arrays.update({f"audit/{kind}/{where}/{k}": v for k, v in audit.items() if isinstance(v, np.ndarray)})
    return StepResult({"quality": quality, "class_quality": class_quality, "floor_curve": floor_curve,
                       "audits": scalars, "n_real": len(real), "feature_extractor": space[name][1]}, arrays)


def stored_samples(results: dict[str, StepResult], name: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A generator kind's images of both classes (class 0 first, as ``generative.sample_labelled`` orders them) and
    their labels, from its class steps' stored results."""
    parts = [torch.from_numpy(results[f"04_synthetic_images/{name}/{kind}/{class_name}"].arrays["images"])
             for class_name in CLASS_STEPS.values()]
    x = generative.from_uint8(torch.cat(parts))
    y = torch.cat([torch.full((len(part),), label, dtype=torch.long) for label, part in zip(CLASS_STEPS, parts)])
    return x, y


def _space(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device, weights: str | None,
           nproc: int, feature_space: str, inception_weights: str | None) -> synthetic_eval.Space:
    classifier = _classifier(images, settings, seed, device, weights, nproc) if feature_space == "classifier" else None
    label = step_name(images)
    return synthetic_eval.feature_spaces(feature_space, [label], {label: classifier},
                                         inception_weights=inception_weights, seed=seed)[label]


def _classifier(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device, weights: str | None,
                nproc: int) -> torch.nn.Module:
    return training.classifier_for(images, settings, seed=seed, device=device, weights=weights, nproc=nproc)[0]


def _split(images: ImageSet, split: str, settings: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    limit = settings["max_train_images"] if split == "train" else settings["max_eval_images"]
    return images.tensors(split, limit, seed)


def _count(images: ImageSet, split: str, settings: dict[str, Any], seed: int) -> int:
    limit = settings["max_train_images"] if split == "train" else settings["max_eval_images"]
    return len(images.indices(split, limit, seed))


def _without_code(parts: dict[str, Any]) -> dict[str, Any]:
    """Cache key parts less their code digest: a step's own ``modules`` key the code."""
    return {key: value for key, value in parts.items() if key != "code"}
