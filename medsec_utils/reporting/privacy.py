"""Chapter 6 (``06_privacy``): tables, figures and verdicts of the membership audit and the DP-SGD yardstick."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..privacy.membership import FPR_POINTS
from ..store import StepResult
from ..steps import step_name
from .common import ci_cell, data_label, phantom_banner, within

if TYPE_CHECKING:
    from .chapter import Chapter

ATTACK_NAMES = {"loss": "loss threshold (Yeom et al.)", "lira_offline": "LiRA offline", "lira_online": "LiRA online",
                "gan_leaks": "GAN-Leaks (Chen et al.)", "gan_leaks_calibrated": "GAN-Leaks calibrated (Chen et al.)",
                "denoising_error": "denoising error (Matsumoto et al.)"}


def _tpr_name(fpr: float) -> str:
    return f"tpr@{fpr:.1%}".replace(".0%", "%")


def from_steps(chapter: Chapter, results: dict[str, StepResult]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The attack records of every data set (with ``dataset``), and one record per model: its kind (membership
    model or DP at a budget), test accuracy with its interval and, for DP, the guarantee spent."""
    attacks, models = [], []
    for images in chapter.sets:
        prefix, name = f"06_privacy/{step_name(images)}", data_label(images)
        for step_id, result in results.items():
            if step_id.startswith(prefix + "/") and "records" in result.record:  # the attack steps
                attacks += [{"dataset": name, **r} for r in result.record["records"]]
            elif step_id.startswith(prefix + "/") and "report" in result.record:  # the classifiers
                report, privacy = result.record["report"], result.record.get("privacy")
                models.append({"dataset": name, "model": step_id.rsplit("/", 1)[1],
                               "epsilon": privacy["epsilon"] if privacy else None,
                               "accuracy": report["accuracy"], "accuracy_ci": report["accuracy_ci"],
                               "auc": report["auc"], "auc_ci": report["auc_ci"], "privacy": privacy,
                               "changes": result.record.get("changes", [])})
    return attacks, models


def _cell(record: dict[str, Any], name: str) -> str:
    if name not in record or pd.isna(record.get(name)):
        return "-"
    text = ci_cell(record[name], record[f"{name}_low"], record[f"{name}_high"])
    return text if record.get(f"{name}_resolved", True) else f"{text} (0 FP: too few non-members)"


def attack_table(attacks: list[dict[str, Any]], unit: str = "image") -> pd.DataFrame:
    """Per data set, target model and attack: AUC and TPR at each FPR with 95 % intervals, at ``unit`` level."""
    rows = []
    for r in attacks:
        if r["unit"] != unit or "shadows" in r:
            continue
        row = {"dataset": r["dataset"], "target": r["target"], "attack": ATTACK_NAMES[r["attack"]],
               "members / non-members": f"{r['members']} / {r['nonmembers']}"}
        if "refused" in r:
            row["AUC"] = f"not judged: {r['refused']}"
        else:
            row["AUC"] = _cell(r, "auc")
            row.update({f"TPR at {f:.1%} FPR": _cell(r, _tpr_name(f)) for f in FPR_POINTS})
        rows.append(row)
    if not rows:
        return pd.DataFrame({"note": [f"no {unit}-level figures: no data set here has patients with several images, "
                                      "so per patient is per image"]})
    return pd.DataFrame(rows).set_index(["dataset", "target", "attack"])


def budget_table(attacks: list[dict[str, Any]], models: list[dict[str, Any]]) -> pd.DataFrame:
    """Privacy budget against utility and attack success, per data set: the membership models (no DP, mean
    accuracy) and each DP model: test accuracy and the strongest attack's AUC and TPR at 1 % FPR."""
    rows = []
    for name in dict.fromkeys(m["dataset"] for m in models):
        plain = [m for m in models if m["dataset"] == name and m["privacy"] is None]
        rows.append({"dataset": name, "epsilon": "none (no DP)",
                     "test accuracy": f"{np.mean([m['accuracy'] for m in plain]):.3f} (mean of {len(plain)})",
                     **_strongest(attacks, name, "classifier")})
        for m in sorted((m for m in models if m["dataset"] == name and m["privacy"]), key=lambda m: m["epsilon"]):
            target = f"DP eps={float(m['model'].removeprefix('dp_eps')):g}"
            rows.append({"dataset": name, "epsilon": f"{m['epsilon']:.2f} (delta {m['privacy']['delta']:g})",
                         "test accuracy": ci_cell(m["accuracy"], *m["accuracy_ci"]),
                         **_strongest(attacks, name, target)})
    return pd.DataFrame(rows).set_index(["dataset", "epsilon"])


