"""Data-parallel training under torchrun: 2 processes with the gloo backend on this CPU.

What these tests can catch: a global batch not split into disjoint shares, gradients not averaged (the two
processes, or one process and two, drift apart), a process other than rank 0 writing into the cache, and a
``distributed.run`` that does not start, relay or report torchrun. What they cannot: speed-ups (2 cores), NCCL.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medsec_utils import cache, data, distributed, generative, training

from _ddp import IMAGES, train_generators, train_recorder
from _flower_deployment import free_port
from _paths import REPO

CPU = torch.device("cpu")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float sums in another order: one process and two agree to ~1e-6 here
SETTINGS = {"latent_dim": 16, "gan_width": 8, "progan_width": 16, "ddpm_width": 8, "gan_lr": 2e-4,
            "gan_augment": "color,translation,cutout",
            "progan_augment": "color,translation,cutout", "progan_lr": 1e-3, "ddpm_lr": 1e-3, "batch_size": 4}


@pytest.fixture(autouse=True)
def importable_helpers(monkeypatch):
    """The torchrun processes import ``_ddp`` by name, as they would a user's module on their path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _ranks(folder: Path, world: int) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def test_two_processes_train_a_classifier_as_one_does_on_the_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    distributed.run(1, train_recorder, one, device=CPU, progress=False)
    distributed.run(2, train_recorder, two, device=CPU, progress=False)
    (alone,), (first, second) = _ranks(one, 1), _ranks(two, 2)
    assert (alone["world"], first["world"], second["world"]) == (1, 2, 2)
    assert not set(first["seen"]) & set(second["seen"]), "the two processes must see disjoint shares"
    assert sorted(first["seen"] + second["seen"]) == sorted(alone["seen"]) == list(range(IMAGES))
    for name, weight in alone["weights"].items():
        torch.testing.assert_close(first["weights"][name], weight, **TOLERANCE)
        torch.testing.assert_close(second["weights"][name], first["weights"][name], rtol=0, atol=0)
    assert first["written"] == [str(two / "checkpoint.pt")] and second["written"] == []


def test_two_processes_train_each_generator_to_the_same_weights_and_rank_0_alone_writes(tmp_path):
    (tmp_path / "one").mkdir()
    distributed.run(1, train_generators, tmp_path / "one", SETTINGS, device=CPU, progress=False)
    distributed.run(2, train_generators, tmp_path, SETTINGS, device=CPU, progress=False)
    (alone,), (first, second) = _ranks(tmp_path / "one", 1), _ranks(tmp_path, 2)
    per_epoch = 16 // 4  # batches of 4 of the 16 images
    for kind, batches in alone["seen"].items():  # each batch shared out in disjoint halves, every image once an epoch
        shares = list(zip(first["seen"][kind], second["seen"][kind]))
        assert len(batches) == len(shares) > 0 and len(shares) % per_epoch == 0, kind
        assert all(len(mine) == len(theirs) == 2 for mine, theirs in shares), kind
        for start in range(0, len(shares), per_epoch):
            assert sorted(i for pair in shares[start:start + per_epoch] for share in pair for i in share) == list(
                range(16)), f"{kind}: epoch from batch {start}"
        # the first shuffle comes before any noise is drawn, so it is one process's (later ones are not: on one
        # process the noise comes from the shuffling generator, on several from a generator per rank)
        assert [sorted(m + t) for m, t in shares[:per_epoch]] == [sorted(b) for b in batches[:per_epoch]], kind
    assert set(first["weights"]) == set(generative.GENERATORS)
    for kind, weights in first["weights"].items():
        torch.manual_seed(0)
        start = generative.build_generative(kind, 1, 16, SETTINGS)[0].state_dict()
        assert any(not torch.equal(weights[name], start[name]) for name in start), f"{kind}: a step must change weights"
        for name, weight in weights.items():
            torch.testing.assert_close(second["weights"][kind][name], weight, rtol=0, atol=0, msg=f"{kind} {name}")
    assert set(first["written"]) == {str(tmp_path / kind / "checkpoint.pt") for kind in generative.GENERATORS}
    assert second["written"] == []


