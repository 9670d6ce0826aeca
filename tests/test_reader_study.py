"""The blinded reader study: the kit hides the source, the key stays apart, scoring matches hand computation."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsec_utils import reader_study

KEY = pd.DataFrame({"case": [f"case_{i:03d}" for i in range(1, 9)],
                    "truth": ["real", "synthetic"] * 4})


def _answers(values):
    return pd.DataFrame({"case": KEY["case"], "answer": values})


def test_kit_is_blinded_and_the_key_is_written_elsewhere(tmp_path):
    real = torch.zeros(3, 1, 8, 8)
    synthetic = torch.ones(3, 1, 8, 8)
    paths = reader_study.build_reader_study(real, synthetic, tmp_path / "kit", tmp_path / "sealed", seed=0)
    names = sorted(p.name for p in (tmp_path / "kit").iterdir())
    assert names == sorted([f"case_{i:03d}.png" for i in range(1, 7)] + ["answer_sheet.csv", "reader_form.html"])
    key = pd.read_csv(paths["key"])
    assert sorted(key["truth"]) == ["real"] * 3 + ["synthetic"] * 3
    for case, truth in zip(key["case"], key["truth"]):  # the image under each name is the one the key says
        pixel = Image.open(tmp_path / "kit" / f"{case}.png").getpixel((0, 0))
        assert pixel == (255 if truth == "synthetic" else 0)
    assert list(key["truth"]) != ["real"] * 3 + ["synthetic"] * 3, "the order must be shuffled"
    form = paths["form"].read_text()
    assert "synthetic" in form and "case_006.png" in form and "answer_key" not in form
    with pytest.raises(ValueError, match="outside the readers' folder"):
        reader_study.build_reader_study(real, synthetic, tmp_path / "kit2", tmp_path / "kit2" / "key", seed=0)


def test_scoring_reproduces_a_hand_computed_reader():
    # truth:  R S R S R S R S ; answers: 6 of 8 right, one miss in each class
    answers = _answers(["real", "synthetic", "synthetic", "synthetic", "real", "real", "real", "synthetic"])
    row = reader_study.score_readers(KEY, {"A": answers}).iloc[0]
    assert (row["n"], row["accuracy"], row["sensitivity"], row["specificity"]) == (8, 0.75, 0.75, 0.75)
    assert row["p_value_vs_chance"] == pytest.approx(2 * (1 + 8 + 28) / 256)  # P(X <= 2) + P(X >= 6), X ~ B(8, 1/2)
    low, high = row["accuracy_ci"]
    assert low < 0.75 < high


def test_fleiss_kappa_matches_the_formula():
    # 3 readers on 4 cases: counts (real, synthetic) per case (3,0), (0,3), (2,1), (1,2) -> kappa = 1/3
    cases = KEY.iloc[:4]
    readers = {"A": ["real", "synthetic", "real", "real"], "B": ["real", "synthetic", "real", "synthetic"],
               "C": ["real", "synthetic", "synthetic", "synthetic"]}
    answers = {name: pd.DataFrame({"case": cases["case"], "answer": values}) for name, values in readers.items()}
    assert reader_study.readers_agreement(cases, answers) == pytest.approx(1 / 3)
    with pytest.raises(reader_study.ReaderStudyError, match="at least two readers"):
        reader_study.readers_agreement(cases, {"A": answers["A"]})


def test_a_bad_answer_sheet_is_one_clear_error_naming_the_file(tmp_path):
    sheet = tmp_path / "answers_bob.csv"
    _answers(["real", "fake", "", "synthetic", "real", "real", "real", "synthetic"]).to_csv(sheet, index=False)
    with pytest.raises(reader_study.ReaderStudyError, match="answers_bob.csv.*'real' or 'synthetic': case_002, case_003"):
        reader_study.score_readers(KEY, {"bob": sheet})


def test_simulated_readers_score_near_their_settings():
    key = pd.DataFrame({"case": [f"case_{i:04d}" for i in range(2000)], "truth": ["real", "synthetic"] * 1000})
    row = reader_study.score_readers(key, {"sim": reader_study.simulate_reader(
        key, sensitivity=0.8, specificity=0.6, seed=0)}).iloc[0]
    assert row["sensitivity"] == pytest.approx(0.8, abs=0.04) and row["specificity"] == pytest.approx(0.6, abs=0.04)
    guessing = reader_study.score_readers(key, {"g": reader_study.simulate_reader(
        key, sensitivity=0.5, specificity=0.5, seed=1)}).iloc[0]
    assert guessing["p_value_vs_chance"] > 0.01


def test_the_machine_reader_answers_from_the_kit_key_and_sees_what_separates_the_sets(tmp_path):
    rng = np.random.default_rng(0)
    real, synthetic = torch.zeros(60, 1, 4, 4), torch.ones(60, 1, 4, 4)
    key = pd.read_csv(reader_study.build_reader_study(real, synthetic, tmp_path / "kit", tmp_path / "key", seed=0)["key"])
    real_f = rng.normal(size=(60, 5))
    apart = reader_study.machine_reader(key, real_f, rng.normal(size=(60, 5)) + 3, seed=0)
    alike = reader_study.machine_reader(key, real_f, rng.normal(size=(60, 5)), seed=0)
    scores = reader_study.score_readers(key, {"apart": apart, "alike": alike}).set_index("reader")
    assert scores.loc["apart", "accuracy"] > 0.95 and scores.loc["alike", "accuracy"] < 0.7


def test_a_demonstration_kit_picks_n_of_each_and_scores_simulated_and_machine_readers(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, synthetic = torch.rand(12, 1, 4, 4, generator=g) * 0.5, torch.rand(10, 1, 4, 4, generator=g) * 0.5 + 0.5
    features = real.flatten(1).double(), synthetic.flatten(1).double()
    shown = reader_study.demonstrate(real, synthetic, *features, tmp_path / "ct", generator="dcgan", n=6, seed=0,
                                     reader_seed=5)
    assert shown.generator == "dcgan" and len(list((tmp_path / "ct" / "kit").glob("case_*.png"))) == 12
    assert shown.paths["key"] == (tmp_path / "ct" / "sealed_key" / reader_study.KEY_FILE).resolve()
    assert sorted(shown.key["truth"].value_counts().items()) == [("real", 6), ("synthetic", 6)]
    assert list(shown.scores["reader"]) == [*reader_study.SIMULATED_READERS, reader_study.MACHINE_READER]
    assert shown.scores.set_index("reader").loc[reader_study.MACHINE_READER, "accuracy"] > 0.9  # bright = synthetic
    again = reader_study.demonstrate(real, synthetic, *features, tmp_path / "again", generator="dcgan", n=6, seed=0,
                                     reader_seed=5)
    pd.testing.assert_frame_equal(again.scores, shown.scores)
    assert again.agreement == shown.agreement and -1 <= shown.agreement <= 1


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
