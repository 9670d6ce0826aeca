"""Artefact cache: folders keyed by everything that determines their content.

An artefact (decoded images, a trained model, ...) lives in ``<root>/<kind>/<key>/`` where the key is
a hash of its parts (settings, data checksum, seed, code fingerprint). A folder counts only once its
``artefact.json`` marker is written, after all files are in place, so an interrupted run leaves no
half artefact behind; a producer may keep resumable state in the folder meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "MEDSEC_CACHE"
MARKER = "artefact.json"
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


def cached(
    kind: str, parts: dict[str, Any], produce: Callable[[Path], None], root: Path | None = None
) -> tuple[Path, bool]:
    """Return ``(folder, hit)`` for the artefact; call ``produce(folder)`` first unless it is complete.

    ``produce`` writes its files into ``folder``; the marker is written only after it returns.
    """
    folder = (root or cache_root()) / kind / artefact_key(parts)
    if (folder / MARKER).is_file():
        return folder, True
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    produce(folder)
    write_json_atomic(folder / MARKER, {"kind": kind, "parts": parts, "seconds": round(time.time() - started, 2)})
    return folder, False


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a file."""
    _write_atomic(path, lambda handle: handle.write(json.dumps(obj, indent=2, default=str).encode()))


def torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    _write_atomic(path, lambda handle: torch.save(obj, handle))


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
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
