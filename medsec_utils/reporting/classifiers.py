"""Chapter 1 (``01_classifiers``): records and figures of the Normal/Pathology classifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import paper
from ..data import ImageSet
from ..store import StepResult
from ..steps import step_name
from .common import data_label, dataset_fields, labelled, phantom_banner, within

if TYPE_CHECKING:
    from .chapter import Chapter


def plot_examples(sets: list[ImageSet], per_class: int = 4, seed: int = 0) -> plt.Figure:
    """A grid of test images per data set: up to ``per_class`` Normal then up to ``per_class`` Pathology.

    A small data set may have fewer test images of a class; its cells stay empty rather than repeat images.
    """
    fig, axes = plt.subplots(len(sets), 2 * per_class, figsize=(2 * per_class * 1.3, len(sets) * 1.5),
                             squeeze=False)
    rng = np.random.default_rng(seed)
    for row, images in zip(axes, sets):
        test = images.indices("test")
        for label, cells in ((0, row[:per_class]), (1, row[per_class:])):
            members = test[images.labels.numpy()[test] == label]
            chosen = rng.choice(members, min(per_class, len(members)), replace=False)
            for ax, index in zip(cells, chosen):
                image = images.images[index].permute(1, 2, 0).squeeze(-1).numpy()
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
                ax.set_title("Pathology" if label else "Normal", fontsize=7)
            for ax in cells[len(chosen):]:
                ax.set_frame_on(False)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(data_label(images), fontsize=7)
    phantom_banner(fig, [data_label(images) for images in sets], y=1.0)
    fig.tight_layout()
    return fig


def plot_training_curves(histories: dict[str, list[dict[str, float]]]) -> plt.Figure:
    """Losses, validation balanced accuracy and validation AUC (the model-selection score) per epoch."""
    frame = pd.concat([pd.DataFrame(h).assign(dataset=name) for name, h in histories.items()], ignore_index=True)
    long = frame.melt(id_vars=["dataset", "epoch"],
                      value_vars=["train_loss", "val_loss", "val_balanced_accuracy", "val_auc"], var_name="metric")
    grid = sns.relplot(data=long, x="epoch", y="value", hue="dataset", col="metric", kind="line", marker="o",
                       facet_kws={"sharey": False}, height=2.4, aspect=1.1)
    grid.set_titles("{col_name}")
    return grid.figure


def plot_confusion_matrices(reports: dict[str, dict[str, Any]]) -> plt.Figure:
    """Test-set confusion matrices (rows: true class, columns: predicted), one panel per data set."""
    fig, axes = plt.subplots(1, len(reports), figsize=(3.2 * len(reports), 2.9), squeeze=False)
    for ax, (name, report) in zip(axes[0], reports.items()):
        sns.heatmap(np.asarray(report["confusion_matrix"]), annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax,
                    xticklabels=["Normal", "Pathology"], yticklabels=["Normal", "Pathology"])
        ax.set(title=name, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], reports: dict[str, dict[str, Any]]) -> plt.Figure:
    """ROC curves ``{name: (fpr, tpr)}`` on one axis, each labelled with its AUC from ``reports``."""
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {reports[name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def classifier_record(images: ImageSet, report: dict[str, Any], history: list[dict[str, float]],
                      settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """One ``metrics.json`` record of a classifier's test results on ``images`` and its training cost."""
    n_train = len(images.indices("train", settings["max_train_images"], seed))
    return {**dataset_fields(images), "n_train": n_train, "n_test": report["n"],
            "epochs": len(history), "train_seconds": round(sum(h["seconds"] for h in history), 1),
            **{f"test_{key}": value for key, value in report.items() if key != "n"}}


