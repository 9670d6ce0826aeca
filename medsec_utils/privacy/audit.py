"""The classifier audit of one data set: every output attack on every model, from the models' logits alone.

Each of the ``K`` membership models is attacked in turn with the others as its shadow models, and the scores of
all targets are pooled before they are judged (Carlini et al.'s protocol): ``K`` times the images, each scored by
a model that did and by one that did not train on it. Every image rests on ``K / 2 - 1`` shadow models that
trained on it and as many that did not (:func:`.attacks.balanced_shadows`; unequal counts bias LiRA). The pooled scores are not independent across
targets, so their bootstrap intervals are somewhat narrow. A DP model trained on model 0's half is attacked with
models 1 to ``K - 1`` as shadows; they were trained without DP, unlike the target, so LiRA's reference is the
attacker's best guess, not a copy of the target's training. Where a patient has several images, membership is
also judged per patient, on the mean score of their images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .attacks import MEMBERSHIP_ATTACKS, balanced_shadows
from .membership import FPR_POINTS, AttackReport, evaluate_scores

OUTPUT_ATTACKS = ("loss", "lira_offline", "lira_online")


def audit(logits: torch.Tensor, private: Mapping[float, torch.Tensor], labels: torch.Tensor, inside: np.ndarray,
          patients: np.ndarray, *, n_boot: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Records (one per target, attack and unit; and LiRA against the number of shadow models) and the ROC of each
    image-level attack as arrays ``roc/<target>/<attack>/fpr`` and ``.../tpr``.

    Args:
        logits: ``(K, n, classes)``, the membership models' logits on the ``n`` training images.
        private: the DP models' logits by epsilon, each trained on model 0's half.
        labels, patients: of the ``n`` images; ``inside``: bool ``(K, n)``, who trained on what.
    """
    count = len(logits)
    records: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    several = len(np.unique(patients)) < len(patients)
    targets = {"classifier": [(k, logits[k], [j for j in range(count) if j != k]) for k in range(count)]}
    targets.update({f"DP eps={e:g}": [(0, z, list(range(1, count)))] for e, z in private.items()})
    for target, runs in targets.items():
        for attack in OUTPUT_ATTACKS:
            members, outsiders, member_patients, outsider_patients = [], [], [], []
            for k, target_logits, shadows in runs:
                used = balanced_shadows(inside[shadows], count // 2 - 1, seed + k)
                scores = _scores(attack, target_logits, labels, logits[shadows], inside[shadows], used)
                members.append(scores[inside[k]])
                outsiders.append(scores[~inside[k]])
                member_patients.append(_by_patient(scores, patients, inside[k]))
                outsider_patients.append(_by_patient(scores, patients, ~inside[k]))
            report = evaluate_scores(attack, np.concatenate(members), np.concatenate(outsiders), n_boot=n_boot,
                                     seed=seed)
            records.append(_record(report, target, "image"))
            arrays[f"roc/{target}/{attack}/fpr"], arrays[f"roc/{target}/{attack}/tpr"] = report.roc_fpr, report.roc_tpr
            if several:
                records.append(_patient_record(attack, target, np.concatenate(member_patients),
                                               np.concatenate(outsider_patients), n_boot, seed))
    records += shadow_curve(logits, labels, inside, n_boot=n_boot, seed=seed)
    return records, arrays


def shadow_curve(logits: torch.Tensor, labels: torch.Tensor, inside: np.ndarray, *, n_boot: int,
                 seed: int) -> list[dict[str, Any]]:
    """LiRA on the pooled membership models with ``r`` = 1 to ``K / 2 - 1`` shadow models on each side (``r`` that
    trained on an image and ``r`` that did not, for every image): how its figures move with the shadow models."""
    count, made = len(logits), []
    for online in (False, True):
        for per_side in range(1, count // 2):
            members, outsiders = [], []
            for k in range(count):
                shadows = [j for j in range(count) if j != k]
                used = balanced_shadows(inside[shadows], per_side, seed + k)
                scores = MEMBERSHIP_ATTACKS["lira"].score(logits[k], labels, logits[shadows], inside[shadows],
                                                          online=online, used=used)
                members.append(scores[inside[k]])
                outsiders.append(scores[~inside[k]])
            report = evaluate_scores("lira", np.concatenate(members), np.concatenate(outsiders), n_boot=n_boot,
                                     seed=seed)
            made.append({**_record(report, "classifier", "image"), "attack": "lira_online" if online else
                         "lira_offline", "shadows": 2 * per_side})
    return made


def _patient_record(attack: str, target: str, members: np.ndarray, outsiders: np.ndarray, n_boot: int,
                    seed: int) -> dict[str, Any]:
    try:
        report = evaluate_scores(attack, members, outsiders, n_boot=n_boot, seed=seed,
                                 fprs=_resolvable(len(outsiders)))
    except ValueError as refused:  # too few patients: said in the record, not dropped silently
        return _refused(attack, target, "patient", len(members), len(outsiders), refused)
    return _record(report, target, "patient")


def _refused(attack: str, target: str, unit: str, members: int, outsiders: int, why: ValueError) -> dict[str, Any]:
    return {"target": target, "unit": unit, "attack": attack, "members": members, "nonmembers": outsiders,
            "refused": str(why)}


def _scores(attack: str, logits: torch.Tensor, labels: torch.Tensor, shadow_logits: torch.Tensor,
            shadow_in: np.ndarray, used: np.ndarray) -> np.ndarray:
    if attack == "loss":
        return MEMBERSHIP_ATTACKS["loss"].score(logits, labels)
    return MEMBERSHIP_ATTACKS["lira"].score(logits, labels, shadow_logits, shadow_in, online=attack == "lira_online",
                                            used=used)


def _by_patient(scores: np.ndarray, patients: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    names, which = np.unique(patients[chosen], return_inverse=True)
    return np.bincount(which, weights=scores[chosen], minlength=len(names)) / np.bincount(which, minlength=len(names))


def _resolvable(n_outsiders: int) -> tuple[float, ...]:
    """The FPR points a count of non-members can judge (1 % needs 100): fewer patients than images."""
    return tuple(f for f in FPR_POINTS if n_outsiders * f >= 1 - 1e-9) or (max(FPR_POINTS),)


def _record(report: AttackReport, target: str, unit: str) -> dict[str, Any]:
    return {"target": target, "unit": unit, **report.record()}


def score_audit(target: str, scores: Mapping[str, np.ndarray], is_member: np.ndarray, patients: np.ndarray, *,
                n_boot: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Records and ROC arrays (``roc/<target>/<attack>/fpr`` and ``.../tpr``) of attacks that scored one pool of
    images against one target (a generator pair of chapter 4: each image scored by its own class's generator);
    ``is_member`` says which images the target trained on. Per patient too where patients have several images."""
    records: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    is_member = np.asarray(is_member, bool)
    several = len(np.unique(patients)) < len(patients)
    for attack, values in scores.items():
        try:
            report = evaluate_scores(attack, values[is_member], values[~is_member], n_boot=n_boot, seed=seed)
        except ValueError as refused:  # too few held-out images (phantoms): said in the record, not dropped
            records.append(_refused(attack, target, "image", int(is_member.sum()), int((~is_member).sum()), refused))
            continue
        records.append(_record(report, target, "image"))
        arrays[f"roc/{target}/{attack}/fpr"], arrays[f"roc/{target}/{attack}/tpr"] = report.roc_fpr, report.roc_tpr
        if several:
            records.append(_patient_record(attack, target, _by_patient(values, patients, is_member),
                                           _by_patient(values, patients, ~is_member), n_boot, seed))
    return records, arrays
