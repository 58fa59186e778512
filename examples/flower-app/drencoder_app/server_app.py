"""The ServerApp component: drencoder's FederatedServer over Flower's Grid."""

from drencoder.integrations.flower import server_app as app

__all__ = ["app"]
