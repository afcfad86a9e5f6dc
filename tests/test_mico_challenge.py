"""MICO's challenge construction: the splits match a reference MT19937 shuffle, and the sizes and order are MICO's.

The reference is what torchcsprng runs: ``std::mt19937`` seeded with the low 32 bits of the seed, and a
Fisher–Yates loop that swaps entry ``i`` with entry ``i + r % (n - i)``. numpy's MT19937 with legacy
(``init_genrand``) seeding supplies the 32-bit draws; the C++ standard's check value pins it to
``std::mt19937``.
"""

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import random_split

from dpsnn.errors import ConfigError
from dpsnn.mico.challenge import (
    LEN_CHALLENGE,
    MAX_DATASET_LENGTH,
    ChallengeSeeds,
    challenge_indices,
    challenge_split,
    draw_seeds,
    split_generator,
)

SEEDS = [0, 1, 12345, 2**32 - 1, 2**32 + 7, 2**63 - 1, 2**64 - 1]
# MICO's CIFAR-10 sizes: the 60,000 images of the training and test sets, 50,000 of them trained on.
N, LEN_TRAINING = 60_000, 50_000
MICO_LIKE = ChallengeSeeds(challenge=2**40 + 3, training=987654321, membership=2**62 + 2**33 + 11)


def mt19937_outputs(seed: int, count: int) -> np.ndarray:
    """The first ``count`` 32-bit outputs of ``std::mt19937`` built from ``static_cast<unsigned int>(seed)``."""
    generator = np.random.MT19937()
    generator._legacy_seeding(seed & 0xFFFFFFFF)
    return generator.random_raw(count)


def reference_randperm(n: int, seed: int) -> torch.Tensor:
    """torchcsprng's randperm: for i in 0 … n - 2, swap entry i with entry i + r % (n - i)."""
    draws = mt19937_outputs(seed, max(n - 1, 0)).tolist()
    permutation = list(range(n))
    for i in range(n - 1):
        z = i + draws[i] % (n - i)
        permutation[i], permutation[z] = permutation[z], permutation[i]
    return torch.tensor(permutation, dtype=torch.long)


def test_the_reference_generator_is_std_mt19937():
    # [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489) is 4123659995.
    assert mt19937_outputs(5489, 10_000)[-1] == 4123659995


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 10, 2 * LEN_CHALLENGE, 1000])
def test_split_generator_permutes_as_the_reference(seed, n):
    assert torch.equal(torch.randperm(n, generator=split_generator(seed)), reference_randperm(n, seed))


@pytest.mark.parametrize("seed", [2**32 + 7, 2**63 - 1])
@pytest.mark.parametrize("n", [N - 2 * LEN_CHALLENGE, N])
def test_split_generator_permutes_a_realistic_dataset_as_the_reference(seed, n):
    assert torch.equal(torch.randperm(n, generator=split_generator(seed)), reference_randperm(n, seed))


def test_only_the_low_32_bits_of_a_seed_count():
    low = torch.randperm(1000, generator=split_generator(7))
    assert torch.equal(torch.randperm(1000, generator=split_generator(2**32 + 7)), low)
    assert torch.equal(torch.randperm(1000, generator=split_generator(2**63 + 2**40 + 7)), low)
    assert not torch.equal(torch.randperm(1000, generator=split_generator(8)), low)


def test_the_split_is_the_reference_shuffles_composed_as_mico_composes_them():
    m = LEN_CHALLENGE
    split = challenge_split(N, LEN_TRAINING, MICO_LIKE)

    first = reference_randperm(N, MICO_LIKE.challenge)
    challenge, rest = first[: 2 * m], first[2 * m :]
    second = reference_randperm(N - 2 * m, MICO_LIKE.training)
    membership = reference_randperm(2 * m, MICO_LIKE.membership)

    assert torch.equal(split.challenge, challenge)
    assert torch.equal(split.training, rest[second[: LEN_TRAINING - m]])
    assert torch.equal(split.evaluation, rest[second[LEN_TRAINING - m :]])
    assert torch.equal(split.non_members, challenge[membership[:m]])  # the first m of the membership split
    assert torch.equal(split.members, challenge[membership[m:]])
    expected_solution = torch.zeros(2 * m, dtype=torch.long)
    expected_solution[membership[m:]] = 1
    assert torch.equal(split.solution, expected_solution)


def test_the_split_is_what_nested_random_splits_of_a_dataset_give():
    """MICO's own flow: random_split of the dataset, then of its Subsets, with the equivalent generators."""
    n_all, n, m = 1000, 600, 50
    seeds = ChallengeSeeds(challenge=11, training=2**35 + 22, membership=33)
    dataset = list(range(n_all))
    challenge, rest = random_split(dataset, [2 * m, n_all - 2 * m], generator=split_generator(seeds.challenge))
    training, evaluation = random_split(rest, [n - m, n_all - n - m], generator=split_generator(seeds.training))
    non_members, members = random_split(challenge, [m, m], generator=split_generator(seeds.membership))

    def items(subset):
        return torch.tensor([subset[i] for i in range(len(subset))])

    split = challenge_split(n_all, n, seeds, len_challenge=m)
    for ours, theirs in [
        (split.challenge, challenge),
        (split.training, training),
        (split.evaluation, evaluation),
        (split.non_members, non_members),
        (split.members, members),
    ]:
        assert torch.equal(ours, items(theirs))
    member_set = set(items(members).tolist())
    assert split.solution.tolist() == [int(i in member_set) for i in items(challenge).tolist()]


