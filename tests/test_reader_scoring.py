"""Scoring the reader study: hand-computed readers, AUC and its intervals, the pooled AUC, Fleiss' kappa, simulated
and machine readers, and one clear error, naming file and line, for every malformed answer sheet."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medsec_utils.reader_study import readers, scoring
from medsec_utils.reader_study.scoring import ReaderStudyError

KEY = pd.DataFrame({"case": [f"case_{i:03d}" for i in range(1, 9)], "truth": ["real", "synthetic"] * 4})


def _key(n: int, seed: int = 0) -> pd.DataFrame:
    truth = np.random.default_rng(seed).permutation(["real", "synthetic"] * (n // 2))
    return pd.DataFrame({"case": [f"case_{i:04d}" for i in range(1, n + 1)], "truth": truth})


def _frame(confidence, key=KEY, reader="ann", seconds=np.nan) -> pd.DataFrame:
    return pd.DataFrame({"reader": reader, "case": key["case"], "confidence": confidence, "seconds": seconds})


def _sheet(folder, lines, name="answers_ann.csv", header="reader,case,confidence,seconds"):
    path = folder / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def _rows(confidence, reader="ann"):
    return [f"{reader},{case},{c}," for case, c in zip(KEY["case"], confidence)]


def _width(interval):
    return interval[1] - interval[0]


def _shown_alone(error):
    """Whether an error is shown without a pandas traceback above it."""
    return error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# truth:       R  S  R  S  R  S  R  S
HAND = [1, 5, 4, 4, 3, 2, 2, 3]


def test_scores_reproduce_a_hand_computed_reader_with_ties():
    row = scoring.score_readers(KEY, {"A": _frame(HAND, seconds=[1.0, 2, 3, 4, 5, 6, 7, np.nan])}).iloc[0]
    # called synthetic (>= 4): real 1 4 3 2 -> one of four; synthetic 5 4 2 3 -> two of four
    assert (row["n"], row["accuracy"], row["sensitivity"], row["specificity"]) == (8, 5 / 8, 0.5, 0.75)
    assert row["p_value_vs_chance"] == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)  # P(X <= 3) + P(X >= 5), B(8, 1/2)
    # synthetic 5, 4, 2, 3 against real 1, 4, 3, 2: 4 + 3.5 + 1.5 + 2.5 of 16 pairs
    assert row["auc"] == pytest.approx(11.5 / 16)
    assert (row["n_unsure"], row["median_seconds"]) == (2, 4.0)
    assert row["accuracy_ci"][0] < 5 / 8 < row["accuracy_ci"][1]
    lower = scoring.score_readers(KEY, {"A": _frame(HAND)}, threshold=3).iloc[0]  # 3 'unsure' now counts
    assert (lower["sensitivity"], lower["specificity"], np.isnan(lower["median_seconds"])) == (0.75, 0.5, True)


def test_auc_is_sklearns_and_the_roc_curve_encloses_it():
    key = _key(60, seed=1)
    confidence = np.random.default_rng(2).integers(1, 6, size=60)
    row = scoring.score_readers(key, {"A": _frame(confidence, key)}).iloc[0]
    assert row["auc"] == pytest.approx(roc_auc_score(key["truth"] == "synthetic", confidence))
    fpr, tpr = scoring.roc_points(key, _frame(confidence, key))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(row["auc"])


def test_auc_intervals_contain_the_estimate_and_narrow_with_more_cases():
    widths = []
    for n in (100, 1000):
        key = _key(n)
        row = scoring.score_readers(key, {"A": readers.simulate_reader(key, auc=0.75, seed=0, name="A")},
                                    n_boot=500).iloc[0]
        assert row["auc_ci"][0] < row["auc"] < row["auc_ci"][1]
        widths.append(_width(row["auc_ci"]))
    assert widths[1] < 0.6 * widths[0]


def test_the_pooled_auc_is_the_readers_mean_and_its_interval_counts_reader_variability():
    key = _key(200)
    apart = {f"r{auc}": readers.simulate_reader(key, auc=auc, seed=i, name=f"r{auc}")
             for i, auc in enumerate((0.55, 0.75, 0.95))}
    pooled = scoring.pooled_auc(key, apart, n_boot=1000)
    assert pooled["auc"] == pytest.approx(scoring.score_readers(key, apart, n_boot=10)["auc"].mean())
    assert (pooled["n_readers"], pooled["n_cases"], pooled["n_boot"]) == (3, 200, 1000)
    assert pooled["ci_low"] < pooled["auc"] < pooled["ci_high"]
    same = {name: apart["r0.75"] for name in ("x", "y", "z")}  # one reader three times: no reader variability
    alike = scoring.pooled_auc(key, same, n_boot=1000)
    alone = scoring.score_readers(key, {"x": apart["r0.75"]}, n_boot=1000).iloc[0]
    assert (alike["ci_low"], alike["ci_high"]) == pytest.approx(alone["auc_ci"])  # just the case bootstrap
    assert pooled["ci_high"] - pooled["ci_low"] > 1.5 * (alike["ci_high"] - alike["ci_low"])
    assert scoring.pooled_auc(key, apart, n_boot=1000) == pooled
    assert scoring.pooled_auc(key, apart, n_boot=1000, seed=1)["ci_low"] != pooled["ci_low"]
    assert "one reader" in scoring.pooled_auc(key, {"x": apart["r0.75"]}, n_boot=10)["method"]


def test_fleiss_kappa_matches_a_hand_computation_on_five_ratings_and_on_the_call():
    key = KEY.iloc[:4]
    ratings = {"A": [1, 5, 2, 4], "B": [1, 5, 3, 4], "C": [1, 4, 4, 5]}
    answers = {name: _frame(values, key, reader=name) for name, values in ratings.items()}
    # counts per case over ratings 1-5: (3,0,0,0,0) (0,0,0,1,2) (0,1,1,1,0) (0,0,0,2,1): P = 5/12, Pe = 36/144
    assert scoring.readers_agreement(key, answers) == pytest.approx(2 / 9)
    # called synthetic (>= 4): (3,0) (0,3) (2,1) (0,3): P = 5/6, Pe = (25 + 49) / 144
    assert scoring.readers_agreement(key, answers, on="call") == pytest.approx(23 / 35)
    with pytest.raises(ReaderStudyError, match="at least two readers"):
        scoring.readers_agreement(key, {"A": answers["A"]})


def test_simulated_readers_score_near_their_auc_and_a_guessing_one_is_not_significant():
    key = _key(2000)
    answers = {name: readers.simulate_reader(key, auc=auc, seed=i, name=name)
               for i, (name, auc) in enumerate(readers.SIMULATED_READERS.items())}
    assert set(answers["simulated A"]["confidence"]) == set(scoring.CONFIDENCE)
    assert answers["simulated A"]["seconds"].isna().all()
    scores = scoring.score_readers(key, answers, n_boot=50).set_index("reader")
    for name, auc in readers.SIMULATED_READERS.items():
        assert scores.loc[name, "auc"] == pytest.approx(auc, abs=0.04), name
    assert scores.loc["simulated C", "p_value_vs_chance"] > 0.01
    assert scores.loc["simulated A", "p_value_vs_chance"] < 1e-6


def test_the_machine_reader_separates_shifted_features_and_not_identical_ones():
    rng = np.random.default_rng(0)
    key = _key(120).assign(source_index=lambda k: k.groupby("truth").cumcount())
    real = rng.normal(size=(60, 5))
    apart = readers.machine_reader(key, real, rng.normal(size=(60, 5)) + 3, seed=0)
    alike = readers.machine_reader(key, real, rng.normal(size=(60, 5)), seed=0)
    assert set(apart["reader"]) == {readers.MACHINE_READER} and apart["confidence"].between(1, 5).all()
    scores = scoring.score_readers(key, {"apart": apart, "alike": alike}, n_boot=50).set_index("reader")
    assert scores.loc["apart", "auc"] > 0.95 and scores.loc["alike", "auc"] < 0.7


def test_a_sheet_with_bom_crlf_and_extra_columns_reads_fine(tmp_path):
    lines = ["reader,case,confidence,seconds,position,order_seed"]
    lines += [f"ann,{case},{c},{'' if i == 0 else 1.5 * i},{i + 1},42" for i, (case, c) in
              enumerate(zip(KEY["case"][::-1], HAND[::-1]))]  # in another order than the key's
    path = tmp_path / "answers_ann.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    answers = scoring.read_answers(path, KEY)
    assert answers.attrs["reader"] == "ann" and list(answers.index) == list(KEY["case"])
    assert answers["confidence"].tolist() == HAND and answers["confidence"].dtype.kind == "i"
    assert np.isnan(answers.loc["case_008", "seconds"]) and answers.loc["case_001", "seconds"] == 10.5
    assert list(answers.columns) == ["reader", "confidence", "seconds"]
    pd.testing.assert_frame_equal(scoring.read_answers(answers, KEY), answers)  # its own output reads again
    files = scoring.read_answer_files([path, _sheet(tmp_path, _rows(HAND, "bob"), "b.csv")], KEY)
    assert list(files) == ["ann", "bob"]


@pytest.mark.parametrize("lines, expected", [
    (_rows([1, 6, 3, 4, "x", 2, 2.5, 3]), r"whole number from 1 .*: line 3 has '6', line 6 has 'x', line 8 has '2.5'"),
    ([*_rows(HAND)[:3], "ann,case_004,4,-2", "ann,case_005,3,soon", *_rows(HAND)[5:]],
     r"seconds must be .*: line 5 has '-2', line 6 has 'soon'"),
    ([*_rows(HAND), "ann,case_002,1,"], r"case_002 is answered more than once \(line 3 and line 10\)"),
    ([*_rows(HAND), "ann,case_999,1,"], r"cases not in this kit: 'case_999' \(line 10\)"),
    (_rows(HAND)[:2], r"kit cases without an answer: case_003, case_004, case_005, case_006, case_007 and 1 more"),
    ([*_rows(HAND)[:4], *_rows(HAND, "bob")[4:]],
     r"more than one reader name \('ann' from line 2, 'bob' from line 6\)"),
    (_rows(HAND, ""), r"no reader name"),
    ([], r"has no answers"),
])
def test_every_malformed_sheet_is_one_clear_error_naming_the_file_and_line(tmp_path, lines, expected):
    with pytest.raises(ReaderStudyError, match=r"answers_ann\.csv: .*" + expected) as error:
        scoring.score_readers(KEY, {"ann": _sheet(tmp_path, lines)})
    assert _shown_alone(error.value)


def test_unreadable_sheets_missing_columns_and_two_files_of_one_reader_are_clear_errors(tmp_path):
    with pytest.raises(ReaderStudyError, match=r"answers_ann\.csv: missing column\(s\) confidence, seconds"):
        scoring.read_answers(_sheet(tmp_path, ["ann,case_001,real"], header="reader,case,answer"), KEY)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ReaderStudyError, match=r"empty\.csv: is empty"):
        scoring.read_answers(tmp_path / "empty.csv", KEY)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81reader")
    with pytest.raises(ReaderStudyError, match=r"binary\.csv: cannot be read") as error:
        scoring.read_answers(tmp_path / "binary.csv", KEY)
    assert _shown_alone(error.value)
    with pytest.raises(ReaderStudyError, match=r"nowhere\.csv: cannot be read"):
        scoring.read_answers(tmp_path / "nowhere.csv", KEY)
    with pytest.raises(ReaderStudyError, match=r"answers_ann\.csv: 2 problems\n- confidence .*line 2 has '0'\n- "
                       r"kit cases without an answer: case_008;"):
        scoring.read_answers(_sheet(tmp_path, _rows([0, *HAND[1:]])[:7]), KEY)
    first, second = _sheet(tmp_path, _rows(HAND), "a.csv"), _sheet(tmp_path, _rows(HAND), "b.csv")
    with pytest.raises(ReaderStudyError, match=r"a\.csv and .*b\.csv: both are answers of reader 'ann'"):
        scoring.read_answer_files([first, second], KEY)
    with pytest.raises(ReaderStudyError, match=r"answers of 'bob': .*row 2 has '0'"):  # frames: rows count from 1
        scoring.score_readers(KEY, {"bob": _frame([1, 0, 3, 4, 5, 2, 2, 3], reader="bob")})
