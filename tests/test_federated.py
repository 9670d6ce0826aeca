"""Federated DC-GANs on Flower: FedAvg arithmetic, site splits, the payload guard, and two rounds on
Flower's simulation engine and on its deployment engine (one SuperLink, two SuperNodes on 127.0.0.1)."""

import tomllib
from pathlib import Path

import psutil
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from medsec_utils import data, federated, generative, metrics, profiles

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SETTINGS = profiles.resolve_profile("smoke")
TINY = {"image_size": 32, "rounds": 2}


def _config(**values) -> dict:
    return federated.federation_config({**TINY, **values}, SETTINGS)


@pytest.fixture(scope="module")
def images():
    return data.load_dataset("phantom:chest_xray", size=32, seed=0, phantom_images=SETTINGS.phantom_images)


def test_flower_app_run_config_equals_the_library_defaults():
    pyproject = tomllib.loads((ROOT / "flower_app" / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == federated.DEFAULTS


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown federation setting.*epochs"):
        federated.federation_config({"epochs": 3})
    with pytest.raises(ValueError, match="networks 'critic'"):
        federated.federation_config({"networks": "critic"})
    with pytest.raises(ValueError, match="split 'random'"):
        federated.federation_config({"split": "random"})
    with pytest.raises(ValueError, match="lacks DC-GAN sizes"):
        federated.build_dcgan(federated.federation_config(TINY))


def test_a_deployment_run_config_takes_its_dcgan_sizes_from_its_profile_unless_it_names_them():
    config = federated.run_config({"profile": "smoke", "image_size": 0, "gan_width": 8})
    assert config["image_size"] == SETTINGS.image_size and config["batch_size"] == SETTINGS.batch_size
    assert config["gan_width"] == 8 and config["dataset"] == federated.DEFAULTS["dataset"]


def test_iid_split_deals_equal_disjoint_halves_and_dirichlet_skews_the_classes():
    labels = torch.tensor([0] * 60 + [1] * 40)
    halves = federated.split_sites(labels, "iid", seed=0)
    assert [len(h) for h in halves] == [50, 50]
    assert sorted(torch.cat(halves).tolist()) == list(range(100))
    skewed = federated.split_sites(labels, "dirichlet", seed=0, alpha=0.3)
    assert sorted(torch.cat(skewed).tolist()) == list(range(100))
    shares = [labels[s].float().mean().item() for s in skewed]
    assert abs(shares[0] - shares[1]) > 0.2, shares
    with pytest.raises(ValueError, match="left a site without images"):
        federated.split_sites(torch.tensor([0, 1]), "dirichlet", seed=0, alpha=0.01)


def test_a_site_that_shares_only_its_generator_keeps_its_discriminator():
    config = _config(networks="generator", local_epochs=1)
    x = torch.rand(8, 1, 32, 32)
    generator, discriminator = federated.build_dcgan(config)
    shared, kept, metrics = federated.train_locally(
        federated.to_arrays(generator, discriminator, ["generator."]), None, x, config, 1, 0, CPU)
    assert shared and all(k.startswith("generator.") for k in shared)
    assert kept and all(k.startswith("discriminator.") for k in kept)
    assert metrics[federated.WEIGHT_KEY] == 8
    with pytest.raises(ValueError, match="3-channel images"):
        federated.train_locally(shared, kept, torch.rand(8, 3, 32, 32), config, 1, 0, CPU)


def test_a_site_replies_with_its_last_weights_not_their_moving_average():
    """FedAvg averages the sites' trained models; the moving average is only what chapter 4 samples with."""
    from medsec_utils import generative

    config = _config(local_epochs=1)
    x = torch.rand(8, 1, 32, 32)
    generator, discriminator = federated.build_dcgan(config)
    start = federated.to_arrays(generator, discriminator, federated.PREFIXES)
    shared, _, _ = federated.train_locally(start, None, x, config, 1, 0, CPU)
    replies = {}
    for average in (False, True):
        generator, discriminator = federated.build_dcgan(config)
        federated.load_arrays(start, generator, discriminator)
        generative.train_dcgan(generator, discriminator, x, epochs=1, batch_size=config["batch_size"],
                               lr=config["gan_lr"], augment=config["gan_augment"], seed=config["seed"] + 1000,
                               device=CPU, progress=False, average=average)
        replies[average] = federated.to_arrays(generator, discriminator, federated.PREFIXES)
    for name, array in shared.items():
        torch.testing.assert_close(torch.from_numpy(array.numpy()), torch.from_numpy(replies[False][name].numpy()))
    assert any(not torch.equal(torch.from_numpy(shared[n].numpy()), torch.from_numpy(replies[True][n].numpy()))
               for n in shared if n.startswith("generator."))


def test_payload_guard_passes_weights_and_refuses_images_lists_and_configs():
    config = _config()
    generator, discriminator = federated.build_dcgan(config)
    weights = federated.to_arrays(generator, discriminator, federated.PREFIXES)
    federated.check_payload(RecordDict({"arrays": weights, "metrics": MetricRecord({"loss": 0.5})}), config)
    leaks = {
        "an image tensor": RecordDict({"arrays": ArrayRecord({"generator.x": torch.rand(4, 1, 32, 32)})}),
        "a weight of the wrong shape": RecordDict({"arrays": ArrayRecord({"generator.net.0.weight": torch.rand(2)})}),
        "a list of values": RecordDict({"metrics": MetricRecord({"pixels": [0.1, 0.2]})}),
        "a config record": RecordDict({"notes": ConfigRecord({"path": "/data/patient_1.png"})}),
    }
    for what, content in leaks.items():
        with pytest.raises(federated.PayloadError):
            federated.check_payload(content, config)
            pytest.fail(f"{what} passed the guard")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("simulated")
    config = _config(split="dirichlet", alpha=1.0, store=str(folder / "store"))
    sites = federated.Sites.from_sets([images], split="dirichlet", alpha=1.0, seed=0, limit=SETTINGS.max_train_images)
    store = federated.simulate(config, sites)
    left = [child.name() for child in psutil.Process().children(recursive=True) if "fl" in child.name()]
    return config, sites, store, left


def test_two_rounds_on_the_simulation_engine_store_every_model_and_its_cost(simulated):
    """Through `flwr run` against a simulation SuperLink, which stops with the run: no Flower process is left."""
    config, _, store, left = simulated
    assert not left, f"Flower processes left behind by the simulation: {left}"
    rounds = store.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    generator, discriminator = federated.build_dcgan(config)
    model_bytes = federated.payload_bytes(federated.to_arrays(generator, discriminator, federated.PREFIXES))
    for row in rounds:
        assert row["bytes_to_sites"] == row["bytes_from_sites"] == 2 * model_bytes
        assert row["seconds"] > 0 and set(row["sites"]) == {"0", "1"}
    assert set(store.models(0)) == {"server"}
    assert set(store.models(2)) == {"server", "site 0", "site 1"}


def test_the_server_model_is_the_sample_weighted_mean_of_what_the_sites_sent(simulated):
    config, sites, store, _ = simulated
    sizes = [len(x) for x in sites.x]
    assert sizes[0] != sizes[1]
    for server_round in (1, 2):
        models = store.models(server_round)
        for key, value in models["server"].items():
            if value.is_floating_point():
                mean = (sizes[0] * models["site 0"][key].double() + sizes[1] * models["site 1"][key].double()) / sum(sizes)
                assert torch.allclose(value.double(), mean, atol=1e-5), key


def test_flower_rounds_equal_the_same_rounds_in_process(simulated, tmp_path):
    config, sites, store, _ = simulated
    config = federated.federation_config({**config, "store": str(tmp_path / "in_process")})
    sites = list(sites.x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each simulated site, so the float sums run in the same order
    try:
        local = federated.run_in_process(config, sites, CPU)
    finally:
        torch.set_num_threads(threads)
    flower, ours = store.models(2)["server"], local.models(2)["server"]
    assert flower.keys() == ours.keys()
    for key in flower:
        assert torch.allclose(flower[key].double(), ours[key].double(), atol=1e-4), key


def test_each_stored_server_model_is_the_image_weighted_mean_of_that_rounds_site_uploads(simulated):
    """Our strategy on Flower, as it ran: FedAvg weights each site by its image count (the Dirichlet split makes
    the two counts differ, so a plain mean would fail)."""
    _, sites, store, _ = simulated
    n = [len(y) for y in sites.y]
    assert n[0] != n[1]
    for server_round in (1, 2):
        models = store.models(server_round)
        assert set(models["server"]) == set(models["site 0"]) == set(models["site 1"])
        for key, value in models["server"].items():
            expected = (n[0] * models["site 0"][key].double() + n[1] * models["site 1"][key].double()) / sum(n)
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=key)


def test_fid_per_round_covers_the_server_and_both_sites(simulated):
    config, _, store, _ = simulated
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    encoder.num_features = 16
    real = torch.rand(64, 16, dtype=torch.float64)
    rows = federated.store_fids(store, config, encoder, real, n=16, device=CPU, progress=False)
    assert {(r["round"], r["model"]) for r in rows} == {(0, "server")} | {
        (r, who) for r in (1, 2) for who in ("server", "site 0", "site 1")}
    scored = {(r["round"], r["model"]): r["fid"] for r in rows}
    assert len(set(scored.values())) == len(scored)  # each model scored on its own samples, not the server's
    generator, _ = federated.build_dcgan(config)  # one model scored independently: its weights, 16 seeded samples
    prefix = federated.PREFIXES[0]
    generator.load_state_dict({k[len(prefix):]: v for k, v in store.models(2)["site 1"].items()
                               if k.startswith(prefix)})
    fake = metrics.image_features(encoder, generative.sample(generator, 16, seed=0, device=CPU), CPU, keep=False)
    assert scored[2, "site 1"] == pytest.approx(metrics.fid_kid(real, fake, seed=0)["fid"], rel=1e-9)
    with pytest.MonkeyPatch.context() as patch:  # an unchanged rerun samples nothing again
        patch.setattr(federated.study.generative, "sample", lambda *a, **k: pytest.fail("sampled again"))
        assert federated.store_fids(store, config, encoder, real, n=16, device=CPU, progress=False) == rows


def test_the_library_never_reloads_or_re_resolves_what_its_caller_loaded(images, monkeypatch, server_identity):
    sites = federated.Sites.from_sets([images], seed=0, limit=64)
    config = _config(rounds=1)
    design = federated.Design.of(profiles.Settings({**SETTINGS, "image_size": 32, "max_train_images": 64}), 0,
                                 sizes=[32], splits=["iid"])

    def refuse(*args, **kwargs):
        raise AssertionError("the library loaded or resolved again what its caller had")

    monkeypatch.setattr(data, "load_dataset", refuse)
    monkeypatch.setattr(profiles, "resolve_profile", refuse)
    federated.profile_settings.cache_clear()
    [planned] = federated.plan_federations([images], design)
    assert planned.sites.fingerprint == sites.fingerprint and planned.centralised is planned.sites
    store, _ = federated.federation_for(config, sites)
    assert [r["round"] for r in store.rounds()] == [1]
    baseline, _ = federated.baseline_for(config, sites, None, CPU)
    assert set(baseline.models(1)) == {"server", "site 0"}
    # the simulated sites above ran in Ray workers; run a site's ClientApp here too, under the same guard
    app = federated.make_client_app({**config, "sites": str(sites.save())}, device="cpu")
    generator, discriminator = federated.build_dcgan(config)
    content = RecordDict({"arrays": federated.to_arrays(generator, discriminator, federated.PREFIXES),
                          "config": ConfigRecord({"server-round": 1})})
    reply = app(Message(content, dst_node_id=1, message_type="train"),
                Context(run_id=1, node_id=1, node_config={"partition-id": 1}, state=RecordDict(), run_config={}))
    assert reply.content["metrics"][federated.WEIGHT_KEY] == len(sites.x[1])


@pytest.mark.slow
def test_two_rounds_on_the_deployment_engine_leave_no_process_behind(tmp_path, images):
    """``run_on_loopback``: a SuperLink and two SuperNode processes, `flwr run flower_app`, all stopped at the end."""
    sites = federated.Sites.from_sets([images], limit=SETTINGS.max_train_images)
    store = federated.run_on_loopback(_config(store=str(tmp_path / "store"), rounds=2), sites)
    assert [r["round"] for r in store.rounds()] == [1, 2]
    assert set(store.models(2)) == {"server", "site 0", "site 1"}
    left = [child.name() for child in psutil.Process().children(recursive=True) if "fl" in child.name()]
    assert not left, f"Flower processes left behind: {left}"


@pytest.fixture
def server_identity(monkeypatch):
    """What Flower sets in a ServerApp process before its strategy makes messages: a run, task and node id."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _train_reply(site: int, arrays: ArrayRecord | None = None, *, lost: str = "") -> Message:
    """Site ``site``'s reply to a train message: its weights and image count, or the error Flower puts in its
    place (``lost``: the reason, as when the SuperLink answers for a SuperNode that stopped)."""
    request = Message(RecordDict(), dst_node_id=site + 1, message_type="train")
    if lost:
        return Message(error=Error(code=0, reason=lost), reply_to=request)
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"site": site, federated.WEIGHT_KEY: 10})}),
                   reply_to=request)


def _two_sites_arrays() -> list[ArrayRecord]:
    return [ArrayRecord({"w": torch.full((2,), float(site))}) for site in range(2)]


def test_a_site_lost_mid_round_stops_the_federation_with_one_line_and_keeps_the_finished_rounds(tmp_path,
                                                                                              server_identity):
    store = federated.RoundStore(tmp_path)
    strategy = federated.RecordingFedAvg(store, rounds=3, done=1)  # rounds 1 is stored: this run goes on from it
    store.log({"round": 1, "seconds": 1.0})
    strategy.configure_train(1, _two_sites_arrays()[0], ConfigRecord(), grid=_FixedGrid())
    with pytest.raises(RuntimeError, match=r"round 2: 1 of 2 sites replied; errors: \['node gone'\]; the federation "
                                           r"stops here \(min_sites=2; with min_sites=1"):
        strategy.aggregate_train(1, [_train_reply(0, _two_sites_arrays()[0]), _train_reply(1, lost="node gone")])
    assert [row["round"] for row in store.rounds()] == [1] and not (tmp_path / "round_002").exists()


def test_with_min_sites_1_a_round_averages_the_sites_that_replied_and_logs_the_missing_one(tmp_path, capsys,
                                                                                           server_identity):
    store = federated.RoundStore(tmp_path)
    strategy = federated.RecordingFedAvg(store, rounds=2, min_sites=1)
    arrays = _two_sites_arrays()
    strategy.configure_train(1, arrays[0], ConfigRecord(), grid=_FixedGrid())
    averaged, _ = strategy.aggregate_train(1, [_train_reply(1, arrays[1]), _train_reply(0, lost="node gone")])
    strategy.keep_server_model(1, averaged)
    torch.testing.assert_close(averaged.to_torch_state_dict()["w"], torch.ones(2))  # site 1's weights alone
    assert "round 1: no reply from site(s) [0] (errors: ['node gone']); averaging the 1 that replied" in \
        capsys.readouterr().out
    assert [(row["round"], row["missing_sites"]) for row in store.rounds()] == [(1, [0])]
    assert set(store.models(1)) == {"server", "site 1"}
    with pytest.raises(RuntimeError, match="0 of 2 sites replied"):
        strategy.aggregate_train(2, [_train_reply(0, lost="node gone"), _train_reply(1, lost="node gone")])
    with pytest.raises(ValueError, match="min_sites 3: choose 1 to 2"):
        federated.federation_config({"min_sites": 3})


class _FixedGrid:
    """The part of Flower's ``Grid`` FedAvg's ``configure_train`` uses: two connected SuperNodes."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]
