"""Scoring a blinded real-vs-synthetic reader study from readers' 5-point confidence ratings.

Each reader returns one CSV, as the kit's web app writes it: ``reader,case,confidence,seconds`` (extra columns
after these are ignored), ``confidence`` on the :data:`CONFIDENCE` scale. :func:`read_answers` checks a sheet
against the sealed key and says in one :class:`ReaderStudyError` everything that is wrong and on which line.
:func:`score_readers` gives per reader the accuracy, sensitivity and specificity of the call "synthetic"
(confidence at or above a threshold) with Wilson 95 % intervals, an exact binomial test against guessing, and
the ROC AUC of the ratings with a case-bootstrap interval; :func:`pooled_auc` the readers' mean AUC with an
interval that counts reader and case variability; :func:`readers_agreement` Fleiss' kappa between readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import fleiss_kappa

from .._common import listed
from ..metrics import wilson_interval

CONFIDENCE = {1: "definitely real", 2: "probably real", 3: "unsure", 4: "probably synthetic", 5: "definitely synthetic"}
SYNTHETIC_FROM = 4
COLUMNS = ["reader", "case", "confidence", "seconds"]
Source = pd.DataFrame | Path | str
Readers = Mapping[str, Source]


class ReaderStudyError(ValueError):
    """Answers or a key that cannot be scored; the message names the file (and line) and how to fix it."""


def called_synthetic(confidence: np.ndarray | int, threshold: int = SYNTHETIC_FROM) -> np.ndarray:
    """Whether a rating counts as calling the case synthetic: ``confidence >= threshold``.

    With the default :data:`SYNTHETIC_FROM` = 4, 3 ('unsure') counts as *not* called synthetic: reader studies
    (MRMC) dichotomise a rating scale at a cut-off stated in advance, and this is the one used here.
    """
    return np.asarray(confidence) >= threshold


def read_answers(source: Source, key: pd.DataFrame, *, origin: str | None = None) -> pd.DataFrame:
    """One reader's answers, checked against the kit's ``key`` (columns ``case`` and ``truth``).

    ``source`` is a CSV file in the answer format (UTF-8 with or without BOM, any line ends), or the same as a
    frame; a frame this function returned is accepted again. ``origin`` names a frame in messages (a file is
    named by its path); rows are CSV line numbers, the header being line 1 (rows of a frame count from 1).

    Returns:
        A frame indexed by ``case`` in the key's order with columns ``reader`` (the one name in the sheet),
        ``confidence`` (int, 1-5) and ``seconds`` (float, NaN where not recorded). The reader's name is also
        ``frame.attrs["reader"]``.

    Raises:
        ReaderStudyError: one message for all of: unreadable or empty file, missing columns, a confidence that
            is not a whole number 1-5, seconds negative or not a number, a case answered twice, cases not in the
            kit, kit cases without an answer, no or more than one reader name.
    """
    origin, unit, frame = _load(source, origin)
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ReaderStudyError(f"{origin}: missing column(s) {', '.join(missing)}; the header must start with "
                               f"{','.join(COLUMNS)} as the reader app writes it")
    text = frame[COLUMNS].apply(lambda column: column.astype("string").str.strip()).fillna("")
    text = text[(text != "").any(axis=1)]  # blank lines go now: read with them, so line numbers stay true
    if text.empty:
        raise ReaderStudyError(f"{origin}: has no answers; export the reader's answers again from the app")
    at = {position: f"{unit} {position + (2 if unit == 'line' else 1)}" for position in text.index}
    confidence, seconds = (_numbers(text[column]) for column in ("confidence", "seconds"))
    whole = (confidence == np.round(confidence)) & (confidence >= min(CONFIDENCE)) & (confidence <= max(CONFIDENCE))
    bad_seconds = (text["seconds"] != "").to_numpy() & ~(np.isfinite(seconds) & (seconds >= 0))
    problems = [
        *_name_problems(text["reader"], at),
        *_value_problems("confidence must be a whole number from 1 (definitely real) to 5 (definitely synthetic)",
                         text["confidence"][~whole], at),
        *_value_problems("seconds must be empty or a number of seconds >= 0", text["seconds"][bad_seconds], at),
        *_case_problems(text["case"], list(key["case"]), at)]
    if len(problems) == 1:
        raise ReaderStudyError(f"{origin}: {problems[0]}")
    if problems:
        raise ReaderStudyError(f"{origin}: {len(problems)} problems\n" + "\n".join(f"- {p}" for p in problems))
    answers = pd.DataFrame({"reader": text["reader"].to_numpy(), "confidence": confidence.astype(int),
                            "seconds": seconds}, index=pd.Index(text["case"].to_numpy(), name="case"))
    answers = answers.loc[list(key["case"])]
    answers.attrs["reader"] = answers["reader"].iat[0]
    return answers


def read_answer_files(paths: Iterable[Path | str], key: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`read_answers` of every file, keyed by the reader name inside it.

    Raises:
        ReaderStudyError: as :func:`read_answers`, or two files with the same reader name (both named).
    """
    answers, files = {}, {}
    for path in paths:
        sheet = read_answers(path, key)
        name = sheet.attrs["reader"]
        if name in answers:
            raise ReaderStudyError(f"{files[name]} and {path}: both are answers of reader {name!r}; keep one, or "
                                   "correct the reader name in the other")
        answers[name], files[name] = sheet, path
    return answers


