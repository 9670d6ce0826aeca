"""Federated training of DC-GANs across sites: FedAvg on Flower's Message API.

One ``ServerApp`` and one ``ClientApp`` serve both of Flower's engines: ``simulate`` runs them in the
simulation engine (notebook, tests), and ``flower_app/`` hands the same objects to a SuperLink and one
SuperNode per site. Each site reads its own images; only model weights and scalar metrics cross the
wire, and the client mod ``weights_only`` refuses any reply that carries anything else.

Settings travel as one flat Flower run config (``DEFAULTS``); training sizes come from the profile it
names, so ``profiles.yaml`` stays the one source of truth.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn
from tqdm.auto import tqdm

from . import cache, data, generative, metrics, profiles

SITES = 2
SPLITS = ("iid", "dirichlet")
NETWORKS = ("both", "generator", "discriminator")
PREFIXES = ("generator.", "discriminator.")
WEIGHT_KEY = "num-examples"
DEFAULTS: dict[str, Any] = {
    "dataset": "phantom:chest_xray",  # one DATASET spec split across the sites, or "spec A | spec B", one per site
    "split": "iid",                   # iid: equal random halves; dirichlet: each class shared out ~ Dirichlet(alpha)
    "alpha": 0.5,
    "profile": "smoke",               # sizes (width, batch, lr, image size) from medsec_utils/profiles.yaml
    "image_size": 0,                  # 0: the profile's
    "channels": 1,                    # image channels; the server builds the model without seeing images
    "local_epochs": 1,                # local epochs between two aggregations
    "rounds": 2,
    "networks": "both",               # which DC-GAN networks FedAvg averages: both, generator or discriminator
    "seed": 0,
    "store": "",                      # folder where the server keeps every round's weights ("": none)
}


class PayloadError(RuntimeError):
    """A message would carry something other than DC-GAN weights and scalar metrics."""


def federation_config(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``values`` (a Flower run config or keyword settings), checked.

    Raises:
        ValueError: an unknown key or a value out of range, named.
    """
    config = {**DEFAULTS, **(values or {})}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown federation setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    for key in ("image_size", "channels", "local_epochs", "rounds", "seed"):
        config[key] = int(config[key])
    config["alpha"] = float(config["alpha"])
    if config["split"] not in SPLITS:
        raise ValueError(f"split {config['split']!r}: choose {' or '.join(SPLITS)}")
    if config["networks"] not in NETWORKS:
        raise ValueError(f"networks {config['networks']!r}: choose from {', '.join(NETWORKS)}")
    if config["local_epochs"] < 1 or config["rounds"] < 1 or config["alpha"] <= 0:
        raise ValueError("local_epochs and rounds must be >= 1 and alpha > 0")
    return config


def _settings(config: Mapping[str, Any]) -> profiles.Settings:
    return profiles.resolve_profile(config["profile"], image_size=config["image_size"] or None)


def split_sites(labels: torch.Tensor, split: str, seed: int, alpha: float = 0.5,
                sites: int = SITES) -> list[torch.Tensor]:
    """Indices of each site's images.

    ``iid`` deals a random permutation out in equal parts (the study's split); ``dirichlet`` shares each
    class out in proportions drawn from Dirichlet(alpha), a label-skewed (non-IID) split.

    Raises:
        ValueError: unknown split, or a site left without images.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if split == "iid":
        parts = np.array_split(rng.permutation(len(labels)), sites)
    elif split == "dirichlet":
        parts = [[] for _ in range(sites)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(sites, alpha)))[:-1] * len(members)).round().astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].extend(chunk)
    else:
        raise ValueError(f"split {split!r}: choose {' or '.join(SPLITS)}")
    if min(len(p) for p in parts) == 0:
        raise ValueError(f"the {split} split (alpha {alpha}, seed {seed}) left a site without images; "
                         f"raise alpha or change the seed")
    return [torch.as_tensor(np.sort(np.asarray(p, dtype=np.int64))) for p in parts]


def site_data(config: Mapping[str, Any], site: int, own_dataset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and labels of one site.

    A real site passes ``own_dataset`` (its SuperNode's ``dataset`` node config) and reads all of its
    training split. Otherwise a single ``dataset`` spec is split across the sites, and ``"A | B"`` gives
    site 0 data set A and site 1 data set B.
    """
    return _site_data(own_dataset or config["dataset"], bool(own_dataset), config["split"], config["alpha"],
                      config["profile"], config["image_size"], config["seed"], site)


