"""What every step table shares: how a data set names its steps and which modules made its images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..data import PHANTOM_MODULES, READER_MODULES, ImageSet
from ..store import Step

StepTable = Callable[[list[ImageSet], dict[str, Any], dict[str, Any], torch.device], list[Step]]


def step_name(images: ImageSet) -> str:
    """A data set's part of a step id: its name (built-in phantoms are named ``phantom_<modality>``)."""
    return images.name


def data_modules(images: ImageSet) -> tuple[str, ...]:
    """The ``medsec_utils`` modules that made ``images``: a step's result depends on them."""
    return (*READER_MODULES, *PHANTOM_MODULES) if images.is_phantom else READER_MODULES
