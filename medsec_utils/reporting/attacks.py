"""Chapter 2 (``02_attacks``): records and figures of white-box attacks on the classifiers."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .. import metrics
from ..attacks import ATTACKS, AttackOutcome, attack_parameters, budgeted_attacks
from ..data import ImageSet
from ..store import Step, StepResult
from .common import CLASS_NAMES, data_label, dataset_fields, labelled, phantom_banner, results_table, show_image, within

Budgeted = tuple[str, str, float | None]  # (data set label, attack, budget or None)


def attack_record(images: ImageSet, outcome: AttackOutcome, parameters: dict[str, Any],
                  accuracy_8bit: float | None = None, sizes: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """One ``metrics.json`` record of an attack on ``images``: accuracies with Wilson 95 % intervals, the
    direction of the errors, the median size of the perturbations that changed a diagnosis (``sizes``, as
    ``metrics.perturbation_sizes`` gives them; computed from the outcome's images when None), and cost."""
    n, attacked, flipped = len(outcome.labels), outcome.attacked, outcome.flipped
    if sizes is None:
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


def from_steps(chapter_steps: list[Step], results: dict[str, StepResult],
               settings: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[Budgeted, AttackOutcome],
                                                  dict[Budgeted, np.ndarray]]:
    """Chapter 2's records and, per ``(data set label, attack, budget)``, the attack on its example images and
    the PSNR of every image it flipped, from the stored results of its steps (``medsec_utils.steps.attacks``)."""
    records, examples, psnr = [], {}, {}
    for step in chapter_steps:
        images, attack, eps = step.inputs["images"], step.inputs["attack"], step.inputs["eps"]
        result = results[step.id]
        outcome = _stored_outcome(attack, eps, result.arrays, result.record["seconds"])
        sizes = {name[len("size_"):]: values for name, values in result.arrays.items() if name.startswith("size_")}
        records.append(attack_record(images, outcome, attack_parameters(attack, eps, settings),
                                     result.record["robust_accuracy_8bit"], sizes))
        examples[data_label(images), attack, eps] = _example_outcome(images, step, result, settings)
        psnr[data_label(images), attack, eps] = sizes["psnr"]
    return records, examples, psnr


def _stored_outcome(attack: str, eps: float | None, arrays: dict[str, np.ndarray], seconds: float) -> AttackOutcome:
    """The predictions of a stored attack, without its images (records need no more)."""
    labels, clean_pred, adv_pred = (torch.from_numpy(arrays[name].astype(np.int64)) for name in
                                    ("labels", "clean_pred", "adv_pred"))
    none = torch.zeros(0)
    return AttackOutcome(attack, eps, labels, clean_pred, adv_pred, none, none, seconds)


def _example_outcome(images: ImageSet, step: Step, result: StepResult, settings: dict[str, Any]) -> AttackOutcome:
    """The stored attack on its few example images (the step's ``example_index``), with their adversarial
    versions rebuilt from the stored perturbations: what the example figure draws."""
    arrays, index = result.arrays, torch.from_numpy(result.arrays["example_index"].astype(np.int64))
    x, _ = images.tensors("test", settings["attack_images"], step.inputs["seed"])
    clean = x[index]
    adversarial = (clean + torch.from_numpy(arrays["example_perturbation"].astype(np.float32))).clamp(0, 1)
    full = _stored_outcome(step.inputs["attack"], step.inputs["eps"], arrays, result.record["seconds"])
    return AttackOutcome(full.attack, full.epsilon, full.labels[index], full.clean_pred[index],
                         full.adv_pred[index], clean, adversarial, full.seconds)


def plot_robustness_curves(records: list[dict[str, Any]]) -> plt.Figure:
    """Accuracy against the L-inf budget for each budgeted attack, with Wilson 95 % bands; eps 0 is clean."""
    frame = labelled(pd.DataFrame([r for r in records if r["attack"] in budgeted_attacks()]))
    names = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False, sharey=True)
    palette = dict(zip(budgeted_attacks(), sns.color_palette("colorblind", len(budgeted_attacks()))))
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
    phantom_banner(fig, frame["dataset"])
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
        show_image(row[0], first.clean[index], f"original\n{CLASS_NAMES[int(first.labels[index])]}")
        row[0].set_ylabel(name, fontsize=7)
        for k, (attack, outcome) in enumerate(by_attack.items()):
            delta = outcome.adversarial[index] - outcome.clean[index]
            peak = float(delta.abs().max())
            predicted = CLASS_NAMES[int(outcome.adv_pred[index])]
            show_image(row[1 + 2 * k], outcome.adversarial[index], f"{attack}\npredicted {predicted}")
            gain = 0.5 / peak if peak > 0 else 1.0
            show_image(row[2 + 2 * k], (0.5 + gain * delta).clamp(0, 1), f"perturbation\nx{gain:.0f}")
    phantom_banner(fig, outcomes, y=1.0)
    fig.tight_layout()
    return fig


