"""The blinded real-vs-synthetic reader study: a kit for human readers, a sealed key, and the scoring.

``build_reader_study`` shuffles real and generated images into ``case_NNN.png`` files (names reveal
nothing), an empty ``answer_sheet.csv`` and a printable ``reader_form.html`` that saves a reader's answers
as CSV; the answer key goes to a separate folder that readers never get. ``score_readers`` scores one
or many readers' answers: accuracy, sensitivity and specificity for "synthetic" with Wilson 95 %
intervals, a two-sided binomial test against guessing, and ``readers_agreement`` gives Fleiss' kappa.
``machine_reader`` is a classifier that tells real from synthetic, scored the same way. ``demonstrate`` builds
a kit and scores simulated readers and the machine reader on it, to show the scoring before any human has read.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.inter_rater import fleiss_kappa

from .cache import write_json_atomic
from .data import ImageSet
from .metrics import wilson_interval
from .synthetic_eval import HELDOUT

ANSWERS = ("real", "synthetic")
KEY_FILE = "answer_key.csv"
SIMULATED_READERS = {"simulated A": (0.6, 0.7), "simulated B": (0.55, 0.6), "simulated C": (0.5, 0.5)}  # (se, sp)
MACHINE_READER = "machine (logistic regression)"


class ReaderStudyError(ValueError):
    """A reader's answers or a kit that cannot be scored; the message names the file and the fix."""


def build_reader_study(real: torch.Tensor, synthetic: torch.Tensor, folder: Path | str, key_folder: Path | str, *,
                       seed: int) -> dict[str, Path]:
    """Write the blinded kit for ``real`` and ``synthetic`` images (in [0, 1]) to ``folder`` and its key
    to ``key_folder``.

    Returns:
        Paths of the ``kit`` folder, the ``form``, the empty ``sheet`` and the ``key``.

    Raises:
        ValueError: ``key_folder`` inside ``folder`` (readers would receive the key).
    """
    folder, key_folder = Path(folder).resolve(), Path(key_folder).resolve()
    if key_folder == folder or folder in key_folder.parents:
        raise ValueError(f"the answer key folder {key_folder} must be outside the readers' folder {folder}")
    images = torch.cat([real, synthetic])
    truth = ["real"] * len(real) + ["synthetic"] * len(synthetic)
    source_index = list(range(len(real))) + list(range(len(synthetic)))
    order = np.random.default_rng(seed).permutation(len(images))
    cases = [f"case_{rank:03d}" for rank in range(1, len(images) + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    for case, index in zip(cases, order):
        _save_png(images[index], folder / f"{case}.png")
    sheet = folder / "answer_sheet.csv"
    pd.DataFrame({"case": cases, "answer": ""}).to_csv(sheet, index=False)
    form = folder / "reader_form.html"
    form.write_text(_form_html(cases))
    key = key_folder / KEY_FILE
    key_folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"case": cases, "truth": [truth[i] for i in order],
                  "source_index": [source_index[i] for i in order]}).to_csv(key, index=False)
    write_json_atomic(key_folder / "kit.json", {"cases": len(cases), "real": len(real), "synthetic": len(synthetic),
                                                "seed": seed, "kit": str(folder)})
    return {"kit": folder, "form": form, "sheet": sheet, "key": key}


def _save_png(image: torch.Tensor, path: Path) -> None:
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def _form_html(cases: list[str]) -> str:
    rows = "\n".join(
        f'<div class="case"><img src="{html.escape(c)}.png" alt="{c}"><div>{c}</div>'
        f'<label><input type="radio" name="{c}" value="real"> real</label> '
        f'<label><input type="radio" name="{c}" value="synthetic"> synthetic</label></div>' for c in cases)
    names = ", ".join(f'"{c}"' for c in cases)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Reader study: real or synthetic?</title>