def test_sizes_are_mico_s_and_the_splits_cover_the_dataset_once():
    m = LEN_CHALLENGE
    split = challenge_split(N, LEN_TRAINING, MICO_LIKE)
    assert len(split.challenge) == 2 * m
    assert len(split.members) == len(split.non_members) == m
    assert len(split.training) == LEN_TRAINING - m
    assert len(split.evaluation) == N - LEN_TRAINING - m
    assert len(split.train) == LEN_TRAINING
    assert split.solution.dtype == torch.long and int(split.solution.sum()) == m
    parts = torch.cat([split.non_members, split.members, split.training, split.evaluation])
    assert torch.equal(parts.sort().values, torch.arange(N))  # disjoint, and together the whole dataset
    assert set(split.challenge.tolist()) == set(split.members.tolist()) | set(split.non_members.tolist())


def test_train_is_members_then_training():
    split = challenge_split(N, LEN_TRAINING, MICO_LIKE)
    assert torch.equal(split.train[:LEN_CHALLENGE], split.members)
    assert torch.equal(split.train[LEN_CHALLENGE:], split.training)


def test_the_solution_marks_the_members_in_challenge_order():
    split = challenge_split(N, LEN_TRAINING, MICO_LIKE)
    members = set(split.members.tolist())
    assert split.solution.tolist() == [int(i in members) for i in split.challenge.tolist()]
    assert 0 < int(split.solution[:LEN_CHALLENGE].sum()) < LEN_CHALLENGE  # interleaved, not members last


def test_same_seeds_same_split_other_seeds_another():
    one, again = challenge_split(N, LEN_TRAINING, MICO_LIKE), challenge_split(N, LEN_TRAINING, MICO_LIKE)
    for field in ("challenge", "members", "non_members", "training", "evaluation", "solution"):
        assert torch.equal(getattr(one, field), getattr(again, field))
    other = challenge_split(N, LEN_TRAINING, ChallengeSeeds(MICO_LIKE.challenge + 1, 0, 0))
    assert not torch.equal(other.challenge, one.challenge)


def test_challenge_indices_need_only_the_challenge_seed():
    split = challenge_split(N, LEN_TRAINING, MICO_LIKE)
    assert torch.equal(challenge_indices(N, MICO_LIKE.challenge), split.challenge)


def test_the_extreme_sizes_leave_training_or_evaluation_empty():
    no_evaluation = challenge_split(100, 90, ChallengeSeeds(1, 2, 3), len_challenge=10)
    assert len(no_evaluation.evaluation) == 0 and len(no_evaluation.train) == 90
    only_members = challenge_split(100, 10, ChallengeSeeds(1, 2, 3), len_challenge=10)
    assert len(only_members.training) == 0 and len(only_members.evaluation) == 80


@pytest.mark.parametrize(
    "dataset_length, len_training, len_challenge, message",
    [
        (150, 100, 100, "200 challenge points"),
        (1000, 50, 100, r"len_training \(50\) counts the 100 members"),
        (1000, 950, 100, "n \\+ m = 1050 points, dataset has 1000"),
        (0, 10, 1, "dataset length must be positive"),
        (1000, 0, 1, "len_training must be positive"),
        (1000, 10, -1, "len_challenge must be positive"),
        (MAX_DATASET_LENGTH, 10, 1, "PyTorch splits datasets"),
        (1000.0, 100, 10, "dataset length must be an integer"),
    ],
)
def test_impossible_sizes_are_refused(dataset_length, len_training, len_challenge, message):
    with pytest.raises(ConfigError, match=message):
        challenge_split(dataset_length, len_training, ChallengeSeeds(1, 2, 3), len_challenge=len_challenge)


def test_challenge_indices_refuse_too_many_challenge_points():
    with pytest.raises(ConfigError, match="200 challenge points"):
        challenge_indices(150, 1)


@pytest.mark.parametrize(
    "seeds, message",
    [
        ((-1, 0, 0), r"seed_challenge must be in \[0, 2\*\*64\), got -1"),
        ((0, 2**64, 0), "seed_training must be in"),
        ((0, 0, True), "seed_membership must be an integer"),
        ((0, "7", 0), "seed_training must be an integer"),
    ],
)
def test_bad_seeds_are_refused(seeds, message):
    with pytest.raises(ConfigError, match=message):
        ChallengeSeeds(*seeds)


def test_seeds_accept_numpy_integers_as_plain_ints():
    seeds = ChallengeSeeds(np.int64(5), np.uint64(2**63 + 1), 7)
    assert seeds == ChallengeSeeds(5, 2**63 + 1, 7) and type(seeds.challenge) is int


def test_draw_seeds_is_reproducible_and_distinct():
    assert draw_seeds(3, 17) == draw_seeds(3, 17)
    drawn = [draw_seeds(base, k) for base in (0, 1) for k in range(200)]
    values = [value for seeds in drawn for value in (seeds.challenge, seeds.training, seeds.membership)]
    assert len(set(values)) == len(values)
    assert len({value & 0xFFFFFFFF for value in values}) == len(values)  # distinct generators too
    assert all(0 <= value < 2**63 for value in values)


def test_draw_seeds_follows_its_documented_formula():
    def documented(role):
        return int.from_bytes(hashlib.sha256(f"dpsnn.mico/42/150/{role}".encode()).digest()[:8], "big") >> 1

    expected = ChallengeSeeds(documented("challenge"), documented("training"), documented("membership"))
    assert draw_seeds(42, 150) == expected


def test_draw_seeds_refuses_negative_inputs():
    with pytest.raises(ConfigError, match="non-negative"):
        draw_seeds(-1, 0)
    with pytest.raises(ConfigError, match="non-negative"):
        draw_seeds(0, -3)
