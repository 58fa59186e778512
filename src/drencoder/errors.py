"""The exceptions drencoder raises on purpose.

Every message names the offending value, the valid range and, where there is one, the fix.
``ConfigError`` subclasses ``ValueError`` so callers that already catch ``ValueError`` keep
working; the CLI turns any ``DrencoderError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class DrencoderError(Exception):
    """Base class of every error drencoder raises deliberately."""


class ConfigError(DrencoderError, ValueError):
    """A configuration value or argument is missing, malformed or out of range."""


class BudgetExceeded(DrencoderError):
    """The next privacy event would take a run past its target epsilon."""


class AssetError(DrencoderError, FileNotFoundError):
    """An embedded model or data set package is missing or unreadable."""


class CheckpointError(DrencoderError):
    """A checkpoint or run directory is missing, incomplete or inconsistent."""


class StorageError(DrencoderError, OSError):
    """A run directory cannot be created or written, or its disk lacks the space a run needs."""


class ClientDropoutWarning(UserWarning):
    """Fewer clients replied in a round (or in stage 1) than were asked."""


class UtilityWarning(UserWarning):
    """A run measures something that usually keeps a private model from learning (seen
    only in a simulation, where the server has the clients' diagnostics)."""


class PrivacyWarning(UserWarning):
    """A run's guarantee is weaker than the default would give (e.g. a relation that does
    not hold against the party that aggregates, or noise reproducible from the seed)."""
