"""The baselines of the unlearnable-data attack (dpsnn.unlearnable.baselines): random and error-minimising noise.

The images are random 1×16×16 pixels with random labels: small enough that a three-round run of
the error-minimising procedure takes about a second on one core, and a set on which nothing but
the noise can be learnt quickly.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpsnn.architectures import build_split
from dpsnn.errors import CheckpointError, ConfigError, DataError
from dpsnn.unlearnable.baselines import STATE_FILE, ErrorMinimising, error_minimising_noise, random_noise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPSILON = 0.3
COUNT, SHAPE, CLASSES = 128, (1, 16, 16), 10
# The tiny run: pgd_steps, train_steps and max_rounds far below the published 20, 10 and 20.
TINY = ErrorMinimising(epsilon=EPSILON, step_size=0.1, pgd_steps=3, train_steps=4, max_rounds=3, batch_size=32)


def random_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(COUNT, *SHAPE, generator=generator), torch.randint(0, CLASSES, (COUNT,), generator=generator)


def network(seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        client, server = build_split("reference", SHAPE, CLASSES)
    return nn.Sequential(client, server)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return random_set(seed=100)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted three-round run, its state kept: ``(poisoned images, state folder)``."""
    images, labels = data
    folder = tmp_path_factory.mktemp("straight")
    return error_minimising_noise(images, labels, CLASSES, TINY, seed=0, state_dir=folder), folder


# -- random noise ------------------------------------------------------------------------------


def test_random_noise_stays_within_epsilon_and_the_pixel_range(data):
    images, _ = data
    noisy = random_noise(images, EPSILON, seed=0)
    assert noisy.shape == images.shape and noisy.dtype == images.dtype
    assert (noisy - images).abs().max() <= EPSILON + 1e-6
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy - images).abs().mean() > EPSILON / 5  # really perturbed, not clipped away
    # unclipped pixels spread over the whole budget
    inside = (images > EPSILON) & (images < 1 - EPSILON)
    assert (noisy - images)[inside].abs().max() > 0.95 * EPSILON


def test_random_noise_is_seeded(data):
    images, _ = data
    before = torch.random.get_rng_state()
    assert torch.equal(random_noise(images, EPSILON, seed=3), random_noise(images, EPSILON, seed=3))
    assert not torch.equal(random_noise(images, EPSILON, seed=3), random_noise(images, EPSILON, seed=4))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left alone


@pytest.mark.parametrize("epsilon", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_random_noise_refuses_a_bad_epsilon(data, epsilon):
    with pytest.raises(ConfigError, match="epsilon must be a number in"):
        random_noise(data[0], epsilon)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(4, 16, 16), "shape \\(N, C, H, W\\)"),
        (torch.randint(0, 255, (4, 1, 16, 16)), "float tensor"),
        (torch.rand(4, 1, 16, 16) * 255, "divide by 255"),
        (torch.rand(0, 1, 16, 16), "at least one image"),
    ],
)
def test_random_noise_refuses_bad_images(images, message):
    with pytest.raises(DataError, match=message):
        random_noise(images, EPSILON)


def test_a_bad_seed_is_refused(data):
    images, labels = data
    with pytest.raises(ConfigError, match="seed must be a non-negative whole number"):
        random_noise(images, EPSILON, seed=-1)
    with pytest.raises(ConfigError, match="seed must be a non-negative whole number, got 1.5"):
        error_minimising_noise(images, labels, CLASSES, TINY, seed=1.5)


# -- error-minimising noise ------------------------------------------------------------------


def test_error_minimising_noise_stays_within_epsilon_and_the_pixel_range(data, straight):
    images, _ = data
    poisoned, _ = straight
    assert poisoned.shape == images.shape and poisoned.dtype == images.dtype
    assert (poisoned - images).abs().max() <= EPSILON + 1e-6
    assert poisoned.min() >= 0 and poisoned.max() <= 1
    assert (poisoned - images).abs().mean() > EPSILON / 5
    assert not torch.allclose(poisoned, random_noise(images, EPSILON, seed=0))  # it moved from its random start


def test_progress_shows_rounds_and_the_images_of_each_round_and_the_result_is_the_same(data, straight, capsys):
    images, labels = data
    one_round = replace(TINY, max_rounds=1)
    shown = error_minimising_noise(images, labels, CLASSES, one_round, seed=0, progress=True)
    bars = capsys.readouterr().err
    assert "error-minimising noise" in bars and "round 1: noise" in bars and f"0/{COUNT}" in bars
    hidden = error_minimising_noise(images, labels, CLASSES, one_round, seed=0, progress=False)
    assert capsys.readouterr().err == ""
    assert torch.equal(shown, hidden)


def test_error_minimising_noise_is_a_shortcut_a_fresh_network_learns(data, straight):
    """On random labels nothing is learnable but the noise: a new network's loss falls far faster on poisoned images.

    The network has another initialisation than the surrogate that made the noise; the same
    training on the clean images or on random noise of the same size barely moves the loss.
    """
    images, labels = data
    poisoned, folder = straight

    def loss_after_training(inputs: torch.Tensor, steps: int = 30) -> float:
        model = network(seed=12345)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(7)
        for _ in range(steps):
            index = torch.randperm(COUNT, generator=order)[:32]
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            return F.cross_entropy(model(inputs), labels).item()

    clean, noisy, shortcut = (loss_after_training(x) for x in (images, random_noise(images, EPSILON), poisoned))
    assert shortcut < clean - 0.5, (shortcut, clean)
    assert shortcut < noisy - 0.5, (shortcut, noisy)

    # and the final surrogate, saved in the state, fits the poisoned images far better than the clean ones
    surrogate = network(seed=0)
    surrogate.load_state_dict(torch.load(folder / STATE_FILE, weights_only=True)["model"])
    with torch.no_grad():
        on_poisoned, on_clean = (F.cross_entropy(surrogate(x), labels).item() for x in (poisoned, images))
    assert on_poisoned < on_clean - 0.05, (on_poisoned, on_clean)


