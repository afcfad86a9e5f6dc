"""Defences: one module per defence, each a spec registered by name (see :mod:`dpsnn.defences.base`).

A module added to this package is found by :func:`registered_defences` and by every
lookup of an unknown name.
"""

from dpsnn.defences.base import (
    DEFENCES,
    Defence,
    canonical,
    check,
    defence_class,
    defence_from,
    label,
    make_defence,
    normalise,
    parse_canonical,
    parse_defence,
    register_defence,
    registered_defences,
    validate,
)
from dpsnn.defences.noise import Laplace, LaplaceNoise
from dpsnn.defences.nopeek import NoPeek, NoPeekLoss, distance_correlation

__all__ = [
    "DEFENCES",
    "DPSGD",
    "Defence",
    "Laplace",
    "LaplaceNoise",
    "NoPeek",
    "NoPeekLoss",
    "Suppress",
    "canonical",
    "check",
    "defence_class",
    "defence_from",
    "distance_correlation",
    "label",
    "make_defence",
    "normalise",
    "parse_canonical",
    "parse_defence",
    "register_defence",
    "registered_defences",
    "validate",
]


def __getattr__(name: str) -> object:
    """``DPSGD`` and ``Suppress`` on first use: their modules bring Opacus and Lightning, which plain imports avoid."""
    if name == "DPSGD":
        from dpsnn.defences.dp import DPSGD

        return DPSGD
    if name == "Suppress":
        from dpsnn.defences.suppress import Suppress

        return Suppress
    raise AttributeError(f"module 'dpsnn.defences' has no attribute {name!r}")
