"""What a run will cost before it runs: each chapter's wall time from per-step costs measured on this machine.

A run's time is almost all in a few kinds of work: EfficientNet-B3 training steps, input gradients (attacks,
adversarial training, HGD), predictions, feature vectors (FID, audit), generator steps and samples, and the
federated DC-GANs. :func:`unit_costs` times a few batches of each at the profile's sizes (cached per machine,
profile and code); :func:`workload` counts how many of each unit every chapter needs for given data sets, as
the chapters loop; :func:`estimate` multiplies the two. Counts assume an empty artefact cache and every
attack running all its iterations on every image, but for AutoAttack's later stages on chapter 2's
undefended models (``UNBROKEN_OVER_BUDGETS``); chapter 3's adaptive attacks are upper bounds. Start-up,
bootstrap intervals, plots and Flower's per-round overhead are not counted.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from . import cache, generative, metrics, models
from .privacy.dp import DP_GAN_STEP_COST, DP_STEP_COST
from .data import ImageSet

CHAPTERS = ("01_classifiers", "02_attacks", "03_defenses", "04_synthetic_images", "05_federated", "06_privacy")
# Chapters whose cpu reference run has not been made yet: the book leaves them out until the release writes their
# page (tests/test_chapters.py checks that each has no page and no place in _toc.yml, and every other chapter both).
AWAITING_REFERENCE = ("06_privacy",)
ATTACK_BUDGETS = 5  # chapter 2's epsilons (0.5, 1, 2, 4, 8 / 255; the headline 2/255 is one of them)
# AutoAttack runs FAB and Square only on the images APGD left unbroken: summed over chapter 2's five budgets,
# about 2 images in 5 budgets' worth (cpu reference run, book/reference/02_attacks: robust accuracy about 0.9,
# 0.7, 0.35, 0.03 and 0 of the attacked images). Chapter 3's defended models are counted as if nothing broke.
UNBROKEN_OVER_BUDGETS = 2.0
# One GPU's published training throughput of EfficientNet-B3, against which the plan estimates a run on one GPU:
# timm's benchmark (huggingface/pytorch-image-models, results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv),
# 572.18 images/s at 288 px, batch 128, mixed precision, channels_last, an RTX 3090 with PyTorch 1.12.
GPU_REFERENCE = {"gpu": "RTX 3090", "images_per_second": 572.18, "image_size": 288,
                 "source": "timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv"}
SAMPLE_BATCH = 8  # images per timed sampling call (DDPM at 128 px on a CPU: seconds per image)
GENERATOR_BATCHES = 2  # optimiser steps timed per generator (per ProGAN level)


@dataclass(frozen=True)
class SetSize:
    """The image counts of one data set that a run's costs depend on."""

    name: str
    channels: int
    train: int
    val: int
    test: int
    train_per_class: tuple[int, int]

    @classmethod
    def of(cls, images: ImageSet, settings: Mapping[str, Any], seed: int = 0) -> SetSize:
        """Counts as the chapters take them: ``max_train_images`` and ``max_eval_images`` applied."""
        train = images.indices("train", settings["max_train_images"], seed)
        labels = images.labels[train]
        return cls(images.name, images.channels, len(train),
                   len(images.indices("val", settings["max_eval_images"], seed)),
                   len(images.indices("test", settings["max_eval_images"], seed)),
                   (int((labels == 0).sum()), int((labels == 1).sum())))


def _seconds_per(run: Callable[[], Any], items: int) -> float:
    """Seconds per item of ``run`` (which handles ``items`` items), timed once after one warm-up call."""
    run()
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / items


