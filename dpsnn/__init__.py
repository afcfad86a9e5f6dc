"""dpsnn: defences for split neural networks, and honest measurement of what leaks.

The public API (each name is imported when first used, so ``import dpsnn.stats`` or
``import dpsnn.defences`` does not load Lightning)::

    from dpsnn import (
        SplitNN, Validator, build_split,                    # models and architectures
        LaplaceNoise, NoPeekLoss, distance_correlation,     # defences as layers and losses
        parse_defence, canonical, validate,                 # the defence registry
        InversionAttacker, LabelOnlyBaseline, make_attack,  # attacks and the attack registry
        load_classifier, load_attacker, load_validator,     # safe checkpoint loading
    )
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name: the module that defines it
_EXPORTS = {
    "ARCHITECTURES": "dpsnn.architectures",
    "ClientNet": "dpsnn.architectures",
    "ServerNet": "dpsnn.architectures",
    "build_split": "dpsnn.architectures",
    "register_architecture": "dpsnn.architectures",
    "ATTACKS": "dpsnn.attacks",
    "Decoder": "dpsnn.attacks",
    "InversionAttacker": "dpsnn.attacks",
    "LabelOnlyBaseline": "dpsnn.attacks",
    "make_attack": "dpsnn.attacks",
    "observe": "dpsnn.attacks",
    "register_attack": "dpsnn.attacks",
    "what_server_sees": "dpsnn.attacks",
    "load_attacker": "dpsnn.checkpoints",
    "load_classifier": "dpsnn.checkpoints",
    "load_validator": "dpsnn.checkpoints",
    "DEFENCES": "dpsnn.defences",
    "LaplaceNoise": "dpsnn.defences",
    "NoPeekLoss": "dpsnn.defences",
    "canonical": "dpsnn.defences",
    "parse_defence": "dpsnn.defences",
    "register_defence": "dpsnn.defences",
    "validate": "dpsnn.defences",
    "distance_correlation": "dpsnn.stats",
    "CheckpointError": "dpsnn.errors",
    "ConfigError": "dpsnn.errors",
    "DataError": "dpsnn.errors",
    "DpsnnError": "dpsnn.errors",
    "SplitNN": "dpsnn.models",
    "Validator": "dpsnn.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dpsnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
