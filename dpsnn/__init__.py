"""dpsnn: defences for split neural networks, and honest measurement of what leaks.

The public API::

    from dpsnn import (
        SplitNN, ClientNet, ServerNet, Validator,          # models
        LaplaceNoise, NoPeekLoss, distance_correlation,    # defences
        InversionAttacker, LabelOnlyBaseline,              # attacks
        load_classifier, load_attacker, load_validator,    # safe checkpoint loading
    )
"""

from dpsnn.attacks import Decoder, InversionAttacker, LabelOnlyBaseline, what_server_sees
from dpsnn.checkpoints import load_attacker, load_classifier, load_validator
from dpsnn.defences import LaplaceNoise, NoPeekLoss, distance_correlation
from dpsnn.errors import CheckpointError, ConfigError, DataError, DpsnnError
from dpsnn.models import ClientNet, ServerNet, SplitNN, Validator

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ClientNet",
    "ConfigError",
    "DataError",
    "Decoder",
    "DpsnnError",
    "InversionAttacker",
    "LabelOnlyBaseline",
    "LaplaceNoise",
    "NoPeekLoss",
    "ServerNet",
    "SplitNN",
    "Validator",
    "distance_correlation",
    "load_attacker",
    "load_classifier",
    "load_validator",
    "what_server_sees",
]
