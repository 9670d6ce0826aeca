"""The results store: what a run's pages need, kept per step and committed, so a book builds over many short runs.

A *step* is one unit of a chapter's work that the plan counts: a classifier with its test evaluation, one attack
at one budget on one data set, and so on. Its result is small (records as JSON, the arrays a figure draws as
``.npz``) and lives in ``<store>/<step id>/`` beside ``step.json``, the marker written last. The marker holds

- the step's *key parts*: its settings, data checksums and seed, the versions of the packages it depends on,
  the SHA-256 of exactly the ``medsec_utils`` modules it depends on and of its recipe (the function that
  computes it);
- its provenance: git commit, date, device, seconds; and the SHA-256 of every file.

A stored step is *current* when its recorded key parts equal today's; then it is never computed again, and
looking it up needs no model. Else it is *stale* (status names the parts that changed), *damaged* (a file
missing or altered: one line says so and it is computed again) or *missing*. Models stay in the volatile artefact
cache (a step may store weights in its result, as chapter 4's generator steps do), except the models that steps
share (``Step.needs``: the chapter-1 classifiers that chapters 2 to 6 attack, defend and measure with). These are
kept in ``<store>/_needs/<kind>/<key>/`` by the first step that uses them and put back into the cache before
every later step: training is not bitwise reproducible across machines and thread counts, so a session that
trained its own copy would attack other weights than the stored steps did. Each step records the fingerprint of
the shared models it used; one made with another version than the store keeps is *stale*.

Writes are atomic per step: the files and the marker go to a temporary folder that replaces the step's folder
in one rename, so a run killed mid-step loses only that step and a replaced step leaves none of its old files.
A lock per step (in the artefact cache, not the store) keeps two runs from computing one step twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import cache

MARKER = "step.json"
RECORD = "result.json"
ARRAYS = "arrays.npz"
LOCKS = "store_locks"  # under the artefact cache root
NEEDS = "_needs"  # under the store root: the shared models (Step.needs) every step computes with
CORE_PACKAGES = ("torch", "numpy")
REPO_DIR = Path(__file__).resolve().parents[1]


@dataclass
class StepResult:
    """What a step leaves for the pages: a JSON-able ``record`` and named ``arrays`` (small: curves, masks, a few
    uint8 or float16 images)."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # filled when read from the store


@dataclass
class Step:
    """One durable unit of a chapter: ``recipe(**inputs)`` computes it. ``parts`` (settings, data checksum, seed)
    with ``modules`` (the ``medsec_utils`` modules it depends on), ``packages`` and the recipe's source make its
    key; ``units`` are the plan's units of work it costs (``{"classifier_train": images, ...}``), ``needs`` the
    artefacts it rebuilds when the cache lacks them (``[("classifier", parts, units)]``); the store keeps a copy of
    them unless ``keep_needs`` is False (a model only its own step uses, such as chapter 1's other seeds).
    ``after``: steps whose stored results the recipe reads (``recipe(upstream, **inputs)``, ``upstream`` by step
    id); their keys are part of this one's, so a change that makes one of them stale makes this one stale too."""

    id: str
    parts: dict[str, Any]
    modules: tuple[str, ...]
    recipe: Callable[..., StepResult]
    inputs: dict[str, Any] = field(default_factory=dict)
    packages: tuple[str, ...] = CORE_PACKAGES
    units: dict[str, float] = field(default_factory=dict)
    needs: list[tuple[str, dict[str, Any], dict[str, float]]] = field(default_factory=list)
    after: list[Step] = field(default_factory=list)
    keep_needs: bool = True

    def key_parts(self) -> dict[str, Any]:
        """Everything that determines the result, as the marker records it."""
        parts = {"parts": self.parts, "code": cache.code_fingerprint(*self.modules),
                 "recipe": _recipe_digest(self.recipe), "packages": {name: _version(name) for name in self.packages}}
        if self.after:
            parts["after"] = {step.id: cache.artefact_key(step.key_parts()) for step in self.after}
        return json.loads(json.dumps(parts, sort_keys=True, default=str))

    def compute(self, upstream: Mapping[str, StepResult] | None = None) -> StepResult:
        """The recipe's result; a step with ``after`` needs its upstream results (:meth:`Store.get` gives them)."""
        if self.after:
            missing = [step.id for step in self.after if upstream is None or step.id not in upstream]
            if missing:
                raise StoreError(f"{self.id} reads the stored results of {', '.join(missing)}: compute it through "
                                 "Store.get, which computes or loads them first")
            return self.recipe(upstream, **self.inputs)
        return self.recipe(**self.inputs)


