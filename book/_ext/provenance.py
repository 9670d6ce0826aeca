"""Sphinx extension: a provenance box at the top of every chapter page rendered from a run.

A chapter page is an executed notebook with a ``metrics.json`` beside it. The box shows the run's
commit, profile, data sets with checksums, device and wall time, and a warning when the library
code that the run imported (``medsec_utils`` modules, as recorded in its provenance) has changed since,
so a reader never mistakes old numbers for the output of the current code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes

from medsec_utils.cache import module_digests


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", add_provenance_box)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def add_provenance_box(app: Any, doctree: nodes.document) -> None:
    source = Path(app.env.doc2path(app.env.docname))
    metrics = source.with_name("metrics.json")
    if source.suffix != ".ipynb" or not metrics.is_file():
        return
    provenance = json.loads(metrics.read_text())["provenance"]
    boxes = [_run_box(provenance, metrics.name)]
    if "steps" in provenance:  # a page drawn from the results store: stale only when a result it uses is
        stale = _stale_steps(provenance["steps"])
        if stale:
            boxes.append(_stale_steps_box(stale, len(provenance["steps"])))
    else:
        changed = _changed_modules(provenance.get("library", {}))
        if changed:
            boxes.append(_changed_box(changed, provenance))
    section = next(iter(doctree.findall(nodes.section)), None)
    parent = section if section is not None else doctree
    position = 1 if section is not None else 0
    for offset, box in enumerate(boxes):
        parent.insert(position + offset, box)


def _run_box(provenance: dict[str, Any], name: str) -> nodes.admonition:
    git = provenance.get("git", {})
    commit = git.get("commit", "unknown")[:10] + (" (with uncommitted library changes)" if git.get("dirty") else "")
    params = provenance.get("parameters", {})
    items = [
        f"commit {commit}; profile {params.get('profile')}; seed {params.get('seed')}",
        f"device {provenance.get('device')}; wall time {provenance.get('wall_time_s')} s; "
        f"started {provenance.get('started_utc')}",
    ]
    for data in provenance.get("datasets", []):
        kind = "PHANTOM images, not patients" if data.get("is_phantom") else "real images"
        items.append(f"data {data['name']} ({data['modality']}, {kind}): {data['spec']}, "
                     f"checksum {data['checksum'][:23]}...")
    items.append(f"versions: " + ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items()))
    for (commit, device), steps in _steps_by_commit(provenance.get("steps", {})).items():
        dates = sorted(step["computed_utc"][:10] for step in steps)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        items.append(f"{len(steps)} stored result(s) computed at commit {commit[:10]} on {device}, {when} "
                     f"({round(sum(step['seconds'] for step in steps))} s of compute)")
    box = nodes.admonition(classes=["note"])
    box += nodes.title(text=f"Provenance of this run (from {name})")
    listing = nodes.bullet_list()
    for item in items:
        listing += nodes.list_item("", nodes.paragraph(text=item))
    box += listing
    return box


def _warning(title: str, text: str) -> nodes.admonition:
    box = nodes.admonition(classes=["warning"])
    box += nodes.title(text=title)
    box += nodes.paragraph(text=text)
    return box


def _changed_box(changed: list[str], provenance: dict[str, Any]) -> nodes.admonition:
    return _warning("The library changed since this run", (
        f"medsec_utils module(s) {', '.join(changed)} differ from the code that produced this page "
        f"(commit {provenance.get('git', {}).get('commit', 'unknown')[:10]}). The numbers below are that run's; "
        "rerun the chapter (make reference) to bring them up to date."))


def _changed_modules(recorded: dict[str, str | None]) -> list[str]:
    """Modules the run used whose source now differs (or is gone); modules added since, or used by other chapters
    only, do not count."""
    today = module_digests(list(recorded))
    return [name for name, digest in sorted(recorded.items()) if today[name] != digest]


def _steps_by_commit(steps: dict[str, dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for step in steps.values():
        grouped.setdefault((step["commit"], step["device"]), []).append(step)
    return grouped


def _stale_steps(steps: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per stored result the page uses, the modules it depends on whose source has changed since it was
    computed; results still current are left out."""
    changed = {step_id: _changed_modules(step.get("code", {})) for step_id, step in steps.items()}
    return {step_id: names for step_id, names in changed.items() if names}


def _stale_steps_box(stale: dict[str, list[str]], total: int) -> nodes.admonition:
    modules = sorted({name for names in stale.values() for name in names})
    return _warning("Results no longer current", (
        f"{len(stale)} of the {total} stored results this page uses depend on medsec_utils module(s) "
        f"{', '.join(modules)}, changed since they were computed (for example {next(iter(stale))}). The numbers below "
        "are those results; `scripts/compendium.py status` lists them and `make reference` computes them again."))
