"""Provenance, ``metrics.json`` and figures of a chapter run.

Every artefact a notebook writes carries its provenance: parameters, data checksums, git commit,
package versions, device and wall time, plus a fingerprint of the library code, so the book can
tell when the code has changed since the run that made a page.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from . import cache, metrics
from .attacks import BUDGETED, AttackOutcome, predict_labels
from .data import ImageSet
from .defenses import MagNet, magnet_accuracy

PACKAGES = ("torch", "torchvision", "timm", "torchattacks", "diffusers", "torchmetrics", "numpy", "pandas",
            "scikit-learn", "scikit-image", "pydicom", "matplotlib", "seaborn", "papermill")
REPO_DIR = Path(__file__).resolve().parents[1]
PHANTOM_NOTICE = "PHANTOM images (built-in, synthetic): not patients"
CLASS_NAMES = ("Normal", "Pathology")


class Run:
    """One chapter run: collects datasets and figures, then writes ``metrics.json`` with provenance."""

    def __init__(self, chapter: str, output_dir: str | Path, params: dict[str, Any], settings: dict[str, Any],
                 device: torch.device) -> None:
        self.chapter = chapter
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.params = params
        self.settings = dict(settings)
        self.device = device
        self.datasets: list[dict[str, Any]] = []
        self.figures: list[str] = []
        self.started = time.time()
        self.started_utc = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.git = git_state()  # the commit the run started from, not the one checked out when it ends

    def add_dataset(self, images: ImageSet) -> None:
        """Record a data set used by this run."""
        self.datasets.append(images.provenance())

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        """Save ``fig`` as ``<output_dir>/<name>.png`` (it still shows in the notebook)."""
        path = self.output_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.figures.append(path.name)
        return path

    def provenance(self) -> dict[str, Any]:
        """Everything needed to trace this run's numbers back to code, data and machine."""
        return {
            "chapter": self.chapter, "parameters": self.params, "settings": self.settings,
            "datasets": self.datasets, "git": self.git, "library": cache.code_fingerprint(*used_modules()),
            "versions": package_versions(), "device": device_name(self.device),
            "started_utc": self.started_utc, "wall_time_s": round(time.time() - self.started, 1),
            "figures": self.figures,
        }

    def finish(self, results: list[dict[str, Any]], **extra: Any) -> Path:
        """Write ``metrics.json``: ``{"results": [...records...], **extra, "provenance": {...}}``."""
        path = self.output_dir / "metrics.json"
        cache.write_json_atomic(path, {"results": results, **extra, "provenance": self.provenance()})
        return path


def used_modules() -> list[str]:
    """The ``medsec_utils`` modules this process has imported: the code a run's results depend on."""
    return sorted(name.split(".", 1)[1] for name in sys.modules if name.startswith("medsec_utils.")
                  and name.count(".") == 1)


def git_state() -> dict[str, Any]:
    """Commit of the repository and whether library or notebooks had uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--", "medsec_utils", "notebooks"))
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results, and Python's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_name(device: torch.device) -> str:
    """``cpu (N threads, machine)`` or the CUDA device name."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {torch.get_num_threads()} threads, {platform.machine()}"


def data_label(images: ImageSet) -> str:
    """A name for figures and tables that says plainly when the images are phantoms."""
    return f"{images.name} [PHANTOM]" if images.is_phantom else images.name


def dataset_fields(images: ImageSet) -> dict[str, Any]:
    """The fields that tie a ``metrics.json`` record to its data set."""
    return {"dataset": images.name, "modality": images.modality, "phantom": images.is_phantom,
            "data_checksum": images.checksum}


