"""MICO, the Microsoft membership inference competition (SaTML 2023), in its own format.

For each scenario 200 models were each trained on a split of one dataset drawn from three seeds; an
attacker scores the 2m challenge points of each model (m members, m non-members) and is ranked by its
true positive rate at 10% false positive rate.

- :mod:`~dpsnn.mico.challenge`: the seeded splits of a dataset into challenge, member, non-member,
  training and evaluation points, drawn exactly as the official code draws them;
- :mod:`~dpsnn.mico.layout`: the folders and files of a challenge on disk (seeds, ``solution.csv``,
  ``prediction.csv``) and the zipped submission;
- :mod:`~dpsnn.mico.scoring`: the scores of predictions against the solutions, as the official scorer
  computes them;
- :mod:`~dpsnn.mico.folders`: a whole challenge tree scored as the official scoring program does, with
  bootstrap standard errors and intervals over the challenge points, and its ``scores.txt``;
- :mod:`~dpsnn.mico.official`: the published CIFAR-10 and Purchase-100 models and datasets, loaded
  without running code from their files.
"""