def records_over_seeds(chapter: Chapter, results: dict[str, StepResult]) -> list[dict[str, Any]]:
    """The test record (:func:`classifier_record`, with its ``seed``) of each data set's classifier at each seed
    of ``results`` (chapter 1's steps). The spread over seeds is the spread from training alone (initial weights,
    batch order, augmentation), all judged on the chapter seed's test images."""
    records = []
    for images in chapter.sets:
        for step_id, result in results.items():
            if step_id.split("/")[1] == step_name(images):
                seed = int(step_id.rsplit("/seed", 1)[1])
                records.append({**classifier_record(images, result.record["report"], result.record["history"],
                                                    chapter.settings, chapter.seed), "seed": seed})
    return records


def histories(headline: dict[str, StepResult]) -> dict[str, list[dict[str, float]]]:
    """Each headline classifier's training history (one record per epoch), keyed by data set label."""
    return {name: result.record["history"] for name, result in headline.items()}


def headline_records(chapter: Chapter, headline: dict[str, StepResult]) -> tuple[
        list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The chapter seed's classifier per data set: its ``metrics.json`` record, test report and ROC points."""
    records, reports, rocs = [], {}, {}
    for images in chapter.sets:
        result = headline[data_label(images)]
        reports[data_label(images)] = result.record["report"]
        rocs[data_label(images)] = (result.arrays["fpr"], result.arrays["tpr"])
        records.append(classifier_record(images, result.record["report"], result.record["history"], chapter.settings,
                                         chapter.seed))
    return records, reports, rocs


def at_chapter_seed(chapter: Chapter, results: dict[str, StepResult]) -> dict[str, StepResult]:
    """Each data set's result at the chapter's own seed, keyed by its label: the headline classifier."""
    return {data_label(images): results[f"01_classifiers/{step_name(images)}/seed{chapter.seed}"]
            for images in chapter.sets}


def seed_summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per data set: how many seeds, and test accuracy, balanced accuracy and AUC over them as ``mean ± standard
    deviation (min-max)`` (one seed: the value alone)."""
    frame = labelled(pd.DataFrame(records))
    rows = []
    for name, group in frame.groupby("dataset", sort=False):
        row = {"dataset": name, "seeds": len(group)}
        for column, label in (("test_accuracy", "accuracy"), ("test_balanced_accuracy", "balanced accuracy"),
                              ("test_auc", "AUC")):
            values = group[column].astype(float)
            row[label] = (f"{values.mean():.3f} ± {values.std(ddof=1):.3f} ({values.min():.3f}-{values.max():.3f})"
                          if len(values) > 1 else f"{values.iloc[0]:.3f} (one seed)")
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")


def beside_pneumoniamnist(records: list[dict[str, Any]], settings: dict[str, Any]) -> pd.DataFrame:
    """This run's PneumoniaMNIST classifiers (data sets read from a ``pneumoniamnist*.npz``; mean and standard
    deviation over seeds) under the published results on the same official test split; without such a data
    set in the run, the published rows alone."""
    published = paper.pneumoniamnist().assign(seeds=None)
    ours = [r for r in records if str(r["dataset"]).lower().startswith("pneumoniamnist")]
    if not ours:
        return published.set_index("source")
    frame = pd.DataFrame(ours)
    row = {"source": "this book", "model": "EfficientNet-B3 (random init)", "image_px": settings["image_size"],
           "accuracy": frame["test_accuracy"].mean(), "auc": frame["test_auc"].mean(), "seeds": len(frame),
           "accuracy sd": frame["test_accuracy"].std(ddof=1), "auc sd": frame["test_auc"].std(ddof=1)}
    return pd.concat([published, pd.DataFrame([row])], ignore_index=True).set_index("source").round(3)


def invariants(records: list[dict[str, Any]]) -> dict[str, bool]:
    """Chapter 1's self-check: every classifier's test accuracy, balanced accuracy and AUC inside their 95 %
    intervals within [0, 1], on every test image."""
    return {"accuracy, balanced accuracy and AUC inside their intervals in [0, 1]": all(
                within(r[f"test_{m}"], *r[f"test_{m}_ci"]) for r in records for m in ("accuracy", "balanced_accuracy",
                                                                                       "auc")),
            "the confusion matrix counts every test image": all(
                sum(map(sum, r["test_confusion_matrix"])) == r["n_test"] for r in records)}
