"""Provenance and metrics.json of a run."""

import json
from importlib import metadata

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from medsec_utils import data, reporting  # noqa: E402


def test_run_writes_metrics_with_full_provenance(tmp_path):
    images = data.load_dataset("phantom:histology?n=40", size=32, use_cache=False, progress=False)
    run = reporting.Run("99_test", tmp_path / "out", params={"profile": "smoke", "seed": 3},
                        settings={"epochs": 1}, device=torch.device("cpu"))
    run.add_dataset(images)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.save_figure(fig, "line")
    path = run.finish([{"dataset": images.name, "test_accuracy": 0.5}])
    record = json.loads(path.read_text())
    provenance = record["provenance"]
    assert record["results"] == [{"dataset": images.name, "test_accuracy": 0.5}]
    assert provenance["parameters"] == {"profile": "smoke", "seed": 3}
    assert provenance["datasets"][0]["checksum"] == images.checksum and provenance["datasets"][0]["is_phantom"]
    assert len(provenance["git"]["commit"]) in (40, len("unknown"))
    assert provenance["versions"]["torch"] == metadata.version("torch")
    assert provenance["device"].startswith("cpu") and provenance["wall_time_s"] >= 0
    assert provenance["figures"] == ["line.png"] and (tmp_path / "out" / "line.png").stat().st_size > 1000
    assert {"data", "reporting", "cache"} <= set(provenance["library"]) <= set(reporting.cache.code_fingerprint())
    assert provenance["library"]["data"] == reporting.cache.code_fingerprint("data")["data"]


def test_phantom_results_are_labelled_everywhere():
    images = data.load_dataset("phantom:chest_xray?n=40", size=32, use_cache=False, progress=False)
    assert "PHANTOM" in reporting.data_label(images)
    assert "phantom" in reporting.data_notice([images]).lower()
    fig = reporting.plot_examples([images], per_class=2)
    assert "PHANTOM" in fig._suptitle.get_text()
