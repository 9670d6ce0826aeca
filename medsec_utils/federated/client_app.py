"""The site's ClientApp: local DC-GAN epochs on the site's own images; only weights and scalar metrics leave it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import data, profiles
from .task import Sites, check_payload, profile_settings, run_config, train_locally


def weights_only(overrides: Mapping[str, Any] | None = None) -> Callable:
    """Client mod that passes a reply only if it carries DC-GAN weights of the right shapes and scalar metrics.

    The mod raises ``PayloadError`` for anything else (an image tensor, a list of values, an unknown
    record), so a ClientApp cannot leak images by mistake.
    """
    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if reply.has_content():
            check_payload(reply.content, run_config(context.run_config | dict(overrides or {})))
        return reply

    return mod


def site_images(config: Mapping[str, Any], site: int, own_dataset: str | None = None) -> torch.Tensor:
    """Training images of one site.

    In a simulation started by the library, the site's tensors from the ``sites`` file. On the deployment
    engine a SuperNode reads all of the training split of its own DATASET spec (``own_dataset``, its node
    config), or its share of the run config's ``dataset`` spec.
    """
    if config["sites"]:
        return _saved_sites(config["sites"]).x[site]
    spec = own_dataset or config["dataset"]
    return _deployment_sites(spec, not own_dataset, config["profile"], config["image_size"], config["split"],
                             config["alpha"], config["seed"]).x[0 if own_dataset else site]


@functools.lru_cache(maxsize=2)
def _saved_sites(path: str) -> Sites:
    return Sites.load(path)


@functools.lru_cache(maxsize=2)
def _deployment_sites(spec: str, shared: bool, profile: str, image_size: int, split: str, alpha: float,
                      seed: int) -> Sites:
    """The deployment boundary: the DATASET spec loaded once per process, at the run's profile and size."""
    settings = profile_settings(profile)
    images = data.load_dataset(spec, size=image_size, seed=seed, phantom_images=settings.phantom_images)
    if shared:
        return Sites.from_sets([images], split=split, alpha=alpha, seed=seed, limit=settings.max_train_images)
    x, y = images.tensors("train", settings.max_train_images, seed)
    return Sites((x,), (y,), (images.checksum,))


def make_client_app(config: Mapping[str, Any] | None = None, device: str | None = None) -> ClientApp:
    """The site's ClientApp: local DC-GAN epochs on its own images, weights and metrics back.

    ``config`` overrides the run config (the simulation engine passes none); a SuperNode started with
    ``--node-config "dataset='/data/site'"`` reads that folder, otherwise ``partition-id`` picks its share.
    """
    overrides = dict(config or {})
    app = ClientApp(mods=[weights_only(overrides)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run = run_config(context.run_config | overrides)
        site = int(context.node_config.get("partition-id", 0))
        x = site_images(run, site, context.node_config.get("dataset"))
        kept = context.state.array_records.get("kept")
        shared, kept, scores = train_locally(msg.content["arrays"], kept, x, run,
                                             int(msg.content["config"]["server-round"]), site,
                                             profiles.pick_device(device))
        if kept is not None:
            context.state["kept"] = kept
        return Message(RecordDict({"arrays": shared, "metrics": MetricRecord(scores)}), reply_to=msg)

    return app
