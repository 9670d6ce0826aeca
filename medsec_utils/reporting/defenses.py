"""Chapter 3 (``03_defenses``): the modality x attack x defence table, its figures and the study's claims."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from torch import nn

from .. import metrics, steps
from ..data import ImageSet
from ..steps.defenses import BARE, DETECTOR_AWARE, THREAT_MODELS, score_cell
from ..store import Step, StepResult
from .chapter import Chapter
from .common import ci_cell, data_label, dataset_fields, labelled, phantom_banner, verdict, within


def defense_record(images: ImageSet, model: nn.Module, defense: str, attack: str, threat_model: str,
                   x: torch.Tensor, y: torch.Tensor, changed: torch.Tensor, epsilon: float | None,
                   attack_seconds_per_image: float | None = None) -> dict[str, Any]:
    """One cell of the modality x attack x defence table: accuracy of ``model`` on ``(x, y)`` with a Wilson 95 %
    interval, scored by :func:`medsec_utils.defenses.score_defense`.

    ``changed`` marks the adversarial images (the others are clean, e.g. those an attack left alone); for a
    defence that rejects inputs the record also gives the shares rejected. ``attack_seconds_per_image`` is what
    making ``x`` cost.
    """
    return cell_record(images, defense, score_cell(model, attack, threat_model, x, y, changed, epsilon,
                                                   attack_seconds_per_image))


def cell_record(images: ImageSet, defense: str, cell: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` record of a scored cell (:func:`medsec_utils.steps.defenses.score_cell`): its counts
    with the accuracy and its Wilson 95 % interval."""
    cell = dict(cell)
    attack, threat_model, epsilon = cell.pop("attack"), cell.pop("threat_model"), cell.pop("epsilon")
    low, high = metrics.wilson_interval(cell["n_correct"], cell["n"])
    return {**dataset_fields(images), "attack": attack, "defense": defense, "threat_model": threat_model,
            "epsilon": epsilon, "epsilon_255": None if epsilon is None else round(epsilon * 255, 3),
            "accuracy": cell["n_correct"] / cell["n"], "ci_low": low, "ci_high": high, **cell}


@dataclass
class StoredCells:
    """Chapter 3's results as its page reads them: the table's cells (``records``), MagNet's cells under the
    detector-aware attack, the gray-box cells at every budget and each defence's training history (keyed
    ``(data set label, defence)``)."""

    records: list[dict[str, Any]]
    detector_aware: list[dict[str, Any]]
    at_budgets: list[dict[str, Any]]
    histories: dict[tuple[str, str], list[dict[str, float]]]


def from_steps(chapter_steps: list[Step], results: dict[str, StepResult]) -> StoredCells:
    """Chapter 3's cells from the stored results of its steps (``medsec_utils.steps.defenses``)."""
    cells = StoredCells([], [], [], {})
    for step in chapter_steps:
        images, kind, result = step.inputs["images"], step.inputs["kind"], results[step.id]
        for cell in result.record["cells"]:
            record = cell_record(images, kind, cell)
            (cells.detector_aware if record["attack"] == DETECTOR_AWARE else cells.records).append(record)
        cells.at_budgets += [cell_record(images, kind, cell) for cell in result.record["budget_cells"]]
        if kind != BARE:
            cells.histories[data_label(images), kind] = result.record["history"]
    return cells


def defense_table(records: list[dict[str, Any]], threat_model: str) -> pd.DataFrame:
    """The accuracy table of one threat model: rows data set and attack, columns defence, cells
    ``accuracy [95 % CI]``."""
    frame = labelled(pd.DataFrame([r for r in records if r["threat_model"] == threat_model]))
    frame["cell"] = [ci_cell(a, lo, hi) for a, lo, hi in zip(frame["accuracy"], frame["ci_low"], frame["ci_high"])]
    table = frame.pivot(index=["dataset", "attack"], columns="defense", values="cell")
    order = [(d, a) for d in dict.fromkeys(frame["dataset"]) for a in dict.fromkeys(frame["attack"]) if (d, a) in table.index]
    return table.reindex(index=pd.MultiIndex.from_tuples(order, names=["dataset", "attack"]),
                         columns=list(dict.fromkeys(frame["defense"]))).rename_axis(columns=threat_model)