def results_table(results: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Records as a table; a column with a ``<column>_ci`` partner shows as ``value [low, high]``."""
    frame = pd.DataFrame(results)
    shown = pd.DataFrame(index=frame.index)
    for column in columns:
        if f"{column}_ci" in frame.columns:
            shown[column] = [f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" for v, ci in zip(frame[column], frame[f"{column}_ci"])]
        else:
            shown[column] = frame[column]
    return shown


def plot_examples(sets: list[ImageSet], per_class: int = 4, seed: int = 0) -> plt.Figure:
    """A grid of test images per data set: ``per_class`` Normal then Pathology."""
    fig, axes = plt.subplots(len(sets), 2 * per_class, figsize=(2 * per_class * 1.3, len(sets) * 1.5),
                             squeeze=False)
    rng = np.random.default_rng(seed)
    for row, images in zip(axes, sets):
        test = images.indices("test")
        picks = [rng.choice(test[images.labels.numpy()[test] == label], per_class, replace=False) for label in (0, 1)]
        for ax, index in zip(row, np.concatenate(picks)):
            image = images.images[index].permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("Pathology" if images.labels[index] else "Normal", fontsize=7)
        row[0].set_ylabel(data_label(images), fontsize=7)
    _phantom_footer(fig, sets)
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


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> plt.Figure:
    """ROC curves ``{name: (fpr, tpr, auc)}`` on one axis."""
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _phantom_footer(fig: plt.Figure, sets: list[ImageSet]) -> None:
    if any(images.is_phantom for images in sets):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.0)


def classifier_record(images: ImageSet, report: dict[str, Any], n_train: int,
                      history: list[dict[str, float]]) -> dict[str, Any]:
    """One ``metrics.json`` record of a classifier's test results on ``images`` and its training cost."""
    return {**dataset_fields(images), "n_train": n_train, "n_test": report["n"],
            "epochs": len(history), "train_seconds": round(sum(h["seconds"] for h in history), 1),
            **{f"test_{key}": value for key, value in report.items() if key != "n"}}


def data_notice(sets: list[ImageSet]) -> str:
    """Markdown that says which results come from phantoms and repeats each data set's caveats."""
    lines = []
    for images in sets:
        kind = "**built-in phantom images, not patients**" if images.is_phantom else "real images"
        lines.append(f"- `{images.name}` ({images.modality}): {kind}; " + "; ".join(images.notes))
    return "\n".join(lines)


def attack_record(images: ImageSet, outcome: AttackOutcome, parameters: dict[str, Any],
                  accuracy_8bit: float | None = None) -> dict[str, Any]:
    """One ``metrics.json`` record of an attack on ``images``: accuracies with Wilson 95 % intervals, the
    direction of the errors, the median size of the perturbations that changed a diagnosis, and cost."""
    n, attacked, flipped = len(outcome.labels), outcome.attacked, outcome.flipped
    sizes = metrics.perturbation_sizes(outcome.clean[flipped], outcome.adversarial[flipped])
    return {
        **dataset_fields(images), "attack": outcome.attack, "epsilon": outcome.epsilon,
        "epsilon_255": None if outcome.epsilon is None else round(outcome.epsilon * 255, 3),
        "n": n, "n_attacked": int(attacked.sum()), "n_flipped": int(flipped.sum()),
        "clean_accuracy": outcome.clean_accuracy,
        "clean_accuracy_ci": metrics.wilson_interval(int(attacked.sum()), n),
        "robust_accuracy": outcome.robust_accuracy,
        "robust_accuracy_ci": metrics.wilson_interval(outcome.robust_correct, n),
        "robust_accuracy_8bit": accuracy_8bit,
        "pathology_to_normal_rate": outcome.flip_rate(1), "normal_to_pathology_rate": outcome.flip_rate(0),
        "n_pathology_attacked": int((attacked & (outcome.labels == 1)).sum()),
        "n_normal_attacked": int((attacked & (outcome.labels == 0)).sum()),
        "seconds_per_image": round(outcome.seconds_per_image, 4),
        **{f"median_{key}": float(np.median(values)) if len(values) else float("nan") for key, values in sizes.items()},
        "parameters": parameters,
    }


def plot_robustness_curves(records: list[dict[str, Any]]) -> plt.Figure:
    """Accuracy against the L-inf budget for each budgeted attack, with Wilson 95 % bands; eps 0 is clean."""
    frame = _labelled(pd.DataFrame([r for r in records if r["attack"] in BUDGETED]))
    names = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False, sharey=True)
    palette = dict(zip(BUDGETED, sns.color_palette("colorblind", len(BUDGETED))))
    for ax, name in zip(axes[0], names):
        rows = frame[frame["dataset"] == name]
        clean = rows.iloc[0]
        for attack, group in rows.groupby("attack", sort=False):
            group = group.sort_values("epsilon")
            x = np.r_[0.0, group["epsilon_255"]]
            y = np.r_[clean["clean_accuracy"], group["robust_accuracy"]]
            low = np.r_[clean["clean_accuracy_ci"][0], [ci[0] for ci in group["robust_accuracy_ci"]]]
            high = np.r_[clean["clean_accuracy_ci"][1], [ci[1] for ci in group["robust_accuracy_ci"]]]
            ax.plot(x, y, marker="o", label=attack, color=palette[attack])
            ax.fill_between(x, low, high, color=palette[attack], alpha=0.15, linewidth=0)
        ax.set(title=name, xlabel="L-inf budget eps (x 1/255)", ylim=(-0.02, 1.02))
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(sorted(set(np.r_[0.0, rows["epsilon_255"]])), labels=None)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0][0].set_ylabel("accuracy (attacked test images)")
    axes[0][-1].legend(title="attack", fontsize=7, loc="upper right")
    _phantom_notice(fig, frame)
    fig.tight_layout()
    return fig


def plot_adversarial_examples(outcomes: dict[str, dict[str, AttackOutcome]]) -> plt.Figure:
    """The paper's Fig. 2 idea: per data set, one Pathology image, then per attack the adversarial image
    and its perturbation, amplified so its largest change is half the grey range (amplification in the title)."""
    attack_names = list(next(iter(outcomes.values())))
    fig, axes = plt.subplots(len(outcomes), 1 + 2 * len(attack_names),
                             figsize=(1.55 * (1 + 2 * len(attack_names)), 1.8 * len(outcomes)), squeeze=False)
    for row, (name, by_attack) in zip(axes, outcomes.items()):
        index = _example_index(list(by_attack.values()))
        first = next(iter(by_attack.values()))
        _show(row[0], first.clean[index], f"original\n{CLASS_NAMES[int(first.labels[index])]}")
        row[0].set_ylabel(name, fontsize=7)
        for k, (attack, outcome) in enumerate(by_attack.items()):
            delta = outcome.adversarial[index] - outcome.clean[index]
            peak = float(delta.abs().max())
            predicted = CLASS_NAMES[int(outcome.adv_pred[index])]
            _show(row[1 + 2 * k], outcome.adversarial[index], f"{attack}\npredicted {predicted}")
            gain = 0.5 / peak if peak > 0 else 1.0
            _show(row[2 + 2 * k], (0.5 + gain * delta).clamp(0, 1), f"perturbation\nx{gain:.0f}")
    if any(name.endswith("[PHANTOM]") for name in outcomes):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.0)
    fig.tight_layout()
    return fig


