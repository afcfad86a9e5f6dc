"""Errors that dpsnn raises for bad input.

Every error a user can cause (a bad flag, a missing dataset, an untrusted checkpoint)
is a :class:`DpsnnError`. Scripts turn it into one line on stderr and a non-zero exit;
library users can catch it like any exception.
"""


class DpsnnError(Exception):
    """Base class of every user-facing dpsnn error."""


class ConfigError(DpsnnError, ValueError):
    """A parameter is out of range, e.g. a negative noise scale."""


class DataError(DpsnnError):
    """A dataset is unknown, cannot be found, or a split cannot be drawn."""


class CheckpointError(DpsnnError):
    """A checkpoint is missing, corrupt, untrusted or of another architecture."""


class ResultsError(DpsnnError):
    """A results table cannot be read or written."""


class TrainingDiverged(DpsnnError):
    """Training produced a non-finite loss (NaN or infinity); the model is unusable."""


class TransportError(DpsnnError):
    """The other party of a split run cannot be reached, went silent, left, or sent a message that was not expected."""
