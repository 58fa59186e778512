"""The client's side of a run: what a client computes and releases, and the ledger it
keeps of its own. Imports only the shared modules of :mod:`drencoder.federated`, never
:mod:`drencoder.federated.server`."""
