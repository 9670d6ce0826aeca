"""A chapter's provenance covers exactly the library code that chapter used, so editing one chapter's
reporting leaves every other chapter's published page current."""

import importlib.util
import json
import subprocess
import sys

import pytest

from _paths import REPO
from medsec_utils import cache

CHAPTERS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPORTING = {chapter: f"reporting.{chapter[3:]}" for chapter in CHAPTERS}


def _book_extension():
    spec = importlib.util.spec_from_file_location("book_provenance", REPO / "book" / "_ext" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _imported_modules(chapter: str) -> set[str]:
    """The medsec_utils modules a fresh process holds after the chapter notebook's import lines."""
    cells = json.loads((REPO / "notebooks" / f"{chapter}.ipynb").read_text())["cells"]
    imports = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()
               if line.startswith(("from medsec_utils", "import medsec_utils"))]
    script = "\n".join(imports + ["from medsec_utils.reporting.provenance import used_modules",
                                  "print(' '.join(used_modules()))"])
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_every_chapter_has_its_own_reporting_module():
    assert set(REPORTING.values()) <= set(cache.code_fingerprint("reporting"))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_imports_its_own_reporting_module_and_no_other(chapter):
    used = _imported_modules(chapter)
    assert REPORTING[chapter] in used
    assert not used & (set(REPORTING.values()) - {REPORTING[chapter]}), used


def test_editing_one_chapters_reporting_leaves_the_other_pages_current(monkeypatch):
    extension = _book_extension()
    recorded = {chapter: cache.module_digests(sorted(_imported_modules(chapter))) for chapter in CHAPTERS}
    assert all(not extension._changed_modules(library) for library in recorded.values())
    edited = "reporting.federated"
    monkeypatch.setitem(cache._DIGESTS, edited, "0" * 12)
    stale = [chapter for chapter, library in recorded.items() if extension._changed_modules(library)]
    assert stale == ["05_federated"]
    assert extension._changed_modules(recorded["05_federated"]) == [edited]


def test_a_module_deleted_since_the_run_counts_as_changed():
    assert _book_extension()._changed_modules({"reporting_of_old": "abc"}) == ["reporting_of_old"]
