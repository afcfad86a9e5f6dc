"""Attacks: one module per attack, each a spec registered by name (see :mod:`dpsnn.attacks.base`).

Importing this package registers every built-in attack.
"""

from dpsnn.attacks.base import (
    ATTACKS,
    Attack,
    AttackTraining,
    Observation,
    Reconstructions,
    ThreatModel,
    attack_from,
    make_attack,
    observe,
    register_attack,
)
from dpsnn.attacks.baseline import LabelOnly, LabelOnlyBaseline
from dpsnn.attacks.inversion import Decoder, DecoderAttack, InversionAttacker, what_server_sees

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackTraining",
    "Decoder",
    "DecoderAttack",
    "InversionAttacker",
    "LabelOnly",
    "LabelOnlyBaseline",
    "Observation",
    "Reconstructions",
    "ThreatModel",
    "attack_from",
    "make_attack",
    "observe",
    "register_attack",
    "what_server_sees",
]
