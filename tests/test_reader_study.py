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
