"""The record of the fault-injection tests, from which ``scripts/fault_report.py`` writes the book's page.

Every test that injects a fault or feeds a bad input calls :func:`record` with what was done and what the
user saw. With ``MEDSEC_FAULT_RECORD=<file.jsonl>`` set, each call appends one JSON line to that file; the
report script turns the file into ``book/reliability.md``. Without it, the call only checks its arguments,
so the tests run the same either way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CATEGORIES = ("killed run", "damaged cache", "concurrent runs", "bad input", "identifier leak", "same seed")
OUTCOMES = ("recovered", "refused", "read", "none found", "identical", "different")


def record(category: str, fault: str, user_sees: str, outcome: str, *, lost: str = "nothing", **figures) -> None:
    """One injected fault or bad input.

    Args:
        category: one of :data:`CATEGORIES`.
        fault: what was done, e.g. "SIGKILL during epoch 2 of 3 of classifier training".
        user_sees: what the user sees, e.g. the one-line message printed, verbatim where there is one.
        outcome: one of :data:`OUTCOMES`: recovered (resumed or recomputed to the same result), refused (one
            clear line, no traceback), read (read correctly), none found (no identifier in any output),
            identical / different (same-seed runs).
        lost: what finished work was lost ("nothing" unless a test shows otherwise).
        figures: counts for the summary, e.g. ``restarts=1``, ``files_searched=412``, ``identifiers_found=0``.
    """
    if category not in CATEGORIES or outcome not in OUTCOMES:
        raise ValueError(f"record({category!r}, ..., {outcome!r}): category must be one of {CATEGORIES}, "
                         f"outcome one of {OUTCOMES}")
    target = os.environ.get("MEDSEC_FAULT_RECORD")
    if target:
        entry = {"category": category, "fault": fault, "user_sees": user_sees, "outcome": outcome, "lost": lost,
                 "figures": figures, "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
