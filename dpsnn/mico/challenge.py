"""MICO's challenge construction: the seeded splits of a dataset that one model trains and is attacked on.

Each model of a MICO scenario is trained on its own split of one dataset of ``N`` points, drawn by
three calls of ``torch.utils.data.random_split``, each with a generator seeded by one of three seeds:

===================  ===================  =========================================================
seed                 splits               into
===================  ===================  =========================================================
``seed_challenge``   the dataset (N)      ``2m`` challenge points, then the ``N - 2m`` others
``seed_training``    the others           ``n - m`` training points, then ``N - n - m`` evaluation
                                          points
``seed_membership``  the challenge (2m)   ``m`` non-members **first**, then ``m`` members
===================  ===================  =========================================================

The model trains on ``members + training`` (members first, ``n`` points in all, ``n`` being
``len_training``) and is evaluated on ``evaluation``; ``m`` (``len_challenge``) is 100 in MICO.
``train`` models disclose all three seeds; ``dev`` and ``final`` models only ``seed_challenge``.

Order of the challenge points. The attacker scores the challenge points in the order of the first
split (the first ``2m`` entries of the ``seed_challenge`` permutation): ``prediction.csv`` and
``solution.csv`` are both aligned with it, ``solution[i]`` being 1 when ``challenge[i]`` is a
member. The members and non-members are therefore interleaved in that order; "non-members first" holds
only within the membership split, whose first ``m`` positions name the non-members.

The generator. The official code seeds torchcsprng's ``create_mt19937_generator(seed)``: a
``std::mt19937`` built from ``static_cast<unsigned int>(seed)``, that is the **low 32 bits** of the
seed (MICO's seeds are non-negative 63-bit integers), whose ``randperm`` (copied from PyTorch's) swaps
entry ``i`` with entry ``i + r % (n - i)`` for ``i = 0 … n - 2``, ``r`` one 32-bit MT19937 output.
PyTorch's own CPU generator is the same MT19937, also seeded by the low 32 bits, and its CPU
``randperm`` runs the same loop for ``n < (2**32 - 1) // 20`` (a 64-bit variant above), so
``torch.Generator().manual_seed(seed & 0xFFFFFFFF)`` reproduces the official splits without
torchcsprng. ``tests/test_mico_challenge.py`` checks this, with torch 2.14, against a reference
Fisher–Yates shuffle driven by numpy's MT19937 (seeded by the standard ``init_genrand``, itself pinned
to the C++ standard's check value for ``std::mt19937``), for permutations of 1 to 60,000 entries and
seeds below and above ``2**32``. Datasets of :data:`MAX_DATASET_LENGTH` points or more are refused, as
PyTorch permutes them differently.

Example::

    from dpsnn.mico.challenge import challenge_split, draw_seeds

    seeds = draw_seeds(base_seed=0, model_index=7)          # or read from a model folder
    split = challenge_split(60_000, len_training=50_000, seeds=seeds)
    split.challenge.shape, split.train.shape                # (200,), (50000,)
    split.solution[:5]                                      # 0/1, aligned with split.challenge
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import random_split

from dpsnn.errors import ConfigError

__all__ = [
    "LEN_CHALLENGE",
    "MAX_DATASET_LENGTH",
    "SEED_LIMIT",
    "ChallengeSeeds",
    "ChallengeSplit",
    "challenge_indices",
    "challenge_split",
    "check_seed",
    "draw_seeds",
    "split_generator",
]

LEN_CHALLENGE = 100  # m: members, and as many non-members, per model
#: PyTorch's CPU randperm runs torchcsprng's loop only below this length (``(2**32 - 1) // 20``).
MAX_DATASET_LENGTH = (2**32 - 1) // 20
SEED_LIMIT = 2**64  # torchcsprng takes a seed as an unsigned 64-bit integer
_LOW_32_BITS = 0xFFFFFFFF


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as a plain int if it is a valid seed (an integer in ``[0, 2**64)``), else a ConfigError naming it."""
    seed = _as_int(value, name)
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


@dataclass(frozen=True)
class ChallengeSeeds:
    """The three seeds of one model's split: MICO's ``seed_challenge``, ``seed_training``, ``seed_membership``."""

    challenge: int
    training: int
    membership: int

    def __post_init__(self) -> None:
        for role in ("challenge", "training", "membership"):
            object.__setattr__(self, role, check_seed(getattr(self, role), f"seed_{role}"))


@dataclass(frozen=True, eq=False)
class ChallengeSplit:
    """One model's split, as int64 tensors of dataset indices (and the 0/1 ``solution``)."""

    challenge: Tensor  # 2m points, in the order the attacker scores them
    non_members: Tensor  # m points of the challenge, left out of training
    members: Tensor  # m points of the challenge, trained on
    training: Tensor  # n - m other points trained on
    evaluation: Tensor  # N - n - m points for the model's test accuracy
    solution: Tensor  # 2m labels aligned with ``challenge``: 1 member, 0 non-member

    @property
    def train(self) -> Tensor:
        """What the model trains on: ``members`` then ``training`` (MICO's ``ConcatDataset``), ``n`` points."""
        return torch.cat([self.members, self.training])


