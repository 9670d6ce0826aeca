"""Provenance of a chapter run: ``Run`` collects data sets and figures and writes ``metrics.json``.

Every ``metrics.json`` carries the run's parameters, data checksums, git commit, package versions, device
and wall time, and the digest of each ``medsec_utils`` module the run imported, no more: the book flags a
page as stale only when code that page used has changed.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from .. import cache
from ..store import git_state
from ..data import ImageSet

PACKAGES = ("torch", "torchvision", "timm", "torchattacks", "diffusers", "torchmetrics", "numpy", "pandas",
            "scikit-learn", "scikit-image", "pydicom", "matplotlib", "seaborn", "papermill", "flwr")


class Run:
    """One chapter run: collects datasets and figures, then writes ``metrics.json`` with provenance."""

    def __init__(self, chapter: str, output_dir: str | Path, params: dict[str, Any], settings: dict[str, Any],
                 device: torch.device) -> None:
        self.chapter = chapter
        self.output_dir = Path(output_dir)  # made at the first write: opening a chapter to read it leaves no folder
        self.params = params
        self.settings = dict(settings)
        self.device = device
        self.datasets: list[dict[str, Any]] = []
        self.figures: list[str] = []
        self.steps: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.started_utc = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.git = git_state()  # the commit the run started from, not the one checked out when it ends

    def add_dataset(self, images: ImageSet) -> None:
        """Record a data set used by this run."""
        self.datasets.append(images.provenance())

    def add_steps(self, steps: dict[str, dict[str, Any]]) -> None:
        """Record the stored steps this run's results come from: per step id, its commit, date, device and the
        digests of the modules it depends on (what the book checks to flag a stale result)."""
        self.steps.update(steps)

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        """Save ``fig`` as ``<output_dir>/<name>.png`` (it still shows in the notebook)."""
        path = self.output_dir / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.figures.append(path.name)
        return path

    def provenance(self) -> dict[str, Any]:
        """Everything needed to trace this run's numbers back to code, data and machine."""
        return {
            "chapter": self.chapter, "parameters": self.params, "settings": self.settings,
            "datasets": self.datasets, "git": self.git, "library": cache.module_digests(used_modules()),
            "versions": package_versions(), "device": device_name(self.device),
            "started_utc": self.started_utc, "wall_time_s": round(time.time() - self.started, 1),
            "figures": self.figures, **({"steps": self.steps} if self.steps else {}),
        }

    def finish(self, results: list[dict[str, Any]], **extra: Any) -> Path:
        """Write ``metrics.json``: ``{"results": [...records...], **extra, "provenance": {...}}``."""
        path = self.output_dir / "metrics.json"
        cache.write_json_atomic(path, {"results": results, **extra, "provenance": self.provenance()})
        print(f"wrote {path} ({round(time.time() - self.started, 1)} s wall time)")
        return path


def used_modules() -> list[str]:
    """The ``medsec_utils`` modules this process has imported (``reporting.federated``, ``data``, ...): the code
    a run's results depend on. Each chapter runs in its own kernel, so this is that chapter's code."""
    return sorted(name.split(".", 1)[1] for name in sys.modules if name.startswith("medsec_utils."))


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results, and Python's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_name(device: torch.device) -> str:
    """``cpu (N threads, machine)`` or the CUDA device name."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {torch.get_num_threads()} threads, {platform.machine()}"
