"""Chapter 4 (``04_synthetic_images``): records, tables and figures of generated images: feature-space check,
quality, reader study, replacement experiment and memorisation audit, from the results of ``synthetic_eval``,
``reader_study`` and ``replacement`` (keyed by data set label, as ``sets`` is)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Image, Markdown, display

from .. import metrics, paper
from ..data import ImageSet
from ..reader_study.readers import MACHINE_READER, SIMULATED_READERS, Demonstration
from ..reader_study.scoring import roc_points
from ..steps import step_name
from ..steps.synthetic_images import CLASS_STEPS, FEATURE_CHECK, QUALITY, REPLACEMENT, stored_samples
from ..store import StepResult
from ..synthetic_eval import FLOOR, quality_targets, steps_to_reach, training_seconds
from .common import CLASS_NAMES, ci_cell, dataset_fields, labelled, phantom_banner, show_image, verdict, within

Records = list[dict[str, Any]]
QUALITY_COLUMNS = ["fid", "fid_relative", "kid", "kid_std", "precision", "recall", "n_samples", "n_real",
                   "train_seconds", "seconds_per_image"]
READER_COLUMNS = ["accuracy", "accuracy_ci", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
                  "auc", "auc_ci", "p_value_vs_chance", "n_unsure", "n"]
POOLED_READER = "simulated readers (pooled)"
AUDIT_COLUMNS = ["n_near_copies", "near_copy_share", "closer_than_median_share", "median_synthetic_distance",
                 "median_heldout_distance", "n_synthetic", "n_heldout", "n_train"]
DROP = "drop real -> synthetic (pp)"
CLASS_QUALITY_COLUMNS = ["precision", "recall", "diversity", "machine_reader_accuracy", "n_samples", "n_real"]
CURVE_MEASURES = {"precision": "precision", "recall": "recall", "diversity": "diversity",
                  "machine_reader_accuracy": "machine reader accuracy"}


@dataclass
class Stored:
    """Chapter 4's stored results (:mod:`medsec_utils.steps.synthetic_images`) in the shapes its records and figures
    take, keyed by data set label, generator kind and class (0 Normal, 1 Pathology) as the notebook keys them."""

    checks: dict[tuple[str, str], list[dict[str, Any]]]  # (label, feature space): degradation rows
    histories: dict[tuple[str, str, int], list[dict[str, Any]]]
    samples: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # images in [0, 1] and labels
    seconds_per_image: dict[tuple[str, str], float]
    curves: dict[tuple[str, str, int], list[dict[str, Any]]]  # points: step, trained and class figures
    quality: dict[tuple[str, str], dict[str, Any]]  # the floor first, then each generator
    class_quality: dict[tuple[str, str, int], dict[str, Any]]
    floor_curves: dict[tuple[str, int], dict[str, Any]]
    audits: dict[tuple[str, str, str], dict[str, Any]]  # (label, kind, "features" | "pixels")
    replacement: list[dict[str, Any]]  # as replacement.run_experiment gives them
    feature_extractor: dict[str, str]
    n_real: dict[str, int]


def from_steps(sets: Mapping[str, ImageSet], results: Mapping[str, StepResult], generators: list[str]) -> Stored:
    """:class:`Stored` from chapter 4's step results (``Chapter.results``) for ``generators``."""
    found = Stored({}, {}, {}, {}, {}, {}, {}, {}, {}, [], {}, {})
    for label, images in sets.items():
        root = f"04_synthetic_images/{step_name(images)}"
        check = results[f"{root}/{FEATURE_CHECK}"].record
        found.checks.update({(label, about): rows for about, rows in zip(check["spaces"], check["rows"])})
        for kind in generators:
            found.samples[label, kind] = stored_samples(results, step_name(images), kind)
            parts = [results[f"{root}/{kind}/{name}"].record for name in CLASS_STEPS.values()]
            for c, part in zip(CLASS_STEPS, parts):
                found.histories[label, kind, c], found.curves[label, kind, c] = part["history"], part["curve"]
            counts = [len(found.samples[label, kind][1][found.samples[label, kind][1] == c]) for c in CLASS_STEPS]
            found.seconds_per_image[label, kind] = sum(p["seconds_per_image"] * n for p, n in zip(parts, counts)) / sum(
                counts)
            if f"{root}/{kind}/{REPLACEMENT}_synthetic" in results:
                for stored in [results[f"{root}/{REPLACEMENT}_real"], *(
                        results[f"{root}/{kind}/{REPLACEMENT}_{set_name}"] for set_name in ("synthetic", "mixed"))]:
                    found.replacement += [{"dataset": label, "generator": kind, **row,
                                           "p_pathology": stored.arrays[f"p/{row['model']}"]}
                                          for row in stored.record["rows"]]
        quality = results[f"{root}/{QUALITY}"]
        found.feature_extractor[label], found.n_real[label] = quality.record["feature_extractor"], quality.record[
            "n_real"]
        for kind in (FLOOR, *generators):
            found.quality[label, kind] = quality.record["quality"][kind]
        for row in quality.record["class_quality"]:
            found.class_quality[label, row["generator"], row["class"]] = {
                k: v for k, v in row.items() if k not in ("generator", "class")}
        for row in quality.record["floor_curve"]:
            found.floor_curves[label, row["class"]] = {k: v for k, v in row.items() if k != "class"}
        for kind in generators:
            for where in ("features", "pixels"):
                prefix = f"audit/{kind}/{where}/"
                found.audits[label, kind, where] = {**quality.record["audits"][f"{kind}/{where}"], **{
                    name.removeprefix(prefix): array for name, array in quality.arrays.items()
                    if name.startswith(prefix)}}
    return found