class StoreError(RuntimeError):
    """A store that cannot be used as asked, in one line naming the folder or step and the fix."""


class Store:
    """The results store under ``root`` (for ``make reference``: ``book/reference/store``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, step: Step) -> Path:
        return self.root / step.id

    def state(self, step: Step) -> tuple[str, str]:
        """``("current" | "stale" | "damaged" | "missing", why)``: why names the changed key parts or the damage."""
        folder = self.folder(step)
        marker = folder / MARKER
        if not marker.is_file():
            return "missing", ""
        try:
            recorded = json.loads(marker.read_text())
            damage = _damage(folder, recorded["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return "damaged", f"{MARKER} unreadable ({error})"
        if damage:
            return "damaged", damage
        changed = changed_parts(recorded.get("key", {}), step.key_parts()) or self._other_needs(
            recorded.get("provenance", {}).get("needs", {}))
        return ("stale", changed) if changed else ("current", "")

    def kept(self, kind: str, parts: dict[str, Any]) -> Path:
        """Where the store keeps the shared model of ``kind`` and ``parts`` (a copy of its artefact-cache folder)."""
        return self.root / NEEDS / kind / cache.artefact_key(parts)

    def keeps(self, kind: str, parts: dict[str, Any]) -> bool:
        return (self.kept(kind, parts) / cache.MARKER).is_file()

    def _other_needs(self, used: Mapping[str, str]) -> str:
        """Which shared model a step used in another version than the store keeps; "" when none."""
        for entry, fingerprint in sorted(used.items()):
            kept = self.root / NEEDS / entry
            if (kept / cache.MARKER).is_file() and cache.folder_fingerprint(kept) != fingerprint:
                return f"made with another version of {entry} than {NEEDS}/ keeps"
        return ""

    def _bring_needs(self, step: Step) -> None:
        """Put the kept version of every shared model ``step`` needs into the artefact cache (one line when it
        was missing there or another version)."""
        for kind, parts, _ in step.needs:
            if self.keeps(kind, parts):
                said = cache.adopt(kind, parts, self.kept(kind, parts))
                if said:
                    print(f"medsec store: {said}", file=sys.stderr, flush=True)

    def _keep_needs(self, step: Step) -> dict[str, str]:
        """Keep a copy of each shared model ``step`` used that the store lacks (unless ``step.keep_needs`` is
        False); ``{kind/key: fingerprint}``."""
        used = {}
        for kind, parts, _ in step.needs:
            folder = cache.cache_root() / kind / cache.artefact_key(parts)
            if not (folder / cache.MARKER).is_file():
                continue  # the recipe did not build it: nothing of it in the result
            kept = self.kept(kind, parts)
            if step.keep_needs and not (kept / cache.MARKER).is_file():
                cache.copy_folder_atomic(folder, kept)
            used[f"{kind}/{cache.artefact_key(parts)}"] = cache.folder_fingerprint(folder)
        return used

    def seconds(self, step: Step) -> float:
        """The wall time that computed the stored ``step`` (its provenance), 0.0 when none is recorded."""
        marker = json.loads((self.folder(step) / MARKER).read_text())
        return float(marker.get("provenance", {}).get("seconds", 0.0))

    def load(self, step: Step) -> StepResult:
        """The stored result of a current step (see :meth:`state`)."""
        folder = self.folder(step)
        marker = json.loads((folder / MARKER).read_text())
        arrays = {}
        if (folder / ARRAYS).is_file():
            with np.load(folder / ARRAYS, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        return StepResult(json.loads((folder / RECORD).read_text()), arrays,
                          {**marker["provenance"], "code": marker["key"]["code"]})

    def get(self, step: Step) -> tuple[StepResult, bool]:
        """``(result, from_store)``: the stored result when current, else computed now and stored (a damaged or
        stale one is replaced, with one line saying so)."""
        with self._lock(step):
            state, why = self.state(step)
            if state == "current":
                return self.load(step), True
            if state in ("damaged", "stale"):
                print(f"medsec store: {step.id} {state} ({why}); computing it again", file=sys.stderr, flush=True)
            upstream = {before.id: self.get(before)[0] for before in step.after}
            self._bring_needs(step)
            started = time.perf_counter()
            result = step.compute(upstream)
            seconds = time.perf_counter() - started
            self.write(step, result, seconds, self._keep_needs(step))
            return self.load(step), False

    def write(self, step: Step, result: StepResult, seconds: float, needs: Mapping[str, str] | None = None) -> None:
        """Store ``result`` for ``step``: files then marker into a temporary folder, which replaces the step's
        folder (and every file of an older result) by renames. ``needs``: the fingerprints of the shared models
        it used, by ``kind/key``."""
        folder = self.folder(step)
        folder.parent.mkdir(parents=True, exist_ok=True)
        fresh = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        (fresh / RECORD).write_text(json.dumps(result.record, indent=1, sort_keys=True, default=_plain))
        if result.arrays:
            np.savez_compressed(fresh / ARRAYS, **result.arrays)
        provenance = {"commit": STARTED_AT["commit"], "dirty": STARTED_AT["dirty"],
                      "computed_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "seconds": round(seconds, 1), "device": _device(), "threads": _threads()}
        if needs:
            provenance["needs"] = dict(needs)
        files = {path.name: {"bytes": path.stat().st_size, "sha256": cache._sha256(path)}
                 for path in sorted(fresh.iterdir())}
        (fresh / MARKER).write_text(json.dumps({"id": step.id, "key": step.key_parts(), "provenance": provenance,
                                                "files": files}, indent=1, sort_keys=True))
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(fresh, folder)
        shutil.rmtree(old, ignore_errors=True)

    def stored_ids(self) -> list[str]:
        """Ids of every step folder with a marker."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.relative_to(self.root).as_posix() for p in self.root.rglob(MARKER)
                      if not any(part.startswith(".") for part in p.relative_to(self.root).parts))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def clean(self) -> None:
        """Remove what killed runs left (temporary and old folders, named after their process); a live process's
        folders are its writes in progress and stay."""
        if self.root.is_dir():
            for leftover in [*self.root.rglob(".*.tmp"), *self.root.rglob(".*.old")]:
                if not _alive(leftover.name.split(".")[-2]):
                    shutil.rmtree(leftover, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self, step: Step) -> Iterator[None]:
        name = hashlib.sha256(f"{self.root.resolve()}|{step.id}".encode()).hexdigest()[:20]
        path = cache.cache_root() / LOCKS / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            if cache.fcntl is not None:
                cache.wait_for_lock(handle, f"medsec store: waiting for another run computing {step.id} (lock {path})",
                                    quiet_seconds=0.5)
            yield