def _strongest(attacks: list[dict[str, Any]], dataset: str, target: str) -> dict[str, str]:
    chosen = [r for r in attacks if r["dataset"] == dataset and r["target"] == target and r["unit"] == "image"
              and "shadows" not in r and "refused" not in r]
    best = max(chosen, key=lambda r: (r["tpr@1%"], r["auc"]))
    return {"strongest attack": ATTACK_NAMES[best["attack"]], "its AUC": _cell(best, "auc"),
            "its TPR at 1% FPR": _cell(best, "tpr@1%")}


def dp_gan_table(chapter: Chapter, results: dict[str, StepResult], attacks: list[dict[str, Any]]) -> pd.DataFrame:
    """The DC-GAN with a private discriminator beside chapter 4's DC-GAN on the chapter's first data set: the
    guarantee spent per class, chapter 4's quality figures (FID, KID, precision, recall) and GAN-Leaks' AUC and
    TPR at 1 % FPR (calibrated, the stronger form) with their intervals."""
    images = chapter.sets[0]
    found = results.get(f"06_privacy/{step_name(images)}/dp_dcgan/attacks")
    if found is None:
        return pd.DataFrame({"note": ["no DC-GAN with a private discriminator in this run (generators without dcgan)"]})
    name, rows = data_label(images), []
    for target, figures in found.record["quality"].items():
        leaks = next((r for r in attacks if r["dataset"] == name and r["target"] == target and r["unit"] == "image"
                      and r["attack"] == "gan_leaks_calibrated"), None)
        private = target.startswith("generator: DP")
        spent = ", ".join(f"{c} {e:.2f}" for c, e in found.record["epsilon_spent"].items()) if private else "none"
        rows.append({"generator": target.removeprefix("generator: ") + ("" if private else " (chapter 4)"),
                     "epsilon spent": spent, "FID": f"{figures['fid']:.1f}",
                     "KID": f"{figures['kid']:.4f}", "precision": f"{figures['precision']:.3f}",
                     "recall": f"{figures['recall']:.3f}",
                     "GAN-Leaks calibrated AUC": _cell(leaks, "auc") if leaks and "refused" not in leaks else "-",
                     "its TPR at 1% FPR": _cell(leaks, "tpr@1%") if leaks and "refused" not in leaks else "-"})
    return pd.DataFrame(rows).set_index("generator")


def what_an_attacker_learns(attacks: list[dict[str, Any]]) -> pd.DataFrame:
    """Per data set and target model, in words, from the intervals: an attack *identifies members* when its TPR
    at 1 % FPR has a lower bound above 1 % (more members than the false positives it pays for); it *tells
    members apart on average* when only its AUC's lower bound is above 0.5; otherwise nothing beyond chance."""
    rows = []
    for (dataset, target), group in pd.DataFrame(
            [r for r in attacks if r["unit"] == "image" and "shadows" not in r]).groupby(["dataset", "target"],
                                                                                         sort=False):
        if "refused" in group and group["refused"].notna().all():
            rows.append({"dataset": dataset, "target": target,
                         "what an attacker learns": f"not judged: {group['refused'].iloc[0]}"})
            continue
        group = group[group["refused"].isna()] if "refused" in group else group
        found = group[group["tpr@1%_low"] > 0.01]
        average = group[group["auc_low"] > 0.5]
        if len(found):
            best = found.loc[found["tpr@1%"].idxmax()]
            words = (f"identifies members: {ATTACK_NAMES[best['attack']]} finds {best['tpr@1%']:.1%} of them at 1 % "
                     f"false positives (interval from {best['tpr@1%_low']:.1%})")
        elif len(average):
            best = average.loc[average["auc"].idxmax()]
            words = (f"tells members apart on average only: {ATTACK_NAMES[best['attack']]} AUC {best['auc']:.3f} "
                     f"(interval from {best['auc_low']:.3f}), no member identified at 1 % false positives")
        else:
            words = "nothing beyond chance: every attack's intervals contain chance"
        rows.append({"dataset": dataset, "target": target, "what an attacker learns": words})
    return pd.DataFrame(rows).set_index(["dataset", "target"])