def section(records: Records, name: str) -> pd.DataFrame:
    """The records of one ``section`` as a frame."""
    return pd.DataFrame([r for r in records if r["section"] == name])


def feature_check_records(sets: Mapping[str, ImageSet],
                          checks: Mapping[tuple[str, str], list[dict[str, Any]]]) -> Records:
    """``metrics.json`` records of ``synthetic_eval.feature_check``: its rows with the data set and space named."""
    return [{**dataset_fields(sets[label]), "section": "feature_check", "feature_extractor": about, **row}
            for (label, about), rows in checks.items() for row in rows]


def plot_generator_training(histories: dict[tuple[str, str, int], list[dict[str, Any]]]) -> plt.Figure:
    """Losses against optimiser steps of each generator (``histories``: ``{(data set, generator, class): history}``)."""
    frames = [pd.DataFrame(h).assign(dataset=name, generator=kind, cls=CLASS_NAMES[label])
              for (name, kind, label), h in histories.items()]
    frame = pd.concat(frames, ignore_index=True)
    losses = [c for c in ("loss_d", "loss_g", "loss") if c in frame.columns]
    long = frame.melt(id_vars=["dataset", "generator", "cls", "step"], value_vars=losses, var_name="loss").dropna()
    long["loss"] = long["loss"].map({"loss_d": "discriminator", "loss_g": "generator", "loss": "noise MSE"})
    grid = sns.relplot(data=long, x="step", y="value", hue="dataset", style="loss", col="generator", row="cls",
                       kind="line", marker="o", facet_kws={"sharey": False, "sharex": False}, height=2.3, aspect=1.2)
    grid.set_titles("{col_name}, {row_name}")
    grid.set_xlabels("optimiser steps (mean loss of each epoch)")
    phantom_banner(grid.figure, long["dataset"])
    return grid.figure


def plot_sample_grid(real: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     samples: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]], per_class: int = 4) -> plt.Figure:
    """The paper's Fig. 3 idea: per data set, a row of real test images, then a row per generator;
    ``per_class`` Normal then ``per_class`` Pathology images in each row."""
    rows = []
    for name, (x, y) in real.items():
        rows += [(name, "real", x, y)] + [(name, kind, *pair) for (n, kind), pair in samples.items() if n == name]
    fig, axes = plt.subplots(len(rows), 2 * per_class, figsize=(2 * per_class * 1.1, 1.2 * len(rows)), squeeze=False)
    for ax_row, (name, kind, x, y) in zip(axes, rows):
        picks = torch.cat([torch.nonzero(y == label).flatten()[:per_class] for label in (0, 1)])
        for ax, index in zip(ax_row, picks):
            show_image(ax, x[index], CLASS_NAMES[int(y[index])])
        for ax in ax_row[len(picks):]:
            ax.axis("off")
        ax_row[0].set_ylabel(f"{name}\n{kind}", fontsize=7)
    phantom_banner(fig, real, y=1.0)
    fig.tight_layout()
    return fig


