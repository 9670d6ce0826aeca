"""The ServerApp (FedAvg of the shared DC-GAN networks, every round kept in a ``RoundStore``), and the same
rounds without Flower, in this process (:func:`run_in_process`; Flower's engines: :mod:`.engines`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from .. import cache
from .task import (SITES, WEIGHT_KEY, build_dcgan, federation_config, payload_bytes, run_config, shared_networks,
                   to_arrays, train_locally)


class RoundStore:
    """Every round's weights (server and each site's upload) and costs, in one folder.

    ``round_RRR/server.pt`` is the model after aggregation (round 0: the initial one), ``site_S.pt``
    what site S sent in that round, ``rounds.jsonl`` one line per round (seconds, bytes), written last, so a
    round counts as finished once its line is there. ``federation.json`` is the config that wrote them, so a
    restarted federation resumes only its own rounds (``resumable``).
    """

    CONFIG = "federation.json"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, server_round: int, name: str, arrays: ArrayRecord) -> None:
        cache.torch_save_atomic(arrays.to_torch_state_dict(), self.folder / f"round_{server_round:03d}" / f"{name}.pt")

    def log(self, row: Mapping[str, Any]) -> None:
        """Write one round's line; a line of that round or a later one, left by a run that started again from an
        earlier round, is replaced, so the file never holds a round twice (it is rewritten atomically)."""
        rows = [kept for kept in self.rounds() if kept["round"] < row["round"]] + [dict(row)]
        cache.write_text_atomic(self.folder / "rounds.jsonl", "".join(json.dumps(kept) + "\n" for kept in rows))

    def resumable(self, config: Mapping[str, Any]) -> int:
        """How many rounds a federation with ``config`` can skip: the rounds 1..k logged in order with their
        server model saved, when the store was written by the same federation (``rounds`` aside: more rounds
        continue it). Records ``config`` in a new store.

        Raises:
            ValueError: the store holds rounds of a federation with other settings.
        """
        mine = {key: value for key, value in config.items()
                if key not in ("store", "sites", "rounds", "round_timeout", "config_file")}
        path = self.folder / self.CONFIG
        if not path.is_file():
            cache.write_json_atomic(path, mine)
        elif (theirs := json.loads(path.read_text())) != mine:
            differ = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
            raise ValueError(f"{self.folder} holds the rounds of a federation with other settings "
                             f"({', '.join(differ)}); give this one a new store folder")
        done = 0
        for row in self.rounds():
            if row["round"] != done + 1 or not (self.folder / f"round_{done + 1:03d}" / "server.pt").is_file():
                break
            done += 1
        return done

    def rounds(self) -> list[dict[str, Any]]:
        path = self.folder / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def models(self, server_round: int) -> dict[str, dict[str, torch.Tensor]]:
        """``{"server": state, "site 0": state, ...}`` of one round."""
        folder = self.folder / f"round_{server_round:03d}"
        return {path.stem.replace("_", " "): torch.load(path, map_location="cpu") for path in sorted(folder.glob("*.pt"))}


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg (weighted by each site's image count) that also keeps every round in a ``RoundStore``.

    A site that fails or does not reply (a SuperNode gone: the SuperLink answers for it once it misses its
    heartbeats; or no reply within the run's ``round_timeout``) never leaves a partial average unnoticed. With
    ``min_sites`` = 2 (the default) the round fails with one line naming what is missing, and the federation stops;
    the store keeps every round finished before. With ``min_sites`` = 1 the round averages the sites that
    replied, says so, and logs the missing ones in ``rounds.jsonl`` (``missing_sites``); later rounds go to the
    sites still connected. A federation that resumes after round ``done`` counts its rounds on from there (Flower
    numbers the rounds of each run from 1): the sites get the true round, which seeds their training, so the
    resumed rounds are the ones an uninterrupted run would have made.
    """

    def __init__(self, store: RoundStore | None, rounds: int, done: int = 0, min_sites: int = SITES) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=min_sites, min_available_nodes=min_sites,
                         weighted_by_key=WEIGHT_KEY)
        self.store, self.total_rounds, self.done, self.min_sites = store, rounds, done, min_sites
        self._round: dict[str, Any] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid: Grid) -> Iterable[Message]:
        server_round += self.done
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._round = {"round": server_round, "started": time.perf_counter(),
                       "bytes_to_sites": payload_bytes(arrays) * len(messages)}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.done
        received = list(replies)
        failed = [reply.error.reason for reply in received if reply.has_error()]
        replies = [reply for reply in received if not reply.has_error()]
        if len(replies) < self.min_sites:
            raise RuntimeError(f"round {server_round}: {len(replies)} of {SITES} sites replied; errors: {failed}; "
                               f"the federation stops here (min_sites={self.min_sites}; with min_sites=1 in the run "
                               f"config it continues with the sites that reply)")
        uploads = {int(r.content["metrics"]["site"]): r for r in replies}
        if len(uploads) < len(replies):
            raise RuntimeError(f"round {server_round}: two sites reported the same partition-id; start each "
                               f"SuperNode with its own --node-config \"partition-id=N\"")
        missing = sorted(set(range(SITES)) - set(uploads))
        if missing:
            print(f"round {server_round}: no reply from site(s) {missing} (errors: {failed}); averaging the "
                  f"{len(replies)} that replied (min_sites={self.min_sites})", flush=True)
        arrays, aggregated = super().aggregate_train(server_round, replies)
        if self.store is not None:
            for site, reply in sorted(uploads.items()):
                self.store.save(server_round, f"site_{site}", reply.content["arrays"])
        self._round.update(missing_sites=missing,
                           bytes_from_sites=sum(payload_bytes(r.content["arrays"]) for r in replies),
                           sites={site: {k: float(v) for k, v in r.content["metrics"].items()}
                                  for site, r in uploads.items()})
        return arrays, aggregated

    def keep_server_model(self, server_round: int, arrays: ArrayRecord) -> None:
        """``evaluate_fn`` hook: store the aggregate and log the round (Flower calls it after each round)."""
        if self.done and not server_round:
            return  # the model this run resumed from: stored and logged already
        server_round += self.done
        if self.store is not None:
            self.store.save(server_round, "server", arrays)
            if server_round:
                started = self._round.pop("started")
                self.store.log({**self._round, "seconds": round(time.perf_counter() - started, 3)})
        if server_round:
            print(f"round {server_round}/{self.total_rounds} done", flush=True)


