"""Federated training of DC-GANs across sites: FedAvg on Flower's Message API.

Laid out as Flower's examples are: :mod:`.task` (run config, site data, DC-GAN, local training, the payload
check), :mod:`.client_app`, :mod:`.server_app` (FedAvg that keeps every round; the same rounds in process),
:mod:`.engines` (``flwr run`` on Flower's two engines) and :mod:`.study` (chapter 5's experiment). One
``ServerApp`` and one ``ClientApp`` serve both engines: ``simulate`` runs them on the simulation runtime and
``run_on_loopback`` on the deployment engine on this machine, on sites the caller loaded; ``flower_app/`` hands
them to a SuperLink and one SuperNode per site between hospitals, each reading its own images. Only
model weights and scalar metrics cross the wire: the client mod ``weights_only`` refuses any other reply.
"""

from .client_app import make_client_app, site_images, weights_only
from .engines import run_on_loopback, simulate
from .server_app import RecordingFedAvg, RoundStore, make_server_app, run_in_process
from .study import (ONE_PER_SITE, Design, Federation, StudyRun, baseline_for, evaluate_run, feature_spaces,
                    federation_for, plan_federations, site_gap, store_fids, study_config, study_runs)
from .task import (DCGAN_KEYS, DEFAULTS, NETWORKS, PREFIXES, SITES, SPLITS, WEIGHT_KEY, PayloadError, Sites,
                   build_dcgan, check_payload, federation_config, load_arrays, payload_bytes, profile_settings,
                   run_config, shared_networks, split_sites, to_arrays, train_locally)

__all__ = ["DCGAN_KEYS", "DEFAULTS", "NETWORKS", "ONE_PER_SITE", "PREFIXES", "SITES", "SPLITS", "WEIGHT_KEY",
           "Design", "Federation", "PayloadError", "RecordingFedAvg", "RoundStore", "Sites", "baseline_for",
           "build_dcgan", "check_payload", "feature_spaces", "federation_config", "federation_for", "load_arrays",
           "make_client_app", "make_server_app", "payload_bytes", "plan_federations", "profile_settings",
           "run_config", "run_in_process", "run_on_loopback", "shared_networks", "simulate", "site_gap",
           "site_images", "split_sites", "store_fids", "study_config", "study_runs", "StudyRun", "evaluate_run",
           "to_arrays", "train_locally"]
