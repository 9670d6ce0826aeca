"""ClientApp: a site's local DC-GAN epochs on its own images; only weights and metrics leave it."""

from medsec_utils.federated import make_client_app

app = make_client_app()