@functools.lru_cache(maxsize=4)
def _site_data(dataset: str, whole: bool, split: str, alpha: float, profile: str, image_size: int, seed: int,
               site: int) -> tuple[torch.Tensor, torch.Tensor]:
    settings = profiles.resolve_profile(profile, image_size=image_size or None)
    specs = [spec.strip() for spec in dataset.split("|")]
    if len(specs) not in (1, SITES):
        raise ValueError(f"dataset {dataset!r}: give one spec to split or {SITES} specs joined by '|'")
    own = whole or len(specs) == SITES
    images = data.load_dataset(specs[site] if len(specs) == SITES else specs[0], size=settings.image_size, seed=seed,
                               phantom_images=settings.phantom_images)
    x, y = images.tensors("train", settings.max_train_images, seed)
    if own:
        return x, y
    index = split_sites(y, split, seed, alpha)[site]
    return x[index], y[index]


def build_dcgan(config: Mapping[str, Any]) -> tuple[nn.Module, nn.Module]:
    """The untrained DC-GAN every site and the server start from (seeded, so all start alike)."""
    settings = _settings(config)
    torch.manual_seed(config["seed"])
    return generative.build_generative("dcgan", config["channels"], settings.image_size, settings)


def _shared(networks: str) -> tuple[str, ...]:
    return PREFIXES if networks == "both" else (f"{networks}.",)


def to_arrays(generator: nn.Module, discriminator: nn.Module, prefixes: Iterable[str]) -> ArrayRecord:
    """The state of the networks named by ``prefixes`` as one ArrayRecord (keys ``generator.*`` ...)."""
    nets = dict(zip(PREFIXES, (generator, discriminator)))
    return ArrayRecord({f"{p}{k}": v.detach().cpu() for p in prefixes for k, v in nets[p].state_dict().items()})


