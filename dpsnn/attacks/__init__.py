"""Attacks: one module per attack, each a spec registered by name (see :mod:`dpsnn.attacks.base`).

A module added to this package is found by :func:`registered_attacks` and
:func:`make_attack`; the Lightning-based entries are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from dpsnn.attacks.base import (
    ATTACKS,
    Attack,
    AttackTraining,
    MembershipScores,
    Observation,
    Queries,
    Reconstructions,
    ThreatModel,
    attack_from,
    make_attack,
    observe,
    query,
    register_attack,
    registered_attacks,
)

_ENTRIES = {
    "LabelOnly": "dpsnn.attacks.baseline",
    "LabelOnlyBaseline": "dpsnn.attacks.baseline",
    "Decoder": "dpsnn.attacks.inversion",
    "DecoderAttack": "dpsnn.attacks.inversion",
    "InversionAttacker": "dpsnn.attacks._decoder_module",
    "what_server_sees": "dpsnn.attacks.inversion",
    "Lira": "dpsnn.attacks.lira",
    "FittedLira": "dpsnn.attacks.lira",
    "WhiteBoxInversion": "dpsnn.attacks.whitebox",
    "WhiteBoxInverter": "dpsnn.attacks.whitebox",
    "mindarmour_scores": "dpsnn.attacks.whitebox",
}

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackTraining",
    "MembershipScores",
    "Observation",
    "Queries",
    "Reconstructions",
    "ThreatModel",
    "attack_from",
    "make_attack",
    "observe",
    "query",
    "register_attack",
    "registered_attacks",
    *_ENTRIES,
]


def __getattr__(name: str) -> Any:
    if name not in _ENTRIES:
        raise AttributeError(f"module 'dpsnn.attacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_ENTRIES[name]), name)