def plot_perturbation_sizes(psnr: dict[str, dict[str, np.ndarray]]) -> plt.Figure:
    """Per data set and attack, the PSNR (dB) of every adversarial image that changed a diagnosis (``psnr``:
    ``{data set: {attack: values}}``); higher is less visible. The dotted line is the lowest PSNR an L-inf budget
    of 2/255 allows."""
    fig, axes = plt.subplots(1, len(psnr), figsize=(3.4 * len(psnr), 2.9), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, (name, by_attack) in zip(axes[0], psnr.items()):
        for position, values in enumerate(by_attack.values()):
            ax.scatter(position + rng.uniform(-0.2, 0.2, len(values)), values, s=4, alpha=0.5, color="#3182bd")
            if len(values) == 0:
                ax.text(position, 20 * np.log10(255 / 2), "none\nflipped", ha="center", va="bottom", fontsize=7)
        ax.axhline(20 * np.log10(255 / 2), color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(by_attack)), list(by_attack))
        ax.set(title=name, xlabel="attack")
    axes[0][0].set_ylabel("PSNR of flipped images (dB)")
    phantom_banner(fig, psnr)
    fig.tight_layout()
    return fig


def plot_error_directions(records: list[dict[str, Any]]) -> plt.Figure:
    """Per attack, the share of correctly diagnosed Pathology images turned Normal (missed disease) and of
    Normal images turned Pathology (false alarm)."""
    frame = labelled(pd.DataFrame(records)).melt(
        id_vars=["dataset", "attack"], value_vars=["pathology_to_normal_rate", "normal_to_pathology_rate"],
        var_name="direction", value_name="share")
    frame["direction"] = frame["direction"].map({"pathology_to_normal_rate": "Pathology -> Normal (missed)",
                                                 "normal_to_pathology_rate": "Normal -> Pathology (false alarm)"})
    grid = sns.catplot(data=frame, x="attack", y="share", hue="direction", col="dataset", kind="bar",
                       palette=["#c0392b", "#7f8c8d"], height=2.8, aspect=1.1)
    grid.set_titles("{col_name}")
    grid.set(ylim=(0, 1), ylabel="share of correctly diagnosed images flipped")
    sns.move_legend(grid, "lower center", bbox_to_anchor=(0.5, -0.08), ncol=2, title=None)
    phantom_banner(grid.figure, frame["dataset"])
    return grid.figure


def _example_index(outcomes: list[AttackOutcome]) -> int:
    """A Pathology image diagnosed correctly and flipped by as many of the attacks as possible."""
    first = outcomes[0]
    candidates = first.attacked & (first.labels == 1)
    if not candidates.any():
        candidates = first.attacked if first.attacked.any() else torch.ones_like(first.attacked)
    flips = sum(o.flipped.int() for o in outcomes) * candidates.int() + candidates.int()
    return int(torch.argmax(flips))


def compare_with_paper(records: list[dict[str, Any]], paper: pd.DataFrame) -> str:
    """Markdown verdict per modality and attack: is the paper's accuracy (``paper``: %, rows modality,
    columns ``clean`` and attack names) inside this run's Wilson 95 % interval, above it or below it?"""
    lines = ["| modality | attack | paper (%) | this run (%) [95 % CI] | verdict |", "| --- | --- | --- | --- | --- |"]
    shown = set()
    for record in records:
        if record["modality"] not in paper.index:
            continue
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
    return "\n".join(lines)