def plot_perturbation_sizes(outcomes: dict[str, dict[str, AttackOutcome]]) -> plt.Figure:
    """Per data set and attack, the PSNR (dB) of every adversarial image that changed a diagnosis; higher is
    less visible. The dotted line is the lowest PSNR an L-inf budget of 2/255 allows."""
    fig, axes = plt.subplots(1, len(outcomes), figsize=(3.4 * len(outcomes), 2.9), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, (name, by_attack) in zip(axes[0], outcomes.items()):
        for position, outcome in enumerate(by_attack.values()):
            flipped = outcome.flipped
            psnr = metrics.perturbation_sizes(outcome.clean[flipped], outcome.adversarial[flipped])["psnr"]
            ax.scatter(position + rng.uniform(-0.2, 0.2, len(psnr)), psnr, s=4, alpha=0.5, color="#3182bd")
            if len(psnr) == 0:
                ax.text(position, 20 * np.log10(255 / 2), "none\nflipped", ha="center", va="bottom", fontsize=7)
        ax.axhline(20 * np.log10(255 / 2), color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(by_attack)), list(by_attack))
        ax.set(title=name, xlabel="attack")
    axes[0][0].set_ylabel("PSNR of flipped images (dB)")
    if any(name.endswith("[PHANTOM]") for name in outcomes):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.02)
    fig.tight_layout()
    return fig


def plot_error_directions(records: list[dict[str, Any]]) -> plt.Figure:
    """Per attack, the share of correctly diagnosed Pathology images turned Normal (missed disease) and of
    Normal images turned Pathology (false alarm)."""
    frame = _labelled(pd.DataFrame(records)).melt(
        id_vars=["dataset", "attack"], value_vars=["pathology_to_normal_rate", "normal_to_pathology_rate"],
        var_name="direction", value_name="share")
    frame["direction"] = frame["direction"].map({"pathology_to_normal_rate": "Pathology -> Normal (missed)",
                                                 "normal_to_pathology_rate": "Normal -> Pathology (false alarm)"})
    grid = sns.catplot(data=frame, x="attack", y="share", hue="direction", col="dataset", kind="bar",
                       palette=["#c0392b", "#7f8c8d"], height=2.8, aspect=1.1)
    grid.set_titles("{col_name}")
    grid.set(ylim=(0, 1), ylabel="share of correctly diagnosed images flipped")
    sns.move_legend(grid, "lower center", bbox_to_anchor=(0.5, -0.08), ncol=2, title=None)
    _phantom_notice(grid.figure, frame)
    return grid.figure


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Records with the data set named as ``data_label`` names it (``[PHANTOM]`` on phantoms)."""
    return frame.assign(dataset=[f"{d} [PHANTOM]" if p else d for d, p in zip(frame["dataset"], frame["phantom"])])


def _phantom_notice(fig: plt.Figure, frame: pd.DataFrame) -> None:
    if frame["dataset"].str.endswith("[PHANTOM]").any():
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.02)


def _example_index(outcomes: list[AttackOutcome]) -> int:
    """A Pathology image diagnosed correctly and flipped by as many of the attacks as possible."""
    first = outcomes[0]
    candidates = first.attacked & (first.labels == 1)
    if not candidates.any():
        candidates = first.attacked if first.attacked.any() else torch.ones_like(first.attacked)
    flips = sum(o.flipped.int() for o in outcomes) * candidates.int() + candidates.int()
    return int(torch.argmax(flips))


def _show(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    array = image.permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def compare_with_paper(records: list[dict[str, Any]], paper: pd.DataFrame) -> str:
    """Markdown verdict per modality and attack: is the paper's accuracy (``paper``: %, rows modality,
    columns ``clean`` and attack names) inside this run's Wilson 95 % interval, above it or below it?"""
    lines = ["| modality | attack | paper (%) | this run (%) [95 % CI] | verdict |", "| --- | --- | --- | --- | --- |"]
    phantom, shown = False, set()
    for record in records:
        if record["modality"] not in paper.index:
            continue
        phantom |= record["phantom"]
        rows = [] if record["dataset"] in shown else [("clean", record["clean_accuracy"], record["clean_accuracy_ci"])]
        shown.add(record["dataset"])
        rows.append((record["attack"], record["robust_accuracy"], record["robust_accuracy_ci"]))
        for attack, value, (low, high) in rows:
            if attack not in paper.columns:
                continue
            quoted = float(paper.loc[record["modality"], attack])
            verdict = ("consistent: the paper's value is inside our interval" if low * 100 <= quoted <= high * 100
                       else "ours higher than the paper" if low * 100 > quoted else "ours lower than the paper")
            lines.append(f"| {record['modality']} | {attack} | {quoted:.1f} | {value * 100:.1f} "
                         f"[{low * 100:.1f}, {high * 100:.1f}] | {verdict} |")
    if phantom:
        lines.append("\n**These results come from built-in phantoms, not patients: the verdicts only show the "
                     "comparison runs; they say nothing about the paper.**")
    return "\n".join(lines)


def budgets_matching_paper(records: list[dict[str, Any]], paper: pd.DataFrame) -> pd.DataFrame:
    """Per data set and budgeted attack in ``paper`` (%, rows modality): the budgets (x 1/255) at which the
    paper's accuracy lies inside this run's Wilson 95 % interval; the paper's own budget is unknown, so this
    says which budgets would reconcile the two."""
    rows = []
    for (dataset, modality, attack), group in pd.DataFrame(records).groupby(["dataset", "modality", "attack"], sort=False):
        if attack not in BUDGETED or modality not in paper.index or attack not in paper.columns:
            continue
        quoted = float(paper.loc[modality, attack])
        inside = [r.epsilon_255 for r in group.sort_values("epsilon").itertuples()
                  if r.robust_accuracy_ci[0] * 100 <= quoted <= r.robust_accuracy_ci[1] * 100]
        rows.append({"dataset": dataset, "attack": attack, "paper (%)": quoted,
                     "budgets matching the paper (x 1/255)": ", ".join(f"{e:g}" for e in inside) or "none run"})
    return pd.DataFrame(rows)


