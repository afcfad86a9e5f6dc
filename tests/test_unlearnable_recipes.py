"""Training recipes against unlearnable data: every registered recipe's conformance, then each one's own behaviour.

The end-to-end runs train the reference network on tiny 1×12×12 random images (its 28×28 form
spends most of a second per epoch on its first linear map): they check the plumbing, not the numbers.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpsnn.architectures import build_split
from dpsnn.data import Split
from dpsnn.errors import ConfigError
from dpsnn.unlearnable.recipes import (
    RECIPES,
    Adversarial,
    Binarise,
    Cutout,
    Grayscale,
    Jpeg,
    RecipeResult,
    last_linear_name,
    mixup,
    recipe_from,
    recipe_names,
    train_with_recipe,
    train_with_recipes,
    trains_plainly,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = recipe_names()
SHAPE = (1, 12, 12)
NUM_CLASSES = 10
# Parameters that keep the end-to-end runs short (PGD's default 10 steps; last-layer's 1000 clean images).
FAST = {"adversarial": {"steps": 2}, "last-layer": {"clean_size": 64, "head_epochs": 1}}


def random_split(size: int, seed: int, shape: tuple[int, ...] = SHAPE, classes: int = NUM_CLASSES) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.rand(size, *shape, generator=generator), torch.randint(0, classes, (size,), generator=generator))


def small_network(shape: tuple[int, ...] = SHAPE, architecture: str = "reference") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*build_split(architecture, shape, NUM_CLASSES))


def fast_recipe(name: str):
    return dataclasses.replace(recipe_from(name), **FAST.get(name, {}))


def train(recipe, epochs: int = 1, train_split: Split | None = None, val: Split | None = None, **clean: Split):
    return train_with_recipe(
        recipe,
        train_split if train_split is not None else random_split(256, 0),
        val if val is not None else random_split(64, 1),
        random_split(64, 2),
        NUM_CLASSES,
        epochs=epochs,
        batch_size=64,
        progress=False,
        **clean,
    )


def clean_splits() -> dict[str, Split]:
    return {"clean_val": random_split(64, 3), "clean_extra": random_split(128, 4)}


# -- conformance: every registered recipe ------------------------------------------------


def test_the_ten_recipes_are_registered():
    expected = "adversarial binarise cutout early-stop grayscale jpeg last-layer mixup oracle-early-stop plain"
    assert ALL == expected.split()


@pytest.mark.parametrize("name", ALL)
def test_parsing_a_name_gives_the_recipe_back(name):
    recipe = recipe_from(name)
    assert type(recipe) is RECIPES[name] and recipe.name == name
    assert recipe_from(recipe.spec()) == recipe
    assert recipe_from(recipe.to_dict()) == recipe
    assert recipe_from(recipe) is recipe


def test_keys_and_labels_are_non_empty_and_unique():
    recipes = [recipe_from(name) for name in ALL]
    keys = [recipe.key() for recipe in recipes]
    labels = [recipe.label() for recipe in recipes]
    assert all(keys) and all(labels)
    assert len(set(keys)) == len(keys) and len(set(labels)) == len(labels)
    assert all(key == key.strip() and "/" not in key and " " not in key for key in keys)


@pytest.mark.parametrize("name", ALL)
def test_a_recipe_breaks_the_rules_exactly_when_it_needs_clean_data(name):
    recipe = recipe_from(name)
    assert recipe.obeys_rules == (not recipe.needs)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ALL)
def test_prepare_and_test_view_keep_shape_dtype_and_range(name, shape):
    recipe = recipe_from(name)
    images = random_split(6, 5, shape).images
    for view in (recipe.prepare(images), recipe.test_view(images)):
        assert view.shape == images.shape and view.dtype == images.dtype
        assert view.min() >= 0 and view.max() <= 1


@pytest.mark.parametrize("name", ALL)
def test_batch_keeps_the_images_shape_and_gives_valid_targets(name):
    recipe = recipe_from(name)
    model = small_network()
    batch = random_split(8, 6)
    x, targets = recipe.batch(model, batch.images, batch.labels, torch.Generator().manual_seed(0))
    assert x.shape == batch.images.shape and x.dtype == batch.images.dtype
    if targets.dim() == 1:
        assert targets.dtype == torch.long and targets.shape == (8,)
        assert targets.min() >= 0 and targets.max() < NUM_CLASSES
    else:
        assert targets.shape == (8, NUM_CLASSES) and targets.min() >= 0
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))


@pytest.mark.parametrize("name", ALL)
def test_training_end_to_end_gives_a_result(name):
    recipe = fast_recipe(name)
    model, result = train(recipe, **clean_splits())
    assert isinstance(result, RecipeResult) and isinstance(model, nn.Module)
    assert result.recipe == recipe.spec() and result.architecture == "reference"
    assert result.seed == 0 and result.epochs == 1
    assert result.best_epoch == (0 if recipe.selects_by else None)
    for accuracy in (result.test_acc, result.poisoned_val_acc, result.clean_val_acc):
        assert 0 <= accuracy <= 1
    assert result.test_acc_se == pytest.approx(math.sqrt(result.test_acc * (1 - result.test_acc) / 64))
    assert not model.training


# -- each recipe's own behaviour ---------------------------------------------------------


def test_jpeg_at_quality_10_changes_images_and_at_100_nearly_does_not():
    gray = random_split(16, 7, (1, 28, 28)).images
    assert (Jpeg(quality=10).prepare(gray) - gray).abs().mean() > 0.05
    assert (Jpeg(quality=100).prepare(gray) - gray).abs().max() <= 3 / 255
    ramp = torch.linspace(0, 1, 32)
    smooth = torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32), ramp.flip(0).expand(32, 32)])[None]
    assert (Jpeg(quality=100).prepare(smooth) - smooth).abs().max() <= 8 / 255  # colour is subsampled even at 100


def test_jpeg_is_deterministic_and_leaves_test_images_alone():
    images = random_split(4, 8, (3, 32, 32)).images
    torch.testing.assert_close(Jpeg(quality=30).prepare(images), Jpeg(quality=30).prepare(images), rtol=0, atol=0)
    assert Jpeg().test_view(images) is images


def test_binarise_gives_zeros_and_ones_on_both_sides_of_the_threshold_in_training_and_test():
    images = torch.tensor([0.0, 0.3, 0.4, 0.41, 0.7, 1.0]).reshape(1, 1, 2, 3)
    recipe = Binarise(threshold=0.4)
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).reshape(1, 1, 2, 3)
    assert torch.equal(recipe.prepare(images), expected) and torch.equal(recipe.test_view(images), expected)
    # A black background moved by at most ε below the threshold comes back black: the perturbation is gone.
    background = torch.zeros(4, 3, 8, 8)
    perturbed = background + torch.rand(background.shape, generator=torch.Generator().manual_seed(0)) * 0.3
    assert torch.equal(Binarise(threshold=0.4).prepare(perturbed), background)
    assert (recipe.key(), recipe.label()) == ("binarise-t04", "binarise at 0.4")


def test_grayscale_gives_equal_channels_and_is_the_identity_on_gray_images():
    colour = random_split(4, 9, (3, 32, 32)).images
    for view in (Grayscale().prepare(colour), Grayscale().test_view(colour)):
        for channel in range(3):
            torch.testing.assert_close(view[:, channel], colour.mean(dim=1))
    gray = random_split(4, 9, (1, 28, 28)).images
    assert torch.equal(Grayscale().prepare(gray), gray) and torch.equal(Grayscale().test_view(gray), gray)


@pytest.mark.parametrize(("recipe", "shape", "side"), [(Cutout(size=5), (1, 12, 12), 5), (Cutout(), (1, 28, 28), 8)])
def test_cutout_zeroes_one_square_of_the_right_side_per_image(recipe, shape, side):
    images = torch.ones(32, *shape)
    x, _ = recipe.batch(small_network(), images, torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(0))
    corners = set()
    for image in x[:, 0]:
        rows, cols = torch.nonzero(image == 0, as_tuple=True)
        assert len(rows) == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 1  # each image draws its own square
    assert recipe.side(32, 32) == (side if recipe.size else 9)


def test_cutout_larger_than_the_image_is_refused():
    with pytest.raises(ConfigError, match="does not fit"):
        Cutout(size=13).batch(small_network(), torch.ones(2, *SHAPE), torch.zeros(2, dtype=torch.long), None)


def test_mixup_mixes_images_and_labels_with_one_weight():
    images, labels = torch.rand(8, *SHAPE), torch.arange(8)  # one class per image: each row names its pair
    x, targets = mixup(images, labels, 8, alpha=1.0, generator=torch.Generator().manual_seed(3))
    weights = targets.diagonal()
    assert ((targets >= 0) & (targets <= 1)).all()
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    pairs = 0
    for i in range(8):
        others = [j for j in range(8) if j != i and targets[i, j] > 0]
        assert len(others) <= 1
        if others:
            pairs += 1
            weight, j = weights[i], others[0]
            torch.testing.assert_close(targets[i, j], 1 - weight)
            torch.testing.assert_close(x[i], weight * images[i] + (1 - weight) * images[j])
            torch.testing.assert_close(weight, weights[(weights < 1)][0])  # one λ for the batch
        else:
            torch.testing.assert_close(x[i], images[i])
    assert pairs > 0


def test_pgd_stays_within_epsilon_and_raises_the_loss():
    model = small_network().train()
    x, y = random_split(32, 10).images, random_split(32, 10).labels
    recipe = Adversarial(epsilon=0.1, steps=5)
    adversarial, targets = recipe.batch(model, x, y, torch.Generator().manual_seed(0))
    assert (adversarial - x).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1 and torch.equal(targets, y)
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), y) > F.cross_entropy(model(x), y)
    assert model.training and all(parameter.grad is None for parameter in model.parameters())
    assert recipe.step_size == pytest.approx(2.5 * 0.1 / 5)


def test_pgd_crafts_in_eval_mode_leaving_batch_norm_alone():
    model = small_network((3, 8, 8), "cifar-cnn").train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    x, y = random_split(8, 11, (3, 8, 8)).images, random_split(8, 11).labels
    Adversarial(epsilon=8 / 255, steps=2).batch(model, x, y, torch.Generator().manual_seed(0))
    assert model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def flipped_labels_case() -> tuple[Split, Split]:
    """Two easy classes to train on, and a val split whose labels are flipped: learning only lowers its accuracy."""
    generator = torch.Generator().manual_seed(12)
    labels = torch.randint(0, 2, (256,), generator=generator)
    images = (0.25 + 0.5 * labels.float())[:, None, None, None] + 0.1 * torch.rand(256, *SHAPE, generator=generator)
    return Split(images, labels), Split(images[:64], 1 - labels[:64])


def test_plain_keeps_the_last_epoch_and_early_stop_the_best():
    train_split, val = flipped_labels_case()
    one_epoch, one_result = train("plain", 1, train_split, val)
    plain, plain_result = train("plain", 3, train_split, val)
    early, early_result = train("early-stop", 3, train_split, val)
    assert plain_result.best_epoch is None and plain_result.epochs == 3
    assert early_result.best_epoch == 0
    assert early_result.poisoned_val_acc >= plain_result.poisoned_val_acc
    weights = [model.state_dict() for model in (one_epoch, plain, early)]
    assert all(torch.equal(weights[2][key], weights[0][key]) for key in weights[0])  # early stop: epoch 0's weights
    assert not all(torch.equal(weights[1][key], weights[0][key]) for key in weights[0])  # plain: not epoch 0's


def test_last_layer_retrains_only_the_final_linear_layer():
    plain, _ = train("plain")
    retrained, result = train(fast_recipe("last-layer"), clean_extra=random_split(128, 4))
    head = last_linear_name(retrained.net)
    assert head == "1.2"  # the reference server's last layer
    before, after = plain.state_dict(), retrained.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith(f"net.{head}."), key
    assert all(parameter.requires_grad for parameter in retrained.parameters())
    assert result.clean_val_acc is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jpeg:quality=0", "JPEG quality must be an integer from 1 to 100, got 0"),
        ("jpeg:quality=101", "JPEG quality must be an integer from 1 to 100, got 101"),
        ("jpeg:quality=ten", "quality must be int"),
        ("cutout:size=0", "cutout size must be an integer of at least 1, got 0"),
        ("mixup:alpha=-1", r"mixup alpha must be a number greater than 0, got -1"),
        ("mixup:alpha=0", r"mixup alpha must be a number greater than 0"),
        ("adversarial:epsilon=0", r"adversarial epsilon must be a number in \(0, 1\], got 0"),
        ("adversarial:steps=0", "adversarial steps must be an integer of at least 1"),
        ("binarise:threshold=0", r"binarise threshold must be a number in \(0, 1\], got 0"),
        ("binarise:threshold=1", r"binarise threshold must be a number in \(0, 1\), got 1"),
        ("last-layer:clean_size=0", "clean_size must be an integer of at least 1"),
        ("squeeze", "unknown recipe 'squeeze'; choose from adversarial, binarise, cutout, early-stop, grayscale, jpeg"),
        ("jpeg:level=3", "recipe 'jpeg' takes no parameter level"),
        ("plain:epochs=3", "recipe 'plain' takes no parameter epochs"),
        ("jpeg:quality", "malformed"),
    ],
)
def test_bad_specs_are_refused_with_a_useful_message(spec, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from(spec)


@pytest.mark.parametrize(
    ("recipe", "clean", "message"),
    [
        ("oracle-early-stop", {}, "pass a clean split as clean_val"),
        ("last-layer", {"clean_val": random_split(8, 3)}, "pass a clean split as clean_extra"),
        ("last-layer", {"clean_extra": random_split(8, 3)}, "retrains on 1000 clean images, but clean_extra holds 8"),
    ],
)
def test_a_missing_clean_split_is_refused_before_training(recipe, clean, message):
    with pytest.raises(ConfigError, match=message):
        train(recipe, **clean)


def test_zero_epochs_are_refused():
    with pytest.raises(ConfigError, match="number of epochs"):
        train("plain", epochs=0)


def test_recipes_that_train_plainly_share_one_run_and_give_what_separate_runs_give():
    recipes = ["plain", "early-stop", "oracle-early-stop", fast_recipe("last-layer")]
    assert all(trains_plainly(recipe) for recipe in recipes)
    assert not any(trains_plainly(name) for name in ("jpeg", "binarise", "cutout", "mixup", "adversarial"))
    train_split, val, test = random_split(256, 0), random_split(64, 1), random_split(64, 2)
    common = {"epochs": 3, "batch_size": 64, "progress": False, **clean_splits()}
    together = train_with_recipes(recipes, train_split, val, test, NUM_CLASSES, **common)
    for recipe, shared in zip(recipes, together, strict=True):
        _, alone = train_with_recipe(recipe, train_split, val, test, NUM_CLASSES, **common)
        assert shared == alone, recipe
    assert [result.best_epoch is None for result in together] == [True, False, False, True]


def test_sharing_a_run_refuses_a_recipe_that_changes_the_training():
    with pytest.raises(ConfigError, match=r"recipes jpeg\(quality=10\) change the training itself"):
        train_with_recipes(
            ["plain", "jpeg"], random_split(64, 0), random_split(16, 1), random_split(16, 2), NUM_CLASSES
        )
