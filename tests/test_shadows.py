"""Shadow models trained together: balanced masks, per-shadow data, the same training as one model at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError
from dpsnn.models import SplitNN
from dpsnn.shadows import (
    ShadowRecipe,
    batch_schedule,
    choose_strategy,
    member_masks,
    model_maker,
    train_shadows,
    train_shadows_one_by_one,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 12, 12)


def prototypes_split(n: int, seed: int, noise: float = 0.6) -> Split:
    """A learnable task: one random pattern per class, plus heavy per-image noise."""
    patterns = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return Split((patterns[labels] + noise * torch.randn(n, *SHAPE, generator=generator)).clamp(0, 1), labels)


def mlp(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(S, N)`` cross-entropy of each shadow on each example."""
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(len(logits)), reduction="none").view(logits.shape[:2])


def test_member_masks_put_each_example_in_exactly_half_the_shadows():
    masks = member_masks(500, 8, seed=3)
    assert masks.shape == (8, 500) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(dim=0), torch.full((500,), 4))
    assert masks.sum(dim=1).min() > 200  # each shadow holds about half the examples
    assert torch.equal(masks, member_masks(500, 8, seed=3))
    assert not torch.equal(masks, member_masks(500, 8, seed=4))
    assert torch.equal(member_masks(50, 5).sum(dim=0), torch.full((50,), 2))  # odd: floor(S / 2)


def test_member_masks_need_two_shadows_and_an_example():
    with pytest.raises(ConfigError, match="at least 2 shadow"):
        member_masks(10, 1)
    with pytest.raises(DataError):
        member_masks(0, 4)