def budgets_matching_paper(records: list[dict[str, Any]], paper: pd.DataFrame) -> pd.DataFrame:
    """Per data set and budgeted attack in ``paper`` (%, rows modality): the budgets (x 1/255) at which the
    paper's accuracy lies inside this run's Wilson 95 % interval; the paper's own budget is unknown, so this
    says which budgets would reconcile the two."""
    rows = []
    for (dataset, modality, attack), group in pd.DataFrame(records).groupby(["dataset", "modality", "attack"], sort=False):
        if attack not in budgeted_attacks() or modality not in paper.index or attack not in paper.columns:
            continue
        quoted = float(paper.loc[modality, attack])
        inside = [r.epsilon_255 for r in group.sort_values("epsilon").itertuples()
                  if r.robust_accuracy_ci[0] * 100 <= quoted <= r.robust_accuracy_ci[1] * 100]
        rows.append({"dataset": dataset, "attack": attack, "paper (%)": quoted,
                     "budgets matching the paper (x 1/255)": ", ".join(f"{e:g}" for e in inside) or "none run"})
    return pd.DataFrame(rows)


def attack_table(names: list[str], epsilon: float, settings: dict[str, Any]) -> pd.DataFrame:
    """What each chosen attack is and the settings it runs with at the headline budget ``epsilon``."""
    return pd.DataFrame({name: {"what it is": ATTACKS[name].about, "settings": "; ".join(
        f"{key} = {value}" for key, value in attack_parameters(name, _budget(name, epsilon), settings).items())}
                         for name in names}).T


def headline(records: list[dict[str, Any]], epsilon: float) -> pd.DataFrame:
    """The records at the headline budget ``epsilon``, with the unbudgeted attacks (CW)."""
    frame = pd.DataFrame(records)
    return frame[(frame["epsilon"] == epsilon) | frame["epsilon"].isna()]


def headline_table(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Accuracy ``[95 % CI]`` per attack (rows, clean first) and data set (columns)."""
    first = rows.drop_duplicates("dataset")
    clean = first.assign(attack="none (clean)", robust_accuracy=first["clean_accuracy"],
                         robust_accuracy_ci=first["clean_accuracy_ci"])
    table = results_table(pd.concat([clean, rows]).to_dict("records"), ["dataset", "attack", "robust_accuracy"])
    return table.pivot(index="attack", columns="dataset", values="robust_accuracy").loc[["none (clean)", *names]]


def perturbation_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Median size of the perturbations that changed a diagnosis, per data set and attack."""
    sizes = rows[["dataset", "attack", "n_flipped", "median_linf", "median_l2", "median_psnr", "median_ssim"]].copy()
    sizes["median_linf_x255"] = sizes["median_linf"] * 255
    return sizes.set_index(["dataset", "attack"]).round(4)


def at_budget(outcomes: dict[Budgeted, Any], names: list[str], epsilon: float) -> dict[str, dict[str, Any]]:
    """``{data set: {attack: value}}`` at the headline budget (unbudgeted attacks at their only run), from values
    keyed ``(data set, attack, budget)``: outcomes, PSNR arrays."""
    datasets = dict.fromkeys(name for name, _, _ in outcomes)
    return {name: {attack: outcomes[name, attack, _budget(attack, epsilon)] for attack in names} for name in datasets}


def undefended_percent(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """This run's accuracy (%) per modality and data set in the study's layout: ``clean`` and each attack."""
    ours = rows.assign(value=rows["robust_accuracy"] * 100).pivot(
        index=["modality", "dataset"], columns="attack", values="value").reindex(columns=[c for c in columns if c != "clean"])
    ours.insert(0, "clean", rows.drop_duplicates("dataset").set_index(["modality", "dataset"])["clean_accuracy"] * 100)
    return ours.round(1)


def _budget(attack: str, epsilon: float) -> float | None:
    return epsilon if ATTACKS[attack].budgeted else None


def invariants(records: list[dict[str, Any]]) -> dict[str, bool]:
    """Chapter 2's self-check: robust accuracy inside its interval and never above clean accuracy (an attack only
    moves images the model got right), flips no more than the attacked images, and one classifier per data set
    (every attack's step saw the same clean accuracy: a step made with a classifier trained again would not)."""
    clean = {}
    for r in records:
        clean.setdefault(r["dataset"], set()).add(round(r["clean_accuracy"], 9))
    return {"robust accuracy inside its interval in [0, 1]": all(
                within(r["robust_accuracy"], *r["robust_accuracy_ci"]) for r in records),
            "robust accuracy at most clean": all(r["robust_accuracy"] <= r["clean_accuracy"] for r in records),
            "flips at most the attacked images": all(0 <= r["n_flipped"] <= r["n_attacked"] <= r["n"]
                                                     for r in records),
            "one classifier per data set: the same clean accuracy in every attack": all(
                len(values) == 1 for values in clean.values())}