THREAT_MODELS = ("gray-box", "adaptive")


def defense_record(images: ImageSet, model: torch.nn.Module, defense: str, attack: str, threat_model: str,
                   x: torch.Tensor, y: torch.Tensor, changed: torch.Tensor, epsilon: float | None,
                   attack_seconds_per_image: float | None = None) -> dict[str, Any]:
    """One cell of the modality x attack x defence table: accuracy of ``model`` on ``(x, y)`` with a Wilson 95 %
    interval.

    ``changed`` marks the adversarial images (the others are clean, e.g. those an attack left alone). For a
    ``MagNet`` model the detector's rejection is an outcome: right for an adversarial image, wrong for a clean
    one; the record also gives the share of adversarial and clean images rejected and the accuracy on the
    adversarial images the detector let through. ``attack_seconds_per_image`` is what making ``x`` cost.
    """
    device = next(model.parameters()).device
    rejected = {}
    if isinstance(model, MagNet):
        scored = magnet_accuracy(model, x, y, changed)
        n_correct = scored["n_correct"]
        flagged = model.rejects(x)
        passed_adversarial = changed & ~flagged
        pred = predict_labels(model, x[passed_adversarial], device)
        rejected = {"rejected_adversarial_share": _share(flagged[changed]),
                    "rejected_clean_share": _share(flagged[~changed]),
                    "accuracy_of_passed_adversarial": _share(pred == y[passed_adversarial])}
    else:
        n_correct = int((predict_labels(model, x, device) == y).sum())
    low, high = metrics.wilson_interval(n_correct, len(y))
    return {**dataset_fields(images), "attack": attack, "defense": defense, "threat_model": threat_model,
            "epsilon": epsilon, "epsilon_255": None if epsilon is None else round(epsilon * 255, 3),
            "accuracy": n_correct / len(y), "ci_low": low, "ci_high": high, "n": len(y), "n_correct": n_correct,
            "n_adversarial": int(changed.sum()), "attack_seconds_per_image": attack_seconds_per_image, **rejected}