def plot_defense_heatmaps(records: list[dict[str, Any]]) -> plt.Figure:
    """Accuracy per attack (rows) and defence (columns): one heat map per data set and threat model."""
    frame = labelled(pd.DataFrame(records))
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
    phantom_banner(fig, frame["dataset"])
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
    frame = labelled(pd.DataFrame([r for r in records if r["attack"] == "none" and r["threat_model"] == "gray-box"]))
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
        rows.append({"claim": claim, "threat model": threat_model, "verdict": verdict(ok for _, ok, _ in results),
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


def paper_cells(records: list[dict[str, Any]], threat_model: str, study: pd.DataFrame) -> pd.DataFrame:
    """Every cell of the study's Table 1 (``study``: :func:`medsec_utils.paper.table1`, %) beside this run's cell of
    the same modality, attack and defence under ``threat_model``: the study's value, ours with its 95 % interval,
    the difference (ours minus the study's, percentage points) and where the study's value lies against our
    interval. Cells this run did not make (a modality or defence left out) are left out."""
    frame = pd.DataFrame([r for r in records if r["threat_model"] == threat_model])
    rows = []
    for r in frame.itertuples():
        if (r.modality, r.attack) not in study.index or r.defense not in study.columns:
            continue
        quoted = float(study.loc[(r.modality, r.attack), r.defense])
        if pd.isna(quoted):
            continue
        low, high = 100 * r.ci_low, 100 * r.ci_high
        rows.append({"dataset": r.dataset, "phantom": r.phantom, "modality": r.modality, "attack": r.attack,
                     "defense": r.defense, "epsilon_255": r.epsilon_255, "study (%)": quoted,
                     "ours (%)": round(100 * r.accuracy, 1), "ours 95 % CI": f"[{low:.1f}, {high:.1f}]",
                     "difference (pp)": round(100 * r.accuracy - quoted, 1),
                     "verdict": _cell_verdict(quoted, low, high)})
    return labelled(pd.DataFrame(rows)).drop(columns=["phantom", "modality"]) if rows else pd.DataFrame(rows)


VERDICTS = ("inside our interval", "study above ours", "study below ours")


def _cell_verdict(quoted: float, low: float, high: float) -> str:
    inside, above, below = VERDICTS
    return inside if low <= quoted <= high else above if quoted > high else below


def verdict_counts(cells: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """How many of the study's cells fall inside, above or below our intervals, per threat model and data set
    (``cells``: :func:`paper_cells` per threat model), with the total."""
    frame = pd.concat([c.assign(**{"threat model": t}) for t, c in cells.items() if not c.empty])
    counts = frame.groupby(["threat model", "dataset"], sort=False)["verdict"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(VERDICTS), fill_value=0).rename_axis(columns="the study's value")
    return counts.assign(cells=counts.sum(axis=1))


def plot_paper_differences(cells: dict[str, pd.DataFrame]) -> plt.Figure:
    """Ours minus the study's accuracy (percentage points) per attack (rows) and defence (columns): one heat map
    per data set and threat model (``cells``: :func:`paper_cells` per threat model); a cell whose study value lies
    inside our 95 % interval is marked with a check."""
    threat_models = [t for t, frame in cells.items() if not frame.empty]
    names = list(dict.fromkeys(n for t in threat_models for n in cells[t]["dataset"]))
    fig, axes = plt.subplots(len(threat_models), len(names), figsize=(3.6 * len(names), 2.6 * len(threat_models)),
                             squeeze=False)
    for row, threat_model in zip(axes, threat_models):
        for ax, name in zip(row, names):
            rows = cells[threat_model][cells[threat_model]["dataset"] == name]
            order = dict(index=list(dict.fromkeys(rows["attack"])), columns=list(dict.fromkeys(rows["defense"])))
            grid = rows.pivot(index="attack", columns="defense", values="difference (pp)").reindex(**order)
            marks = rows.assign(mark=[f"{d:+.0f}" + (" ✓" if v == "inside our interval" else "")
                                      for d, v in zip(rows["difference (pp)"], rows["verdict"])])
            text = marks.pivot(index="attack", columns="defense", values="mark").reindex(**order).fillna("")
            sns.heatmap(grid, annot=text, fmt="", vmin=-60, vmax=60, center=0, cmap="RdBu", cbar=False, ax=ax,
                        annot_kws={"fontsize": 7})
            ax.set_title(f"{name}: {threat_model}, ours - study (pp)", fontsize=8)
            ax.set(xlabel="", ylabel="")
            ax.tick_params(labelsize=7)
    phantom_banner(fig, names)
    fig.tight_layout()
    return fig


def matched_budgets(budget_records: list[dict[str, Any]], study: pd.DataFrame) -> pd.DataFrame:
    """Per data set and budget: how far the undefended cells (FGSM, AutoAttack) lie from the study's, as the mean
    absolute difference in percentage points; ``matched`` marks the budget where they lie closest (on a tie, the
    first budget run, the smallest in chapter 2's order). The study does not state its budget: this is the
    budget at which its undefended column and ours agree best."""
    return _distances(paper_cells(budget_records, "gray-box", study))


def _distances(cells: pd.DataFrame) -> pd.DataFrame:
    if cells.empty:
        return cells
    bare = cells[cells["defense"] == "none"]
    distance = bare.groupby(["dataset", "epsilon_255"], sort=False)["difference (pp)"].apply(
        lambda d: round(float(d.abs().mean()), 1)).rename("undefended: mean |ours - study| (pp)").reset_index()
    best = distance.groupby("dataset", sort=False)["undefended: mean |ours - study| (pp)"].idxmin()
    return distance.assign(matched=distance.index.isin(best))


def at_matched_budgets(budget_records: list[dict[str, Any]], study: pd.DataFrame) -> pd.DataFrame:
    """The study's FGSM and AutoAttack cells, every defence, beside ours at each data set's matched budget
    (:func:`matched_budgets`)."""
    cells = paper_cells(budget_records, "gray-box", study)
    matches = _distances(cells)
    if matches.empty:
        return matches
    keep = pd.MultiIndex.from_frame(matches[matches["matched"]][["dataset", "epsilon_255"]])
    return cells[pd.MultiIndex.from_frame(cells[["dataset", "epsilon_255"]]).isin(keep)].reset_index(drop=True)


def chapter_2_records(chapter: Chapter, records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Chapter 2's clean and robust accuracy for every attack and budget of this chapter's undefended cells, from the
    predictions its steps stored in the run's store (computed now where missing): the same attack on the same
    classifier and test images, so they must agree. None when this chapter ran no attack."""
    attacked = [r for r in records if r["defense"] == "none" and r["attack"] != "none"]
    if not attacked:
        return None
    budgets = sorted({r["epsilon"] for r in attacked if r["epsilon"] is not None})
    params = {"seed": chapter.seed, "weights": chapter.weights, "nproc": chapter.nproc, "epsilons": budgets,
              "epsilon": budgets[0] if budgets else None, "attacks": sorted({r["attack"] for r in attacked})}
    chosen = steps.chapter_steps("02_attacks", chapter.sets, chapter.settings, params, chapter.device)
    results = chapter.results(chosen)
    made = []
    for step in chosen:
        arrays = results[step.id].arrays
        right = {when: float((arrays[f"{when}_pred"] == arrays["labels"]).mean()) for when in ("clean", "adv")}
        made.append({"dataset": step.inputs["images"].name, "attack": step.inputs["attack"],
                     "epsilon": step.inputs["eps"], "clean_accuracy": right["clean"], "robust_accuracy": right["adv"]})
    return made


def _as_in_chapter_2(record: dict[str, Any], attacked: list[dict[str, Any]]) -> bool:
    """An undefended cell scores as chapter 2 did: its clean accuracy without an attack, its robust accuracy with
    one (within half an image: float32 means)."""
    for other in attacked:
        if other["dataset"] != record["dataset"]:
            continue
        if record["attack"] == "none":
            return abs(record["accuracy"] - other["clean_accuracy"]) < 0.5 / record["n"]
        if (other["attack"], other["epsilon"]) == (record["attack"], record["epsilon"]):
            return abs(record["accuracy"] - other["robust_accuracy"]) < 0.5 / record["n"]
    return False


def invariants(records: list[dict[str, Any]], cells: dict[str, pd.DataFrame],
               attacked: list[dict[str, Any]] | None = None) -> dict[str, bool]:
    """Chapter 3's self-check: every cell's accuracy inside its interval, counts within the images, and every cell
    of the study's Table 1 that this run made judged with a verdict, under each threat model. Given chapter 2's
    records (:func:`chapter_2_records`), also that every undefended cell scores as chapter 2 did."""
    made = {t: len(frame) for t, frame in cells.items()}
    checks = {"accuracy inside its interval in [0, 1]": all(within(r["accuracy"], r["ci_low"], r["ci_high"])
                                                            for r in records),
              "correct and changed images within the images": all(
                  0 <= r["n_correct"] <= r["n"] and 0 <= r["n_adversarial"] <= r["n"] for r in records),
              "every Table 1 cell made has a verdict": all(
                  made[t] > 0 and set(frame["verdict"]) <= set(VERDICTS) for t, frame in cells.items())
              and len(set(made.values())) == 1}
    if attacked is not None:
        checks["undefended cells as in chapter 2 (same attack, classifier and images)"] = all(
            _as_in_chapter_2(r, attacked) for r in records if r["defense"] == "none")
    return checks
