"""The server's side of a run: planning rounds, charging the ledger, building the codec,
checking and aggregating messages, checkpoints and outputs
(:class:`~drencoder.federated.server.orchestration.FederatedServer`). Imports only the
shared modules of :mod:`drencoder.federated`, never :mod:`drencoder.federated.client`."""
