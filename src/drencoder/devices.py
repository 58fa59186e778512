"""The torch devices drencoder runs on, as a rule both the config and the CLI apply."""

from __future__ import annotations


def is_device(value: object) -> bool:
    """Whether ``value`` names a torch device drencoder runs on: cpu, cuda or cuda:N."""
    return isinstance(value, str) and (
        value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
