"""How well membership scores tell a model's training images (members) from images it never saw (non-members).

Carlini, Chien, Nasr, Song, Terzis & Tramer (*Membership inference attacks from first principles*, IEEE S&P 2022,
arXiv:2112.03570) argue that an attack matters when it identifies *some* members with confidence, so the figure
to report is the true-positive rate at a low false-positive rate (0.1 % and 1 %), read off a ROC drawn on log-log
axes; AUC and balanced accuracy average over thresholds no attacker would use. Every figure here comes with a
95 % percentile bootstrap interval that resamples members and non-members separately.

A TPR at false-positive rate ``f`` is only resolved with at least ``1 / f`` non-members: with fewer, the threshold
that keeps FPR at most ``f`` admits no non-member at all, and the figure is the TPR at zero false positives
(``resolved`` says which). :func:`check_membership_split` refuses a split too small for the largest FPR asked for,
naming the parameter and what would do, before anything is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .. import metrics

FPR_POINTS: tuple[float, ...] = (0.001, 0.01)  # the false-positive rates Carlini et al. report TPR at
MIN_MEMBERS = 10  # fewer members than this make the TPR interval span most of [0, 1]


@dataclass
class AttackReport:
    """One attack on one model: AUC, TPR at each false-positive rate of ``tpr``, their 95 % intervals, the ROC
    (``roc_fpr``, ``roc_tpr``) and the counts it rests on. ``advantage`` is max(TPR - FPR) (Yeom et al. 2018);
    ``resolved[f]`` is False where fewer than 1 / f non-members make ``tpr[f]`` the TPR at zero false positives."""

    attack: str
    n_members: int
    n_nonmembers: int
    auc: float
    auc_ci: tuple[float, float]
    tpr: dict[float, float]
    tpr_ci: dict[float, tuple[float, float]]
    advantage: float
    resolved: dict[float, bool]
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)

    def record(self) -> dict[str, Any]:
        """A flat record for tables: ``auc``, ``auc_low``, ``auc_high``, ``tpr@0.1%``, ``tpr@0.1%_low``, ..."""
        row: dict[str, Any] = {"attack": self.attack, "members": self.n_members, "nonmembers": self.n_nonmembers,
                               "auc": self.auc, "auc_low": self.auc_ci[0], "auc_high": self.auc_ci[1],
                               "advantage": self.advantage}
        for fpr, value in self.tpr.items():
            name = f"tpr@{fpr:.1%}".replace(".0%", "%")
            row.update({name: value, f"{name}_low": self.tpr_ci[fpr][0], f"{name}_high": self.tpr_ci[fpr][1],
                        f"{name}_resolved": self.resolved[fpr]})
        return row


def tpr_at_fpr(is_member: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The largest true-positive rate of a threshold on ``scores`` (higher: member) whose false-positive rate is at
    most ``fpr``."""
    false_positive, true_positive, _ = roc_curve(is_member, scores, drop_intermediate=False)
    return float(true_positive[false_positive <= fpr].max())


def evaluate_scores(attack: str, member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                    fprs: Sequence[float] = FPR_POINTS, n_boot: int = 1000, seed: int = 0) -> AttackReport:
    """Judge one attack's scores (higher: more likely a member): AUC and TPR at each of ``fprs`` with bootstrap
    intervals, the advantage and the ROC.

    Raises:
        ValueError: a score that is not finite, or a split :func:`check_counts` refuses.
    """
    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    check_counts(len(members), len(nonmembers), fprs)
    for name, values in (("member", members), ("non-member", nonmembers)):
        if not np.isfinite(values).all():
            raise ValueError(f"{attack}: {int((~np.isfinite(values)).sum())} {name} scores are not finite")
    is_member = np.r_[np.ones(len(members), int), np.zeros(len(nonmembers), int)]
    scores = np.r_[members, nonmembers]
    roc_fpr, roc_tpr, _ = roc_curve(is_member, scores)
    interval = {"n_boot": n_boot, "seed": seed}
    return AttackReport(
        attack=attack, n_members=len(members), n_nonmembers=len(nonmembers),
        auc=float(roc_auc_score(is_member, scores)),
        auc_ci=metrics.bootstrap_interval(roc_auc_score, is_member, scores, **interval),
        tpr={f: tpr_at_fpr(is_member, scores, f) for f in fprs},
        tpr_ci={f: metrics.bootstrap_interval(lambda y, s, f=f: tpr_at_fpr(y, s, f), is_member, scores, **interval)
                for f in fprs},
        advantage=float(np.max(roc_tpr - roc_fpr)), resolved={f: len(nonmembers) * f >= 1 - 1e-9 for f in fprs},
        roc_fpr=roc_fpr, roc_tpr=roc_tpr)


def check_counts(n_members: int, n_nonmembers: int, fprs: Sequence[float] = FPR_POINTS) -> None:
    """Refuse too few images for the figures asked for, in one line naming the parameter and what would do."""
    if n_members < MIN_MEMBERS:
        raise ValueError(f"members: {n_members} images; a membership attack needs at least {MIN_MEMBERS}")
    needed = math.ceil(1 / max(fprs) - 1e-9)
    if n_nonmembers < needed:
        raise ValueError(f"non-members: {n_nonmembers} images cannot resolve a TPR at {max(fprs):.1%} FPR; give at "
                         f"least {needed} (1 / FPR), or fprs of at least {1 / max(n_nonmembers, 1):.2%}")


def check_membership_split(member_ids: Sequence[str], nonmember_ids: Sequence[str], *,
                           member_patients: Sequence[str] | None = None,
                           nonmember_patients: Sequence[str] | None = None,
                           fprs: Sequence[float] = FPR_POINTS) -> None:
    """Refuse a member/non-member split that would flatter or break an attack, before anything is trained: an
    image (by id) or, where patients are known, a patient on both sides, or too few images (:func:`check_counts`).

    Raises:
        ValueError: one line naming what is shared or missing and what would be accepted.
    """
    shared = sorted(set(member_ids) & set(nonmember_ids))
    if shared:
        raise ValueError(f"members and non-members share {len(shared)} image(s) (first: {shared[0]!r}); "
                         "non-members must be images the model never trained on")
    if (member_patients is None) != (nonmember_patients is None):
        raise ValueError("patients: give them for both members and non-members, or for neither")
    if member_patients is not None and nonmember_patients is not None:
        both = sorted(set(member_patients) & set(nonmember_patients))
        if both:
            raise ValueError(f"members and non-members share {len(both)} patient(s) (first: {both[0]!r}); put all "
                             "of a patient's images on one side")
    check_counts(len(member_ids), len(nonmember_ids), fprs)