def load_arrays(arrays: ArrayRecord, generator: nn.Module, discriminator: nn.Module) -> None:
    """Load every network present in ``arrays`` into ``generator`` / ``discriminator``."""
    state = arrays.to_torch_state_dict()
    for prefix, net in zip(PREFIXES, (generator, discriminator)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            net.load_state_dict(part)


def payload_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the serialised arrays: what one message carries over the wire, framing aside."""
    return sum(len(array.data) for array in arrays.values())


def train_locally(arrays: ArrayRecord, kept: ArrayRecord | None, x: torch.Tensor, config: Mapping[str, Any],
                  server_round: int, site: int,
                  device: torch.device) -> tuple[ArrayRecord, ArrayRecord | None, dict[str, float]]:
    """One site's part of a round: ``local_epochs`` DC-GAN epochs from the server's weights.

    ``kept`` holds the networks the site does not share (``networks`` other than both). Adam starts
    afresh every round: the server sends weights, not optimiser state. Returns the shared networks to
    send, the kept ones, and scalar metrics (the sample count weights FedAvg).
    """
    settings = _settings(config)
    if x.shape[1] != config["channels"]:
        raise ValueError(f"site {site} has {x.shape[1]}-channel images but the federation runs "
                         f"channels = {config['channels']}; set channels in the run config")
    generator, discriminator = build_dcgan(config)
    if kept is not None:
        load_arrays(kept, generator, discriminator)
    load_arrays(arrays, generator, discriminator)
    started = time.perf_counter()
    history = generative.train_dcgan(generator, discriminator, x, epochs=config["local_epochs"],
                                     batch_size=settings.batch_size, lr=settings.gan_lr,
                                     augment=settings.gan_augment, seed=config["seed"] + 1000 * server_round + site,
                                     device=device, progress=False)
    shared = _shared(config["networks"])
    private = tuple(p for p in PREFIXES if p not in shared)
    scores = {WEIGHT_KEY: len(x), "site": site, "loss_d": history[-1]["loss_d"], "loss_g": history[-1]["loss_g"],
              "train_seconds": time.perf_counter() - started}
    return (to_arrays(generator, discriminator, shared),
            to_arrays(generator, discriminator, private) if private else None, scores)


def weights_only(overrides: Mapping[str, Any] | None = None) -> Callable:
    """Client mod that passes a reply only if it carries DC-GAN weights of the right shapes and scalar metrics.

    The mod raises ``PayloadError`` for anything else (an image tensor, a list of values, an unknown
    record), so a ClientApp cannot leak images by mistake.
    """
    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if reply.has_content():
            check_payload(reply.content, federation_config(context.run_config | dict(overrides or {})))
        return reply

    return mod


def check_payload(content: RecordDict, config: Mapping[str, Any]) -> None:
    """Raise ``PayloadError`` unless ``content`` holds only DC-GAN state arrays and scalar metrics."""
    generator, discriminator = build_dcgan(config)
    shapes = {k: tuple(v.shape) for k, v in to_arrays(generator, discriminator, PREFIXES).items()}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            wrong = [k for k, a in record.items() if shapes.get(k) != tuple(a.shape)]
            if wrong:
                raise PayloadError(f"record {name!r} carries arrays that are not DC-GAN weights: {wrong[:5]}")
        elif isinstance(record, MetricRecord):
            lists = [k for k, v in record.items() if isinstance(v, list)]
            if lists:
                raise PayloadError(f"record {name!r} carries lists of values, not scalars: {lists}")
        else:
            raise PayloadError(f"record {name!r} is a {type(record).__name__}; only weights and metrics may leave a site")


def client_app(config: Mapping[str, Any] | None = None, device: str | None = None) -> ClientApp:
    """The site's ClientApp: local DC-GAN epochs on its own images, weights and metrics back.

    ``config`` overrides the run config (the simulation engine passes none); a SuperNode started with
    ``--node-config "dataset='/data/site'"`` reads that folder, otherwise ``partition-id`` picks its share.
    """
    overrides = dict(config or {})
    app = ClientApp(mods=[weights_only(overrides)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run = federation_config(context.run_config | overrides)
        site = int(context.node_config.get("partition-id", 0))
        x, _ = site_data(run, site, context.node_config.get("dataset"))
        kept = context.state.array_records.get("kept")
        shared, kept, scores = train_locally(msg.content["arrays"], kept, x, run,
                                             int(msg.content["config"]["server-round"]), site,
                                             profiles.pick_device(device))
        if kept is not None:
            context.state["kept"] = kept
        return Message(RecordDict({"arrays": shared, "metrics": MetricRecord(scores)}), reply_to=msg)

    return app


class RoundStore:
    """Every round's weights (server and each site's upload) and costs, in one folder.

    ``round_RRR/server.pt`` is the model after aggregation (round 0: the initial one), ``site_S.pt``
    what site S sent in that round, ``rounds.jsonl`` one line per round (seconds, bytes).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, server_round: int, name: str, arrays: ArrayRecord) -> None:
        cache.torch_save_atomic(arrays.to_torch_state_dict(), self.folder / f"round_{server_round:03d}" / f"{name}.pt")

    def log(self, row: Mapping[str, Any]) -> None:
        with open(self.folder / "rounds.jsonl", "a") as handle:
            handle.write(json.dumps(dict(row)) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        path = self.folder / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def models(self, server_round: int) -> dict[str, dict[str, torch.Tensor]]:
        """``{"server": state, "site 0": state, ...}`` of one round."""
        folder = self.folder / f"round_{server_round:03d}"
        return {path.stem.replace("_", " "): torch.load(path, map_location="cpu") for path in sorted(folder.glob("*.pt"))}


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg (weighted by each site's image count) that also keeps every round in a ``RoundStore``.

    A site that fails makes the round fail loudly instead of averaging what is left.
    """

    def __init__(self, store: RoundStore | None, rounds: int) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=SITES, min_available_nodes=SITES,
                         weighted_by_key=WEIGHT_KEY)
        self.store, self.total_rounds = store, rounds
        self._round: dict[str, Any] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._round = {"round": server_round, "started": time.perf_counter(),
                       "bytes_to_sites": payload_bytes(arrays) * len(messages)}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        failed = [reply.error.reason for reply in replies if reply.has_error()]
        if failed or len(replies) < SITES:
            raise RuntimeError(f"round {server_round}: {len(replies)} of {SITES} sites replied; errors: {failed}")
        uploads = {int(r.content["metrics"]["site"]): r for r in replies}
        if len(uploads) < len(replies):
            raise RuntimeError(f"round {server_round}: two sites reported the same partition-id; start each "
                               f"SuperNode with its own --node-config \"partition-id=N\"")
        arrays, aggregated = super().aggregate_train(server_round, replies)
        if self.store is not None:
            for site, reply in sorted(uploads.items()):
                self.store.save(server_round, f"site_{site}", reply.content["arrays"])
        self._round.update(bytes_from_sites=sum(payload_bytes(r.content["arrays"]) for r in replies),
                           sites={site: {k: float(v) for k, v in r.content["metrics"].items()}
                                  for site, r in uploads.items()})
        return arrays, aggregated

    def keep_server_model(self, server_round: int, arrays: ArrayRecord) -> None:
        """``evaluate_fn`` hook: store the aggregate and log the round (Flower calls it after each round)."""
        if self.store is not None:
            self.store.save(server_round, "server", arrays)
            if server_round:
                started = self._round.pop("started")
                self.store.log({**self._round, "seconds": round(time.perf_counter() - started, 3)})
        if server_round:
            print(f"round {server_round}/{self.total_rounds} done", flush=True)


def server_app(config: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp: FedAvg of the shared DC-GAN networks for ``rounds`` rounds, never touching images."""
    overrides = dict(config or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = federation_config(context.run_config | overrides)
        store = RoundStore(run["store"]) if run["store"] else None
        generator, discriminator = build_dcgan(run)
        strategy = RecordingFedAvg(store, run["rounds"])
        strategy.start(grid, to_arrays(generator, discriminator, _shared(run["networks"])), num_rounds=run["rounds"],
                       evaluate_fn=strategy.keep_server_model)

    return app


def simulate(config: Mapping[str, Any], *, verbose: bool = False) -> RoundStore:
    """Run the federation in Flower's simulation engine (one virtual SuperNode per site).

    Raises:
        ValueError: no ``store`` folder in the config.
        RuntimeError: the federation stopped before its last round (Flower's log says why).
    """
    from flwr.simulation import run_simulation

    config = federation_config(config)
    if not config["store"]:
        raise ValueError("simulate needs a store folder in the config, where the rounds are kept")
    gpus = 1.0 / SITES if torch.cuda.is_available() else 0.0
    run_simulation(server_app(config), client_app(config), num_supernodes=SITES, verbose_logging=verbose,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": gpus},
                                   "init_args": {"logging_level": "error", "log_to_driver": verbose}})
    store = RoundStore(config["store"])
    if len(store.rounds()) < config["rounds"]:
        raise RuntimeError(f"the federation stopped after {len(store.rounds())} of {config['rounds']} rounds; "
                           f"rerun with verbose=True to see Flower's log")
    return store


def run_in_process(config: Mapping[str, Any], sites: list[torch.Tensor], device: torch.device) -> RoundStore:
    """The same rounds without Flower: each site trains in turn, then Flower's own weighted average.

    With one site this is plain training checkpointed every ``local_epochs`` epochs: the centralised
    and local-only baselines.
    """
    config = federation_config(config)
    store = RoundStore(config["store"])
    generator, discriminator = build_dcgan(config)
    arrays = to_arrays(generator, discriminator, _shared(config["networks"]))
    store.save(0, "server", arrays)
    kept: list[ArrayRecord | None] = [None] * len(sites)
    for server_round in range(1, config["rounds"] + 1):
        started, replies = time.perf_counter(), []
        for site, x in enumerate(sites):
            shared, kept[site], scores = train_locally(arrays, kept[site], x, config, server_round, site, device)
            store.save(server_round, f"site_{site}", shared)
            replies.append(RecordDict({"arrays": shared, "metrics": MetricRecord(scores)}))
        arrays = aggregate_arrayrecords(replies, WEIGHT_KEY)
        store.save(server_round, "server", arrays)
        store.log({"round": server_round, "seconds": round(time.perf_counter() - started, 3)})
    return store


def _data_checksums(config: Mapping[str, Any]) -> list[str]:
    settings = _settings(config)
    return [data.load_dataset(spec.strip(), size=settings.image_size, seed=config["seed"],
                              phantom_images=settings.phantom_images).checksum for spec in config["dataset"].split("|")]


def _parts(config: Mapping[str, Any], what: str) -> dict[str, Any]:
    settings = _settings(config)
    return {"what": what, "config": {k: v for k, v in config.items() if k != "store"},
            "data": _data_checksums(config), "settings": {k: settings[k] for k in generative.SETTING_KEYS["dcgan"]},
            "batch_size": settings.batch_size, "image_size": settings.image_size,
            "max_train_images": settings.max_train_images,
            "code": cache.code_fingerprint("federated", "generative", "data", "_io"), "flwr": flwr.__version__}


def _emptied(folder: Path) -> Path:
    """``folder`` without the rounds an interrupted run left behind (a run restarts from round 1)."""
    for stale in folder.glob("round_*/*.pt"):
        stale.unlink()
    (folder / "rounds.jsonl").unlink(missing_ok=True)
    return folder


def federation_for(config: Mapping[str, Any], *, verbose: bool = False) -> tuple[RoundStore, bool]:
    """The federation's ``RoundStore`` from the artefact cache, or simulated on Flower now and cached.

    The key holds the run config, the data checksums, the profile's DC-GAN settings, the code and the
    Flower version. An interrupted federation starts again from round 1.
    """
    config = federation_config(config)

    def produce(folder: Path) -> None:
        simulate({**config, "store": str(_emptied(folder))}, verbose=verbose)

    folder, hit = cache.cached("federation", _parts(config, "fedavg"), produce)
    return RoundStore(folder), hit


def baseline_for(config: Mapping[str, Any], site: int | None, device: torch.device) -> tuple[RoundStore, bool]:
    """Training without federation for as many epochs: on the pooled data of both sites (``site`` None,
    the centralised baseline) or on one site's data alone (local-only), checkpointed like the rounds."""
    config = federation_config(config if site is not None else {**config, "split": "iid", "alpha": DEFAULTS["alpha"]})

    def produce(folder: Path) -> None:
        parts = [site_data(config, s)[0] for s in range(SITES)]
        x = torch.cat(parts) if site is None else parts[site]
        run_in_process({**config, "store": str(_emptied(folder))}, [x], device)

    what = "centralised" if site is None else f"local site {site}"
    folder, hit = cache.cached("federation", _parts(config, what), produce)
    return RoundStore(folder), hit


def store_fids(store: RoundStore, config: Mapping[str, Any], encoder: nn.Module, real_features: torch.Tensor, n: int,
               device: torch.device, seed: int = 0, encoder_size: int | None = None, only: str | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    """FID and KID of every stored generator (the server's and each site's upload, every round) against
    ``real_features``, each from ``n`` seeded samples embedded by ``encoder`` (resized to ``encoder_size``);
    ``only`` keeps one model, e.g. "server".

    Rows: ``round``, ``epoch`` (local epochs so far), ``model`` ("server", "site 0", ...), ``fid``, ``kid`` ...
    """
    config = federation_config(config)
    generator, _ = build_dcgan(config)
    rows = []
    for server_round in tqdm(range(len(store.rounds()) + 1), desc="FID per round", disable=not progress, unit="round"):
        for who, state in store.models(server_round).items():
            weights = {k[len(PREFIXES[0]):]: v for k, v in state.items() if k.startswith(PREFIXES[0])}
            if not weights or (only and who != only):
                continue
            generator.load_state_dict(weights)
            fake = metrics.image_features(encoder, generative.sample(generator, n, seed=seed, device=device), device,
                                          size=encoder_size)
            rows.append({"round": server_round, "epoch": server_round * config["local_epochs"], "model": who,
                         **metrics.fid_kid(real_features, fake, seed=seed)})
    return rows
