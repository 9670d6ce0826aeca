"""The blinded reader study: the kit hides the source, the key stays apart, the demonstration scores its readers
(scoring itself: test_reader_scoring.py)."""

import pandas as pd
import pytest
import torch
from PIL import Image

from medsec_utils import reader_study


def test_kit_is_blinded_and_the_key_is_written_elsewhere(tmp_path):
    real = torch.zeros(3, 1, 8, 8)
    synthetic = torch.ones(3, 1, 8, 8)
    paths = reader_study.build_reader_study(real, synthetic, tmp_path / "kit", tmp_path / "sealed", seed=0)
    names = sorted(p.name for p in (tmp_path / "kit").iterdir())
    assert names == sorted([f"case_{i:03d}.png" for i in range(1, 7)] + [reader_study.SHEET_FILE, reader_study.APP_FILE])
    key = pd.read_csv(paths["key"])
    assert sorted(key["truth"]) == ["real"] * 3 + ["synthetic"] * 3
    for case, truth in zip(key["case"], key["truth"]):  # the image under each name is the one the key says
        pixel = Image.open(tmp_path / "kit" / f"{case}.png").getpixel((0, 0))
        assert pixel == (255 if truth == "synthetic" else 0)
    assert list(key["truth"]) != ["real"] * 3 + ["synthetic"] * 3, "the order must be shuffled"
    assert '"case_006"' in paths["app"].read_text() and "answer_key" not in paths["app"].read_text()
    with pytest.raises(ValueError, match="outside the readers' folder"):
        reader_study.build_reader_study(real, synthetic, tmp_path / "kit2", tmp_path / "kit2" / "key", seed=0)
    with pytest.raises(ValueError, match="size gives the answer away"):
        reader_study.build_reader_study(real, torch.ones(3, 1, 8, 16), tmp_path / "kit3", tmp_path / "key3", seed=0)


def test_an_unseeded_kit_is_shuffled_from_the_operating_system_not_from_a_guessable_seed(tmp_path):
    real, synthetic = torch.zeros(20, 1, 4, 4), torch.ones(20, 1, 4, 4)
    orders = [tuple(pd.read_csv(reader_study.build_reader_study(real, synthetic, tmp_path / f"kit{i}", tmp_path / f"key{i}")
                                ["key"])["truth"]) for i in range(2)]
    assert orders[0] != orders[1]
    seeded = [tuple(pd.read_csv(reader_study.build_reader_study(real, synthetic, tmp_path / f"s{i}", tmp_path / f"sk{i}",
                                                                seed=4)["key"])["truth"]) for i in range(2)]
    assert seeded[0] == seeded[1]


def test_a_demonstration_kit_picks_n_of_each_and_scores_simulated_and_machine_readers(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, synthetic = torch.rand(12, 1, 4, 4, generator=g) * 0.5, torch.rand(10, 1, 4, 4, generator=g) * 0.5 + 0.5
    features = real.flatten(1).double(), synthetic.flatten(1).double()
    shown = reader_study.demonstrate(real, synthetic, *features, tmp_path / "ct", generator="dcgan", n=6, seed=0,
                                     reader_seed=5)
    assert shown.generator == "dcgan" and len(list((tmp_path / "ct" / "kit").glob("case_*.png"))) == 12
    assert shown.paths["key"] == (tmp_path / "ct" / "sealed_key" / reader_study.KEY_FILE).resolve()
    assert sorted(shown.key["truth"].value_counts().items()) == [("real", 6), ("synthetic", 6)]
    assert list(shown.scores["reader"]) == list(shown.answers) == [*reader_study.SIMULATED_READERS,
                                                                   reader_study.MACHINE_READER]
    assert shown.scores.set_index("reader").loc[reader_study.MACHINE_READER, "auc"] > 0.9  # bright = synthetic
    assert (shown.pooled["n_readers"], shown.pooled["n_cases"]) == (len(reader_study.SIMULATED_READERS), 12)
    again = reader_study.demonstrate(real, synthetic, *features, tmp_path / "again", generator="dcgan", n=6, seed=0,
                                     reader_seed=5)
    pd.testing.assert_frame_equal(again.scores, shown.scores)
    assert again.pooled == shown.pooled and again.agreement == shown.agreement and -1 <= shown.agreement <= 1


def test_demonstrations_put_each_kit_under_its_data_set_name_with_its_own_simulated_readers(tmp_path):
    from types import SimpleNamespace

    from medsec_utils.synthetic_eval import HELDOUT

    g = torch.Generator().manual_seed(1)
    sets = {f"{name} [PHANTOM]": SimpleNamespace(name=name) for name in ("ct", "histology")}
    test = {label: (torch.rand(8, 1, 4, 4, generator=g), torch.arange(8) % 2) for label in sets}
    samples = {(label, kind): (torch.rand(8, 1, 4, 4, generator=g), torch.arange(8) % 2)
               for label in sets for kind in ("dcgan", "ddpm")}
    features = {**{(label, HELDOUT): x.flatten(1).double() for label, (x, _) in test.items()},
                **{key: x.flatten(1).double() for key, (x, _) in samples.items()}}
    chosen = {"ct [PHANTOM]": "ddpm", "histology [PHANTOM]": "dcgan"}
    shown = reader_study.demonstrations(sets, test, samples, features, chosen, tmp_path, n=5, seed=0)
    assert {label: kit.generator for label, kit in shown.items()} == chosen
    assert (tmp_path / "ct" / "kit" / "answer_sheet.csv").is_file() and (tmp_path / "histology" / "sealed_key").is_dir()
    alone = reader_study.demonstrate(test["histology [PHANTOM]"][0], samples["histology [PHANTOM]", "dcgan"][0],
                                     features["histology [PHANTOM]", HELDOUT], features["histology [PHANTOM]", "dcgan"],
                                     tmp_path / "alone", generator="dcgan", n=5, seed=0, reader_seed=10)
    pd.testing.assert_frame_equal(alone.scores, shown["histology [PHANTOM]"].scores)  # second set: seed + 10
