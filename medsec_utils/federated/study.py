"""Chapter 5's experiment on data the notebook loaded: the federations and baselines (cached), the FID of
every stored model, and how different each federation's sites are. Returns plain rows; the chapter's
reporting module turns them into records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flwr
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import cache, data, generative, metrics, profiles
from ..data import ImageSet
from .engines import simulate
from .server_app import RoundStore, run_in_process
from .task import PREFIXES, SITES, Sites, build_dcgan, federation_config

ONE_PER_SITE = "one modality per site"
# what a federation's models depend on: editing this study (its FIDs, tables) keeps the trained rounds
TRAINING_MODULES = ("federated.task", "federated.client_app", "federated.server_app", "generative", "data", "_io")
FeatureSpace = tuple[nn.Module, str]


@dataclass(frozen=True, eq=False)
class Design:
    """What chapter 5 runs on settings the notebook resolved: aggregation periods, DC-GAN sizes and splits
    (the profile's where not given), which networks FedAvg averages and whether two modalities also federate."""

    settings: profiles.Settings
    seed: int
    periods: list[int]
    sizes: list[int]
    splits: list[str]
    networks: str = "both"
    cross_modality: bool = True
    extended: tuple[str, tuple[int, ...], tuple[str, ...]] | None = None

    @classmethod
    def of(cls, settings: profiles.Settings, seed: int, *, periods: Sequence[int] | None = None,
           sizes: Sequence[int] | None = None, splits: Sequence[str] | None = None, networks: str = "both",
           cross_modality: bool = True, extended_dataset: str | None = None,
           extended_sizes: Sequence[int] = (), extended_splits: Sequence[str] = ()) -> Design:
        """The design with the profile's ``fl_periods``, ``fl_sizes`` and ``fl_splits`` where not given; the data
        set named ``extended_dataset`` (if any) also federates at ``extended_sizes`` and under ``extended_splits``
        (a costlier design on one set, e.g. the study's 128 px on the chest X-rays)."""
        extended = (extended_dataset, tuple(extended_sizes), tuple(extended_splits)) if extended_dataset else None
        return cls(settings, seed, list(periods or settings.fl_periods), list(sizes or settings.fl_sizes),
                   list(splits or settings.fl_splits), networks, cross_modality, extended)

    def sizes_for(self, name: str) -> list[int]:
        """The DC-GAN sizes data set ``name`` federates at."""
        more = self.extended[1] if self.extended and self.extended[0] == name else ()
        return sorted(set(self.sizes) | set(more))

    def splits_for(self, name: str) -> list[str]:
        """The splits data set ``name`` is shared out under."""
        more = self.extended[2] if self.extended and self.extended[0] == name else ()
        return list(dict.fromkeys([*self.splits, *more]))

    def config(self, federation: Federation, **values: Any) -> dict[str, Any]:
        """The run config of ``federation`` with ``values`` (local epochs, rounds) on top."""
        return federation_config({"split": "iid" if len(federation.sets) > 1 else federation.split,
                                  "alpha": self.settings.fl_alpha, "image_size": federation.image_size,
                                  "channels": federation.sets[0].channels, "networks": self.networks,
                                  "seed": self.seed, **values}, self.settings)


@dataclass(frozen=True, eq=False)
class Federation:
    """One federation of the chapter at one DC-GAN size: its data sets as the chapter loaded them (one split
    across the sites, or one per site), its split, and the sites' training images at that size.
    ``centralised`` holds the sites the centralised baseline pools, when it runs with this federation."""

    sets: tuple[ImageSet, ...]
    split: str
    image_size: int
    sites: Sites
    centralised: Sites | None

    @property
    def name(self) -> str:
        return " | ".join(images.name for images in self.sets)


def plan_federations(sets: Sequence[ImageSet], design: Design) -> list[Federation]:
    """Every data set under every split, and the first two one-channel sets one per site, at every size (the
    extended data set also at its extra sizes and splits).

    A DC-GAN trains on images decoded at its own size: a set the chapter loaded at another size is decoded
    again at that size, once, from its spec (the same loader, ``data.load_dataset``).
    """
    settings, decoded = design.settings, {}

    def at_size(images: ImageSet, size: int) -> ImageSet:
        if images.size == size:
            return images
        if (images.spec, size) not in decoded:
            decoded[images.spec, size] = data.load_dataset(images.spec, size=size, seed=design.seed,
                                                           phantom_images=settings.phantom_images)
        return decoded[images.spec, size]

    if design.extended and design.extended[0] not in {images.name for images in sets}:
        raise ValueError(f"extended_dataset {design.extended[0]!r} is none of this chapter's data sets "
                         f"({', '.join(images.name for images in sets)}); give one of those names or None")
    pairs = [((images,), split, design.sizes_for(images.name)) for images in sets
             for split in design.splits_for(images.name)]
    grey = [images for images in sets if images.channels == 1]
    if design.cross_modality and len(grey) >= 2:
        pairs.append((tuple(grey[:2]), ONE_PER_SITE, design.sizes))
    share = dict(alpha=settings.fl_alpha, seed=design.seed, limit=settings.max_train_images)
    federations, pooled = [], set()
    for chosen, split, sizes in pairs:
        for size in sizes:
            training = [at_size(images, size) for images in chosen]
            sites = Sites.from_sets(training, split="iid" if len(chosen) > 1 else split, **share)
            key, centralised = (tuple(images.spec for images in chosen), size), None
            if key not in pooled:
                pooled.add(key)
                centralised = sites if split in ("iid", ONE_PER_SITE) else Sites.from_sets(training, split="iid",
                                                                                            **share)
            federations.append(Federation(chosen, split, size, sites, centralised))
    return federations


def feature_spaces(sets: Sequence[ImageSet], design: Design, name: str, *, inception_weights: str | None = None,
                   classifiers: Callable[[], Mapping[str, nn.Module]] | None = None) -> dict[str, FeatureSpace]:
    """The FID feature space of each set, keyed by spec: one network for all (``random_vgg16``, ``inception``),
    or each set's chapter-1 classifier (``classifier``: ``classifiers()`` gives them in the order of ``sets``)."""
    shared = None if name == "classifier" else metrics.feature_space(name, inception_weights=inception_weights,
                                                                       seed=design.seed)
    models = list(classifiers().values()) if shared is None and classifiers else []
    spaces = {}
    for index, images in enumerate(sets):
        if shared is None:
            encoder, extractor = metrics.feature_space("classifier", classifier=models[index] if models else None)
            extractor += f" of {images.name}"
        else:
            encoder, extractor = shared
        spaces[images.spec] = (encoder, f"{extractor}, at {design.settings.image_size} px")
        tests = len(images.indices("test", design.settings.max_eval_images, design.seed))
        print(f"{images.name}: {tests} test images; features: {spaces[images.spec][1]}")
    return spaces


def _parts(config: Mapping[str, Any], sites: Sites, what: str) -> dict[str, Any]:
    return {"what": what, "config": {k: v for k, v in config.items() if k not in ("store", "sites")},
            "data": list(sites.checksums), "sites": sites.fingerprint,
            "code": cache.code_fingerprint(*TRAINING_MODULES), "flwr": flwr.__version__}


def _emptied(folder: Path) -> Path:
    """``folder`` without the rounds an interrupted run left behind (a run restarts from round 1)."""
    for stale in folder.glob("round_*/*.pt"):
        stale.unlink()
    (folder / "rounds.jsonl").unlink(missing_ok=True)
    return folder


def federation_for(config: Mapping[str, Any], sites: Sites, *, verbose: bool = False) -> tuple[RoundStore, bool]:
    """The federation's ``RoundStore`` from the artefact cache, or simulated on Flower now and cached.

    The key holds the run config (DC-GAN sizes included), the data checksums and the sites' tensors, the
    code and the Flower version. An interrupted federation starts again from round 1.
    """
    config = federation_config(config)

    def produce(folder: Path) -> None:
        simulate({**config, "store": str(_emptied(folder))}, sites, verbose=verbose)

    folder, hit = cache.cached("federation", _parts(config, sites, "fedavg"), produce)
    return RoundStore(folder), hit


def baseline_for(config: Mapping[str, Any], sites: Sites, site: int | None,
                 device: torch.device) -> tuple[RoundStore, bool]:
    """Training without federation for as many epochs: on the pooled images of all ``sites`` (``site`` None,
    the centralised baseline) or on one site's alone (local-only), checkpointed like the rounds."""
    config = federation_config(config)

    def produce(folder: Path) -> None:
        x = torch.cat(sites.x) if site is None else sites.x[site]
        run_in_process({**config, "store": str(_emptied(folder))}, [x], device)

    what = "centralised" if site is None else f"local site {site}"
    folder, hit = cache.cached("federation", _parts(config, sites, what), produce)
    return RoundStore(folder), hit


def store_fids(store: RoundStore, config: Mapping[str, Any], encoder: nn.Module, real_features: torch.Tensor, n: int,
               device: torch.device, seed: int = 0, encoder_size: int | None = None, only: str | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    """FID and KID of every stored generator (the server's and each site's upload, every round) against
    ``real_features``, each from ``n`` seeded samples embedded by ``encoder`` (resized to ``encoder_size``);
    ``only`` keeps one model, e.g. "server". Kept in the artefact cache, keyed by the store's content, the
    encoder, the real features and these arguments.

    Rows: ``round``, ``epoch`` (local epochs so far), ``model`` ("server", "site 0", ...), ``fid``, ``kid`` ...
    """
    config = federation_config(config)
    parts = {"store": cache.folder_fingerprint(store.folder), "encoder": metrics.encoder_identity(encoder),
             "real": cache.tensor_fingerprint(real_features), "n": n, "seed": seed, "encoder_size": encoder_size,
             "only": only, "device": device.type,
             "code": cache.code_fingerprint("federated.study", "federated.task", "metrics", "generative")}

    def rows() -> list[dict[str, Any]]:
        generator, _ = build_dcgan(config)
        scored = []
        for server_round in tqdm(range(len(store.rounds()) + 1), desc="FID per round", disable=not progress,
                                 unit="round"):
            for who, state in store.models(server_round).items():
                weights = {k[len(PREFIXES[0]):]: v for k, v in state.items() if k.startswith(PREFIXES[0])}
                if not weights or (only and who != only):
                    continue
                generator.load_state_dict(weights)
                fake = metrics.image_features(encoder, generative.sample(generator, n, seed=seed, device=device),
                                              device, size=encoder_size, keep=False)
                scored.append({"round": server_round, "epoch": server_round * config["local_epochs"], "model": who,
                               **metrics.fid_kid(real_features, fake, seed=seed)})
        return scored

    return cache.memoised("federation_fids", parts, rows)[0]


def site_gap(federation: Federation, design: Design, space: FeatureSpace, device: torch.device) -> dict[str, Any]:
    """How different a federation's sites are: the FID between their real training images (raw and relative to
    the features' spread), with each site's image count and pathology share."""
    encoder, _ = space
    first, second = (metrics.image_features(encoder, x, device, size=design.settings.image_size)
                     for x in federation.sites.x)
    between = metrics.fid_kid(first, second, seed=design.seed)
    return {"federation": federation, "site_fid": between["fid"], "site_fid_relative": between["fid_relative"],
            "images": [len(y) for y in federation.sites.y],
            "pathology_shares": [round(float(y.float().mean()), 3) for y in federation.sites.y]}


@dataclass(frozen=True)
class StudyRun:
    """One run of the study on a federation: FedAvg at one aggregation period (``period``), or a baseline for
    as many local epochs (``site`` None: centralised on the pooled ``sites``; else local-only at that site)."""

    name: str
    split: str
    sites: Sites
    period: int | None = None
    site: int | None = None


def study_runs(federation: Federation, design: Design) -> list[StudyRun]:
    """The federation at every aggregation period, then its baselines: centralised once per data and size (with
    the federation that holds ``centralised``), local-only at each site."""
    runs = [StudyRun("FedAvg", federation.split, federation.sites, period=period) for period in design.periods]
    if federation.centralised:
        runs.append(StudyRun("centralised", "pooled", federation.centralised))
    return runs + [StudyRun(f"local only, site {site}", federation.split, federation.sites, site=site)
                   for site in range(SITES)]


def study_config(federation: Federation, run: StudyRun, design: Design) -> dict[str, Any]:
    """The run config of one study run: FedAvg for ``fl_epochs // period`` rounds, a baseline for ``fl_epochs``
    epochs of one."""
    epochs = design.settings.fl_epochs
    if run.name == "FedAvg":
        return design.config(federation, local_epochs=run.period, rounds=epochs // run.period)
    return design.config(federation, local_epochs=1, rounds=epochs)


def evaluate_run(federation: Federation, run: StudyRun, design: Design, space: FeatureSpace, device: torch.device,
                 *, verbose: bool = False) -> dict[str, Any]:
    """One study run (from the artefact cache, or trained now) with the FID of every stored model against the
    federation's real test images (resized to its size, then embedded at the profile's ``image_size``).

    Returns:
        ``federation``, ``run`` ("FedAvg", "centralised", "local only, site 0" ...), ``config`` (its run config,
        ``split`` as the chapter names it), ``fids`` (:func:`store_fids`), ``rounds``, ``feature_extractor``.
    """
    settings, size = design.settings, federation.image_size
    encoder, extractor = space
    tests = [images.tensors("test", settings.max_eval_images, design.seed)[0] for images in federation.sets]
    test_x = F.interpolate(torch.cat(tests), size=(size, size), mode="area")
    real = metrics.image_features(encoder, test_x, device, size=settings.image_size)
    config = study_config(federation, run, design)
    if run.name == "FedAvg":
        store, hit = federation_for(config, run.sites, verbose=verbose)
        print(f"{federation.name}, {federation.split}, {size} px, every {run.period} epoch(s): {config['rounds']} "
              f"rounds {'from the artefact cache' if hit else 'on Flower now'}")
    else:
        store, _ = baseline_for(config, run.sites, run.site, device)
    fids = store_fids(store, config, encoder=encoder, real_features=real, n=settings.fl_fid_images, device=device,
                      seed=design.seed, encoder_size=settings.image_size,
                      only=None if run.name == "FedAvg" else "server")
    return {"federation": federation, "run": run.name, "config": {**config, "split": run.split}, "fids": fids,
            "rounds": store.rounds(), "feature_extractor": extractor}
