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


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_every_profile_sizes_its_generators_as_they_can_be_built(name):
    from medsec_utils.generative._plumbing import levels

    settings = profiles.resolve_profile(name)
    for size in [settings.generator_size, *settings.fl_sizes]:
        assert levels(size) >= 1
    if name == "gpu":
        assert settings.image_size == 224 and settings.generator_size == 128 and settings.fl_sizes == [64, 128]


def test_chapter_4_opens_its_data_at_the_generator_size(tmp_path):
    from medsec_utils.reporting import open_chapter

    chapter = open_chapter("04_synthetic_images", profile="smoke", dataset="phantom:ct?n=40", seed=0,
                           output_dir=str(tmp_path), device="cpu", overrides=dict(generator_size=16),
                           size_setting="generator_size")
    [(x, _)] = chapter.split("train", None).values()
    assert x.shape[-1] == 16 and chapter.settings.image_size == 16
