"""The study's own figures (Kovalev et al.), read from ``paper.yaml`` and ``paper_table1.csv``: one place, never
typed into a notebook. Names follow the library's: attacks ``fgsm``, ``autoattack``, ``cw``; the study's
"denoiser" is ``hgd``; "none" is no attack or no defence.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

PAPER_FILE = Path(__file__).with_name("paper.yaml")
ATTACK_NAMES = {"none": "none", "FGSM": "fgsm", "AutoAttack": "autoattack", "CW": "cw"}
DEFENSE_NAMES = {"none": "none", "adversarial_training": "adversarial_training", "denoiser": "hgd", "magnet": "magnet"}


@cache
def facts() -> dict[str, Any]:
    """``paper.yaml``: the citation and the quoted figures."""
    return yaml.safe_load(PAPER_FILE.read_text())


def citation() -> str:
    """How every page cites the study."""
    return facts()["citation"]


def table1() -> pd.DataFrame:
    """Every cell of the study's Table 1: accuracy (%) with rows (modality, attack) and one column per defence."""
    cells = pd.read_csv(PAPER_FILE.with_name(facts()["table1"]))
    cells = cells.assign(attack=cells["attack"].map(ATTACK_NAMES), defense=cells["defense"].map(DEFENSE_NAMES))
    table = cells.pivot(index=["modality", "attack"], columns="defense", values="accuracy_percent")
    order = [(m, a) for m in dict.fromkeys(cells["modality"]) for a in ATTACK_NAMES.values() if (m, a) in table.index]
    return table.reindex(index=pd.MultiIndex.from_tuples(order, names=["modality", "attack"]),
                         columns=list(DEFENSE_NAMES.values()))


def undefended() -> pd.DataFrame:
    """Table 1's no-defence column as rows modality, columns ``clean`` and each attack (accuracy in %)."""
    column = table1()["none"].unstack("attack")
    return column.rename(columns={"none": "clean"})[["clean", "fgsm", "autoattack", "cw"]]


def replacement_drops() -> pd.DataFrame:
    """The study's lowest and highest accuracy drop (percentage points) per model when generated images
    replace real training data."""
    drops = facts()["replacement_drop_pp"]
    return pd.DataFrame(drops, index=["paper: lowest drop", "paper: highest drop"]).T.rename_axis("model")


def pneumoniamnist() -> pd.DataFrame:
    """Published PneumoniaMNIST results (not the study's): source, model, image size, accuracy and AUC."""
    return pd.DataFrame(facts()["pneumoniamnist"])
