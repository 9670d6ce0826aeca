"""The README's shell commands work as written, in a clean shell at the repository root, once the environment is in.

Every fenced ```bash block of README.md runs in ``bash -euo pipefail`` with only PATH (without this Python
environment's ``bin``), HOME and a temporary MEDSEC_CACHE, as in a fresh terminal. A block that cannot run
here carries an HTML comment on the line before it, so that the README cannot rot silently:

    <!-- readme-test: run with: COMMAND -->  run COMMAND instead: a smaller variant, or `make -n TARGET`
    <!-- readme-test: skip: REASON -->       run nothing; a ``tests/...py::name`` in REASON must exist

A block without a marker runs as written. A block that names ``../shared/data`` is skipped when that folder
is absent, and one that runs ``make`` for real is skipped when ``.venv`` is older than what installs it
(``make`` would install first; ``make test`` installs before pytest starts).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _paths import REPO, SHARED

README = REPO / "README.md"
MARKER = re.compile(r"<!-- readme-test: (?:(skip): (?P<reason>.+)|(run with): (?P<command>.+)) -->")
COVERING_TEST = re.compile(r"(tests/\w+\.py)::(\w+)")


@dataclass(frozen=True)
class Block:
    """One ```bash block: where it starts, its text and the marker line before it (or None)."""

    line: int
    text: str
    marker: str | None


def bash_blocks(text: str) -> list[Block]:
    """Every ```bash block of ``text`` with the non-blank line just before its fence, if that is a marker."""
    lines, blocks = text.splitlines(), []
    for number, line in enumerate(lines):
        if line.strip() != "```bash":
            continue
        end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
        before = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        blocks.append(Block(number + 1, "\n".join(lines[number + 1:end]), before if "readme-test" in before else None))
    return blocks


BLOCKS = bash_blocks(README.read_text())


def test_every_marker_is_well_formed_and_sits_on_a_bash_block():
    markers = [line.strip() for line in README.read_text().splitlines() if "readme-test" in line]
    attached = [block.marker for block in BLOCKS if block.marker]
    assert sorted(markers) == sorted(attached), "a readme-test marker must be the line just before a ```bash block"
    for marker in markers:
        match = MARKER.fullmatch(marker)
        assert match, f"{marker}: write <!-- readme-test: skip: REASON --> or <!-- readme-test: run with: COMMAND -->"
        for path, name in COVERING_TEST.findall(match["reason"] or ""):
            assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{marker}: no test {path}::{name}"


def clean_env(cache: Path) -> dict[str, str]:
    """PATH without this Python environment's ``bin``, HOME and MEDSEC_CACHE: a fresh, non-activated shell."""
    scripts = Path(sys.prefix, "bin").resolve()
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != scripts]
    return {"PATH": os.pathsep.join(path), "HOME": os.environ["HOME"], "MEDSEC_CACHE": str(cache)}


def environment_is_installed() -> bool:
    """Whether ``make`` would leave the environment alone (``make -q env``)."""
    return subprocess.run(["make", "-q", "env"], cwd=REPO, capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: f"README.md:{block.line}")
def test_readme_block_runs(block, tmp_path):
    match = MARKER.fullmatch(block.marker) if block.marker else None
    if match and match["reason"]:
        pytest.skip(f"README.md:{block.line}: {match['reason']}")
    script = match["command"] if match else block.text
    if "../shared/data" in script and not SHARED.is_dir():
        pytest.skip(f"real data {SHARED} is not present")
    if re.search(r"^\s*make\b(?!.* -n\b)", script, re.M) and not environment_is_installed():
        pytest.skip("the environment in .venv is older than what installs it: run `make env` first")
    done = subprocess.run(["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", script], cwd=REPO,
                          env=clean_env(tmp_path / "cache"), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"README.md:{block.line}: `{script}` failed:\n{(done.stdout + done.stderr)[-3000:]}"