<style>body{{font-family:sans-serif}} .case{{display:inline-block;margin:8px;text-align:center}}
img{{width:192px;image-rendering:pixelated}} @media print{{button,input[type=text]{{display:none}}}}</style></head>
<body><h1>Real or synthetic?</h1>
<p>Each image is either a real patient image or a generated one. Judge each on its own and tick one answer.
When done, press the button: it saves your answers as a CSV file to send back.</p>
<p>Reader name: <input type="text" id="reader"></p>
{rows}
<p><button onclick="save()">Save my answers (CSV)</button></p>
<script>
const cases = [{names}];
function save() {{
  const lines = ["case,answer"];
  for (const c of cases) {{
    const picked = document.querySelector('input[name="' + c + '"]:checked');
    lines.push(c + "," + (picked ? picked.value : ""));
  }}
  const who = document.getElementById("reader").value.replace(/[^A-Za-z0-9_-]/g, "") || "reader";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  link.download = "answers_" + who + ".csv";
  link.click();
}}
</script></body></html>
"""


def read_answers(answers: pd.DataFrame | Path | str, key: pd.DataFrame) -> pd.Series:
    """One reader's answers (a CSV file or a frame with ``case`` and ``answer``), in the key's case order.

    Raises:
        ReaderStudyError: naming the file, for missing columns, unknown or missing cases, or answers other
            than 'real' / 'synthetic'.
    """
    origin = str(answers) if isinstance(answers, (str, Path)) else "answers"
    frame = pd.read_csv(answers, dtype=str, keep_default_na=False) if isinstance(answers, (str, Path)) else answers
    if not {"case", "answer"} <= set(frame.columns):
        raise ReaderStudyError(f"{origin}: needs columns 'case' and 'answer' (the kit's answer_sheet.csv has them)")
    values = frame.set_index("case")["answer"].fillna("").astype(str).str.strip().str.lower()
    unknown = sorted(set(values.index) - set(key["case"]))
    missing = sorted(set(key["case"]) - set(values.index))
    if unknown or missing:
        raise ReaderStudyError(f"{origin}: cases not in this kit: {', '.join(unknown) or 'none'}; "
                               f"cases without an answer: {', '.join(missing) or 'none'}")
    bad = sorted(values.index[~values.isin(ANSWERS)])
    if bad:
        raise ReaderStudyError(f"{origin}: every answer must be 'real' or 'synthetic': {', '.join(bad)}")
    return values.loc[key["case"]]


def score_readers(key: pd.DataFrame, readers: Mapping[str, pd.DataFrame | Path | str]) -> pd.DataFrame:
    """Per reader: accuracy, sensitivity (synthetic called synthetic), specificity (real called real),
    each with a Wilson 95 % interval, and the two-sided binomial p-value of the accuracy against 1/2."""
    truth = key["truth"].to_numpy()
    rows = []
    for name, answers in readers.items():
        said = read_answers(answers, key).to_numpy()
        right = said == truth
        row = {"reader": name, "n": len(truth)}
        for metric, mask in (("accuracy", np.ones_like(right)), ("sensitivity", truth == "synthetic"),
                             ("specificity", truth == "real")):
            hits, n = int(right[mask].sum()), int(mask.sum())
            row[metric] = hits / n if n else float("nan")
            row[f"{metric}_ci"] = wilson_interval(hits, n)
        row["p_value_vs_chance"] = float(binomtest(int(right.sum()), len(truth), 0.5).pvalue)
        rows.append(row)
    return pd.DataFrame(rows)


def readers_agreement(key: pd.DataFrame, readers: Mapping[str, pd.DataFrame | Path | str]) -> float:
    """Fleiss' kappa of the readers' answers on the key's cases (1 full agreement, 0 chance level).

    Raises:
        ReaderStudyError: fewer than two readers.
    """
    if len(readers) < 2:
        raise ReaderStudyError(f"agreement needs at least two readers; got {len(readers)}")
    said = np.stack([read_answers(answers, key).to_numpy() for answers in readers.values()], 1)
    counts = np.stack([(said == answer).sum(1) for answer in ANSWERS], 1)
    return float(fleiss_kappa(counts, method="fleiss"))


def simulate_reader(key: pd.DataFrame, *, sensitivity: float, specificity: float, seed: int) -> pd.DataFrame:
    """Answers of a simulated reader with the given true rates, for demonstrating and testing the scoring."""
    rng = np.random.default_rng(seed)
    synthetic = key["truth"].to_numpy() == "synthetic"
    says_synthetic = np.where(synthetic, rng.random(len(key)) < sensitivity, rng.random(len(key)) >= specificity)
    return pd.DataFrame({"case": key["case"], "answer": np.where(says_synthetic, "synthetic", "real")})


def machine_reader(key: pd.DataFrame, real_features: np.ndarray, synthetic_features: np.ndarray, *, seed: int,
                   folds: int = 5) -> pd.DataFrame:
    """A logistic regression on image features that tells real from synthetic, as a reader of the kit.

    Each case is answered by a model that never saw it (``folds``-fold cross-validation), so its score
    is an honest estimate of how separable the two sets are in that feature space.
    """
    sets = {"real": np.asarray(real_features), "synthetic": np.asarray(synthetic_features)}
    features = np.stack([sets[truth][index] for truth, index in zip(key["truth"], key["source_index"])])
    labels = (key["truth"] == "synthetic").to_numpy().astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    said = cross_val_predict(model, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return pd.DataFrame({"case": key["case"], "answer": np.where(said == 1, "synthetic", "real")})


@dataclass
class Demonstration:
    """A data set's kit (``paths`` as :func:`build_reader_study` gives them, and its ``key``) made with the images
    of ``generator``, the ``scores`` of :data:`SIMULATED_READERS` and the machine reader, and the simulated
    readers' Fleiss' kappa (``agreement``)."""

    generator: str
    paths: dict[str, Path]
    key: pd.DataFrame
    scores: pd.DataFrame
    agreement: float


def demonstrate(real: torch.Tensor, synthetic: torch.Tensor, real_features: torch.Tensor,
                synthetic_features: torch.Tensor, folder: Path | str, *, generator: str, n: int, seed: int,
                reader_seed: int) -> Demonstration:
    """A kit of up to ``n`` real and ``n`` synthetic images (random picks) in ``folder/kit``, its key in
    ``folder/sealed_key``, scored by :data:`SIMULATED_READERS` (seeds from ``reader_seed``) and by
    :func:`machine_reader` on the images' feature vectors."""
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
    fake = torch.randperm(len(synthetic), generator=torch.Generator().manual_seed(seed + 1))[:n]
    folder = Path(folder)
    paths = build_reader_study(real[pick], synthetic[fake], folder / "kit", folder / "sealed_key", seed=seed)
    key = pd.read_csv(paths["key"])
    readers = {who: simulate_reader(key, sensitivity=se, specificity=sp, seed=reader_seed + i)
               for i, (who, (se, sp)) in enumerate(SIMULATED_READERS.items())}
    readers[MACHINE_READER] = machine_reader(key, real_features[pick].numpy(), synthetic_features[fake].numpy(),
                                             seed=seed)
    simulated = {who: answers for who, answers in readers.items() if who in SIMULATED_READERS}
    return Demonstration(generator, paths, key, score_readers(key, readers), readers_agreement(key, simulated))


def demonstrations(sets: Mapping[str, ImageSet], test: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   samples: Mapping[tuple[str, str], tuple[torch.Tensor, torch.Tensor]],
                   features: Mapping[tuple[str, str], torch.Tensor], generators: Mapping[str, str],
                   kit_root: Path | str, *, n: int, seed: int) -> dict[str, Demonstration]:
    """:func:`demonstrate` for every data set, with its test images and the images of its ``generators[label]``
    (``samples`` and ``features`` as ``synthetic_eval`` keys them), the kit in ``kit_root/<data set name>``."""
    shown = {}
    for index, (label, images) in enumerate(sets.items()):
        kind = generators[label]
        shown[label] = demonstrate(test[label][0], samples[label, kind][0], features[label, HELDOUT],
                                   features[label, kind], Path(kit_root) / images.name, generator=kind, n=n,
                                   seed=seed, reader_seed=seed + 10 * index)
        print(f"{label}: kit of {len(shown[label].key)} images ({kind}) in {shown[label].paths['kit']}")
    return shown
