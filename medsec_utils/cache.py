"""Artefact cache: folders keyed by everything that determines their content.

An artefact (decoded images, a trained model, ...) lives in ``<root>/<kind>/<key>/`` where the key is
a hash of its parts (settings, data checksum, seed, code fingerprint). A folder counts only once its
``artefact.json`` marker is written, after all files are in place, so an interrupted run leaves no
half artefact behind; a producer may keep resumable state in the folder meanwhile. The marker holds a
checksum of every file, checked at each load, and a lock per entry keeps two runs from producing it twice.
Under torchrun every process takes part in producing an artefact (training is shared) but only rank 0 locks,
checks and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import distributed

try:
    import fcntl
except ImportError:  # Windows: no entry locks, see cached()
    fcntl = None

CACHE_ENV = "MEDSEC_CACHE"
MARKER = "artefact.json"
DAMAGED = ".damaged"  # where damaged entries are moved, under the cache root
CHUNK = 1 << 20  # bytes hashed at a time
LOCK_QUIET_SECONDS = 3.0  # a lock held longer than this is named on stderr by whoever waits for it
PACKAGE_DIR = Path(__file__).parent


def cache_root() -> Path:
    """``$MEDSEC_CACHE`` if set, else ``~/.cache/medsec``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medsec").expanduser()


def artefact_key(parts: dict[str, Any]) -> str:
    """Stable 20-hex-digit hash of a JSON-able dict (keys sorted, values by ``str`` where needed)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def module_name(path: Path) -> str:
    """Dotted name of a source file inside ``medsec_utils``: ``reporting/federated.py`` -> ``reporting.federated``,
    a sub-package's ``__init__.py`` -> the sub-package."""
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_digests() -> dict[str, str]:
    return {module_name(path): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in sorted(PACKAGE_DIR.rglob("*.py")) if path != PACKAGE_DIR / "__init__.py"}


_DIGESTS = _source_digests()  # the code as this process loaded it: edits during a long run do not count


def code_fingerprint(*modules: str) -> dict[str, str]:
    """SHA-256 (12 digits) of the source of ``medsec_utils`` modules, e.g. ``code_fingerprint("training")``.

    A sub-package's name covers every module in it (``"generative"`` is ``generative``, ``generative.dcgan``,
    ...); a dotted name is one module (``"reporting.federated"``). With no names, every module of the
    package. Used in cache keys and to tell the book when the library has changed since a reference run.
    Digests are taken once, when the package is imported, so a run that lasts hours keys its artefacts and
    records its provenance by the code it runs, even when the files are edited meanwhile.

    Raises:
        KeyError: a name that is no module of the package.
    """
    chosen: dict[str, str] = {}
    for name in modules:
        found = {key: digest for key, digest in _DIGESTS.items() if key == name or key.startswith(f"{name}.")}
        if not found:
            raise KeyError(f"no medsec_utils module {name}")
        chosen.update(found)
    return chosen if modules else dict(_DIGESTS)


def module_digests(names: list[str]) -> dict[str, str | None]:
    """The digest of each named module exactly (a sub-package's ``__init__`` only); None where no such module is
    left. What a run's provenance records and what the book compares with the code of today."""
    return {name: _DIGESTS.get(name) for name in names}


def tensor_fingerprint(*tensors: torch.Tensor | dict[str, torch.Tensor]) -> str:
    """SHA-256 (20 digits) of tensors or state dicts: identifies a model's weights or a batch of images."""
    digest = hashlib.sha256()
    for item in tensors:
        for name, tensor in (sorted(item.items()) if isinstance(item, dict) else [("", item)]):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:20]


def module_fingerprint(module: torch.nn.Module) -> str:
    """Identifies a model in a cache key: its class, its structure (``repr``) and its weights and buffers."""
    return artefact_key({"class": f"{type(module).__module__}.{type(module).__qualname__}", "structure": repr(module),
                         "state": tensor_fingerprint(module.state_dict())})


def folder_fingerprint(folder: Path) -> str:
    """Identifies a folder's content in a cache key: the checksums of its files, read from its marker when it is a
    finished artefact, else computed."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        files = _manifest(folder)
    return artefact_key(files)


def file_fingerprint(path: Path) -> str:
    """SHA-256 (20 digits) of a file's bytes: identifies a weights file whatever its name."""
    return _sha256(Path(path))[:20]


