"""What every chapter's reporting shares: names of data sets, the phantom banner, interval cells, verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown

from ..data import ImageSet

PHANTOM_NOTICE = "PHANTOM images (built-in, synthetic): not patients"
PHANTOM_TAG = " [PHANTOM]"
CLASS_NAMES = ("Normal", "Pathology")


def label_name(name: str, phantom: bool) -> str:
    """A data set's name for figures and tables, saying plainly when the images are phantoms."""
    return f"{name}{PHANTOM_TAG}" if phantom else name


def data_label(images: ImageSet) -> str:
    """:func:`label_name` of an image set."""
    return label_name(images.name, images.is_phantom)


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Records with the data set named as :func:`data_label` names it."""
    return frame.assign(dataset=[label_name(d, p) for d, p in zip(frame["dataset"], frame["phantom"])])


def step_provenance(results: Mapping[str, Any]) -> pd.DataFrame:
    """Per stored result (``{step id: StepResult}``): when, at which commit, on which device and in how many
    seconds it was computed, one row per commit and date, so a page can say where each of its numbers came from."""
    frame = pd.DataFrame([{"step": step_id, "computed (UTC)": result.provenance["computed_utc"][:16].replace("T", " "),
                           "commit": result.provenance["commit"][:10]
                           + (" (uncommitted changes)" if result.provenance.get("dirty") else ""),
                           "device": result.provenance["device"], "seconds": result.provenance["seconds"]}
                          for step_id, result in results.items()])
    grouped = frame.groupby(["commit", "device"], sort=False).agg(
        steps=("step", "size"), first=("computed (UTC)", "min"), last=("computed (UTC)", "max"),
        compute_seconds=("seconds", "sum"))
    return grouped.reset_index()


def dataset_fields(images: ImageSet) -> dict[str, Any]:
    """The fields that tie a ``metrics.json`` record to its data set."""
    return {"dataset": images.name, "modality": images.modality, "phantom": images.is_phantom,
            "data_checksum": images.checksum}


def phantom_banner(fig: plt.Figure, names: Iterable[str], y: float = 1.02) -> None:
    """Title ``fig`` with :data:`PHANTOM_NOTICE` when any of the data set ``names`` (as labelled) is a phantom."""
    if any(str(name).endswith(PHANTOM_TAG) for name in names):
        fig.suptitle(PHANTOM_NOTICE, fontsize=8, color="darkred", y=y)


def phantom_verdict_notice(sets: Iterable[ImageSet]) -> str:
    """Markdown to show above verdicts judged on phantoms ("" on real data)."""
    if any(images.is_phantom for images in sets):
        return f"**{PHANTOM_NOTICE}: these verdicts only show the comparison runs; they say nothing about the study.**"
    return ""


def ci_cell(value: float, low: float, high: float) -> str:
    """``value [low, high]`` with three decimals: how every table shows a result with its 95 % interval."""
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def verdict(held: Iterable[bool | None]) -> str:
    """How a claim of the study fares over the cases it was judged on (None: that case could not test it)."""
    tested = [ok for ok in held if ok is not None]
    if not tested:
        return "not testable here"
    return "reproduced" if all(tested) else "not reproduced" if not any(tested) else "partly reproduced"


def results_table(results: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Records as a table; a column with a ``<column>_ci`` partner shows as :func:`ci_cell`."""
    frame = pd.DataFrame(results)
    shown = pd.DataFrame(index=frame.index)
    for column in columns:
        if f"{column}_ci" in frame.columns:
            shown[column] = [ci_cell(v, *ci) for v, ci in zip(frame[column], frame[f"{column}_ci"])]
        else:
            shown[column] = frame[column]
    return shown


def data_notice(sets: list[ImageSet]) -> str:
    """Markdown that says which results come from phantoms and repeats each data set's caveats."""
    lines = []
    for images in sets:
        kind = "**built-in phantom images, not patients**" if images.is_phantom else "real images"
        lines.append(f"- `{images.name}` ({images.modality}): {kind}; " + "; ".join(images.notes))
    return "\n".join(lines)


def kinds_table(kinds: Mapping[str, Any], names: Iterable[str], settings: Mapping[str, Any]) -> pd.DataFrame:
    """One row per chosen kind of a family table (attacks, defences, generators): what it is and the profile
    settings it runs with."""
    return pd.DataFrame({name: {"what it is": kinds[name].about,
                                "settings": "; ".join(f"{key} = {settings[key]}" for key in kinds[name].settings_keys)}
                         for name in names}).T


def show_image(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    """One image in [0, 1] (C, H, W) on ``ax``, grey for one channel, without ticks."""
    array = image.permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def self_check(checks: Mapping[str, bool]) -> Markdown:
    """A chapter's self-check: invariants its results must satisfy in every profile (accuracy within [0, 1],
    an estimate inside its interval, robust accuracy at most clean ...), named. One line when all hold; an
    ``AssertionError`` naming each one that does not, so a page run under nbval fails when its science breaks."""
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise AssertionError(f"self-check failed ({len(failed)} of {len(checks)}): " + "; ".join(failed))
    return Markdown(f"**Self-check:** all {len(checks)} invariants hold ({'; '.join(checks)}).")


def within(value: float, low: float, high: float) -> bool:
    """``low <= value <= high`` inside [0, 1]: an estimate of a share within its interval (NaN fails)."""
    return 0.0 <= low <= value <= high <= 1.0
