"""The federation's task, as Flower's examples lay it out: run config, site data, the DC-GAN, local training
and the check that only weights and scalar metrics leave a site.

A run config is flat (Flower's run config). From the library it carries the sites' tensors as a file in the
artefact cache (``sites``) and every DC-GAN size, filled from settings the caller already resolved; on the
deployment engine it names a DATASET spec and a profile instead, resolved once at the app's boundary
(:func:`run_config`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

from .. import cache, generative, profiles
from ..data import ImageSet

SITES = 2
SPLITS = ("iid", "dirichlet")
NETWORKS = ("both", "generator", "discriminator")
PREFIXES = ("generator.", "discriminator.")
WEIGHT_KEY = "num-examples"
DEFAULTS: dict[str, Any] = {
    "dataset": "phantom:chest_xray",  # deployment: the DATASET spec split across the sites when a SuperNode names none
    "split": "iid",                   # iid: equal random halves; dirichlet: each class shared out ~ Dirichlet(alpha)
    "alpha": 0.5,
    "profile": "smoke",               # deployment: the profile whose sizes (width, batch, lr...) the DC-GAN takes
    "image_size": 0,                  # 0: the profile's
    "channels": 1,                    # image channels; the server builds the model without seeing images
    "local_epochs": 1,                # local epochs between two aggregations
    "rounds": 2,
    "networks": "both",               # which DC-GAN networks FedAvg averages: both, generator or discriminator
    "seed": 0,
    "min_sites": 2,                   # sites whose replies a round needs; fewer: the federation stops (see server_app)
    "round_timeout": 600,             # seconds the server waits for the sites' replies in a round
    "store": "",                      # folder where the server keeps every round's weights ("": none)
    "sites": "",                      # simulation: the file of the sites' tensors the clients read ("": a DATASET spec)
    "config_file": "",                # simulation: a JSON file of the whole config, which then replaces this one
}
_DCGAN = generative.GENERATORS["dcgan"]
# The DC-GAN settings a federation reads; its length is rounds x local epochs and its images are the sites'.
DCGAN_KEYS = tuple(key for key in _DCGAN.settings_keys if key not in (_DCGAN.steps_key, "max_train_images"))
_TYPES = {"image_size": int, "channels": int, "local_epochs": int, "rounds": int, "seed": int, "alpha": float,
          "min_sites": int, "round_timeout": float,
          "batch_size": int, "latent_dim": int, "gan_width": int, "gan_lr": float}


class PayloadError(RuntimeError):
    """A message would carry something other than DC-GAN weights and scalar metrics."""


def federation_config(values: Mapping[str, Any] | None = None,
                      settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``values`` (a Flower run config or keyword settings), checked.

    ``settings`` (a resolved profile) gives the DC-GAN sizes ``values`` leaves out, the image size when it is 0,
    and no DATASET spec: the library hands the sites their tensors (:class:`Sites`).

    Raises:
        ValueError: an unknown key or a value out of range, named.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(DEFAULTS) - set(DCGAN_KEYS))
    if unknown:
        raise ValueError(f"unknown federation setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}, "
                         f"{', '.join(DCGAN_KEYS)}")
    config = {**DEFAULTS, **values}
    if settings is not None:
        config = {**DEFAULTS, "dataset": "", "profile": settings.get("profile", ""),
                  **{key: settings[key] for key in DCGAN_KEYS}, **values}
        config["image_size"] = int(config["image_size"]) or settings["image_size"]
    for key, kind in _TYPES.items():
        if key in config:
            config[key] = kind(config[key])
    if config["split"] not in SPLITS:
        raise ValueError(f"split {config['split']!r}: choose {' or '.join(SPLITS)}")
    if config["networks"] not in NETWORKS:
        raise ValueError(f"networks {config['networks']!r}: choose from {', '.join(NETWORKS)}")
    if config["local_epochs"] < 1 or config["rounds"] < 1 or config["alpha"] <= 0:
        raise ValueError("local_epochs and rounds must be >= 1 and alpha > 0")
    if not 1 <= config["min_sites"] <= SITES or config["round_timeout"] <= 0:
        raise ValueError(f"min_sites {config['min_sites']}: choose 1 to {SITES}; round_timeout must be > 0 seconds")
    return config


def run_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The config an app runs with: a library config as it is; a deployment run config, which names a profile
    instead of DC-GAN sizes, completed from that profile (resolved here, at the boundary, once per process)."""
    if values.get("config_file"):
        return federation_config({**json.loads(Path(values["config_file"]).read_text()), "config_file": ""})
    config = federation_config(values)
    if config["image_size"] and all(key in config for key in DCGAN_KEYS):
        return config
    settings = profile_settings(config["profile"])
    return federation_config({**{key: settings[key] for key in DCGAN_KEYS}, **config,
                              "image_size": config["image_size"] or settings.image_size})