def changed_images(clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """Mask of the images an attack changed (torchattacks returns an image unchanged when it fails)."""
    return (adversarial != clean).flatten(1).any(1)


def _share(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if len(mask) else float("nan")


def defense_table(records: list[dict[str, Any]], threat_model: str) -> pd.DataFrame:
    """The accuracy table of one threat model: rows data set and attack, columns defence, cells
    ``accuracy [95 % CI]``."""
    frame = _labelled(pd.DataFrame([r for r in records if r["threat_model"] == threat_model]))
    frame["cell"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(frame["accuracy"], frame["ci_low"],
                                                                          frame["ci_high"])]
    table = frame.pivot(index=["dataset", "attack"], columns="defense", values="cell")
    order = [(d, a) for d in dict.fromkeys(frame["dataset"]) for a in dict.fromkeys(frame["attack"]) if (d, a) in table.index]
    return table.reindex(index=pd.MultiIndex.from_tuples(order, names=["dataset", "attack"]),
                         columns=list(dict.fromkeys(frame["defense"]))).rename_axis(columns=threat_model)


def plot_defense_heatmaps(records: list[dict[str, Any]]) -> plt.Figure:
    """Accuracy per attack (rows) and defence (columns): one heat map per data set and threat model."""
    frame = _labelled(pd.DataFrame(records))
    names = list(dict.fromkeys(frame["dataset"]))
    threat_models = [t for t in THREAT_MODELS if t in set(frame["threat_model"])]
    fig, axes = plt.subplots(len(threat_models), len(names), figsize=(3.6 * len(names), 2.6 * len(threat_models)),
                             squeeze=False)
    for row, threat_model in zip(axes, threat_models):
        for ax, name in zip(row, names):
            rows = frame[(frame["dataset"] == name) & (frame["threat_model"] == threat_model)]
            grid = rows.pivot(index="attack", columns="defense", values="accuracy").reindex(
                index=list(dict.fromkeys(rows["attack"])), columns=list(dict.fromkeys(rows["defense"])))
            sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="RdYlGn", cbar=False, ax=ax,
                        annot_kws={"fontsize": 7})
            ax.set_title(f"{name}: {threat_model}", fontsize=8)
            ax.set(xlabel="", ylabel="")
            ax.tick_params(labelsize=7)
    _phantom_notice(fig, frame)
    fig.tight_layout()
    return fig


def plot_defense_training(histories: dict[tuple[str, str], list[dict[str, float]]]) -> plt.Figure:
    """Training loss per epoch of each defence (``histories``: ``{(data set, defence): history}``)."""
    frame = pd.concat([pd.DataFrame(h).assign(dataset=name, defense=kind) for (name, kind), h in histories.items()],
                      ignore_index=True)
    grid = sns.relplot(data=frame, x="epoch", y="train_loss", hue="dataset", col="defense", kind="line", marker="o",
                       facet_kws={"sharey": False}, height=2.4, aspect=1.1)
    grid.set_titles("{col_name}")
    return grid.figure


def defense_costs(records: list[dict[str, Any]], histories: dict[tuple[str, str], list[dict[str, float]]]) -> pd.DataFrame:
    """Per data set and defence: clean accuracy, its change against the bare classifier ("none") and the
    training seconds (``histories`` keyed by ``(data_label, defence)`` as ``defense_for`` returned them)."""
    frame = _labelled(pd.DataFrame([r for r in records if r["attack"] == "none" and r["threat_model"] == "gray-box"]))
    clean = frame.pivot(index="dataset", columns="defense", values="accuracy")
    seconds = pd.Series({key: sum(h["seconds"] for h in history) for key, history in histories.items()}, dtype=float)
    return pd.DataFrame({"clean accuracy": clean.stack(), "clean accuracy cost": clean.sub(clean["none"], axis=0).stack(),
                         "training seconds": seconds}).rename_axis(["dataset", "defense"])


def paper_claims(records: list[dict[str, Any]], threat_model: str) -> pd.DataFrame:
    """The paper's four claims about its Table 1, each judged on this run's cells of ``threat_model``.

    A claim is "reproduced" when it holds on every data set, "not reproduced" when it fails on every one,
    and "partly" otherwise; the evidence column gives the numbers per data set.
    """
    frame = pd.DataFrame([r for r in records if r["threat_model"] == threat_model])
    attacked = frame[frame["attack"] != "none"]
    checks = {
        "AutoAttack and CW are the strongest attacks": _strongest_attacks,
        "the denoiser (HGD) gives the best defence": _hgd_best,
        "MagNet is weaker than HGD": _magnet_weaker,
        "adversarial training keeps accuracy above 80 % under attack": _adversarial_training_above_80,
    }
    rows = []
    for claim, check in checks.items():
        results = [(name, *result) for name, cells in attacked.groupby("dataset", sort=False)
                   if (result := check(cells)) is not None]
        held = [ok for _, ok, _ in results]
        verdict = ("not testable here" if not held else "reproduced" if all(held)
                   else "not reproduced" if not any(held) else "partly reproduced")
        rows.append({"claim": claim, "threat model": threat_model, "verdict": verdict,
                     "evidence": "; ".join(f"{name}: {text}" for name, _, text in results)})
    return pd.DataFrame(rows)


def _strongest_attacks(attacked: pd.DataFrame) -> tuple[bool, str] | None:
    """AutoAttack and CW both leave accuracy no higher than FGSM under every defence."""
    grid = attacked.pivot(index="defense", columns="attack", values="accuracy")
    if not {"fgsm", "autoattack", "cw"} <= set(grid.columns):
        return None
    ok = bool(((grid["autoattack"] <= grid["fgsm"]) & (grid["cw"] <= grid["fgsm"])).all())
    weakest = grid[["fgsm", "autoattack", "cw"]].idxmax(axis=1)
    return ok, "weakest attack per defence: " + ", ".join(f"{d} {a}" for d, a in weakest.items())


def _mean_attacked(attacked: pd.DataFrame) -> pd.Series:
    return attacked[attacked["attack"].isin(["fgsm", "autoattack", "cw"])].groupby("defense")["accuracy"].mean()


def _hgd_best(attacked: pd.DataFrame) -> tuple[bool, str] | None:
    """HGD has the highest mean accuracy over FGSM, AutoAttack and CW of all defences (a tie counts as holding)."""
    means = _mean_attacked(attacked).drop("none", errors="ignore")
    if "hgd" not in means or len(means) < 2:
        return None
    return bool(means["hgd"] >= means.max()), "mean accuracy under attack " + ", ".join(
        f"{d} {v:.3f}" for d, v in means.sort_values(ascending=False).items())


def _magnet_weaker(attacked: pd.DataFrame) -> tuple[bool, str] | None:
    """MagNet's mean accuracy over FGSM, AutoAttack and CW is below HGD's."""
    means = _mean_attacked(attacked)
    if not {"hgd", "magnet"} <= set(means.index):
        return None
    return bool(means["magnet"] < means["hgd"]), f"mean accuracy under attack magnet {means['magnet']:.3f}, hgd {means['hgd']:.3f}"


def _adversarial_training_above_80(attacked: pd.DataFrame) -> tuple[bool, str] | None:
    """The lower end of the 95 % interval of the adversarially trained model stays above 0.8 under every attack."""
    cells = attacked[attacked["defense"] == "adversarial_training"]
    if cells.empty:
        return None
    worst = cells.loc[cells["ci_low"].idxmin()]
    return bool((cells["ci_low"] > 0.8).all()), (f"lowest: {worst['attack']} {worst['accuracy']:.3f} "
                                                 f"[{worst['ci_low']:.3f}, {worst['ci_high']:.3f}]")


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
    _phantom_notice(grid.figure, long)
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
            _show(ax, x[index], CLASS_NAMES[int(y[index])])
        for ax in ax_row[len(picks):]:
            ax.axis("off")
        ax_row[0].set_ylabel(f"{name}\n{kind}", fontsize=7)
    if any(name.endswith("[PHANTOM]") for name in real):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.0)
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
    if any(key[0].endswith("[PHANTOM]") for key in keys):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.04)
    fig.tight_layout()
    return fig


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
            _show(row[2 * k], synthetic[index], f"synthetic d={audit['synthetic_distance'][index]:.3g}")
            _show(row[2 * k + 1], train[audit["nearest_train"][index]], "nearest train")
            if audit["near_copy"][index]:
                row[2 * k].title.set_color("red")
        row[0].set_ylabel(f"{name}\n{kind}", fontsize=7)
    if any(name.endswith("[PHANTOM]") for name, _ in pairs):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=1.0)
    fig.tight_layout()
    return fig


