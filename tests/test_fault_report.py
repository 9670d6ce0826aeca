"""The reliability page is made from the fault tests' record: every recorded row appears, counts add up,
and a record call with an unknown category or outcome fails instead of writing a row nobody can read."""

import importlib.util
import json

import pytest
from _faults import record
from _paths import REPO


def _report():
    spec = importlib.util.spec_from_file_location("fault_report", REPO / "scripts" / "fault_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_faults_become_rows_and_counts_of_the_page(tmp_path, monkeypatch):
    log = tmp_path / "faults.jsonl"
    monkeypatch.setenv("MEDSEC_FAULT_RECORD", str(log))
    record("killed run", "SIGKILL 2.0 s into training", "resuming at epoch 2 of 3", "recovered", restarts=1)
    record("killed run", "SIGKILL 1.1 s into training", "resuming at epoch 1 of 3", "recovered", restarts=2)
    record("bad input", "a folder | with a pipe", "/tmp/pytest-of-root/pytest-7/test_x0/data/x: no class sub-folders",
           "refused")
    record("identifier leak", "chapters 1-2 on DICOMs", "0 of 5 identifiers in 300 files", "none found",
           identifiers_found=0, files_searched=300)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 4 and entries[0]["test"].endswith("test_recorded_faults_become_rows_and_counts_of_the_page")
    text = _report().page(entries, commit="abc1234", when="today", tests_passed=True)
    assert "| faults injected and inputs tried | 4 |" in text and "| runs restarted after SIGKILL | 3 |" in text
    assert "| identifiers found in any output | 0 |" in text and "| finished work lost | 0 |" in text
    assert "## Killed run (2 recovered)" in text and "## Bad input (1 refused)" in text
    assert "a folder \\| with a pipe" in text, "a pipe in a message must not break the table"
    assert "`TMP/data/x: no class sub-folders`" in text and "pytest-of-root" not in text
    assert "resuming at epoch 1 of 3" in text and "abc1234" in text and "all passed" in text


def test_a_record_outside_the_known_categories_fails():
    with pytest.raises(ValueError, match="category must be one of"):
        record("cosmic ray", "a bit flipped", "nothing", "recovered")
    with pytest.raises(ValueError, match="outcome one of"):
        record("bad input", "x", "y", "fine")