def _measure(settings: Mapping[str, Any], channels: int) -> dict[str, float]:
    size, batch = settings["image_size"], settings["batch_size"]
    torch.manual_seed(0)
    x, y = torch.rand(batch, channels, size, size), torch.arange(batch) % 2
    classifier = models.build_classifier(channels)
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=1e-3)

    def train_step() -> None:
        classifier.train()
        loss = F.cross_entropy(classifier(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def input_gradient() -> None:
        classifier.eval()
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(classifier(inputs), y), inputs)

    @torch.no_grad()
    def predict() -> None:
        classifier.eval()(predict_x)

    predict_x = torch.rand(128, channels, size, size)
    encoder, _ = metrics.feature_space("random_vgg16")
    costs = {"classifier_train": _seconds_per(train_step, batch),
             "input_gradient": _seconds_per(input_gradient, batch),
             "predict": _seconds_per(predict, 128),
             "features": _seconds_per(lambda: metrics.image_features(encoder, predict_x, torch.device("cpu"),
                                                                     keep=False), 128)}
    for kind, entry in generative.GENERATORS.items():
        costs.update(_generator_costs(kind, entry, settings, channels, settings["generator_size"]))
    for size_fl in settings["fl_sizes"]:
        entry = generative.GENERATORS["dcgan"]
        costs[f"dcgan_{size_fl}px_step"] = _generator_costs("dcgan", entry, settings, channels, size_fl)["dcgan_step"]
    return costs


def _generator_costs(kind: str, entry: Any, settings: Mapping[str, Any], channels: int,
                     size: int) -> dict[str, float]:
    """Seconds per optimiser step (ProGAN: mean over its levels) and per sampled image of one kind."""
    torch.manual_seed(0)
    batch = settings["batch_size"]
    x = torch.rand(GENERATOR_BATCHES * batch, channels, size, size)
    generator, discriminator = entry.build(channels, size, settings)
    history = entry.train(generator, discriminator, x, settings, epochs=1, batch_size=batch, seed=0,
                          device=torch.device("cpu"), progress=False, checkpoint=None)
    # the epochs' own times: once-per-model work after the last epoch (re-estimating batch-norm statistics for
    # the averaged weights) is not a step, and a FedAvg site does none of it
    step = sum(record["seconds"] for record in history) / (GENERATOR_BATCHES * len(history))
    sample = _seconds_per(lambda: generative.sample(generator, SAMPLE_BATCH, seed=0, device=torch.device("cpu"),
                                                    ddim_steps=settings["ddim_steps"]), SAMPLE_BATCH)
    return {f"{kind}_step": step, f"{kind}_sample": sample}


def machine() -> dict[str, Any]:
    """What per-step costs depend on besides the code: CPU model, cores, threads and torch version."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


UNIT_SETTINGS = ("image_size", "generator_size", "batch_size", "latent_dim", "gan_width", "gan_augment",
                 "progan_augment", "progan_width", "ddpm_width", "ddim_steps", "fl_sizes")


def unit_costs(settings: Mapping[str, Any], channels: int = 1,
               measure: bool = True) -> tuple[dict[str, float] | None, bool]:
    """Seconds per unit of work on this machine at ``settings``' sizes (per image; generators per step), measured
    once per machine, sizes and code and kept in the artefact cache: ``(costs, cache_hit)``. With ``measure``
    False, ``(None, False)`` when they were not measured here yet (a quick look, such as ``status``, does not wait
    a minute or more for them)."""
    parts = {"machine": machine(), "settings": {k: settings[k] for k in UNIT_SETTINGS}, "channels": channels,
             "code": cache.code_fingerprint("plan", "models", "generative", "metrics")}
    if not measure and not cache.is_cached("unit_costs", parts):
        return None, False
    return cache.memoised("unit_costs", parts, lambda: _measure(settings, channels))


def step_unit_costs(settings: Mapping[str, Any], steps: Sequence[Any],
                    measure: bool = True) -> tuple[dict[str, float] | None, bool]:
    """:func:`unit_costs` at the profile's sizes and at every federated size ``steps`` count (a chapter-5 step of
    the extended data set at 128 px counts ``dcgan_128px_step``, which the profile's ``fl_sizes`` alone leave
    unmeasured: its training was once planned at 0 s, a 26-minute step at 6 min 44 s)."""
    sizes = {int(found.group(1)) for step in steps for unit in step.units
             if (found := re.fullmatch(r"dcgan_(\d+)px_step", unit))}
    return unit_costs({**settings, "fl_sizes": sorted(set(settings["fl_sizes"]) | sizes)}, measure=measure)


def workload(settings: Mapping[str, Any], sets: Sequence[SetSize], *, generators: Sequence[str] = ("dcgan", "progan",
             "ddpm"), cross_modality: bool = True,
             extended: tuple[str, Sequence[int], Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Rows ``chapter``, ``dataset``, ``task``, ``unit``, ``count``: the units each chapter needs on ``sets`` from an
    empty cache, at the chapters' default parameters; ``extended``: chapter 5's ``(extended_dataset,
    extended_sizes, extended_splits)``."""
    s, rows = settings, []

    def add(chapter: int, dataset: str, task: str, unit: str, count: float) -> None:
        rows.append({"chapter": CHAPTERS[chapter - 1], "dataset": dataset, "task": task, "unit": unit,
                     "count": count})

    # chapter 4 works at generator_size: classifier steps there cost the pixel ratio of image_size's
    at_generator_size = (s["generator_size"] / s["image_size"]) ** 2
    for d in sets:
        attacked = min(d.test, s["attack_images"] or d.test)
        seeds = s["classifier_seeds"]
        add(1, d.name, f"classifier training ({seeds} seeds)", "classifier_train", seeds * s["epochs"] * d.train)
        add(1, d.name, "validation and test predictions", "predict", seeds * (s["epochs"] * d.val + d.test))
        apgd, fab = s["apgd_steps"] * s["apgd_restarts"], 2 * s["fab_steps"]
        gradients = {"fgsm": 1, "pgd": s["pgd_steps"], "cw": s["cw_steps"], "autoattack": apgd + fab}
        budgeted = ATTACK_BUDGETS * (gradients["fgsm"] + gradients["pgd"] + apgd) + UNBROKEN_OVER_BUDGETS * fab
        add(2, d.name, "attacks (4 kinds, 5 budgets)", "input_gradient", attacked * (budgeted + gradients["cw"]))
        add(2, d.name, "AutoAttack Square queries", "predict", attacked * UNBROKEN_OVER_BUDGETS * s["square_queries"])
        perturb = 1 if s["adv_train_method"] == "fgsm_rs" else s["defense_pgd_steps"]
        add(3, d.name, "adversarial training", "classifier_train", s["adv_train_epochs"] * d.train)
        add(3, d.name, "adversarial training images", "input_gradient", s["adv_train_epochs"] * d.train * perturb)
        add(3, d.name, "HGD training images and guided loss", "input_gradient",
            s["hgd_epochs"] * d.train * (s["defense_pgd_steps"] + 1))
        add(3, d.name, "MagNet auto-encoder", "predict", s["magnet_epochs"] * d.train)
        adaptive = 3 * (gradients["fgsm"] + gradients["autoattack"] + gradients["cw"]) + s["pgd_steps"]
        add(3, d.name, "adaptive attacks on 3 defences", "input_gradient", attacked * adaptive)
        add(3, d.name, "adaptive Square queries", "predict", attacked * 3 * s["square_queries"])
        n_synthetic = 2 * s["synthetic_images"]
        for kind in generators:
            for n_class in d.train_per_class:
                add(4, d.name, f"{kind} training", f"{kind}_step", generator_steps(kind, n_class, s))
            add(4, d.name, f"{kind} samples", f"{kind}_sample", n_synthetic + s["reader_images"])
            add(4, d.name, f"{kind} quality-curve samples", f"{kind}_sample",
                2 * (generative.CURVE_POINTS - 1) * s["curve_images"])
        curve_vectors = len(generators) * 2 * generative.CURVE_POINTS * s["curve_images"]
        add(4, d.name, "feature vectors (check, quality, curves, audit)", "features",
            d.test + d.train + 2 * n_synthetic + n_synthetic * (len(generators) + 1) + curve_vectors)
        for kind in s["replacement_generators"]:
            add(4, d.name, f"replacement: {kind} training images", f"{kind}_sample", d.train)
            add(4, d.name, f"replacement: classifiers on {kind} images", "classifier_train",
                s["epochs"] * 3 * d.train * at_generator_size)
        if s["generator_size"] != s["image_size"]:
            add(4, d.name, "classifier at generator_size", "classifier_train", s["epochs"] * d.train * at_generator_size)
    add_federations(rows, s, sets, cross_modality, add, extended)
    for d in sets:
        half, count = d.train / 2, s["privacy_models"]
        add(6, d.name, f"membership classifiers ({count}, each on half the training split)", "classifier_train",
            count * s["epochs"] * half)
        add(6, d.name, "membership logits, validation and test predictions", "predict",
            count * (d.train + d.test + s["epochs"] * d.val))
        add(6, d.name, f"DP-SGD classifiers ({len(s['dp_epsilons'])} budgets)", "classifier_train",
            DP_STEP_COST * len(s["dp_epsilons"]) * s["dp_epochs"] * half)
        add(6, d.name, "DP-SGD logits and test predictions", "predict", len(s["dp_epsilons"]) * (d.train + d.test))
        add_generator_audits(s, d, generators, add)
    if sets:
        first = sets[0].name  # the DC-GAN with a private discriminator is trained on the first data set only
        add(6, first, "DC-GAN with a private discriminator (2 classes)", "dcgan_step",
            2 * DP_GAN_STEP_COST * s["gan_steps"])
        add(6, first, "its images and GAN-Leaks samples", "dcgan_sample",
            2 * s["synthetic_images"] + 2 * s["gan_leaks_samples"])
        add(6, first, "its quality features", "features", sets[0].test + 4 * s["synthetic_images"])
    return rows