def get_all(store: Store, steps: list[Step]) -> tuple[dict[str, StepResult], int]:
    """Every step's result by id, and how many came from the store (the rest computed now and stored)."""
    results, hits = {}, 0
    for step in steps:
        results[step.id], hit = store.get(step)
        hits += hit
    return results, hits


def pack(store: Store, archive: Path) -> int:
    """Write every stored step of ``store`` into the ``.tar.gz`` ``archive``; how many."""
    import tarfile

    ids = store.stored_ids()
    with tarfile.open(archive, "w:gz") as tar:
        for step_id in ids:
            tar.add(store.root / step_id, arcname=step_id)
    return len(ids)


def merge(store: Store, archive: Path) -> tuple[int, int, list[tuple[str, str]]]:
    """Add to ``store`` each step of a :func:`pack` archive that is intact (its files match its marker) and new or
    different from the stored one: ``(added, already there, [(refused step id, why)])``. Whether a merged step is
    current is for :meth:`Store.state` to say."""
    import tarfile
    import tempfile

    added, same, refused = 0, 0, []
    with tempfile.TemporaryDirectory(prefix="medsec-merge-") as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        for marker in sorted(Path(tmp).rglob(MARKER)):
            folder, step_id = marker.parent, marker.parent.relative_to(tmp).as_posix()
            problem = damage(folder)
            here = store.root / step_id
            if problem:
                refused.append((step_id, problem))
            elif (here / MARKER).is_file() and (here / MARKER).read_bytes() == marker.read_bytes():
                same += 1
            else:
                here.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(here, ignore_errors=True)
                shutil.copytree(folder, here)
                added += 1
    return added, same, refused