def score_readers(key: pd.DataFrame, readers: Readers, *, threshold: int = SYNTHETIC_FROM, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per reader (named by the keys of ``readers``): ``n``; ``accuracy``, ``sensitivity`` (synthetic
    called synthetic) and ``specificity`` (real not called synthetic) of :func:`called_synthetic` at
    ``threshold``, each with its Wilson 95 % interval (``*_ci``); ``p_value_vs_chance``, the two-sided exact
    binomial test of the accuracy against 1/2; ``auc``, the ROC AUC of the ratings for "synthetic" (ties count
    1/2, i.e. Mann-Whitney) with ``auc_ci``, the percentile 95 % interval of ``n_boot`` case bootstraps
    stratified by truth; ``n_unsure`` (ratings of 3) and ``median_seconds`` (NaN when none was recorded)."""
    synthetic = _synthetic(key)
    rows = []
    for name, source in readers.items():
        answers = read_answers(source, key, origin=f"answers of {name!r}")
        confidence = answers["confidence"].to_numpy()
        right = called_synthetic(confidence, threshold) == synthetic
        row = {"reader": name, "n": len(right)}
        for metric, mask in (("accuracy", np.ones_like(right)), ("sensitivity", synthetic),
                             ("specificity", ~synthetic)):
            hits, n = int(right[mask].sum()), int(mask.sum())
            row[metric] = hits / n
            row[f"{metric}_ci"] = wilson_interval(hits, n)
        row["p_value_vs_chance"] = float(binomtest(int(right.sum()), len(right), 0.5).pvalue)
        kernel = _kernel(confidence, synthetic)
        row["auc"] = float(kernel.mean())
        row["auc_ci"] = _percentiles(_case_bootstrap([kernel], n_boot, np.random.default_rng(seed))[:, 0])
        row["n_unsure"] = int((confidence == 3).sum())
        row["median_seconds"] = float(answers["seconds"].median())  # NaN when every value is NaN
        rows.append(row)
    return pd.DataFrame(rows)


def pooled_auc(key: pd.DataFrame, readers: Readers, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The readers' mean ROC AUC with a 95 % interval that counts both reader and case variability.

    Each of ``n_boot`` replicates draws readers with replacement and, shared by all readers, cases with
    replacement within each truth class; the interval is the percentile interval of the replicates' mean AUC.
    This is the readers-and-cases experiment of Beiden, Wagner & Campbell (2000), "Components-of-variance models
    and multiple-bootstrap experiments: an alternative method for random-effects, receiver operating
    characteristic analysis", Academic Radiology 7(5):341-349, used directly, without the decomposition into
    variance components they build from several such experiments. With one reader it is a case bootstrap.

    Each reader's Mann-Whitney kernel ``psi[i, j]`` (synthetic case i against real case j: 1 rated higher, 1/2
    tie, 0 lower) is computed once; a replicate's AUC is then ``c_s @ psi @ c_r / (n_s * n_r)`` with the
    multinomial counts ``c_s``, ``c_r`` of the drawn cases, so 2000 replicates take a fraction of a second.

    Returns:
        ``auc``, ``ci_low``, ``ci_high``, ``n_readers``, ``n_cases``, ``n_boot`` and ``method`` (in words).
    """
    if not readers:
        raise ReaderStudyError("the pooled AUC needs at least one reader")
    synthetic = _synthetic(key)
    kernels = [_kernel(confidence, synthetic) for confidence in _ratings(key, readers).values()]
    rng = np.random.default_rng(seed)
    per_reader = _case_bootstrap(kernels, n_boot, rng)
    drawn = rng.multinomial(len(kernels), np.full(len(kernels), 1 / len(kernels)), size=n_boot)
    low, high = _percentiles((per_reader * drawn).sum(1) / len(kernels))
    method = ("case bootstrap stratified by truth (one reader)" if len(kernels) == 1 else
              "two-way bootstrap of readers and cases (cases stratified by truth), Beiden, Wagner & Campbell 2000")
    return {"auc": float(np.mean([kernel.mean() for kernel in kernels])), "ci_low": low, "ci_high": high,
            "n_readers": len(kernels), "n_cases": len(synthetic), "n_boot": n_boot, "method": method}


def readers_agreement(key: pd.DataFrame, readers: Readers, *, on: str = "confidence",
                      threshold: int = SYNTHETIC_FROM) -> float:
    """Fleiss' kappa of the readers on the key's cases (1 full agreement, 0 chance level): on the five
    ratings (``on="confidence"``) or on the call "synthetic" at ``threshold`` (``on="call"``).

    Raises:
        ReaderStudyError: fewer than two readers.
    """
    if on not in ("confidence", "call"):
        raise ValueError(f"on must be 'confidence' or 'call', not {on!r}")
    if len(readers) < 2:
        raise ReaderStudyError(f"agreement needs at least two readers; got {len(readers)}")
    ratings = np.stack(list(_ratings(key, readers).values()), 1)
    categories = list(CONFIDENCE)
    if on == "call":
        ratings, categories = called_synthetic(ratings, threshold), [False, True]
    counts = np.stack([(ratings == category).sum(1) for category in categories], 1)
    return float(fleiss_kappa(counts, method="fleiss"))


def roc_points(key: pd.DataFrame, answers: Source) -> tuple[np.ndarray, np.ndarray]:
    """The empirical ROC curve of one reader's ratings: false and true positive rates of "synthetic" when
    every rating at or above t counts as synthetic, for t from above the scale (0, 0) down to 1 (1, 1)."""
    synthetic = _synthetic(key)
    confidence = read_answers(answers, key)["confidence"].to_numpy()
    thresholds = np.arange(max(CONFIDENCE) + 1, min(CONFIDENCE) - 1, -1)
    said = called_synthetic(confidence[:, None], thresholds[None, :])
    return said[~synthetic].mean(0), said[synthetic].mean(0)


def _load(source: Source, origin: str | None) -> tuple[str, str, pd.DataFrame]:
    """The sheet as a frame with positions 0, 1, ... and how messages name it and its rows."""
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index() if source.index.name == "case" else source
        return origin or "answers", "row", frame.reset_index(drop=True)
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ReaderStudyError(f"{source}: is empty; export the reader's answers again from the app") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ReaderStudyError(f"{source}: cannot be read as a CSV answer sheet ({error}); export the reader's "
                               "answers again from the app") from None
    return str(source), "line", frame


def _numbers(text: pd.Series) -> np.ndarray:
    """Numbers of a text column; NaN where empty or not a number."""
    return pd.to_numeric(text.mask(text == ""), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _value_problems(rule: str, bad: pd.Series, at: dict[int, str]) -> list[str]:
    if bad.empty:
        return []
    return [f"{rule}: " + listed([f"{at[position]} has {value!r}" for position, value in bad.items()])]


def _name_problems(names: pd.Series, at: dict[int, str]) -> list[str]:
    first = names.drop_duplicates()
    if len(first) > 1:
        found = listed([f"{name!r} from {at[position]}" for position, name in first.items()])
        return [f"more than one reader name ({found}); send one file per reader, each with its own name"]
    return ["no reader name; fill in the reader column"] if first.iat[0] == "" else []


def _case_problems(cases: pd.Series, kit: list[str], at: dict[int, str]) -> list[str]:
    problems = []
    twice = cases[cases.duplicated(keep=False)]
    for case, positions in twice.groupby(twice, sort=False).groups.items():
        problems.append(f"{case} is answered more than once ({' and '.join(at[p] for p in positions)}); "
                        "keep one answer per case")
    unknown = cases[~cases.isin(kit)]
    if len(unknown):
        problems.append("cases not in this kit: " + listed([f"{case!r} ({at[p]})" for p, case in unknown.items()])
                        + "; check that the sheet belongs to this kit")
    missing = [case for case in kit if case not in set(cases)]
    if missing:
        problems.append(f"kit cases without an answer: {listed(missing)}; the reader must rate every case")
    return problems


def _synthetic(key: pd.DataFrame) -> np.ndarray:
    """Whether each case of the key is synthetic; a key must hold both real and synthetic cases."""
    truth = key["truth"].to_numpy()
    if not set(truth) == {"real", "synthetic"}:
        raise ReaderStudyError(f"the answer key needs 'real' and 'synthetic' cases and no other truth; got "
                               f"{sorted(set(map(str, truth)))}")
    return truth == "synthetic"


def _ratings(key: pd.DataFrame, readers: Readers) -> dict[str, np.ndarray]:
    return {name: read_answers(source, key, origin=f"answers of {name!r}")["confidence"].to_numpy()
            for name, source in readers.items()}


def _kernel(confidence: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """The Mann-Whitney kernel: synthetic case i against real case j, 1 rated higher, 1/2 tie, 0 lower."""
    higher, lower = confidence[synthetic][:, None], confidence[~synthetic][None, :]
    return (higher > lower) + 0.5 * (higher == lower)


def _case_bootstrap(kernels: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs (replicates x readers) on ``n_boot`` case resamples stratified by truth, the same cases for all."""
    n_s, n_r = kernels[0].shape
    c_s = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=n_boot)
    c_r = rng.multinomial(n_r, np.full(n_r, 1 / n_r), size=n_boot)
    return np.stack([((c_s @ kernel) * c_r).sum(1) for kernel in kernels], 1) / (n_s * n_r)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
