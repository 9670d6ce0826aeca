"""The committed reference run's findings as tests: the words a page prints are computed again by the reporting code
from the records committed beside it, and must be the words the page shows; an edited number that crosses a
verdict's boundary changes them. So a new run whose numbers change a finding cannot keep the old words."""

from __future__ import annotations

import copy
import json

import pytest

from _paths import REPO
from medsec_utils import paper
from medsec_utils.reporting import attacks

REFERENCE = REPO / "book" / "reference"


def _markdown_outputs(notebook: str) -> list[str]:
    cells = json.loads((REFERENCE / notebook).read_text())["cells"]
    return ["".join(output["data"]["text/markdown"]) for cell in cells for output in cell.get("outputs", [])
            if "text/markdown" in output.get("data", {})]


def _chapter_2() -> tuple[list[dict], float]:
    record = json.loads((REFERENCE / "02_attacks" / "metrics.json").read_text())
    return record["results"], record["headline_epsilon"]


def _verdicts(records: list[dict], epsilon: float) -> str:
    return attacks.compare_with_paper(attacks.headline(records, epsilon).to_dict("records"), paper.undefended())


def test_chapter_2_verdicts_beside_the_study_are_those_its_committed_records_give():
    records, epsilon = _chapter_2()
    verdicts = _verdicts(records, epsilon)
    assert len(verdicts.splitlines()) == 2 + 3 * 4, "a header, then clean and the study's 3 attacks on 3 data sets"
    assert any(verdicts in text for text in _markdown_outputs("02_attacks/02_attacks.ipynb")), (
        "the page's verdict table differs from what its committed records give: execute the page again")


@pytest.mark.parametrize("verdict", ["ours higher than the paper", "ours lower than the paper",
                                     "consistent: the paper's value is inside our interval"])
def test_a_robust_accuracy_moved_across_the_studys_value_changes_its_verdict(verdict):
    records, epsilon = _chapter_2()
    study = paper.undefended()
    rows = [r for r in attacks.headline(records, epsilon).to_dict("records")
            if r["modality"] in study.index and r["attack"] in study.columns]
    row = rows[0]
    quoted = float(study.loc[row["modality"], row["attack"]]) / 100
    edited = copy.deepcopy(records)
    target = next(r for r in edited if r["dataset"] == row["dataset"] and r["attack"] == row["attack"]
                  and r["epsilon"] == row["epsilon"])
    low, high = {"ours higher than the paper": (quoted + 0.01, quoted + 0.05),
                 "ours lower than the paper": (quoted - 0.05, quoted - 0.01),
                 "consistent: the paper's value is inside our interval": (quoted - 0.01, quoted + 0.01)}[verdict]
    target["robust_accuracy_ci"] = [low, high]
    line = next(text for text in _verdicts(edited, epsilon).splitlines()
                if text.startswith(f"| {row['modality']} | {row['attack']} |"))
    assert line.endswith(f"| {verdict} |")