def changed_parts(recorded: Mapping[str, Any], today: Mapping[str, Any]) -> str:
    """What differs between a stored key and today's, in words: ``module training changed; epochs 10 -> 12``; ""
    when equal."""
    words = []
    for name in sorted(set(recorded.get("code", {})) | set(today.get("code", {}))):
        if recorded.get("code", {}).get(name) != today.get("code", {}).get(name):
            words.append(f"module {name} changed")
    if recorded.get("recipe") != today.get("recipe"):
        words.append("its recipe changed")
    for group in ("packages", "parts"):
        old, new = recorded.get(group, {}), today.get(group, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                words.append(f"{name} {_short(old.get(name))} -> {_short(new.get(name))}")
    old, new = recorded.get("after", {}), today.get("after", {})
    words += [f"after {name} changed" for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return "; ".join(words)


def compare(stored: StepResult, fresh: StepResult, rtol: float = 1e-6, atol: float = 1e-9) -> tuple[str, list[str]]:
    """``("equal" | "within tolerance" | "different", differences)`` between two results of one step: every JSON
    value and array element, numbers equal within ``atol + rtol * |stored|``. Wall times (keys named ``seconds``
    or ending in ``_seconds``) differ by nature and are not compared."""
    differences, loose = [], False

    def walk(a: Any, b: Any, where: str) -> None:
        nonlocal loose
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if not str(key).endswith("seconds"):
                    walk(a.get(key), b.get(key), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{index}]")
        elif _is_number(a) and _is_number(b):
            if a != b and not (np.isnan(a) and np.isnan(b)):
                if abs(a - b) <= atol + rtol * abs(a):
                    loose = True
                else:
                    differences.append(f"{where}: {a} stored, {b} now")
        elif a != b:
            differences.append(f"{where}: {_short(a)} stored, {_short(b)} now")

    walk(stored.record, fresh.record, "record")
    for name in sorted(set(stored.arrays) | set(fresh.arrays)):
        a, b = stored.arrays.get(name), fresh.arrays.get(name)
        if a is None or b is None or a.shape != b.shape:
            differences.append(f"arrays.{name}: shape {None if a is None else a.shape} stored, "
                               f"{None if b is None else b.shape} now")
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            if a.dtype.kind in "fc" and np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                loose = True
            else:
                differences.append(f"arrays.{name}: {int((a != b).sum())} of {a.size} elements differ")
    return ("different" if differences else "within tolerance" if loose else "equal"), differences


def git_state() -> dict[str, Any]:
    """Commit of the repository and whether library or notebooks had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--", "medsec_utils", "notebooks"))
    return {"commit": commit, "dirty": dirty}


def damage(folder: Path) -> str:
    """What is wrong with a stored step's folder ("" when its files match its marker)."""
    try:
        return _damage(folder, json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MARKER} unreadable ({error})"


STARTED_AT = git_state()  # the commit this process's code came from, as the module digests are taken at import:
# a long run records the code it runs, not a commit or an edit made in the checkout while it runs


def _damage(folder: Path, files: Mapping[str, Mapping[str, Any]]) -> str:
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != expected["bytes"] or cache._sha256(path) != expected["sha256"]:
            return f"{name} altered (checksum differs)"
    if not (folder / RECORD).is_file():
        return f"{RECORD} missing"
    return ""


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (a folder name's part) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _recipe_digest(recipe: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(recipe).encode()).hexdigest()[:12]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    import platform

    import torch

    return f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"cpu: {platform.machine()}"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in records, as JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 3] + "..."
