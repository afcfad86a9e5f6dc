"""White-box inversion (the ``whitebox`` attack): MindArmour's loss, recovery through invertible clients, batching.

Real Fashion-MNIST images go through small clients whose inverse exists (the identity,
an orthogonal map, an injective 1×1 convolution), through heavy wire noise, and through
the reference split's client; the results are scored by the shared metrics and by
MindArmour's three.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpsnn.attacks import AttackTraining, Observation, Reconstructions, make_attack, observe
from dpsnn.attacks.whitebox import (
    WhiteBoxInversion,
    inversion_loss,
    mindarmour_scores,
    total_variation,
)
from dpsnn.data import Split, load_images
from dpsnn.errors import ConfigError, DataError
from dpsnn.evaluation import evaluate_attack
from dpsnn.metrics import per_image_ssim
from dpsnn.models import SplitNN, Validator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 28, 28)
#: The feature match alone: through an invertible client its minimum is the image itself.
MATCH_ONLY = {"tv_weight": 0.0, "norm_weight": 0.0}


@pytest.fixture(scope="module")
def fashion(data_root) -> Split:
    """Real Fashion-MNIST test images: the first 16 are attacked, the next 500 are the attacker's auxiliary data."""
    images, labels = load_images("fashion-mnist", train=False, root=data_root)
    return Split(images[:516], labels[:516])


@pytest.fixture(scope="module")
def attacked(fashion) -> Split:
    return Split(fashion.images[:16], fashion.labels[:16])


@pytest.fixture(scope="module")
def aux(fashion) -> Split:
    return Split(fashion.images[16:], fashion.labels[16:])


def orthogonal_linear(size: int, seed: int) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=generator))
    linear = nn.Linear(size, size, bias=False)
    linear.weight.data.copy_(q)
    return linear


