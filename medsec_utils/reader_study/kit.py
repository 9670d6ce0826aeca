"""The blinded kit readers receive, and the sealed key they never see.

``build_reader_study`` writes real and generated images, shuffled, as ``case_NNN.png`` files whose names,
order, sizes, modes and metadata reveal nothing, beside ``reader_study.html``: a self-contained web app (no
network, no build step; works from ``file://`` and from any static web server) that shows one case at a
time with zoom, smooth or sharp pixels and window/level, asks a 5-point confidence, keeps the answers in the
browser's local storage and saves them as the answer CSV that :mod:`.scoring` reads. ``answer_sheet.csv``
is the same CSV to fill in by hand where no browser may be used. The answer key goes to a separate folder.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..cache import write_json_atomic
from .scoring import COLUMNS

KEY_FILE = "answer_key.csv"
APP_FILE = "reader_study.html"
SHEET_FILE = "answer_sheet.csv"


def build_reader_study(real: torch.Tensor, synthetic: torch.Tensor, folder: Path | str, key_folder: Path | str, *,
                       seed: int | None = None, title: str = "Real or synthetic?",
                       contact: str | None = None) -> dict[str, Path]:
    """Write the blinded kit for ``real`` and ``synthetic`` images (N, C, H, W in [0, 1]) to ``folder`` and
    its key to ``key_folder``.

    Args:
        seed: the shuffle of real and synthetic cases. Leave it ``None`` for a kit that goes to readers: the
            shuffle then comes from the operating system's randomness, because anyone who knows a seed and
            this code can recompute the key. Give one only for tests and demonstrations.
        title: the heading readers see.
        contact: who readers send their answer file to, shown on the app's last screen.

    Returns:
        Paths of the ``kit`` folder, the ``app``, the hand-filled ``sheet`` and the ``key``.

    Raises:
        ValueError: ``key_folder`` inside ``folder`` (readers would receive the key), or real and synthetic
            images whose shapes differ (their size alone would give them away).
    """
    folder, key_folder = Path(folder).resolve(), Path(key_folder).resolve()
    if key_folder == folder or folder in key_folder.parents:
        raise ValueError(f"the answer key folder {key_folder} must be outside the readers' folder {folder}")
    if real.shape[1:] != synthetic.shape[1:]:
        raise ValueError(f"real images are {tuple(real.shape[1:])} and synthetic ones {tuple(synthetic.shape[1:])}: "
                         "bring them to one size and channel count first, or the size gives the answer away")
    images = torch.cat([real, synthetic])
    truth = ["real"] * len(real) + ["synthetic"] * len(synthetic)
    source_index = list(range(len(real))) + list(range(len(synthetic)))
    order = np.random.default_rng(secrets.randbits(128) if seed is None else seed).permutation(len(images))
    cases = [f"case_{rank:03d}" for rank in range(1, len(images) + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for case, index in zip(cases, order):
        digest.update(_save_png(images[index], folder / f"{case}.png"))
    sheet = folder / SHEET_FILE
    pd.DataFrame({column: "" for column in COLUMNS}, index=range(len(cases))).assign(case=cases).to_csv(
        sheet, index=False)
    app = folder / APP_FILE
    app.write_text(app_html(cases, kit_id=digest.hexdigest()[:16], title=title, contact=contact), encoding="utf-8")
    key = key_folder / KEY_FILE
    key_folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"case": cases, "truth": [truth[i] for i in order],
                  "source_index": [source_index[i] for i in order]}).to_csv(key, index=False)
    write_json_atomic(key_folder / "kit.json", {"cases": len(cases), "real": len(real), "synthetic": len(synthetic),
                                                "seeded": seed is not None, "kit": str(folder)})
    return {"kit": folder, "app": app, "sheet": sheet, "key": key}


def _save_png(image: torch.Tensor, path: Path) -> bytes:
    """Save one image as an 8-bit PNG with no metadata; return its pixel bytes (for the kit's identity)."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, optimize=True)
    return pixels.tobytes()


def app_html(cases: list[str], *, kit_id: str, title: str, contact: str | None) -> str:
    """The reader app for ``cases`` (images ``<case>.png`` beside it): the template with the kit's case names
    (in name order), an identity that keeps each kit's saved answers apart in the browser, and its texts."""
    kit = {"kit": kit_id, "cases": sorted(cases), "title": title, "contact": contact}
    template = Path(__file__).with_name("_app.html").read_text(encoding="utf-8")
    return template.replace("/*KIT*/", json.dumps(kit).replace("</", "<\\/"))