def claim_verdicts(attacks: list[dict[str, Any]]) -> pd.DataFrame:
    """The study's claim, "synthetic images protect patient data", judged per data set and generator from the
    intervals of every attack on the generator and on the classifier trained only on its images, per image and,
    where patients have several images, per patient: **refuted** when
    one identifies members (TPR at 1 % FPR with its lower bound above 1 %), **in doubt** when one tells members
    apart on average only (AUC's lower bound above 0.5), **holds at this audit** when every interval contains
    chance; **not judged** when too few held-out images left every attack unjudged."""
    rows = []
    frame = pd.DataFrame([r for r in attacks if "shadows" not in r])
    kinds = sorted({t.removeprefix("generator: ") for t in frame["target"] if t.startswith("generator: ")
                    and not t.startswith("generator: DP")})
    for dataset in dict.fromkeys(frame["dataset"]):
        for kind in kinds:
            mine = frame[(frame["dataset"] == dataset) & frame["target"].isin(
                [f"generator: {kind}", f"classifier on {kind} images"])]
            if mine.empty:
                continue
            judged = mine[mine["refused"].isna()] if "refused" in mine else mine
            if judged.empty:
                verdict, why = "not judged", mine["refused"].iloc[0]
            elif (judged["tpr@1%_low"] > 0.01).any():
                best = judged.loc[judged["tpr@1%_low"].idxmax()]
                verdict, why = "refuted", (f"{best['target']}: {ATTACK_NAMES[best['attack']]} identifies "
                                           f"{best['tpr@1%']:.1%} of the members at 1 % FPR (from "
                                           f"{best['tpr@1%_low']:.1%}), per {best['unit']}")
            elif (judged["auc_low"] > 0.5).any():
                best = judged.loc[judged["auc_low"].idxmax()]
                verdict, why = "in doubt", (f"{best['target']}: {ATTACK_NAMES[best['attack']]} AUC {best['auc']:.3f} "
                                            f"(from {best['auc_low']:.3f}) per {best['unit']}; no member identified "
                                            "at 1 % FPR")
            else:
                verdict, why = "holds at this audit", f"{len(judged)} attack(s) judged, every interval contains chance"
                if len(judged) < len(mine):
                    why += f"; {len(mine) - len(judged)} not judged ({mine['refused'].dropna().iloc[0]})"
            rows.append({"dataset": dataset, "generator": kind, "verdict": verdict, "why": why})
    return pd.DataFrame(rows).set_index(["dataset", "generator"]) if rows else pd.DataFrame(
        {"note": ["no generator attacked in this run"]})


# a step's part by the last of these markers in its id (the later ones are more specific)
PARTS = {"/model": "membership models", "/dp_eps": "DP-SGD classifiers", "/attacks": "attacks on the classifiers",
         "/generators/": "attacks on chapter 4's generators",
         "/synthetic_classifier/": "classifiers on synthetic images",
         "/dp_dcgan/": "DC-GAN with a private discriminator"}


