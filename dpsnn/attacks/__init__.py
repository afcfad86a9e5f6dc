"""Attacks on what crosses the wire."""

from dpsnn.attacks.baseline import LabelOnlyBaseline
from dpsnn.attacks.inversion import Decoder, InversionAttacker, what_server_sees

__all__ = ["Decoder", "InversionAttacker", "LabelOnlyBaseline", "what_server_sees"]
