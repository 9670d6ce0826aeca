"""Score a reader study from the command line: ``python -m medsec_utils.reader_study score KEY ANSWERS...``.

Prints per reader accuracy, sensitivity and specificity with Wilson intervals, ROC AUC, the binomial test
and median seconds per case; the readers' pooled AUC with its two-way bootstrap interval; Fleiss' kappa.
A key or sheet that cannot be read is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .scoring import SYNTHETIC_FROM, ReaderStudyError, pooled_auc, read_answer_files, readers_agreement, score_readers


def _read_key(path: Path) -> pd.DataFrame:
    try:
        key = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReaderStudyError(f"{path}: cannot read the answer key ({error}); give the kit's "
                               "sealed_key/answer_key.csv") from None
    if not {"case", "truth"} <= set(key.columns):
        raise ReaderStudyError(f"{path}: an answer key needs the columns 'case' and 'truth'; give the kit's "
                               "sealed_key/answer_key.csv")
    return key


def score(key_path: Path, answer_paths: list[Path], *, threshold: int, n_boot: int, seed: int,
          out: Path | None) -> str:
    """The report of ``score`` as text (and the per-reader table saved to ``out`` as CSV)."""
    key = _read_key(key_path)
    readers = read_answer_files(answer_paths, key)
    table = score_readers(key, readers, threshold=threshold, n_boot=n_boot, seed=seed)
    if out is not None:
        table.to_csv(out, index=False)
    shown = table.set_index("reader")
    for column in ("accuracy", "sensitivity", "specificity", "auc"):
        shown[column] = [f"{value:.3f} [{low:.3f}, {high:.3f}]" for value, (low, high)
                         in zip(shown[column], shown.pop(f"{column}_ci"))]
    shown["p_value_vs_chance"] = shown["p_value_vs_chance"].map("{:.3g}".format)
    lines = [f"{len(key)} cases ({(key['truth'] == 'synthetic').sum()} synthetic); 'synthetic' called at "
             f"confidence >= {threshold}; 95 % intervals", shown.to_string(), ""]
    pooled = pooled_auc(key, readers, n_boot=n_boot, seed=seed)
    lines.append(f"pooled AUC of {pooled['n_readers']} reader(s): {pooled['auc']:.3f} "
                 f"[{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}] ({pooled['method']})")
    if len(readers) > 1:
        lines.append(f"Fleiss' kappa: {readers_agreement(key, readers):.3f} on the 5-point scale, "
                     f"{readers_agreement(key, readers, on='call', threshold=threshold):.3f} on the call")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsec_utils.reader_study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser("score", help="score returned answer sheets against the sealed key")
    scoring.add_argument("key", type=Path, help="the kit's sealed_key/answer_key.csv")
    scoring.add_argument("answers", type=Path, nargs="+", help="answers_<reader>.csv files, one per reader")
    scoring.add_argument("--threshold", type=int, default=SYNTHETIC_FROM,
                         help="confidence from which a case counts as called synthetic (default %(default)s)")
    scoring.add_argument("--boot", type=int, default=2000, help="bootstrap replicates (default %(default)s)")
    scoring.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (default %(default)s)")
    scoring.add_argument("--out", type=Path, help="also save the per-reader table as this CSV file")
    args = parser.parse_args(argv)
    try:
        print(score(args.key, args.answers, threshold=args.threshold, n_boot=args.boot, seed=args.seed, out=args.out))
    except ReaderStudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
