"""The blinded real-vs-synthetic reader study: the kit readers take, the sealed key, and the scoring.

- :mod:`.kit`: ``build_reader_study`` writes shuffled ``case_NNN.png`` images and ``reader_study.html``, a
  single-file web app readers open in a browser, and the answer key to a folder readers never get.
- :mod:`.scoring`: reads the readers' answer CSVs (a 5-point confidence per case) and scores them as reader
  studies do: accuracy, sensitivity and specificity with Wilson intervals, ROC AUC per reader, the readers'
  pooled AUC with a two-way (readers x cases) bootstrap interval, Fleiss' kappa, the binomial test.
- :mod:`.readers`: simulated and machine readers, and the chapter's demonstration on them.
"""

from .kit import APP_FILE, KEY_FILE, SHEET_FILE, build_reader_study
from .readers import MACHINE_READER, SIMULATED_READERS, Demonstration, demonstrate, demonstrations, machine_reader, \
    simulate_reader
from .scoring import CONFIDENCE, SYNTHETIC_FROM, ReaderStudyError, pooled_auc, read_answer_files, read_answers, \
    readers_agreement, score_readers

__all__ = ["APP_FILE", "CONFIDENCE", "KEY_FILE", "MACHINE_READER", "SHEET_FILE", "SIMULATED_READERS", "SYNTHETIC_FROM",
           "Demonstration", "ReaderStudyError", "build_reader_study", "demonstrate", "demonstrations", "machine_reader",
           "pooled_auc", "read_answer_files", "read_answers", "readers_agreement", "score_readers", "simulate_reader"]
