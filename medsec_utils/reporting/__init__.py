"""Records, tables and figures of the chapter runs, and their provenance.

``provenance`` (``Run``: ``metrics.json`` with parameters, data checksums, commit, versions and the digest of
every module the run imported), ``common`` (what all chapters share: data set labels, the phantom banner,
interval cells, the verdict rule), ``chapter`` (``open_chapter``, every notebook's opening) and one module per
chapter, named after its notebook: ``classifiers``, ``attacks``, ``defenses``, ``synthetic_images``,
``federated``, ``privacy``. No code here runs a model; the chapter modules are imported by their notebook only,
so a page's provenance covers the code that page used.
"""

from .chapter import Chapter, open_chapter
from .common import (CLASS_NAMES, PHANTOM_NOTICE, ci_cell, data_label, data_notice, dataset_fields, kinds_table,
                     labelled, phantom_verdict_notice, results_table, self_check, step_provenance, verdict)
from .provenance import Run

__all__ = ["CLASS_NAMES", "PHANTOM_NOTICE", "Chapter", "Run", "ci_cell", "data_label", "data_notice", "dataset_fields",
           "kinds_table", "labelled", "open_chapter", "phantom_verdict_notice", "results_table", "self_check", "step_provenance",
           "verdict"]
