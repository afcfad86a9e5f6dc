"""Unlearnable data: perturbations that keep a network trained on them from generalising, and learning despite them.

:mod:`dpsnn.unlearnable.ntk` holds the infinite-width kernels the Neural Tangent
Generalization Attack differentiates through.
"""
