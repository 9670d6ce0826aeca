"""Run the fault-injection tests and write the book's page of what was tried and what users see.

    .venv/bin/python scripts/fault_report.py            # runs the tests, writes book/reliability.md
    .venv/bin/python scripts/fault_report.py --record R # writes the page from an existing record

The tests (killed runs, damaged caches, concurrent runs, bad inputs, identifier leaks, same-seed runs) call
``tests/_faults.record`` for every fault they inject; with ``MEDSEC_FAULT_RECORD`` set, each call is one JSON
line. The page is made from those lines only, so every row is something a test did and observed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_killed_runs.py", "tests/test_cache_safety.py", "tests/test_bad_inputs.py", "tests/test_no_leaks.py"]
sys.path.insert(0, str(ROOT / "tests"))
from _faults import CATEGORIES  # noqa: E402



def run_tests(record: Path) -> int:
    """Run :data:`TESTS` with ``MEDSEC_FAULT_RECORD=record`` in a throw-away cache; return pytest's exit code."""
    env = {**os.environ, "MEDSEC_FAULT_RECORD": str(record),
           "MEDSEC_CACHE": tempfile.mkdtemp(prefix="medsec-faults-")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=ROOT, env=env, check=False).returncode


TEMPORARY = re.compile(r"/tmp/(?:pytest-of-[^/]+/pytest-\d+/)?[^/\s]+")


def _cell(text: object) -> str:
    """A table cell: pipes escaped, one line, the tests' temporary folders shown as ``TMP``."""
    return TEMPORARY.sub("TMP", str(text)).replace("|", "\\|").replace("\n", " ").strip() or " "


def _said(text: str) -> str:
    """What a user sees, as code (it is program output; underscores and stars stay as they are)."""
    return f"`{_cell(text).replace('`', chr(39))}`"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "medsec_utils", "tests"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + (" with uncommitted changes" if dirty else "")


def page(entries: list[dict], *, commit: str, when: str, tests_passed: bool | str | None) -> str:
    """The reliability page (MyST Markdown) for the recorded ``entries``."""
    by_category = {category: [e for e in entries if e["category"] == category] for category in CATEGORIES}
    figures = Counter()
    for entry in entries:
        figures.update({k: v for k, v in entry["figures"].items() if isinstance(v, (int, float))
                        and not isinstance(v, bool)})
    lost = [e for e in entries if e["lost"] != "nothing"]
    status = (f"recorded during a pytest run that ended `{tests_passed}`" if isinstance(tests_passed, str)
              else {True: "all passed", False: "**some failed**", None: "not rerun for this page"}[tests_passed])
    lines = [
        "# Fails safely: what was tried, and what you see",
        "",
        "Every row below is a fault a test injected or a bad input it fed, with the message the test saw, taken "
        "while it ran: the page is written by `scripts/fault_report.py` from the record of that test run, not "
        "typed. Rerun it with `.venv/bin/python scripts/fault_report.py`.",
        "",
        f"Recorded {when} at commit `{commit}`; the tests ({', '.join(f'`{t}`' for t in TESTS)}): {status}.",
        "",
        "| | count |",
        "| --- | --- |",
        f"| faults injected and inputs tried | {len(entries)} |",
        *[f"| {category} | {len(rows)} |" for category, rows in by_category.items() if rows],
        f"| runs restarted after SIGKILL | {figures.get('restarts', 0)} |",
        f"| identifiers found in any output | {figures.get('identifiers_found', 0)} |",
        f"| finished work lost | {len(lost)} |",
        "",
    ]
    for category, rows in by_category.items():
        if not rows:
            continue
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in Counter(r["outcome"] for r in rows).items())
        lines += [f"## {category[0].upper()}{category[1:]} ({outcomes})", "",
                  "| fault or input | what you see | outcome | lost | figures |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {_cell(r['fault'])} | {_said(r['user_sees'])} | {r['outcome']} | {_cell(r['lost'])} | "
                  f"{_cell(', '.join(f'{k}={v}' for k, v in r['figures'].items()))} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, help="write the page from this record instead of running the tests")
    parser.add_argument("--pytest-log", type=Path,
                        help="with --record: the output of the pytest run that wrote it, whose summary line goes on the page")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "reliability.md")
    args = parser.parse_args()
    tests_passed = None
    record = args.record
    if record is None:
        record = Path(tempfile.mkdtemp(prefix="medsec-record-")) / "faults.jsonl"
        tests_passed = run_tests(record) == 0
    entries = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not entries:
        print(f"{record}: no faults recorded; did the tests run with MEDSEC_FAULT_RECORD set?", file=sys.stderr)
        return 2
    if args.pytest_log:
        summary = re.findall(r"^=+ (.+ in [\d.]+s.*?) =+$", args.pytest_log.read_text(), flags=re.M)
        tests_passed = summary[-1] if summary else None
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.out.write_text(page(entries, commit=_commit(), when=when, tests_passed=tests_passed), encoding="utf-8")
    print(f"{args.out}: {len(entries)} faults and inputs" + ("" if tests_passed is not False else "; TESTS FAILED"))
    return 0 if tests_passed is not False else 1


if __name__ == "__main__":
    sys.exit(main())