@functools.lru_cache(maxsize=4)
def profile_settings(profile: str) -> profiles.Settings:
    """A deployment's profile, resolved once per process."""
    return profiles.resolve_profile(profile)


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


@dataclass(frozen=True, eq=False)
class Sites:
    """Each site's training images ``x`` in [0, 1] and labels ``y``, and the checksums of the data sets they
    come from: what a federation trains on, handed over already loaded."""

    x: tuple[torch.Tensor, ...]
    y: tuple[torch.Tensor, ...]
    checksums: tuple[str, ...]

    @classmethod
    def from_sets(cls, sets: Sequence[ImageSet], *, split: str = "iid", alpha: float = 0.5, seed: int = 0,
                  limit: int | None = None) -> Sites:
        """One set's training split (at most ``limit`` images) shared out by :func:`split_sites`, or ``SITES``
        sets, each site training on all of its own set's.

        Raises:
            ValueError: neither one set nor one per site.
        """
        if len(sets) not in (1, SITES):
            raise ValueError(f"{len(sets)} data sets: give one to split or {SITES}, one per site")
        parts = [images.tensors("train", limit, seed) for images in sets]
        if len(sets) == 1:
            x, y = parts[0]
            parts = [(x[index], y[index]) for index in split_sites(y, split, seed, alpha)]
        return cls(tuple(x for x, _ in parts), tuple(y for _, y in parts), tuple(s.checksum for s in sets))

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the sites' tensors: identifies exactly what they train on."""
        return cache.tensor_fingerprint(*self.x, *self.y)

    def save(self) -> Path:
        """The file simulated clients read their tensors from: in the artefact cache, keyed by the fingerprint."""
        def produce(folder: Path) -> None:
            cache.torch_save_atomic({"x": list(self.x), "y": list(self.y), "checksums": list(self.checksums)},
                                    folder / "sites.pt")

        folder, _ = cache.cached("sites", {"tensors": self.fingerprint}, produce)
        return folder / "sites.pt"

    @classmethod
    def load(cls, path: str | Path) -> Sites:
        """Sites saved by :meth:`save`."""
        saved = torch.load(path, map_location="cpu")
        return cls(tuple(saved["x"]), tuple(saved["y"]), tuple(saved["checksums"]))


def build_dcgan(config: Mapping[str, Any]) -> tuple[nn.Module, nn.Module]:
    """The untrained DC-GAN every site and the server start from (seeded, so all start alike).

    Raises:
        ValueError: a config without DC-GAN sizes (build it with :func:`federation_config` and settings).
    """
    missing = [key for key in DCGAN_KEYS if key not in config] + ([] if config["image_size"] else ["image_size"])
    if missing:
        raise ValueError(f"the federation config lacks DC-GAN sizes {missing}: pass resolved settings to "
                         f"federation_config, or run_config for a deployment run config")
    torch.manual_seed(config["seed"])
    return generative.build_generative("dcgan", config["channels"], config["image_size"], config)


def shared_networks(networks: str) -> tuple[str, ...]:
    """The state-dict prefixes FedAvg averages for a ``networks`` setting."""
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
    afresh every round: the server sends weights, not optimiser state. The site replies with its last weights,
    not a moving average of them: FedAvg averages the sites' trained models (McMahan et al. 2017). Returns the shared networks to
    send, the kept ones, and scalar metrics (the sample count weights FedAvg).
    """
    if x.shape[1] != config["channels"]:
        raise ValueError(f"site {site} has {x.shape[1]}-channel images but the federation runs "
                         f"channels = {config['channels']}; set channels in the run config")
    generator, discriminator = build_dcgan(config)
    if kept is not None:
        load_arrays(kept, generator, discriminator)
    load_arrays(arrays, generator, discriminator)
    started = time.perf_counter()
    history = generative.train_dcgan(generator, discriminator, x, epochs=config["local_epochs"],
                                     batch_size=config["batch_size"], lr=config["gan_lr"],
                                     augment=config["gan_augment"], seed=config["seed"] + 1000 * server_round + site,
                                     device=device, progress=False, average=False)
    shared = shared_networks(config["networks"])
    private = tuple(p for p in PREFIXES if p not in shared)
    scores = {WEIGHT_KEY: len(x), "site": site, "loss_d": history[-1]["loss_d"], "loss_g": history[-1]["loss_g"],
              "train_seconds": time.perf_counter() - started}
    return (to_arrays(generator, discriminator, shared),
            to_arrays(generator, discriminator, private) if private else None, scores)


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