def test_each_shadow_draws_full_batches_from_its_own_members_only():
    masks = member_masks(37, 4, seed=0)
    schedule = batch_schedule(masks, batch_size=8, epochs=2, seed=0)
    largest = int(masks.sum(dim=1).max())
    assert schedule.shape == (2, -(-largest // 8), 4, 8)
    for shadow in range(4):
        members = set(masks[shadow].nonzero().flatten().tolist())
        for epoch in range(2):
            drawn = schedule[epoch, :, shadow].flatten().tolist()
            assert set(drawn) == members  # only members, and every member at least once an epoch


def test_two_shadows_trained_together_equal_two_separate_adam_runs():
    """Adam is element-wise and the shadows' slices are disjoint: the stacked run is S separate runs.

    Inputs without exact zeros: where a gradient is zero in one run and a rounding error in
    the other, Adam turns both into a step of about the learning rate, and the runs part.
    """
    generator = torch.Generator().manual_seed(0)
    data = Split(
        0.1 + 0.9 * torch.rand(48, *SHAPE, generator=generator), torch.randint(0, 10, (48,), generator=generator)
    )
    masks = member_masks(len(data), 2, seed=0)
    recipe = ShadowRecipe(epochs=3, batch_size=8, learning_rate=1e-3, weight_decay=1e-3)
    make = lambda: SplitNN("reference", input_shape=SHAPE)  # noqa: E731
    together = train_shadows(make, data.images, data.labels, masks, recipe, seed=5, strategy="together")
    apart = train_shadows_one_by_one(make, data.images, data.labels, masks, recipe, seed=5)
    assert len(together) == len(apart) == 2
    for name, value in together.params.items():
        torch.testing.assert_close(value, apart.params[name], atol=2e-4, rtol=0)
    torch.testing.assert_close(together.logits(data.images), apart.logits(data.images), atol=1e-4, rtol=0)
    untrained = train_shadows(make, data.images, data.labels, masks, ShadowRecipe(epochs=1, learning_rate=1e-9))
    assert (together.logits(data.images) - untrained.logits(data.images)).abs().max() > 0.1  # it did train


def test_shadows_trained_together_are_as_good_as_one_at_a_time():
    train, test = prototypes_split(256, seed=1), prototypes_split(500, seed=2)
    masks = member_masks(len(train), 4, seed=1)
    recipe = ShadowRecipe(epochs=8, batch_size=32, learning_rate=3e-3)
    accuracy = {}
    for trainer in (train_shadows, train_shadows_one_by_one):
        shadows = trainer(lambda: mlp(dropout=0.2), train.images, train.labels, masks, recipe, seed=0)
        accuracy[trainer.__name__] = (shadows.logits(test.images).argmax(dim=-1) == test.labels).float().mean(dim=1)
    together, apart = accuracy["train_shadows"], accuracy["train_shadows_one_by_one"]
    assert together.min() > 0.6, together  # they learn the task (chance is 0.1)
    assert abs(together.mean() - apart.mean()) < 0.05, (together, apart)


def test_a_shadows_members_have_lower_loss_than_its_non_members():
    generator = torch.Generator().manual_seed(2)
    images, labels = torch.rand(96, *SHAPE, generator=generator), torch.randint(0, 10, (96,), generator=generator)
    data = Split(images, labels)  # random labels: only memorisation helps
    masks = member_masks(len(data), 4, seed=2)
    shadows = train_shadows(mlp, data.images, data.labels, masks, ShadowRecipe(epochs=40, batch_size=16), seed=2)
    loss = per_example_loss(shadows.logits(data.images), data.labels)
    for shadow in range(4):
        inside, outside = loss[shadow][masks[shadow]], loss[shadow][~masks[shadow]]
        assert inside.mean() < 0.5 * outside.mean(), (shadow, inside.mean(), outside.mean())
        assert (inside.median() < outside.min()) or (inside.max() < outside.median())


def test_shadows_draw_their_own_wire_noise_and_one_can_be_taken_out():
    data = prototypes_split(32, seed=3)
    masks = member_masks(len(data), 3, seed=0)
    make = lambda: SplitNN("reference", defences=["laplace:scale=0.5"], input_shape=SHAPE)  # noqa: E731
    shadows = train_shadows(make, data.images, data.labels, masks, ShadowRecipe(epochs=1, batch_size=16))
    first, second = shadows.logits(data.images), shadows.logits(data.images)
    assert first.shape == (3, 32, 10)
    assert not torch.allclose(first, second)  # noise is drawn afresh at every query
    quiet = train_shadows(
        lambda: SplitNN("reference", input_shape=SHAPE), data.images, data.labels, masks, ShadowRecipe(epochs=1)
    )
    one = quiet.module(1)
    torch.testing.assert_close(one(data.images), quiet.logits(data.images)[1], atol=1e-5, rtol=0)
    assert quiet.logits(data.images[:0]).shape == (3, 0, 10)


def test_batch_norm_statistics_are_trained_per_shadow():
    generator = torch.Generator().manual_seed(3)
    data = Split(torch.rand(32, 3, 8, 8, generator=generator), torch.randint(0, 10, (32,), generator=generator))
    masks = member_masks(len(data), 2, seed=0)
    make = lambda: SplitNN("cifar-cnn", input_shape=(3, 8, 8))  # noqa: E731
    recipe = ShadowRecipe(epochs=1, batch_size=8)
    together = train_shadows(make, data.images, data.labels, masks, recipe, strategy="together")
    apart = train_shadows_one_by_one(make, data.images, data.labels, masks, recipe)
    means = together.buffers["client.1.running_mean"]
    assert not torch.allclose(means[0], means[1])  # each shadow's own batches
    steps = -(-int(masks.sum(dim=1).max()) // 8)  # full batches of the largest member set
    assert torch.equal(together.buffers["client.1.num_batches_tracked"], torch.tensor([steps, steps]))
    # Zero-gradient biases before BatchNorm make Adam amplify rounding, so only close, not equal.
    torch.testing.assert_close(means, apart.buffers["client.1.running_mean"], atol=1e-3, rtol=0)


def test_auto_trains_convolutional_shadows_one_by_one_on_the_cpu_and_others_together(monkeypatch):
    import dpsnn.shadows as shadows_module

    assert choose_strategy(SplitNN("reference", input_shape=SHAPE)) == "one-by-one"
    assert choose_strategy(mlp()) == "together"
    used = []
    for name in ("_train_together", "_train_one_by_one"):
        real = getattr(shadows_module, name)
        monkeypatch.setattr(shadows_module, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    data = prototypes_split(16, seed=4)
    masks = member_masks(len(data), 2, seed=0)
    recipe = ShadowRecipe(epochs=1, batch_size=8)
    train_shadows(lambda: SplitNN("reference", input_shape=SHAPE), data.images, data.labels, masks, recipe)
    train_shadows(mlp, data.images, data.labels, masks, recipe)
    train_shadows(mlp, data.images, data.labels, masks, recipe, strategy="one-by-one")
    assert used == ["_train_one_by_one", "_train_together", "_train_one_by_one"]
    with pytest.raises(ConfigError, match="unknown shadow training strategy 'fast'"):
        train_shadows(mlp, data.images, data.labels, masks, recipe, strategy="fast")


def test_the_target_recipe_rebuilds_a_split_network_and_resets_other_models():
    target = SplitNN("reference", defences=["laplace:scale=0.3", "nopeek:weight=0.1"], input_shape=SHAPE)
    shadow = model_maker(target)()
    assert isinstance(shadow, SplitNN) and shadow.hparams == target.hparams
    assert shadow.trained_with() == target.trained_with()
    assert not torch.equal(shadow.client[0].weight, target.client[0].weight)
    custom = mlp()
    fresh = model_maker(custom)()
    assert type(fresh) is type(custom) and not torch.equal(fresh[1].weight, custom[1].weight)


def test_bad_input_is_a_clear_error():
    data = prototypes_split(16, seed=0)
    masks = member_masks(16, 2)
    with pytest.raises(DataError, match="do not match"):
        train_shadows(mlp, data.images, data.labels, masks[:, :8])
    with pytest.raises(DataError, match="no member"):
        train_shadows(mlp, data.images, data.labels, torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(DataError, match="bool"):
        train_shadows(mlp, data.images, data.labels, masks.long())
    with pytest.raises(ConfigError):
        ShadowRecipe(epochs=0)
    with pytest.raises(ConfigError):
        ShadowRecipe(learning_rate=-1.0)