def add_generator_audits(s: Mapping[str, Any], d: SetSize, generators: Sequence[str],
                         add: Callable[[int, str, str, str, float], None]) -> None:
    """Chapter 6 on chapter 4's generators of ``d``, as its steps count them (``steps.privacy``): GAN-Leaks samples
    per GAN, the DDPM's denoising errors on every member and held-out image, and per replacement generator a
    classifier trained on its images, attacked for the real patients."""
    queries = d.train + d.val + d.test
    for kind in generators:
        if kind == "ddpm":  # a denoising error is one U-Net pass: a sample's cost over its ddim_steps
            add(6, d.name, "DDPM denoising-error attack", "ddpm_sample",
                queries * len(s["denoising_timesteps"]) * s["denoising_draws"] / s["ddim_steps"])
        else:
            add(6, d.name, f"{kind} GAN-Leaks samples", f"{kind}_sample", 2 * s["gan_leaks_samples"])
    for kind in s["replacement_generators"]:
        add(6, d.name, f"{kind}: synthetic training set", f"{kind}_sample", d.train)
        add(6, d.name, f"{kind}: classifier on its images", "classifier_train", s["epochs"] * d.train)
        add(6, d.name, f"{kind}: its logits and validation", "predict", 2 * queries + s["epochs"] * d.val)


