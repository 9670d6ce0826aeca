"""Named data sets (private to ``data``): YAML descriptors in ``data_manifests/``, downloaded once, MD5-checked."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ._common import DataError

DATA_ENV = "MEDSEC_DATA"
MANIFESTS_ENV = "MEDSEC_MANIFESTS"


def manifests_dir() -> Path:
    """Where the descriptors are: ``$MEDSEC_MANIFESTS`` or the repository's ``data_manifests/``."""
    return Path(os.environ.get(MANIFESTS_ENV) or Path(__file__).resolve().parents[1] / "data_manifests")


def read_descriptor(name: str) -> dict[str, Any]:
    """The YAML descriptor ``data_manifests/<name>.yaml``."""
    path = manifests_dir() / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"{name}: no data manifest {path}; known: {', '.join(known_datasets())}")
    return yaml.safe_load(path.read_text())


def known_datasets() -> list[str]:
    """Names of the descriptors in ``data_manifests/``."""
    return sorted(p.stem for p in manifests_dir().glob("*.yaml"))


def data_root() -> Path:
    """Where named data sets are stored: ``$MEDSEC_DATA`` or ``~/.cache/medsec/data``."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "medsec" / "data").expanduser()


def fetch(name: str, root: Path | None = None) -> Path:
    """Path of a named data set's file, downloading it once and verifying its MD5.

    Raises:
        DataError: download impossible (says where to put the file by hand) or checksum mismatch.
    """
    descriptor = read_descriptor(name)
    target = (root or data_root()) / descriptor["filename"]
    if target.is_file():
        if (actual := _md5(target)) != descriptor["md5"]:
            raise DataError(f"{target}: MD5 {actual} is not the expected {descriptor['md5']}; replace the file "
                            f"with a fresh download from {descriptor['url']}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(descriptor["url"], timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"{name}: cannot download {descriptor['url']} ({err}); download it by hand and put it at "
                        f"{target} (md5 {descriptor['md5']})") from None
    actual = _md5(partial)
    if actual != descriptor["md5"]:
        partial.unlink()
        raise DataError(f"{name}: the download from {descriptor['url']} has MD5 {actual}, not the expected "
                        f"{descriptor['md5']}; it was discarded, try again or put a verified copy at {target}")
    os.replace(partial, target)
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
