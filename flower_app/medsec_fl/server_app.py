"""ServerApp: FedAvg of the DC-GAN across the sites (settings: the run config in pyproject.toml)."""

from medsec_utils.federated import make_server_app

app = make_server_app()