def test_a_cached_classifier_trained_on_two_processes_is_one_complete_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / "cache"))
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    settings = {"max_train_images": 24, "max_eval_images": 16, "epochs": 1, "batch_size": 8, "lr": 1e-3,
                "weight_decay": 0.0}
    model, history, hit = training.classifier_for(images, settings, seed=0, device=CPU, arch="resnet18",
                                                  progress=False, nproc=2)
    again, _, hit_again = training.classifier_for(images, settings, seed=0, device=CPU, arch="resnet18",
                                                  progress=False, nproc=1)
    entries = list((tmp_path / "cache" / "classifier").glob("*/artefact.json"))
    assert (hit, hit_again, len(entries), len(history)) == (False, True, 1, 1)
    assert sorted(p.name for p in entries[0].parent.iterdir()) == ["artefact.json", "history.json", "model.pt"]
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], weight, rtol=0, atol=0)


def test_a_failing_torchrun_job_is_one_error_with_its_output():
    with pytest.raises(RuntimeError, match=r"torchrun --standalone --nproc_per_node=2 loads exited with [1-9](.|\n)*Expecting value"):
        distributed.run(2, json.loads, "not JSON")


def test_two_nodes_on_loopback_train_as_two_processes_of_one_node_do(tmp_path, monkeypatch):
    """The several-node hand-off: the notebook's node hosts the rendezvous, a follower on the other node joins
    the job it leaves in the shared cache; one process per node here, as two nodes of one process each."""
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / "cache"))
    endpoint = f"127.0.0.1:{free_port()}"
    follower = subprocess.Popen([sys.executable, "-m", "medsec_utils.distributed", "follow", "--nnodes", "2",
                                 "--rdzv-endpoint", endpoint, "--once"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    one.mkdir(), nodes.mkdir()
    try:
        distributed.run(1, train_recorder, one, device=CPU, progress=False)
        monkeypatch.setenv("MEDSEC_NNODES", "2")
        monkeypatch.setenv("MEDSEC_RDZV_ENDPOINT", endpoint)
        distributed.run(1, train_recorder, nodes, device=CPU, progress=False)
        output, _ = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, output
    (alone,), (first, second) = _ranks(one, 1), _ranks(nodes, 2)
    assert (first["world"], second["world"]) == (2, 2)
    assert not set(first["seen"]) & set(second["seen"])
    assert sorted(first["seen"] + second["seen"]) == sorted(alone["seen"])
    for name, weight in alone["weights"].items():
        torch.testing.assert_close(first["weights"][name], weight, **TOLERANCE)
    assert first["written"] == [str(nodes / "checkpoint.pt")] and second["written"] == []
    assert list(distributed.jobs_folder().iterdir()) == [], "a finished job must leave no job file"


def test_several_nodes_without_a_rendezvous_address_are_refused(monkeypatch):
    monkeypatch.setenv("MEDSEC_NNODES", "2")
    monkeypatch.delenv("MEDSEC_RDZV_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match="MEDSEC_RDZV_ENDPOINT=host:port"):
        distributed.run(1, json.loads, "{}")


def test_job_files_of_killed_notebooks_are_removed_before_a_job_and_each_job_file_after_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDSEC_NNODES", "2")
    monkeypatch.setenv("MEDSEC_RDZV_ENDPOINT", "127.0.0.1:1")
    jobs = distributed.jobs_folder()
    assert jobs == cache.cache_root() / "torchrun_jobs", "the jobs wait in the artefact cache the nodes share"
    jobs.mkdir(parents=True)
    dead, live = jobs / "1-999999999.pt", jobs / f"2-{os.getpid()}.pt"  # above Linux's largest pid; this process
    dead.touch(), live.touch()
    seen = []
    monkeypatch.setattr(distributed, "_torchrun", lambda options, job, name: seen.append(sorted(jobs.iterdir())))
    distributed.run(1, json.loads, "{}")
    [during] = seen
    assert dead not in during and live in during and len(during) == 2, "the dead notebook's job goes, ours is added"
    assert sorted(jobs.iterdir()) == [live]
