"""dpsnn: defences for split neural networks, and honest measurement of what leaks.

The public API::

    from dpsnn import (
        SplitNN, Validator, build_split,                    # models and architectures
        LaplaceNoise, NoPeekLoss, distance_correlation,     # defences as layers and losses
        parse_defence, canonical, validate,                 # the defence registry
        InversionAttacker, LabelOnlyBaseline, make_attack,  # attacks and the attack registry
        load_classifier, load_attacker, load_validator,     # safe checkpoint loading
    )
"""

from dpsnn.architectures import ARCHITECTURES, ClientNet, ServerNet, build_split, register_architecture
from dpsnn.attacks import (
    ATTACKS,
    Decoder,
    InversionAttacker,
    LabelOnlyBaseline,
    make_attack,
    observe,
    register_attack,
    what_server_sees,
)
from dpsnn.checkpoints import load_attacker, load_classifier, load_validator
from dpsnn.defences import (
    DEFENCES,
    LaplaceNoise,
    NoPeekLoss,
    canonical,
    distance_correlation,
    parse_defence,
    register_defence,
    validate,
)
from dpsnn.errors import CheckpointError, ConfigError, DataError, DpsnnError
from dpsnn.models import SplitNN, Validator

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ATTACKS",
    "CheckpointError",
    "ClientNet",
    "ConfigError",
    "DEFENCES",
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
    "build_split",
    "canonical",
    "distance_correlation",
    "load_attacker",
    "load_classifier",
    "load_validator",
    "make_attack",
    "observe",
    "parse_defence",
    "register_architecture",
    "register_attack",
    "register_defence",
    "validate",
    "what_server_sees",
]
