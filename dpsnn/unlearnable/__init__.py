"""Unlearnable data: perturbations that keep a network trained on them from generalising, and learning despite them.

- :mod:`~dpsnn.unlearnable.ntk`: the infinite-width kernels (NTK, NNGP) of fully connected networks;
- :mod:`~dpsnn.unlearnable.ntga`: the Neural Tangent Generalization Attack on a block of images;
- :mod:`~dpsnn.unlearnable.baselines`: random noise and error-minimising noise at the same budget;
- :mod:`~dpsnn.unlearnable.poisons`: the poison methods by name, run over a whole training set and
  written as a derived dataset ``SOURCE+TAG`` that the data registry serves;
- :mod:`~dpsnn.unlearnable.recipes`: the training recipes that try to learn despite the poison.

``python scripts/unlearnable.py make`` and ``… train`` run them from the command line.
"""
