"""A thin Flower app over drencoder.integrations.flower (see docs/deployment.md)."""