def replacement_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Test accuracy ``[95 % CI]`` per data set, generator and model, for each training set, and the drop
    (real minus synthetic, in percentage points) the paper reports."""
    frame = _labelled(pd.DataFrame(records))
    frame["cell"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(frame["accuracy"], frame["ci_low"],
                                                                          frame["ci_high"])]
    index = ["dataset", "generator", "model"]
    table = frame.pivot(index=index, columns="training_set", values="cell")
    accuracy = frame.pivot(index=index, columns="training_set", values="accuracy")
    table = table.reindex(columns=[c for c in ("real", "synthetic", "mixed") if c in table.columns])
    table["drop real -> synthetic (pp)"] = (100 * (accuracy["real"] - accuracy["synthetic"])).round(1)
    return table


def _over_floor(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Feature-check rows with ``over_floor``: FID over the real-vs-real floor (level 0) of the same data set and
    space, a scale-free number that starts at 1, so spaces of any scale share an axis."""
    frame = _labelled(pd.DataFrame(rows))
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
    _phantom_notice(grid.figure, frame)
    return grid.figure


def quality_record(images: ImageSet, generator: str, real: torch.Tensor, fake: torch.Tensor, feature_extractor: str,
                   seed: int, **extra: Any) -> dict[str, Any]:
    """One ``metrics.json`` record of image quality: FID, KID, precision and recall of the feature vectors
    ``fake`` against the held-out ``real`` ones, with the sample counts and the feature space named."""
    return {**dataset_fields(images), "section": "quality", "generator": generator,
            **metrics.fid_kid(real, fake, seed=seed), **metrics.precision_recall(real, fake),
            "n_samples": len(fake), "feature_extractor": feature_extractor, **extra}


def plot_quality(records: list[dict[str, Any]]) -> plt.Figure:
    """FID, precision and recall per generator and data set; "real train (floor)" is two disjoint real sets."""
    frame = _labelled(pd.DataFrame([r for r in records if r["section"] == "quality"]))
    long = frame.melt(id_vars=["dataset", "generator"], value_vars=["fid", "precision", "recall"], var_name="metric")
    grid = sns.catplot(data=long, x="generator", y="value", hue="dataset", col="metric", kind="bar", sharey=False,
                       height=2.6, aspect=1.2)
    grid.set_titles("{col_name}")
    grid.set_xticklabels(rotation=30, fontsize=7)
    extractors = "; ".join(dict.fromkeys(frame["feature_extractor"]))
    grid.figure.text(0.01, -0.06, f"features: {extractors}", fontsize=6, wrap=True)
    _phantom_notice(grid.figure, frame)
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


def audit_record(images: ImageSet, generator: str, space: str, audit: dict[str, Any]) -> dict[str, Any]:
    """One ``metrics.json`` record of the memorisation audit (the distances themselves stay out)."""
    return {**dataset_fields(images), "section": "audit", "generator": generator, "space": space,
            "near_copy_share": audit["near_copy_share"], "n_near_copies": int(audit["near_copy"].sum()),
            "closer_than_median_share": audit["closer_than_median_share"], "threshold": audit["threshold"],
            "median_synthetic_distance": float(np.median(audit["synthetic_distance"])),
            "median_heldout_distance": float(np.median(audit["heldout_distance"])),
            **{key: audit[key] for key in ("n_synthetic", "n_heldout", "n_train")}}


def site_pair_fields(sets: list[ImageSet]) -> dict[str, Any]:
    """``dataset_fields`` of a federation: one data set split across the sites, or one data set per site."""
    if len(sets) == 1:
        return dataset_fields(sets[0])
    return {"dataset": " | ".join(s.name for s in sets), "modality": " | ".join(s.modality for s in sets),
            "phantom": any(s.is_phantom for s in sets), "data_checksum": " | ".join(s.checksum for s in sets)}


def federated_records(fields: dict[str, Any], config: dict[str, Any], run: str, rows: list[dict[str, Any]],
                      feature_extractor: str) -> list[dict[str, Any]]:
    """``metrics.json`` records of one federation (``run`` "FedAvg") or baseline ("centralised", "local only,
    site 0", ...): FID and KID per round and model, with the federation's settings."""
    settings = {key: config[key] for key in ("split", "alpha", "image_size", "local_epochs", "networks")}
    return [{**fields, "section": "federated", "run": run, **settings, **row, "feature_extractor": feature_extractor}
            for row in rows]