def cost_table(steps: list[Any], results: dict[str, StepResult], costs: dict[str, float] | None) -> pd.DataFrame:
    """What each part of the chapter cost: its steps, the seconds they took where they were computed (their
    provenance) and the plan's seconds for them on this machine (``costs``: ``plan.unit_costs``; none measured
    here: "-"); the artefacts a step would rebuild are left out of both."""
    rows: dict[str, dict[str, Any]] = {}
    for step in steps:
        part = next(name for marker, name in reversed(list(PARTS.items())) if marker in step.id)
        row = rows.setdefault(part, {"steps": 0, "computed (s)": 0.0, "plan (s)": 0.0})
        row["steps"] += 1
        row["computed (s)"] += results[step.id].provenance["seconds"]
        row["plan (s)"] += sum(count * (costs or {}).get(unit, 0.0) for unit, count in step.units.items())
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("part")
    frame["computed (s)"] = frame["computed (s)"].round(1)
    frame["plan (s)"] = frame["plan (s)"].round(1) if costs else "-"
    return frame


def plot_rocs(chapter: Chapter, results: dict[str, StepResult]) -> plt.Figure:
    """Each data set's membership ROCs on log-log axes (Carlini et al.'s view): membership models, DP models and
    chapter 4's generators, with chance as the diagonal."""
    fig, axes = plt.subplots(1, len(chapter.sets), figsize=(4 * len(chapter.sets), 3.8), squeeze=False)
    for ax, images in zip(axes[0], chapter.sets):
        prefix = f"06_privacy/{step_name(images)}/"
        arrays = {key: value for step_id, result in results.items() if step_id.startswith(prefix)
                  for key, value in result.arrays.items() if key.startswith("roc/")}
        for key in sorted(k for k in arrays if k.endswith("/fpr")):
            _, target, attack, _ = key.split("/")
            if target.startswith("DP") and attack != "lira_offline":
                continue  # the DP models with one attack, to keep the panel readable
            ax.plot(np.maximum(arrays[key], 1e-4), np.maximum(arrays[key[:-3] + "tpr"], 1e-4), linewidth=1,
                    label=f"{target}: {ATTACK_NAMES[attack]}",
                    linestyle="-" if target == "classifier" else ":" if target.startswith("generator") else "--")
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), title=data_label(images),
               xlabel="false-positive rate", ylabel="true-positive rate")
        ax.legend(fontsize=6, loc="lower right")
    phantom_banner(fig, [data_label(images) for images in chapter.sets])
    fig.tight_layout()
    return fig


def plot_shadow_curve(attacks: list[dict[str, Any]]) -> plt.Figure:
    """LiRA's AUC and TPR at 1 % FPR against the number of shadow models, per data set and variant."""
    frame = pd.DataFrame([r for r in attacks if "shadows" in r])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for (dataset, attack), group in frame.groupby(["dataset", "attack"], sort=False):
        for ax, column in zip(axes, ("auc", "tpr@1%")):
            ax.errorbar(group["shadows"], group[column], yerr=[group[column] - group[f"{column}_low"],
                        group[f"{column}_high"] - group[column]], marker="o", capsize=3,
                        label=f"{dataset}: {ATTACK_NAMES[attack]}")
    for ax, title in zip(axes, ("AUC", "TPR at 1 % FPR")):
        ax.set(xlabel="shadow models", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def invariants(attacks: list[dict[str, Any]], models: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, bool]:
    """Chapter 6's self-check."""
    judged = [r for r in attacks if "refused" not in r]
    dp = [m for m in models if m["privacy"]]
    return {
        "AUC and TPR inside their intervals in [0, 1]": all(
            within(r["auc"], r["auc_low"], r["auc_high"]) and within(r["tpr@1%"], r["tpr@1%_low"], r["tpr@1%_high"])
            for r in judged),
        "TPR at 0.1 % FPR at most TPR at 1 %": all(r.get("tpr@0.1%", 0) <= r["tpr@1%"] for r in judged),
        "every DP model within its budget": all(
            m["privacy"]["epsilon"] <= float(m["model"].removeprefix("dp_eps")) + 1e-9 for m in dp),
        "every DP budget of the profile trained": len(dp) == len(settings["dp_epsilons"]) * len(
            {m["dataset"] for m in models}),
        "test accuracy inside its interval in [0, 1]": all(within(m["accuracy"], *m["accuracy_ci"]) for m in models),
    }
