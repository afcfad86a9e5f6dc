"""Defences applied to the tensor that crosses the wire."""

from dpsnn.defences.noise import LaplaceNoise
from dpsnn.defences.nopeek import NoPeekLoss, distance_correlation

__all__ = ["LaplaceNoise", "NoPeekLoss", "distance_correlation"]