def communication_record(fields: dict[str, Any], config: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes and seconds per FedAvg round; the first round also pays for starting the simulated sites."""
    later = rounds[1:] or rounds
    return {**fields, "section": "communication", "split": config["split"], "image_size": config["image_size"],
            "local_epochs": config["local_epochs"], "rounds": len(rounds),
            "bytes_per_round": float(np.mean([r["bytes_to_sites"] + r["bytes_from_sites"] for r in rounds])),
            "first_round_seconds": rounds[0]["seconds"], "seconds_per_later_round": float(np.mean([r["seconds"] for r in later]))}


def _fid_curves(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = _labelled(pd.DataFrame([r for r in records if r["section"] == "federated"]))
    frame = frame[(frame["run"] == "FedAvg") | (frame["model"] == "server")]
    frame["curve"] = np.where(frame["run"] == "FedAvg", "FedAvg " + frame["model"], frame["run"])
    fed, base = frame[frame["run"] == "FedAvg"], frame[frame["run"] != "FedAvg"]
    splits = fed.groupby(["dataset", "image_size"])["split"].unique()
    periods = fed.groupby(["dataset", "image_size", "split"])["local_epochs"].unique()
    panels = [fed]
    for (name, size, split), rows in base.groupby(["dataset", "image_size", "split"]):
        for each in (splits.get((name, size), []) if split == "pooled" else [split]):
            for period in periods.get((name, size, each), []):
                panels.append(rows.assign(split=each, local_epochs=period))
    curves = pd.concat(panels, ignore_index=True)
    curves["sites"] = curves["dataset"] + ", " + curves["split"] + ", " + curves["image_size"].astype(str) + " px"
    return curves


def plot_federated_fid(records: list[dict[str, Any]]) -> plt.Figure:
    """FID against local epochs: the FedAvg server and each site's model before averaging, beside centralised
    training on the pooled images and local-only training; one row per data set and split, one column per
    aggregation period."""
    curves = _fid_curves(records)
    grid = sns.relplot(data=curves, x="epoch", y="fid", hue="curve", col="local_epochs", row="sites", kind="line",
                       marker="o", markersize=3, height=2.1, aspect=1.5, facet_kws={"sharey": "row"})
    grid.set_titles("{row_name}; aggregate every {col_name} epoch(s)", size=7)
    grid.set(yscale="log", xlabel="local epochs per site", ylabel="FID")
    extractors = "; ".join(dict.fromkeys(curves["feature_extractor"]))
    grid.figure.text(0.01, -0.02, f"features: {extractors}", fontsize=6, wrap=True)
    _phantom_notice(grid.figure, curves)
    return grid.figure


def federated_summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per data set, split, size and aggregation period: the FID of the FedAvg server, of centralised and
    of local-only training over the second half of training (the median, as single rounds of a GAN jump by
    orders of magnitude), the untrained generator's FID, their ratios, and the sites' heterogeneity: the
    FID between their real images, raw and relative to the features' spread (comparable across
    modalities, whose feature spaces differ in scale)."""
    curves = _fid_curves(records)
    keys = ["dataset", "split", "image_size", "local_epochs"]
    end = curves.groupby(keys)["epoch"].transform("max")
    late = curves[(curves["epoch"] > 0) & (curves["epoch"] >= end / 2)]
    table = late.pivot_table(index=keys, columns="curve", values="fid", aggfunc="median")
    local = [c for c in table.columns if c.startswith("local only")]
    start = curves[(curves["epoch"] == 0) & (curves["curve"] == "FedAvg server")].groupby(keys)["fid"].first()
    summary = pd.DataFrame({"server_fid": table["FedAvg server"], "centralised_fid": table["centralised"],
                            "local_only_fid": table[local].mean(axis=1), "untrained_fid": start})
    summary["server_over_centralised"] = summary["server_fid"] / summary["centralised_fid"]
    summary["server_over_local_only"] = summary["server_fid"] / summary["local_only_fid"]
    summary["server_over_untrained"] = summary["server_fid"] / summary["untrained_fid"]
    hetero = _labelled(pd.DataFrame([r for r in records if r["section"] == "heterogeneity"]))
    hetero = hetero.set_index(["dataset", "split", "image_size"])
    for column, name in (("site_fid", "site_heterogeneity_fid"), ("site_fid_relative", "site_heterogeneity_relative")):
        values = hetero[column] if column in hetero else pd.Series(dtype=float)
        summary[name] = [values.get((d, s, z), np.nan) for d, s, z, _ in summary.index]
    return summary


def _heterogeneity_axis(frame: pd.DataFrame) -> tuple[str, str]:
    """The scale-free heterogeneity when the run recorded it, else the raw FID between the sites."""
    if "site_heterogeneity_relative" in frame and frame["site_heterogeneity_relative"].notna().all():
        return "site_heterogeneity_relative", "FID between the two sites' real images / their feature spread"
    return "site_heterogeneity_fid", "FID between the two sites' real training images (heterogeneity)"


def plot_heterogeneity(summary: pd.DataFrame) -> plt.Figure:
    """How different the sites' images are (x) against how far FedAvg stays from centralised training (y)."""
    from scipy.stats import spearmanr

    frame = summary.reset_index()
    x, label = _heterogeneity_axis(frame)
    fig, ax = plt.subplots(figsize=(6.2, 4))
    sns.scatterplot(data=frame, x=x, y="server_over_centralised", hue="dataset", style="split",
                    size="local_epochs", sizes=(30, 120), ax=ax)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="FedAvg server FID / centralised FID (second half)")
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    if len(frame) >= 3:
        rho, p = spearmanr(frame[x], frame["server_over_centralised"])
        ax.set_title(f"Spearman rho = {rho:.2f} (p = {p:.2g}, {len(frame)} federations)", fontsize=8)
    _phantom_notice(fig, frame)
    return fig


FEDERATED_FINDINGS = (  # the study's findings per modality, and the outcome each one predicts
    ("chest X-ray: FedAvg converges", "chest_xray", "converges"),
    ("CT: FedAvg is unstable", "ct", "unstable"),
    ("histology: FedAvg fails", "histology", "fails"),
)


