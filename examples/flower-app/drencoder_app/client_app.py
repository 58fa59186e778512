"""The ClientApp component: drencoder's ClientRuntime on this SuperNode's partition."""

from drencoder.integrations.flower import client_app as app

__all__ = ["app"]