def test_a_killed_run_resumes_to_the_uninterrupted_result(data, straight, tmp_path):
    images, labels = data
    poisoned, _ = straight
    before = torch.random.get_rng_state()
    first = error_minimising_noise(images, labels, CLASSES, replace(TINY, max_rounds=1), seed=0, state_dir=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left alone
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["round"] == 1
    # the same seed without a state gives the same first round; another seed another one
    assert torch.equal(error_minimising_noise(images, labels, CLASSES, replace(TINY, max_rounds=1), seed=0), first)
    assert not torch.equal(error_minimising_noise(images, labels, CLASSES, replace(TINY, max_rounds=1), seed=1), first)
    assert not torch.equal(first, poisoned)

    resumed = error_minimising_noise(images, labels, CLASSES, TINY, seed=0, state_dir=tmp_path)
    assert torch.equal(resumed, poisoned)
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["round"] == 3


def test_a_finished_state_is_returned_without_running_again(data, straight):
    images, labels = data
    poisoned, folder = straight
    written = os.stat(folder / STATE_FILE).st_mtime_ns
    assert torch.equal(error_minimising_noise(images, labels, CLASSES, TINY, seed=0, state_dir=folder), poisoned)
    assert os.stat(folder / STATE_FILE).st_mtime_ns == written


@pytest.mark.parametrize(
    "seed, changes, data_change, error, message",
    [
        (1, {}, None, ConfigError, "seed=0 \\(now 1\\)"),
        (0, dict(pgd_steps=4), None, ConfigError, "pgd_steps=3 \\(now 4\\)"),
        (0, dict(epsilon=0.2, step_size=0.05), None, ConfigError, "epsilon=0.3 \\(now 0.2\\)"),
        (0, dict(architecture="cifar-cnn"), None, ConfigError, "architecture='reference' \\(now 'cifar-cnn'\\)"),
        (0, dict(max_rounds=2), None, ConfigError, "holds round 3, past max_rounds=2"),
        (0, {}, "other images", DataError, "other images, labels or classes"),
        (0, {}, "fewer images", DataError, "other images, labels or classes"),
        (0, {}, "other labels", DataError, "other images, labels or classes"),
    ],
)
def test_a_state_of_another_run_is_refused(data, straight, seed, changes, data_change, error, message):
    images, labels = data
    _, folder = straight
    if data_change == "other images":
        images = images.flip(-1)
    elif data_change == "fewer images":
        images, labels = images[:64], labels[:64]
    elif data_change == "other labels":
        labels = (labels + 1) % CLASSES
    written = os.stat(folder / STATE_FILE).st_mtime_ns
    with pytest.raises(error, match=message):
        error_minimising_noise(images, labels, CLASSES, replace(TINY, **changes), seed=seed, state_dir=folder)
    assert os.stat(folder / STATE_FILE).st_mtime_ns == written  # left as it was


def test_a_corrupt_state_is_refused(data, tmp_path):
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="delete it to start over"):
        error_minimising_noise(*data, CLASSES, TINY, state_dir=tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(epsilon=0), "epsilon must be a number in \\(0, 1\\]"),
        (dict(epsilon=1.2), "epsilon must be a number in \\(0, 1\\]"),
        (dict(step_size=0), "step_size must be a number in \\(0, epsilon"),
        (dict(step_size=0.5), "step_size must be a number in \\(0, epsilon"),
        (dict(pgd_steps=0), "pgd_steps must be a whole number of at least 1"),
        (dict(train_steps=0), "train_steps must be a whole number of at least 1"),
        (dict(train_steps=2.5), "train_steps must be a whole number of at least 1"),
        (dict(max_rounds=0), "max_rounds must be a whole number of at least 1"),
        (dict(batch_size=0), "batch_size must be a whole number of at least 1"),
        (dict(stop_accuracy=0), "stop_accuracy must be a fraction in \\(0, 1\\]"),
        (dict(stop_accuracy=1.01), "stop_accuracy must be a fraction in \\(0, 1\\]"),
        (dict(learning_rate=0), "learning_rate must be a positive number"),
        (dict(learning_rate=float("nan")), "learning_rate must be a positive number"),
        (dict(architecture="no-such-net"), "unknown architecture 'no-such-net'; choose from"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        ErrorMinimising(**changes)


@pytest.mark.parametrize(
    "labels, num_classes, error, message",
    [
        (torch.zeros(COUNT - 1, dtype=torch.long), CLASSES, DataError, "one entry per image \\(128\\), got 127"),
        (torch.full((COUNT,), CLASSES), CLASSES, DataError, "class indices in \\[0, 10\\)"),
        (torch.full((COUNT,), -1), CLASSES, DataError, "class indices in \\[0, 10\\)"),
        (torch.zeros(COUNT), CLASSES, DataError, "1-d tensor of class indices"),
        (torch.zeros(COUNT, dtype=torch.long), 1, ConfigError, "num_classes must be a whole number of at least 2"),
    ],
)
def test_bad_labels_are_refused(data, labels, num_classes, error, message):
    with pytest.raises(error, match=message):
        error_minimising_noise(data[0], labels, num_classes, TINY)