def split_generator(seed: int) -> torch.Generator:
    """A CPU generator that permutes as ``torchcsprng.create_mt19937_generator(seed)`` does (see the module notes)."""
    return torch.Generator().manual_seed(check_seed(seed, "seed") & _LOW_32_BITS)


def _random_split(items: Tensor, first_length: int, seed: int) -> tuple[Tensor, Tensor]:
    """``items`` split by ``random_split`` into ``first_length`` and the rest, as MICO splits a dataset."""
    lengths = [first_length, len(items) - first_length]
    first, second = random_split(range(len(items)), lengths, generator=split_generator(seed))  # type: ignore[arg-type]
    return items[torch.tensor(first.indices, dtype=torch.long)], items[torch.tensor(second.indices, dtype=torch.long)]


def _positive(value: object, name: str) -> int:
    size = _as_int(value, name)
    if size <= 0:
        raise ConfigError(f"{name} must be positive, got {size}")
    return size


def _check_challenge_size(dataset_length: object, len_challenge: object) -> tuple[int, int]:
    n_all = _positive(dataset_length, "dataset length")
    m = _positive(len_challenge, "len_challenge")
    if n_all >= MAX_DATASET_LENGTH:
        raise ConfigError(f"PyTorch splits datasets of {MAX_DATASET_LENGTH} points or more differently, got {n_all}")
    if 2 * m > n_all:
        raise ConfigError(f"{2 * m} challenge points (2 × len_challenge) do not fit in a dataset of {n_all}")
    return n_all, m


def _check_sizes(dataset_length: object, len_training: object, len_challenge: object) -> tuple[int, int, int]:
    n_all, m = _check_challenge_size(dataset_length, len_challenge)
    n = _positive(len_training, "len_training")
    if n < m:
        raise ConfigError(f"len_training ({n}) counts the {m} members, so it cannot be less than len_challenge")
    if n + m > n_all:
        raise ConfigError(f"len_training={n} and len_challenge={m} need n + m = {n + m} points, dataset has {n_all}")
    return n_all, n, m


def challenge_indices(dataset_length: int, seed_challenge: int, len_challenge: int = LEN_CHALLENGE) -> Tensor:
    """The ``2 × len_challenge`` challenge points alone, in scoring order: all a dev or final model discloses."""
    n_all, m = _check_challenge_size(dataset_length, len_challenge)
    challenge, _ = _random_split(torch.arange(n_all), 2 * m, check_seed(seed_challenge, "seed_challenge"))
    return challenge


def challenge_split(
    dataset_length: int, len_training: int, seeds: ChallengeSeeds, len_challenge: int = LEN_CHALLENGE
) -> ChallengeSplit:
    """Split ``range(dataset_length)`` as MICO does for a model of ``len_training`` points and these seeds."""
    n_all, n, m = _check_sizes(dataset_length, len_training, len_challenge)
    challenge, rest = _random_split(torch.arange(n_all), 2 * m, seeds.challenge)
    training, evaluation = _random_split(rest, n - m, seeds.training)
    non_member_positions, member_positions = _random_split(torch.arange(2 * m), m, seeds.membership)
    solution = torch.zeros(2 * m, dtype=torch.long)
    solution[member_positions] = 1
    return ChallengeSplit(
        challenge=challenge,
        non_members=challenge[non_member_positions],
        members=challenge[member_positions],
        training=training,
        evaluation=evaluation,
        solution=solution,
    )


def _derived_seed(base_seed: int, model_index: int, role: str) -> int:
    digest = hashlib.sha256(f"dpsnn.mico/{base_seed}/{model_index}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a non-negative int64, as MICO's seeds are


def draw_seeds(base_seed: int, model_index: int) -> ChallengeSeeds:
    """The seeds of model ``model_index`` of a scenario whose seeds all derive from ``base_seed``.

    Each seed is the first 63 bits of SHA-256 of ``"dpsnn.mico/{base_seed}/{model_index}/{role}"``
    (role ``challenge``, ``training`` or ``membership``): the same on every machine and version, and
    different for every model and role. Like MICO's they are non-negative 63-bit integers, of which
    only the low 32 bits drive the generator.
    """
    base_seed = _as_int(base_seed, "base_seed")
    model_index = _as_int(model_index, "model_index")
    if base_seed < 0 or model_index < 0:
        raise ConfigError(f"base_seed and model_index must be non-negative, got {base_seed} and {model_index}")
    roles = ("challenge", "training", "membership")
    return ChallengeSeeds(*(_derived_seed(base_seed, model_index, role) for role in roles))