def federated_claims(records: list[dict[str, Any]], converged_within: float = 1.5, failed_beyond: float = 3.0,
                     unstable_above: float = 1.5, learned_below: float = 0.5) -> pd.DataFrame:
    """The study's findings on FedAvg, each judged on this run's IID federations (the study's split).

    Per federation, on the FIDs of :func:`federated_summary` (second half of training): the server has
    *learned* when its FID is below ``learned_below`` times the untrained generator's; the federation
    *converges* when it has learned and is within ``converged_within`` times the centralised FID, *fails*
    when it has not learned or is beyond ``failed_beyond`` times (neither is testable when centralised
    training did not learn either: the GAN, not FedAvg, failed), and is *unstable* when its server FID
    swings ``unstable_above`` times as much as centralised training's over the same epochs
    (:func:`_swing`; a floor of 0.02 keeps a smooth baseline from making any wobble unstable). A finding
    is "reproduced" when it holds for every aggregation period and size of its modality, "not
    reproduced" when for none, "partly" otherwise. The last row tests the study's explanation across all
    federations: the more the sites' images differ (relative FID when recorded), the further FedAvg stays
    from centralised training (Spearman rho > 0 at p < 0.05).
    """
    table = _federation_outcomes(records, converged_within, failed_beyond, unstable_above, learned_below)
    iid = table[table["split"] == "iid"]
    rows = []
    for finding, modality, outcome in FEDERATED_FINDINGS:
        rows.append(_verdict(finding, [(r, r[outcome]) for _, r in iid[iid["modality"] == modality].iterrows()]))
    wide = iid[(iid["image_size"] >= 128) & (iid["local_epochs"] >= 5)]
    rows.append(_verdict("every 5 epochs at 128 px: FedAvg fails", [(r, r["fails"]) for _, r in wide.iterrows()]))
    rows.append(_homogeneity_verdict(table))
    return pd.DataFrame(rows)


def _federation_outcomes(records: list[dict[str, Any]], converged_within: float, failed_beyond: float,
                         unstable_above: float, learned_below: float) -> pd.DataFrame:
    """One row per federation: its FID ratios, swings and the three outcomes."""
    curves = _fid_curves(records)
    modality = dict(zip(curves["dataset"], curves["modality"]))
    rows = []
    for key, row in federated_summary(records).iterrows():
        keys = dict(zip(["dataset", "split", "image_size", "local_epochs"], key))
        panel = curves[np.logical_and.reduce([curves[name] == value for name, value in keys.items()])]
        server = panel[panel["curve"] == "FedAvg server"].set_index("epoch")["fid"].sort_index()
        server = server[server.index > 0]  # round 0 is the untrained model every run starts from
        pooled = panel[panel["curve"] == "centralised"].set_index("epoch")["fid"].reindex(server.index)
        swing, pooled_swing = _swing(server), _swing(pooled)
        ratio, learned = row["server_over_centralised"], bool(row["server_over_untrained"] < learned_below)
        testable = bool(row["centralised_fid"] < learned_below * row["untrained_fid"])
        rows.append({**keys, "modality": modality[key[0]], "server_over_centralised": ratio,
                     "server_over_untrained": row["server_over_untrained"],
                     "centralised_over_untrained": row["centralised_fid"] / row["untrained_fid"],
                     "server_swing": swing, "centralised_swing": pooled_swing,
                     "site_heterogeneity_fid": row["site_heterogeneity_fid"],
                     "site_heterogeneity_relative": row["site_heterogeneity_relative"],
                     "converges": learned and bool(ratio <= converged_within) if testable else None,
                     "fails": not learned or bool(ratio >= failed_beyond) if testable else None,
                     "unstable": bool(swing >= unstable_above * max(pooled_swing, 0.02))
                     if np.isfinite(swing * pooled_swing) else None})
    return pd.DataFrame(rows)


def _swing(fid: pd.Series) -> float:
    """Back-and-forth of a FID curve: per step, the total change of log FID beyond its net change
    (0 for a curve that only falls or only rises)."""
    steps = np.diff(np.log(fid.dropna().to_numpy(dtype=float)))
    return float((np.abs(steps).sum() - abs(steps.sum())) / len(steps)) if len(steps) else float("nan")


def _verdict(finding: str, results: list[tuple[pd.Series, bool | None]]) -> dict[str, str]:
    held = [ok for _, ok in results if ok is not None]
    verdict = ("not testable here" if not held else "reproduced" if all(held)
               else "not reproduced" if not any(held) else "partly reproduced")
    evidence = "; ".join(
        f"{r['dataset']} {r['image_size']} px every {r['local_epochs']}: server/centralised "
        f"{r['server_over_centralised']:.2f}, server/untrained {r['server_over_untrained']:.2f}, "
        f"centralised/untrained {r['centralised_over_untrained']:.2f}, swing {r['server_swing']:.2f} vs {r['centralised_swing']:.2f}"
        for r, _ in results)
    return {"finding": finding, "verdict": verdict, "evidence": evidence or "no such federation in this run"}


def _homogeneity_verdict(table: pd.DataFrame) -> dict[str, str]:
    from scipy.stats import spearmanr

    finding = "FedAvg does worse the more the sites' images differ"
    x, _ = _heterogeneity_axis(table)
    usable = table.dropna(subset=[x, "server_over_centralised"])
    if len(usable) < 3 or usable[x].nunique() < 2:
        return {"finding": finding, "verdict": "not testable here", "evidence": f"{len(usable)} federation(s)"}
    rho, p = spearmanr(usable[x], usable["server_over_centralised"])
    verdict = "not reproduced" if rho <= 0 else "reproduced" if p < 0.05 else "inconclusive (p >= 0.05)"
    return {"finding": finding, "verdict": verdict,
            "evidence": f"Spearman rho {rho:.2f} (p = {p:.2g}) over {len(usable)} federations, heterogeneity as {x}"}