def cached(
    kind: str, parts: dict[str, Any], produce: Callable[[Path], None], root: Path | None = None
) -> tuple[Path, bool]:
    """Return ``(folder, hit)`` for the artefact; call ``produce(folder)`` first unless it is complete and intact.

    ``produce`` writes its files into ``folder``; the marker, written only after it returns, lists every file
    with its size and SHA-256, checked on each hit. A damaged entry (a file missing, truncated or altered, a
    marker that cannot be read) is never returned: one line on stderr names it, it is moved aside to
    ``<root>/.damaged/`` for inspection and produced again. A marker from before checksums is trusted once and
    given them, with one line saying so: it was accepted unchecked until now, and calling it damaged would
    retrain hours of work on a user's machine.

    An exclusive ``fcntl.flock`` on ``<key>.lock`` beside the folder, held across the check and ``produce``, lets
    one process at a time check or produce an entry; a second one says in one line that it waits, then takes
    the finished artefact. The OS drops the lock when its process ends, even killed: no lock is ever stale and
    the next run resumes from what the killed one left. Without ``fcntl`` (Windows) or on a file system that
    refuses locks there is no lock, and runs needing one entry at the same time may both produce it.
    """
    root = root or cache_root()
    entry = f"{kind}/{artefact_key(parts)}"
    folder = root / entry
    main = distributed.is_main()
    if main:
        folder.parent.mkdir(parents=True, exist_ok=True)
    with _entry_lock(folder, entry) if main else contextlib.nullcontext():
        problem = distributed.from_main(_check(folder, entry) if main else None)
        if problem is None:
            return folder, True
        if main:
            if problem:
                aside = _move_aside(folder, root)
                print(f"medsec cache: {entry} damaged ({problem}); moved aside to {aside}, recomputing",
                      file=sys.stderr, flush=True)
            folder.mkdir(exist_ok=True)
            for leftover in folder.rglob(".*.tmp"):  # a killed run's half-written file; the lock says nobody writes it
                leftover.unlink()
        distributed.barrier()
        started = time.time()
        produce(folder)
        write_json_atomic(folder / MARKER, {"kind": kind, "parts": parts, "seconds": round(time.time() - started, 2),
                                            "files": _manifest(folder)} if main else {})
        distributed.barrier()
    return folder, False


def adopt(kind: str, parts: dict[str, Any], source: Path, root: Path | None = None) -> str:
    """Make the cache's entry of ``kind`` and ``parts`` a copy of ``source``, a finished artefact folder (files and
    marker) kept elsewhere: the results store keeps the models its steps share, so that every session computes
    with the same weights, however its cache was filled. An entry with other files (trained again, in another
    session or on another machine) is moved aside to ``<root>/.damaged/``. Returns "" when the entry was already
    that copy, else one line saying what was done."""
    root = root or cache_root()
    entry = f"{kind}/{artefact_key(parts)}"
    folder = root / entry
    folder.parent.mkdir(parents=True, exist_ok=True)
    damaged = _check(source, str(source))
    if damaged is not None:
        raise ValueError(f"{source} is no intact artefact ({damaged or 'no ' + MARKER}): delete that folder, and the "
                         "next step that needs it keeps the cache's version there again")
    with _entry_lock(folder, entry):
        problem = _check(folder, entry)
        if problem is None and folder_fingerprint(folder) == folder_fingerprint(source):
            return ""
        said = f"{entry} copied from {source}"
        if folder.exists():
            aside = _move_aside(folder, root)
            said += f" (the cache's {'other version' if problem is None else 'damaged entry'} moved to {aside})"
        copy_folder_atomic(source, folder)
        return said


def copy_folder_atomic(source: Path, target: Path) -> None:
    """Copy the folder ``source`` to ``target`` (replacing what is there) through a temporary sibling renamed at
    the end, so a killed copy never leaves a half-written ``target``."""
    fresh = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(source, fresh)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(fresh, target)


def is_cached(kind: str, parts: dict[str, Any], root: Path | None = None) -> bool:
    """Whether the artefact of ``kind`` and ``parts`` is finished in the cache (its marker written; not checked)."""
    return ((root or cache_root()) / kind / artefact_key(parts) / MARKER).is_file()


