"""Run profiles (smoke, cpu, gpu) from ``profiles.yaml``, with explicit parameters on top."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from . import distributed

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")


class Settings(dict):
    """A profile's settings; read them as keys or attributes (``cfg.epochs``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}; known: {', '.join(sorted(self))}") from None


@cache
def _load_profiles() -> dict[str, dict[str, Any]]:
    with open(PROFILES_FILE) as handle:
        return yaml.safe_load(handle)


def profile_names() -> list[str]:
    """Names of the profiles in ``profiles.yaml``."""
    return list(_load_profiles())


def resolve_profile(profile: str, **overrides: Any) -> Settings:
    """Settings of ``profile`` with every override that is not None applied on top.

    Raises:
        ValueError: unknown profile or an override that names no setting.
    """
    profiles = _load_profiles()
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)} ({PROFILES_FILE})")
    settings = Settings(profiles[profile])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; profile settings are {', '.join(settings)}")
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings["profile"] = profile
    return settings


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when present (this process's GPU under torchrun), else CPU. On CUDA,
    cuDNN benchmarks its kernels once per input shape (every batch of a run has the same shape)."""
    device = torch.device(requested) if requested else distributed.local_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device
