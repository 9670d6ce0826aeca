"""Step tables: each chapter's work as durable steps of the results store (:mod:`medsec_utils.store`).

A chapter's table lists its steps in the order the chapter needs them, from the data sets, settings and
notebook parameters alone (no model is built to list or key them): ``classifiers`` (chapter 1), ``attacks``
(chapter 2), ``defenses`` (chapter 3), ``synthetic_images`` (chapter 4), ``federated`` (chapter 5) and
``privacy`` (chapter 6). A chapter without a table (none today; a new chapter until it has one) runs whole, as
one notebook execution.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import ImageSet
from ..store import Step
from ._plumbing import StepTable, data_modules, step_name

__all__ = ["StepTable", "chapter_steps", "data_modules", "step_name", "table"]


def table(chapter: str) -> StepTable | None:
    """The step table of ``chapter`` (``01_classifiers``), or None for a chapter that runs whole."""
    from . import attacks, classifiers, defenses, federated, privacy, synthetic_images

    return {"01_classifiers": classifiers.steps, "02_attacks": attacks.steps, "03_defenses": defenses.steps,
            "04_synthetic_images": synthetic_images.steps, "05_federated": federated.steps,
            "06_privacy": privacy.steps}.get(chapter)


def chapter_steps(chapter: str, sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any],
                  device: torch.device) -> list[Step] | None:
    """The steps of ``chapter`` on ``sets`` with the notebook's ``params`` (``seed``, ``weights``, ``nproc`` and
    the chapter's own), or None for a chapter without a table."""
    made = table(chapter)
    return None if made is None else made(sets, settings, params, device)
