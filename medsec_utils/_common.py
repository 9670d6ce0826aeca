"""What the image readers share (private to ``data``): the DataError exception, min-max scaling and counted nouns.

``_io`` and ``_dicom`` both import from here, so neither needs the other at import time.
"""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """Bad input data. The message is one line naming the file or row and the fix."""


def min_max(array: np.ndarray) -> np.ndarray:
    """Scale ``array`` linearly to [0, 1]; a constant array becomes zeros."""
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def plural(count: int, noun: str) -> str:
    """``"1 file"``, ``"3 files"``: a count with its noun, for notes and messages."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def listed(items: list[str], limit: int = 5) -> str:
    """``a, b, c`` or, past ``limit`` items, the first ``limit`` and ``and N more``: lists in one-line messages."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