def memoised(kind: str, parts: dict[str, Any], compute: Callable[[], Any],
             root: Path | None = None) -> tuple[Any, bool]:
    """``(compute(), hit)`` through the artefact cache: for a result that takes minutes to compute and
    milliseconds to key (feature vectors, generated images, FID curves), so an unchanged rerun loads it.
    The value is kept with ``torch.save``: tensors, arrays, numbers, strings and containers of them; it is
    loaded with ``weights_only=False``, as only this library writes the cache (never point it at files of
    unknown origin)."""

    def produce(folder: Path) -> None:
        torch_save_atomic(compute(), folder / "value.pt")

    folder, hit = cached(kind, parts, produce, root)
    return torch.load(folder / "value.pt", weights_only=False), hit


@contextlib.contextmanager
def _entry_lock(folder: Path, entry: str) -> Iterator[None]:
    """Hold the exclusive lock of one entry (see :func:`cached`); no lock where the platform has none."""
    if fcntl is None:
        yield
        return
    with open(folder.with_name(f"{folder.name}.lock"), "a") as handle:
        try:
            if (folder / MARKER).is_file():  # another run checks a finished entry: silent unless it takes long
                wait_for_lock(handle, f"medsec cache: waiting for another run checking {entry} (lock {handle.name})")
            else:
                wait_for_lock(handle, f"medsec cache: waiting for another run producing {entry}", quiet_seconds=0.0)
        except OSError:  # a file system without locks (some network mounts): go on unlocked
            pass
        yield


def wait_for_lock(handle: Any, waiting: str, quiet_seconds: float = LOCK_QUIET_SECONDS) -> None:
    """Take an exclusive ``flock`` on the open file ``handle``; when another process holds it for more than
    ``quiet_seconds``, print ``waiting`` (what this one waits for) once on stderr, then wait. A short wait stays
    silent; a long one never does."""
    deadline = time.monotonic() + quiet_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    print(waiting, file=sys.stderr, flush=True)
    fcntl.flock(handle, fcntl.LOCK_EX)


def _check(folder: Path, entry: str) -> str | None:
    """None if ``folder`` is a complete, intact artefact; "" if it is not complete yet; else what is damaged.
    A marker without checksums (older versions) is given them here, see :func:`cached`."""
    marker = folder / MARKER
    if not marker.is_file():
        return ""
    try:
        record = json.loads(marker.read_text())
        files = record.get("files")
    except (OSError, ValueError, AttributeError):
        return f"{MARKER} unreadable"
    if files is None and "parts" in record:
        write_json_atomic(marker, {**record, "files": _manifest(folder)})
        print(f"medsec cache: {entry} has no checksums (written by an older version); trusted and given them now",
              file=sys.stderr, flush=True)
        return None
    try:
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name}: missing"
            if path.stat().st_size != expected["bytes"]:
                return f"{name}: {path.stat().st_size} bytes, expected {expected['bytes']}"
            if _sha256(path) != expected["sha256"]:
                return f"{name}: SHA-256 differs"
    except (AttributeError, KeyError, TypeError):
        return f"{MARKER} invalid"
    return None


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` but the marker and temporary files of atomic writes."""
    return {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path != folder / MARKER and not path.name.endswith(".tmp")}


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so a large artefact is never held in memory for it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _move_aside(folder: Path, root: Path) -> Path:
    """Move a damaged entry to ``<root>/.damaged/<kind>/<key>-<time>``: kept for inspection, never deleted."""
    now = time.time_ns()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now // 10**9))}.{now % 10**9:09d}"
    aside = root / DAMAGED / folder.parent.name / f"{folder.name}-{stamp}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, aside)
    return aside


def discard(path: Path) -> None:
    """Remove a scratch file from an artefact (a finished training's checkpoint): under torchrun once every
    process is done with it, by rank 0 only."""
    distributed.barrier()
    if distributed.is_main():
        Path(path).unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a file."""
    _write_atomic(path, lambda handle: handle.write(json.dumps(obj, indent=2, default=str).encode()))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file and ``os.replace`` so readers never see half a file."""
    _write_atomic(path, lambda handle: handle.write(text.encode()))


def torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    _write_atomic(path, lambda handle: torch.save(obj, handle))


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    if not distributed.is_main():
        return  # under torchrun only rank 0 writes; the others read its files after a barrier
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artefacts and metrics.json are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
