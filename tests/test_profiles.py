"""Profiles: one file of sizes, explicit parameters on top."""

import pytest
import torch

from medsec_utils import profiles


def test_three_profiles_with_the_same_settings():
    names = profiles.profile_names()
    assert names[:3] == ["smoke", "cpu", "gpu"]
    keys = [set(profiles.resolve_profile(name)) for name in names]
    assert keys[0] == keys[1] == keys[2]


def test_explicit_parameter_wins_and_none_does_not():
    base = profiles.resolve_profile("smoke")
    tuned = profiles.resolve_profile("smoke", epochs=7, image_size=None)
    assert tuned.epochs == 7 and tuned.image_size == base.image_size and tuned.profile == "smoke"


def test_smoke_is_smaller_than_cpu_is_smaller_than_gpu():
    smoke, cpu, gpu = (profiles.resolve_profile(p) for p in ("smoke", "cpu", "gpu"))
    assert smoke.epochs < cpu.epochs < gpu.epochs
    assert smoke.phantom_images < cpu.phantom_images < gpu.phantom_images


def test_unknown_profile_and_setting_are_refused():
    with pytest.raises(ValueError, match="smoke"):
        profiles.resolve_profile("laptop")
    with pytest.raises(ValueError, match="epoch"):
        profiles.resolve_profile("smoke", epoch=3)
    with pytest.raises(AttributeError, match="known"):
        profiles.resolve_profile("smoke").nonexistent


def test_device_choice():
    assert profiles.pick_device("cpu") == torch.device("cpu")
    assert profiles.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