def make_server_app(config: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp: FedAvg of the shared DC-GAN networks for ``rounds`` rounds, never touching images."""
    overrides = dict(config or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = run_config(context.run_config | overrides)
        store = RoundStore(run["store"]) if run["store"] else None
        generator, discriminator = build_dcgan(run)
        arrays = to_arrays(generator, discriminator, shared_networks(run["networks"]))
        done = min(store.resumable(run), run["rounds"]) if store else 0
        if done and run["networks"] != "both":
            print(f"{store.folder} holds {done} round(s), but the sites kept their unshared networks in memory, which "
                  f"a restart loses: starting again from round 1", flush=True)
            done = 0
        elif done:
            arrays = ArrayRecord(torch.load(store.folder / f"round_{done:03d}" / "server.pt", map_location="cpu"))
            kept = "round 1 is" if done == 1 else f"rounds 1-{done} are"
            print(f"resuming after round {done} of {run['rounds']}: {kept} in {store.folder} already"
                  if done < run["rounds"] else f"all {done} rounds are in {store.folder} already", flush=True)
        strategy = RecordingFedAvg(store, run["rounds"], done, run["min_sites"])
        if done < run["rounds"]:
            strategy.start(grid, arrays, num_rounds=run["rounds"] - done, timeout=run["round_timeout"],
                           evaluate_fn=strategy.keep_server_model)

    return app


def run_in_process(config: Mapping[str, Any], sites: list[torch.Tensor], device: torch.device) -> RoundStore:
    """The same rounds without Flower: each site trains in turn, then Flower's own weighted average.

    With one site this is plain training checkpointed every ``local_epochs`` epochs: the centralised
    and local-only baselines.
    """
    config = federation_config(config)
    store = RoundStore(config["store"])
    generator, discriminator = build_dcgan(config)
    arrays = to_arrays(generator, discriminator, shared_networks(config["networks"]))
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
