"""Flower app of the medsec compendium: the ServerApp and ClientApp of ``medsec_utils.federated``."""