def injective_conv(seed: int) -> nn.Conv2d:
    """A 1×1 convolution from 1 to 4 channels with non-zero weights: each pixel is recoverable from any channel."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 4, kernel_size=1)
    conv.weight.data = conv.weight.data.sign() * (conv.weight.data.abs() + 0.2)
    return conv


def split_net(client: nn.Module, defences: list[str] | None = None) -> SplitNN:
    """A split network on 1×28×28 images with ``client`` and a linear server."""
    features = client(torch.zeros(1, *SHAPE)).numel()
    server = nn.Sequential(nn.Flatten(), nn.Linear(features, 10))
    return SplitNN(client=client, server=server, input_shape=SHAPE, defences=defences or []).eval()


CLIENTS = {
    "identity": lambda: nn.Flatten(),
    "orthogonal": lambda: nn.Sequential(nn.Flatten(), orthogonal_linear(784, seed=0)),
    "conv1x1": lambda: injective_conv(seed=0),
}


def reconstruct(target: nn.Module, images: torch.Tensor, seed: int = 0, **params) -> torch.Tensor:
    observation = observe(target, images, seed=seed)
    result = make_attack("whitebox", params).fit(target, None, seed=seed).run(observation)
    assert isinstance(result, Reconstructions)
    return result.images


# -- the loss is MindArmour's ----------------------------------------------------------------


def test_total_variation_is_the_sum_of_mses_between_neighbouring_rows_and_columns():
    images = torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    for index, image in enumerate(images):
        expected = sum(F.mse_loss(image[:, i], image[:, i - 1]) for i in range(1, 5))
        expected += sum(F.mse_loss(image[:, :, j], image[:, :, j - 1]) for j in range(1, 7))
        assert total_variation(images)[index].item() == pytest.approx(expected.item(), rel=1e-6)
    assert total_variation(torch.full((1, 1, 4, 4), 0.3)).item() == 0.0


def test_the_loss_is_the_weighted_sum_of_relative_mse_total_variation_and_mean_square():
    images, targets = torch.rand(2, 1, 6, 6), torch.randn(2, 36)
    loss = inversion_loss(nn.Flatten(), images, targets, (2.0, 0.3, 5.0))
    for i in range(2):
        relative = F.mse_loss(images[i].flatten(), targets[i]) / targets[i].pow(2).mean()
        expected = 2.0 * relative + 0.3 * total_variation(images[i : i + 1])[0] + 5.0 * images[i].pow(2).mean()
        assert loss[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_through_the_identity_the_mean_square_term_shrinks_the_image_as_the_loss_predicts(attacked):
    # For x = a·t the loss is (1 − a)² + 5·a²·mean(t²), least at a = 1 / (1 + 5·mean(t²)), inside the box.
    images = attacked.images[:4]
    result = reconstruct(split_net(nn.Flatten()), images, tv_weight=0.0, norm_weight=5.0, steps=400)
    shrink = 1.0 / (1.0 + 5.0 * images.flatten(1).pow(2).mean(dim=1))
    expected = images * shrink.view(-1, 1, 1, 1)
    assert (result - expected).abs().max().item() < 0.02
    assert (result - images).abs().max().item() > 0.2  # really shrunk, not the image itself


# -- recovery --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_an_invertible_client_gives_its_input_back_almost_exactly(name, attacked):
    result = reconstruct(split_net(CLIENTS[name]()), attacked.images, steps=300, **MATCH_ONLY)
    ssim = per_image_ssim(result, attacked.images)
    assert ssim.mean().item() > 0.95 and ssim.min().item() > 0.9, ssim


def test_heavy_wire_noise_spoils_the_recovery(attacked):
    clean_target = split_net(nn.Flatten())
    noisy_target = split_net(nn.Flatten(), defences=["laplace:scale=1"])
    clean = per_image_ssim(reconstruct(clean_target, attacked.images, steps=300, **MATCH_ONLY), attacked.images)
    noisy = per_image_ssim(reconstruct(noisy_target, attacked.images, steps=300, **MATCH_ONLY), attacked.images)
    assert clean.mean().item() > 0.95
    assert noisy.mean().item() < 0.3
    assert (clean - noisy).min().item() > 0.4  # worse on every image


def test_the_attacker_does_not_get_the_noise_draws(attacked):
    target = split_net(nn.Flatten(), defences=["laplace:scale=1"])
    fitted = make_attack("whitebox").fit(target, None)
    assert len(fitted.client(attacked.images[:2]).shape) == 2
    assert torch.equal(fitted.client(attacked.images[:2]), attacked.images[:2].flatten(1))  # no wire in the copy
    assert not any(p.requires_grad for p in fitted.client.parameters()) and not fitted.client.training


def test_the_sign_optimizer_takes_signed_steps_and_recovers_the_input(attacked):
    target = split_net(nn.Flatten())
    one_step = reconstruct(target, attacked.images, steps=1, optimizer="sign", start="zeros", **MATCH_ONLY)
    # From black, one step of 0.01 against the gradient's sign: lit pixels rise by 0.01, the rest stay black.
    assert (one_step.eq(0) | one_step.sub(0.01).abs().lt(1e-7)).all()
    assert torch.equal(one_step > 0, attacked.images > 0)
    result = reconstruct(target, attacked.images, steps=150, optimizer="sign", **MATCH_ONLY)
    assert per_image_ssim(result, attacked.images).mean().item() > 0.95


# -- batching, seeds, the box ------------------------------------------------------------------


def test_batched_equals_one_at_a_time(attacked):
    target = split_net(injective_conv(seed=1))
    observation = observe(target, attacked.images)
    results = {}
    for batch_size in (1, 5, 16):
        attack = make_attack("whitebox", {"steps": 30, "batch_size": batch_size})
        results[batch_size] = attack.fit(target, None, seed=3).run(observation).images
    torch.testing.assert_close(results[5], results[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[16], results[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("optimizer", ["adam", "sign"])
def test_batched_equals_one_at_a_time_through_the_reference_client_in_float64(optimizer, attacked):
    # In float32 the convolutions' rounding differs between batch sizes, and Adam, which scales every pixel's
    # step to its own gradient, amplifies it on border pixels of near-zero gradient; in float64 it stays tiny.
    torch.manual_seed(0)
    target = SplitNN("reference", input_shape=SHAPE).double().eval()
    observation = observe(target, attacked.images[:6].double())
    results = [
        make_attack("whitebox", {"steps": 10, "batch_size": size, "optimizer": optimizer})
        .fit(target, None)
        .run(observation)
        for size in (1, 6)
    ]
    assert results[0].images.dtype == torch.float64
    torch.testing.assert_close(results[0].images, results[1].images, atol=1e-9, rtol=0)


def test_an_images_result_does_not_depend_on_the_others_in_its_batch(attacked):
    target = split_net(injective_conv(seed=1))
    attack = make_attack("whitebox", {"steps": 30, "start": "gray", "optimizer": "sign"})
    fitted = attack.fit(target, None)
    observation = observe(target, attacked.images)
    together = fitted.run(observation).images
    for index in (0, 7):
        alone = fitted.run(Observation(observation.seen[index : index + 1], observation.predicted[:1])).images
        torch.testing.assert_close(alone[0], together[index], atol=1e-5, rtol=0)


def test_results_are_deterministic_given_the_seed(attacked):
    target = split_net(injective_conv(seed=1))
    observation = observe(target, attacked.images[:4])
    attack = make_attack("whitebox", {"steps": 5})
    first, again = (attack.fit(target, None, seed=0).run(observation).images for _ in range(2))
    other = attack.fit(target, None, seed=1).run(observation).images
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_images_stay_in_the_box(attacked):
    # A target no image in [0, 1] reaches: the steps push pixels beyond both bounds.
    target = split_net(nn.Flatten())
    pushed = Observation(attacked.images.flatten(1) * 4 - 1.5, torch.zeros(16, dtype=torch.long))
    for optimizer in ("adam", "sign"):
        attack = make_attack("whitebox", {"steps": 50, "learning_rate": 0.2, "optimizer": optimizer, **MATCH_ONLY})
        images = attack.fit(target, None).run(pushed).images
        assert images.min().item() == 0.0 and images.max().item() == 1.0


def test_an_experiment_budget_caps_the_steps():
    target = split_net(nn.Flatten())
    assert make_attack("whitebox").fit(target, None).steps == 100
    assert make_attack("whitebox").fit(target, None, AttackTraining(max_steps=7)).steps == 7
    assert make_attack("whitebox", {"steps": 3}).fit(target, None, AttackTraining(max_steps=7)).steps == 3


# -- scores -----------------------------------------------------------------------------------


def test_the_result_is_scored_by_the_shared_metrics_beside_the_baseline(attacked, aux):
    target = split_net(nn.Flatten())
    fitted = make_attack("whitebox", {"steps": 300, **MATCH_ONLY}).fit(target, aux)
    validator = Validator(image_shape=SHAPE).eval()
    row = evaluate_attack(target, fitted, attacked, aux, validator=validator)
    assert row["attack_ssim"] > 0.95 and row["attack_psnr"] > 25
    assert row["gap_ssim"] == pytest.approx(row["attack_ssim"] - row["baseline_ssim"])
    assert row["gap_ssim"] > 0.4
    assert 0 <= row["attack_validator_acc"] <= 1


def test_mindarmour_scores_per_image(attacked):
    images, labels = attacked.images, attacked.labels
    classifier = Validator(image_shape=SHAPE).eval()
    perfect = mindarmour_scores(images, images, labels, classifier)
    assert set(perfect) == {"l2_ratio", "ssim", "confidence"}
    assert perfect["l2_ratio"].abs().max().item() == 0.0 and perfect["ssim"].min().item() == pytest.approx(1.0)
    black = mindarmour_scores(torch.zeros_like(images), images, labels)
    assert set(black) == {"l2_ratio", "ssim"}
    torch.testing.assert_close(black["l2_ratio"], torch.ones(16, dtype=torch.float64))
    half = mindarmour_scores(images / 2, images, labels, classifier)
    torch.testing.assert_close(half["l2_ratio"], torch.full((16,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(half["ssim"], per_image_ssim(images / 2, images))
    with torch.no_grad():
        expected = F.softmax(classifier(images / 2).double(), dim=1)[torch.arange(16), labels]
    torch.testing.assert_close(half["confidence"], expected)
    with pytest.raises(DataError):
        mindarmour_scores(images[:3], images, labels)


# -- the reference split -----------------------------------------------------------------------


def test_on_the_reference_client_the_attack_beats_the_label_only_baseline(attacked, aux):
    # Random weights: the 500-vector after tanh is not invertible, yet it keeps much of the image;
    # the label-only guess of an untrained server is the mean of an arbitrary class.
    torch.manual_seed(0)
    target = SplitNN("reference", input_shape=SHAPE).eval()
    images = attacked.images[:6]
    test = Split(images, attacked.labels[:6])
    observation = observe(target, images)
    attack = make_attack("whitebox", {"steps": 150, "tv_weight": 0.01, "norm_weight": 0.1})
    result = attack.fit(target, aux).run(observation).images
    baseline = make_attack("label-only").fit(target, aux).run(observation).images
    ssim, baseline_ssim = per_image_ssim(result, images), per_image_ssim(baseline, images)
    assert ssim.mean().item() > baseline_ssim.mean().item() + 0.2
    assert (ssim > baseline_ssim).all()
    assert mindarmour_scores(result, test.images, test.labels)["l2_ratio"].mean().item() < 0.7


# -- bad input --------------------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_a_target_without_client_weights_is_a_config_error():
    for target in (nn.Linear(3, 3), object()):
        with pytest.raises(ConfigError) as error:
            make_attack("whitebox").fit(target, None)
        assert "client" in one_line(error)


@pytest.mark.parametrize(
    "params,words",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -5}, "steps"),
        ({"steps": "0"}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"start": "noise"}, "start"),
        ({"tv_weight": -1.0}, "tv_weight"),
        ({"mse_weight": 0.0}, "mse_weight"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, words):
    with pytest.raises(ConfigError) as error:
        make_attack("whitebox", params)
    assert words in one_line(error)


def test_an_observation_of_another_client_is_a_data_error():
    fitted = make_attack("whitebox").fit(split_net(nn.Flatten()), None)
    with pytest.raises(DataError) as error:
        fitted.run(Observation(torch.zeros(2, 500), torch.zeros(2, dtype=torch.long)))
    assert "client" in one_line(error)


def test_keys_name_the_parameters_that_differ_from_the_defaults():
    assert WhiteBoxInversion().key() == "whitebox"
    assert WhiteBoxInversion(optimizer="sign", learning_rate=0.05).key() == "whitebox-learningrate005-optimizersign"
    assert make_attack("whitebox").spec().startswith("whitebox(steps=100,")