def generator_steps(kind: str, n_class: int, settings: Mapping[str, Any]) -> int:
    """Optimiser steps of one class's ``kind`` generator on ``n_class`` images: its budget rounded up to whole
    epochs (``generative.epochs_for``), ProGAN's at each of its levels from 8 px up."""
    epochs = generative.epochs_for(settings[generative.GENERATORS[kind].steps_key], n_class, settings["batch_size"])
    levels = int(math.log2(settings["generator_size"])) - 1 if kind == "progan" else 1
    return epochs * max(1, n_class // settings["batch_size"]) * levels


def add_federations(rows: list[dict[str, Any]], s: Mapping[str, Any], sets: Sequence[SetSize], cross_modality: bool,
                    add: Callable[..., None],
                    extended: tuple[str, Sequence[int], Sequence[str]] | None = None) -> None:
    """Chapter 5: every set under every split, and the first two one-channel sets one per site, at every size
    (the extended set also at its extra sizes and splits); FedAvg at each period, centralised once per set and
    size, local-only per site. Feature vectors cost the pixel ratio of ``image_size``'s."""
    def more(d: SetSize, index: int) -> list[Any]:
        return list(extended[index]) if extended and extended[0] == d.name else []

    grey = [d for d in sets if d.channels == 1]
    pairs = [((d,), split, sorted(set(s["fl_sizes"]) | set(more(d, 1)))) for d in sets
             for split in dict.fromkeys([*s["fl_splits"], *more(d, 2)])]
    if cross_modality and len(grey) >= 2:
        pairs.append((tuple(grey[:2]), "one per site", s["fl_sizes"]))
    pooled = set()
    for chosen, split, sizes in pairs:
        name, n = " | ".join(d.name for d in chosen), sum(d.train for d in chosen)
        tests = sum(d.test for d in chosen)
        for size in sizes:
            runs = len(s["fl_periods"]) + 1 + ((name, size) not in pooled)
            pooled.add((name, size))
            add(5, name, f"{split} DC-GANs at {size} px ({runs} runs)", f"dcgan_{size}px_step",
                runs * s["fl_epochs"] * max(1, n // s["batch_size"]))
            models_scored = sum(3 * (s["fl_epochs"] // p + 1) for p in s["fl_periods"]) + (runs - len(
                s["fl_periods"])) * (s["fl_epochs"] + 1)
            add(5, name, f"{split} FID samples at {size} px", "dcgan_sample", models_scored * s["fl_fid_images"])
            add(5, name, f"{split} FID features at {size} px", "features",
                (models_scored * s["fl_fid_images"] + tests + n) * (size / s["image_size"]) ** 2)


def estimate(settings: Mapping[str, Any], sets: Sequence[SetSize], costs: Mapping[str, float],
             **options: Any) -> pd.DataFrame:
    """:func:`workload` with ``seconds`` = count x the unit's measured cost."""
    frame = pd.DataFrame(workload(settings, sets, **options))
    frame["seconds"] = frame["count"] * frame["unit"].map(costs)
    return frame


def gpu_speedup(costs: Mapping[str, float], image_size: int) -> float:
    """How many times faster ``GPU_REFERENCE`` trains EfficientNet-B3 at ``image_size`` than this machine did
    (``costs["classifier_train"]``, seconds per image): the published throughput, scaled from its image size by
    pixel count, times the measured seconds per image. Applied to every kind of work, it estimates a run on that
    GPU, no more: attacks, generators and feature extraction may speed up more or less than classifier training."""
    rate = GPU_REFERENCE["images_per_second"] * (GPU_REFERENCE["image_size"] / image_size) ** 2
    return rate * costs["classifier_train"]


def chapter_seconds(frame: pd.DataFrame) -> dict[str, float]:
    """Estimated seconds per chapter, in chapter order."""
    totals = frame.groupby("chapter")["seconds"].sum()
    return {chapter: float(totals.get(chapter, 0.0)) for chapter in CHAPTERS}


def duration(seconds: float) -> str:
    """``1 h 05 min``, ``12 min 30 s`` or ``45 s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