def plot_memorisation(audits: dict[tuple[str, str, str], dict[str, Any]]) -> plt.Figure:
    """Distances to the nearest training image: synthetic images against held-out real ones, per data set,
    generator and space (``audits``: ``{(data set, generator, space): metrics.memorisation_audit(...)}``).
    The dashed line is the near-copy threshold: the closest any held-out image comes to the training set."""
    keys = list(audits)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.9 * len(keys), 2.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        audit = audits[key]
        both = np.r_[audit["synthetic_distance"], audit["heldout_distance"]]
        bins = np.linspace(both.min(), both.max(), 30) if both.max() > both.min() else 10
        ax.hist(audit["heldout_distance"], bins=bins, alpha=0.6, density=True, label="held-out real", color="#7f8c8d")
        ax.hist(audit["synthetic_distance"], bins=bins, alpha=0.6, density=True, label="synthetic", color="#c0392b")
        ax.axvline(audit["threshold"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{key[0]}\n{key[1]}, {key[2]}: {audit['near_copy_share']:.1%} near-copies", fontsize=7)
        ax.set_xlabel("distance to nearest training image", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    phantom_banner(fig, [key[0] for key in keys], y=1.04)
    fig.tight_layout()
    return fig


def closest_pairs(stored: Stored, train: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[
        tuple[str, str], tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
    """What :func:`plot_closest_pairs` draws: per data set and generator, its images, the training images and
    their pixel-space audit."""
    return {(label, kind): (x, train[label][0], stored.audits[label, kind, "pixels"])
            for (label, kind), (x, _) in stored.samples.items()}


def plot_closest_pairs(pairs: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
                       n: int = 4) -> plt.Figure:
    """The ``n`` synthetic images closest to a training image, each beside that training image, closest first
    (``pairs``: ``{(data set, generator): (synthetic images, training images, their memorisation audit)}``);
    flagged near-copies are titled in red."""
    fig, axes = plt.subplots(len(pairs), 2 * n, figsize=(2 * n * 1.1, 1.4 * len(pairs)), squeeze=False)
    for row, ((name, kind), (synthetic, train, audit)) in zip(axes, pairs.items()):
        order = np.argsort(audit["synthetic_distance"], kind="stable")[:n]
        for k in range(n):
            if k >= len(order):
                row[2 * k].axis("off")
                row[2 * k + 1].axis("off")
                continue
            index = order[k]
            show_image(row[2 * k], synthetic[index], f"synthetic d={audit['synthetic_distance'][index]:.3g}")
            show_image(row[2 * k + 1], train[audit["nearest_train"][index]], "nearest train")
            if audit["near_copy"][index]:
                row[2 * k].title.set_color("red")
        row[0].set_ylabel(f"{name}\n{kind}", fontsize=7)
    phantom_banner(fig, [name for name, _ in pairs], y=1.0)
    fig.tight_layout()
    return fig


def replacement_table(records: Records) -> pd.DataFrame:
    """Test accuracy ``[95 % CI]`` per data set, generator and model, for each training set, and the drop
    (real minus synthetic, in percentage points) the paper reports, from the replacement records."""
    frame = labelled(section(records, "replacement"))
    frame["cell"] = [ci_cell(a, lo, hi) for a, lo, hi in zip(frame["accuracy"], frame["ci_low"], frame["ci_high"])]
    index = ["dataset", "generator", "model"]
    table = frame.pivot(index=index, columns="training_set", values="cell")
    accuracy = frame.pivot(index=index, columns="training_set", values="accuracy")
    table = table.reindex(columns=[c for c in ("real", "synthetic", "mixed") if c in table.columns])
    table[DROP] = (100 * (accuracy["real"] - accuracy["synthetic"])).round(1)
    return table


def drops_against_paper(records: Records) -> pd.DataFrame:
    """The study's lowest and highest accuracy drop per model (``paper.replacement_drops``) beside this run's
    drop of each data set and generator, in percentage points."""
    ours = replacement_table(records)[DROP].unstack("model").T
    ours.columns = [f"this run: {name}, {kind}" for name, kind in ours.columns]
    return paper.replacement_drops().join(ours)


def study_findings(records: Records) -> pd.DataFrame:
    """The study's findings on generated images (``../shared/paper/README.md``), each judged on this run.

    A replacement drop agrees with the study's range when the range meets the drop's 95 % interval, taken
    from the Wilson interval of the accuracy on synthetic images with the real-data model's accuracy held
    fixed; the two models' order is judged on the point estimates. The reader-study finding needs
    radiologists, whom no run has; the machine reader's accuracy is given as evidence of how hard the images
    are to tell apart in the chapter's feature space, not as a verdict.
    """
    frame = labelled(section(records, "replacement"))
    index = ["dataset", "generator", "model"]
    accuracy = frame.pivot(index=index, columns="training_set", values="accuracy")
    synthetic = frame[frame["training_set"] == "synthetic"].set_index(index)
    drops = pd.DataFrame({"drop": 100 * (accuracy["real"] - accuracy["synthetic"]),
                          "low": 100 * (accuracy["real"] - synthetic["ci_high"]),
                          "high": 100 * (accuracy["real"] - synthetic["ci_low"])})
    rows = []
    for model, (lowest, highest) in paper.facts()["replacement_drop_pp"].items():
        cases = drops.xs(model, level="model")
        rows.append({"finding": f"{model}: accuracy {lowest:g}-{highest:g} points lower on generated images",
                     "verdict": verdict(bool(c["low"] <= highest and c["high"] >= lowest)
                                        for _, c in cases.iterrows()),
                     "evidence": "; ".join(f"{name} {kind}: {c['drop']:.1f} [{c['low']:.1f}, {c['high']:.1f}]"
                                           for (name, kind), c in cases.iterrows())})
    paired = drops["drop"].unstack("model").dropna()
    deep, shallow = "efficientnet_b3", "lbp_random_forest"
    rows.append({"finding": "the deep model loses less than LBP + Random Forest",
                 "verdict": verdict(bool(r[deep] < r[shallow]) for _, r in paired.iterrows()),
                 "evidence": "; ".join(f"{name} {kind}: {r[deep]:.1f} vs {r[shallow]:.1f}"
                                       for (name, kind), r in paired.iterrows())})
    readers = section(records, "reader_study")
    machine = labelled(readers[readers["reader"] == MACHINE_READER]) if len(readers) else readers
    rows.append({"finding": "radiologists find it hard to tell 100 generated chest X-rays from 100 real ones",
                 "verdict": verdict([]),
                 "evidence": "no radiologist has read this run's kits; machine reader accuracy: " + "; ".join(
                     f"{r['dataset']} {r['generator']}: {r['accuracy']:.2f}" for _, r in machine.iterrows())})
    return pd.DataFrame(rows)


def _over_floor(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Feature-check rows with ``over_floor``: FID over the real-vs-real floor (level 0) of the same data set and
    space, a scale-free number that starts at 1, so spaces of any scale share an axis."""
    frame = labelled(pd.DataFrame(rows))
    floor = frame[frame["level"].isin([0, 1]) & frame["sentinel"].isna()].groupby(
        ["dataset", "feature_extractor"])["fid"].min()
    return frame.assign(over_floor=[fid / floor[d, f] for d, f, fid in
                                    zip(frame["dataset"], frame["feature_extractor"], frame["fid"])])


def feature_check_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per data set and feature space (``metrics.degradation_fids`` rows with both added): Spearman's rho of
    each degradation's level against FID (1: it grows at every step), the farthest degraded real set and each
    sentinel as multiples of the real-vs-real floor, and whether the space passes: every rho 1 and every
    sentinel beyond every degraded set."""
    from scipy.stats import spearmanr

    frame = _over_floor(rows)
    table = {}
    for key, part in frame.groupby(["dataset", "feature_extractor"], sort=False):
        degraded, sentinels = part[part["sentinel"].isna()], part[part["sentinel"].notna()]
        entry = {f"rho, {kind}": float(spearmanr(curve["level"].astype(float), curve["fid"])[0])
                 for kind, curve in degraded.groupby("degradation", sort=False)}
        entry["floor FID"] = float(degraded["fid"].min())
        entry["farthest degraded / floor"] = float(degraded["over_floor"].max())
        entry.update({f"{name} / floor": value for name, value in zip(sentinels["sentinel"], sentinels["over_floor"])})
        entry["passes"] = bool(all(entry[k] == 1 for k in entry if k.startswith("rho"))
                               and (sentinels["fid"] > degraded["fid"].max()).all())
        table[key] = entry
    return pd.DataFrame.from_dict(table, orient="index").rename_axis(["dataset", "feature space"])


def plot_feature_check(rows: list[dict[str, Any]]) -> plt.Figure:
    """FID over the real-vs-real floor against the strength of each degradation, per data set and feature
    space (log scale); dotted lines mark the sentinels (pure noise, an untrained generator) in each space's
    colour."""
    frame = _over_floor(rows)
    degraded = frame[frame["sentinel"].isna()]
    spaces = list(dict.fromkeys(frame["feature_extractor"]))
    palette = dict(zip(spaces, sns.color_palette(n_colors=len(spaces))))
    grid = sns.relplot(data=degraded, x="level", y="over_floor", hue="feature_extractor", palette=palette,
                       col="degradation", row="dataset", kind="line", marker="o", height=2.2, aspect=1.5,
                       facet_kws={"sharex": "col", "sharey": "row"})
    for (name, _), ax in grid.axes_dict.items():
        for _, sentinel in frame[(frame["dataset"] == name) & frame["sentinel"].notna()].iterrows():
            colour = palette[sentinel["feature_extractor"]]
            ax.axhline(sentinel["over_floor"], color=colour, linestyle=":", linewidth=1)
            ax.annotate(sentinel["sentinel"], (1.0, sentinel["over_floor"]), xycoords=("axes fraction", "data"),
                        fontsize=5, ha="right", va="bottom", color=colour)
    grid.set_titles("{row_name}: {col_name}", size=7)
    grid.set(yscale="log", ylabel="FID / real-vs-real floor")
    sns.move_legend(grid, "lower center", bbox_to_anchor=(0.4, -0.08), ncol=1, title="feature space", fontsize=7)
    phantom_banner(grid.figure, frame["dataset"])
    return grid.figure


def quality_record(images: ImageSet, generator: str, figures: Mapping[str, Any], feature_extractor: str,
                   **extra: Any) -> dict[str, Any]:
    """One ``metrics.json`` record of image quality: the FID, KID, precision and recall of
    ``synthetic_eval.quality_figures`` with the sample counts and the feature space named."""
    return {**dataset_fields(images), "section": "quality", "generator": generator, **figures,
            "feature_extractor": feature_extractor, **extra}


def quality_records(sets: Mapping[str, ImageSet], stored: Stored) -> Records:
    """A :func:`quality_record` of the floor and of each generator against the held-out test images, with the
    seconds each generator took to train and per image."""
    return [quality_record(sets[label], kind, figures, stored.feature_extractor[label], n_real=stored.n_real[label],
                           seconds_per_image=stored.seconds_per_image.get((label, kind)),
                           train_seconds=training_seconds(stored.histories, label, kind))
            for (label, kind), figures in stored.quality.items()]


def class_quality_records(sets: Mapping[str, ImageSet], stored: Stored) -> Records:
    """Per data set, generator (and floor) and class: ``synthetic_eval.class_figures`` against the held-out real
    images of that class, so a class whose samples collapse shows as a number."""
    return [{**dataset_fields(sets[label]), "section": "class_quality", "generator": kind, "class": CLASS_NAMES[c],
             **figures, "feature_extractor": stored.feature_extractor[label]}
            for (label, kind, c), figures in stored.class_quality.items()]


def quality_curve_records(sets: Mapping[str, ImageSet], stored: Stored) -> Records:
    """The figures of :func:`class_quality_records` at every point of each generator's training curve (``trained``
    marks the last point), and, as ``step`` None, those of as many real training images of the class (the floor
    at this sample size)."""
    records = [{**dataset_fields(sets[label]), "section": "quality_curve", "generator": kind,
                "class": CLASS_NAMES[c], **point, "feature_extractor": stored.feature_extractor[label]}
               for (label, kind, c), points in stored.curves.items() for point in points]
    return records + [{**dataset_fields(sets[label]), "section": "quality_curve", "generator": FLOOR,
                       "class": CLASS_NAMES[c], "step": None, "trained": None, **figures,
                       "feature_extractor": stored.feature_extractor[label]}
                      for (label, c), figures in stored.floor_curves.items()]


def plot_quality_curves(records: Records) -> plt.Figure:
    """Precision, recall, diversity and machine-reader accuracy per class against optimiser steps, a line per
    generator and class, one row per data set; grey lines: the floor of real training images of each class."""
    frame = labelled(section(records, "quality_curve")).rename(columns=CURVE_MEASURES)
    curves, floors = frame[frame["generator"] != FLOOR], frame[frame["generator"] == FLOOR]
    long = curves.melt(id_vars=["dataset", "generator", "class", "step"], value_vars=list(CURVE_MEASURES.values()),
                       var_name="measure")
    grid = sns.relplot(data=long, x="step", y="value", hue="generator", style="class", row="dataset", col="measure",
                       kind="line", marker="o", facet_kws={"sharex": "row", "sharey": False}, height=2.2, aspect=1.25)
    dashes = dict(zip(CLASS_NAMES, ("--", ":")))
    for (dataset, measure), ax in grid.axes_dict.items():
        for _, floor in floors[floors["dataset"] == dataset].iterrows():
            ax.axhline(floor[measure], color="grey", linestyle=dashes[floor["class"]], linewidth=1)
    grid.set_titles("{row_name}: {col_name}", size=7)
    grid.set_xlabels("optimiser steps")
    grid.figure.text(0.01, -0.02, f"grey: {len(floors) and int(floors['n_samples'].iloc[0])} real training images "
                     "per class (dashed Normal, dotted Pathology)", fontsize=7)
    phantom_banner(grid.figure, frame["dataset"])
    return grid.figure


def curve_trend_table(records: Records) -> pd.DataFrame:
    """Per data set, generator and class: each target's value at the curve's last point, and where the curve's
    trend would meet it (:func:`steps_to_reach`)."""
    frame = labelled(section(records, "quality_curve"))
    rows = []
    for (dataset, generator, name), curve in frame[frame["generator"] != FLOOR].groupby(
            ["dataset", "generator", "class"], sort=False):
        curve = curve.sort_values("step")
        row = {"dataset": dataset, "generator": generator, "class": name, "steps": int(curve["step"].iloc[-1])}
        for measure, (bound, higher) in quality_targets(generator).items():
            reach = steps_to_reach(curve["step"].tolist(), curve[measure].tolist(), bound, higher)
            row[f"{CURVE_MEASURES[measure]} ({'>=' if higher else '<='} {bound:g})"] = \
                f"{curve[measure].iloc[-1]:.2f}: {reach}"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["dataset", "generator", "class"])


def class_quality_table(records: Records) -> pd.DataFrame:
    """Precision, recall, diversity and the machine reader's accuracy per data set, generator and class."""
    return section(records, "class_quality").set_index(["dataset", "generator", "class"])[CLASS_QUALITY_COLUMNS]


def quality_table(records: Records) -> pd.DataFrame:
    """FID, KID, precision, recall, sample counts and costs per data set and generator."""
    return section(records, "quality").set_index(["dataset", "generator"])[QUALITY_COLUMNS]


def plot_quality(records: Records) -> plt.Figure:
    """FID, precision and recall per generator and data set; "real train (floor)" is two disjoint real sets."""
    frame = labelled(section(records, "quality"))
    long = frame.melt(id_vars=["dataset", "generator"], value_vars=["fid", "precision", "recall"], var_name="metric")
    grid = sns.catplot(data=long, x="generator", y="value", hue="dataset", col="metric", kind="bar", sharey=False,
                       height=2.6, aspect=1.2)
    grid.set_titles("{col_name}")
    grid.set_xticklabels(rotation=30, fontsize=7)
    extractors = "; ".join(dict.fromkeys(frame["feature_extractor"]))
    grid.figure.subplots_adjust(bottom=0.4)  # room below the rotated generator names and the axis label
    grid.figure.text(0.01, 0.01, f"features: {extractors}", fontsize=6)
    phantom_banner(grid.figure, frame["dataset"])
    return grid.figure


def replacement_record(images: ImageSet, generator: str, model: str, training_set: str, n_train: int,
                       y_test: torch.Tensor, p_pathology: np.ndarray) -> dict[str, Any]:
    """One ``metrics.json`` record of the replacement experiment: test accuracy (Wilson 95 % CI), balanced
    accuracy and AUC of ``model`` trained on ``training_set``."""
    report = metrics.binary_report(y_test.numpy(), p_pathology, n_boot=200)
    low, high = report["accuracy_ci"]
    return {**dataset_fields(images), "section": "replacement", "generator": generator, "model": model,
            "training_set": training_set, "n_train": n_train, "n_test": report["n"], "accuracy": report["accuracy"],
            "ci_low": low, "ci_high": high, "balanced_accuracy": report["balanced_accuracy"], "auc": report["auc"]}


def reader_generators(records: Records, generators: list[str], chosen: str | None = None) -> dict[str, str]:
    """Per data set label, the generator whose images go to the readers: ``chosen``, or else the one of
    ``generators`` with the lowest FID (the hardest test for a reader)."""
    quality = labelled(section(records, "quality"))
    best = quality[quality["generator"].isin(generators)].sort_values("fid").groupby("dataset").first()["generator"]
    return {label: chosen or kind for label, kind in best.items()}


def replacement_records(sets: Mapping[str, ImageSet], results: Records,
                        test: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Records:
    """A :func:`replacement_record` of every ``replacement.run_experiment`` result, scored on its test labels."""
    return [replacement_record(sets[r["dataset"]], r["generator"], r["model"], r["training_set"], r["n_train"],
                               test[r["dataset"]][1], r["p_pathology"]) for r in results]


def reader_records(sets: Mapping[str, ImageSet], shown: Mapping[str, Demonstration]) -> Records:
    """``metrics.json`` records of ``reader_study.demonstrations``: one per data set and reader, flagging the
    ``simulated`` readers and the ``machine`` reader (demonstrations, not people), and per data set one of the
    simulated readers pooled: their mean AUC with its readers-and-cases bootstrap interval and Fleiss' kappa."""
    records = []
    for label, kit in shown.items():
        common = {**dataset_fields(sets[label]), "section": "reader_study", "generator": kit.generator,
                  "n_kit": len(kit.key)}
        records += [{**common, "simulated": row["reader"] in SIMULATED_READERS,
                     "machine": row["reader"] == MACHINE_READER, **row} for row in kit.scores.to_dict("records")]
        pooled = kit.pooled
        records.append({**common, "simulated": True, "machine": False, "reader": POOLED_READER, "auc": pooled["auc"],
                        "auc_ci": (pooled["ci_low"], pooled["ci_high"]), "fleiss_kappa": kit.agreement,
                        "n_readers": pooled["n_readers"], "n": pooled["n_cases"], "method": pooled["method"]})
    return records


def reader_table(records: Records) -> pd.DataFrame:
    """Every reader's accuracy, sensitivity, specificity and AUC with their intervals, per data set and generator."""
    return section(records, "reader_study").set_index(["dataset", "generator", "reader"])[READER_COLUMNS].round(3)


READER_APP_SCREENSHOTS = Path(__file__).parents[2] / "book" / "figures" / "reader_app"


def show_reader_app(folder: Path = READER_APP_SCREENSHOTS) -> None:
    """The reader app's instructions, a case and the finish screen as ``tests/test_reader_app.py`` saw them in
    headless Chromium (``MEDSEC_SCREENSHOTS=book/figures/reader_app`` on that test refreshes them)."""
    for name, caption in (("instructions", "the instructions"), ("case", "a case, zoomed to the window, windowed"),
                          ("finish", "the finish screen")):
        path = Path(folder) / f"{name}.png"
        if not path.is_file():
            print(f"{path}: no screenshot; take them with MEDSEC_SCREENSHOTS={folder} pytest tests/test_reader_app.py")
            return
        display(Markdown(f"**The reader app: {caption}** (`{path.name}`)"), Image(filename=str(path), width=720))


def reader_roc_figure(shown: Mapping[str, Demonstration]) -> plt.Figure:
    """Each reader's empirical ROC curve (a point per cut of the five ratings), one panel per data set, beside
    the chance diagonal; the legend gives each reader's AUC."""
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, (label, kit) in zip(axes[0], shown.items()):
        auc = kit.scores.set_index("reader")["auc"]
        for name, answers in kit.answers.items():
            ax.plot(*roc_points(kit.key, answers), marker="o", markersize=3, label=f"{name}: AUC {auc[name]:.2f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")  # a perfect reader's curve stays in view
        ax.set_xlabel("real called synthetic (1 - specificity)", fontsize=7)
        ax.set_ylabel("synthetic called synthetic (sensitivity)", fontsize=7)
        ax.set_title(f"{label}, {kit.generator}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="lower right")
    phantom_banner(fig, shown)
    fig.tight_layout()
    return fig


def audit_records(sets: Mapping[str, ImageSet], audits: Mapping[tuple[str, str, str], dict[str, Any]]) -> Records:
    """An :func:`audit_record` of every ``synthetic_eval.memorisation_audits`` audit."""
    return [audit_record(sets[label], kind, space, audit) for (label, kind, space), audit in audits.items()]


def audit_table(records: Records) -> pd.DataFrame:
    """Near-copies and nearest-training distances per data set, generator and space."""
    return section(records, "audit").set_index(["dataset", "generator", "space"])[AUDIT_COLUMNS].round(4)


def audit_record(images: ImageSet, generator: str, space: str, audit: dict[str, Any]) -> dict[str, Any]:
    """One ``metrics.json`` record of the memorisation audit (the distances themselves stay out)."""
    return {**dataset_fields(images), "section": "audit", "generator": generator, "space": space,
            "near_copy_share": audit["near_copy_share"], "n_near_copies": int(audit["near_copy"].sum()),
            "closer_than_median_share": audit["closer_than_median_share"], "threshold": audit["threshold"],
            "median_synthetic_distance": float(np.median(audit["synthetic_distance"])),
            "median_heldout_distance": float(np.median(audit["heldout_distance"])),
            **{key: audit[key] for key in ("n_synthetic", "n_heldout", "n_train")}}


def invariants(records: Records) -> dict[str, bool]:
    """Chapter 4's self-check: FID not negative (KID, an unbiased estimate, may dip below 0 near the floor),
    precision and recall in [0, 1], replacement accuracies inside their intervals, near-copies within the audited
    images."""
    by = {name: section(records, name) for name in ("quality", "class_quality", "replacement", "audit")}
    shares = ["precision", "recall"]
    return {"FID not negative": bool((by["quality"]["fid"] >= -1e-9).all()),
            "precision and recall in [0, 1]": all(((frame[shares] >= 0) & (frame[shares] <= 1)).all().all()
                                                  for frame in (by["quality"], by["class_quality"])),
            "replacement accuracy inside its interval in [0, 1]": all(
                within(r.accuracy, r.ci_low, r.ci_high) for r in by["replacement"].itertuples()),
            "near-copies within the audited images": all(
                0 <= r.n_near_copies <= r.n_synthetic for r in by["audit"].itertuples())}
