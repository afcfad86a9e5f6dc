import dcor
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpsnn import NoPeekLoss, distance_correlation
from dpsnn.defences import NoPeek, nopeek, parse_defence
from dpsnn.errors import ConfigError


def reference(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(dcor.distance_correlation(x.reshape(len(x), -1).numpy(), y.reshape(len(y), -1).numpy()))


@pytest.mark.parametrize(
    "make_y",
    [
        pytest.param(lambda x, g: x**2, id="square"),  # non-linear, Pearson-blind for symmetric x
        pytest.param(lambda x, g: torch.randn(len(x), 5, generator=g, dtype=torch.float64), id="independent"),
        pytest.param(lambda x, g: torch.tanh(x @ torch.randn(x.shape[1], 9, generator=g, dtype=x.dtype)), id="tanh"),
        pytest.param(lambda x, g: 3.0 * x + 1e6, id="affine-far-from-origin"),
        pytest.param(lambda x, g: torch.cos(4 * x[:, :1]), id="one-dimensional"),
    ],
)
@pytest.mark.parametrize("n,d", [(2, 1), (17, 1), (64, 6), (200, 3)])
def test_matches_dcor_in_float64(make_y, n, d):
    g = torch.Generator().manual_seed(n * 31 + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = make_y(x, g)
    assert abs(distance_correlation(x, y).item() - reference(x, y)) < 1e-6


def test_detects_non_linear_dependence_that_pearson_misses():
    x = torch.linspace(-1, 1, 201, dtype=torch.float64).unsqueeze(1)
    y = x**2
    pearson = np.corrcoef(x.squeeze().numpy(), y.squeeze().numpy())[0, 1]
    assert abs(pearson) < 1e-8
    assert distance_correlation(x, y).item() > 0.4
    assert abs(distance_correlation(x, y).item() - reference(x, y)) < 1e-6


def test_images_and_vectors_are_flattened_per_sample():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 28, 28, generator=g, dtype=torch.float64)
    codes = torch.tanh(images.flatten(1) @ torch.randn(784, 500, generator=g, dtype=torch.float64) / 28)
    assert abs(distance_correlation(images, codes).item() - reference(images, codes)) < 1e-6


def test_identical_samples_give_zero_with_finite_gradient():
    x = torch.full((16, 1, 28, 28), 0.3, requires_grad=True)
    y = torch.randn(16, 500, requires_grad=True)
    value = distance_correlation(x, y)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_duplicated_samples_keep_gradients_finite():
    x = torch.rand(8, 784)
    x = torch.cat([x, x]).requires_grad_()
    y = torch.rand(16, 500)
    distance_correlation(x, y).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() < 1.0


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(distance_correlation, (x, y))


def test_range_and_symmetry():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 3, generator=g), torch.randn(50, 7, generator=g)
    value = distance_correlation(x, y)
    assert 0.0 <= value.item() <= 1.0
    assert torch.isclose(value, distance_correlation(y, x))
    assert torch.isclose(distance_correlation(x, x), torch.tensor(1.0))


def test_mismatched_batch_sizes_are_refused():
    with pytest.raises(ValueError, match="same number of samples"):
        distance_correlation(torch.rand(4, 2), torch.rand(5, 2))


def test_nopeek_loss_is_cross_entropy_plus_weighted_dcor():
    g = torch.Generator().manual_seed(2)
    inputs, intermediates = torch.rand(32, 1, 28, 28, generator=g), torch.rand(32, 500, generator=g)
    logits, targets = torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    expected = F.cross_entropy(logits, targets) + 0.7 * distance_correlation(inputs, intermediates)
    assert torch.isclose(NoPeekLoss(0.7)(inputs, intermediates, logits, targets), expected)


def test_nopeek_loss_uses_raw_logits():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    targets = torch.tensor([0, 1])
    loss = NoPeekLoss(0.0)(torch.rand(2, 3), torch.rand(2, 3), logits, targets)
    assert torch.isclose(loss, -torch.log_softmax(logits, dim=1)[0, 0])


def test_weight_zero_skips_distance_correlation(monkeypatch):
    def refuse(*args):
        raise AssertionError("distance correlation computed at weight 0")

    monkeypatch.setattr(nopeek, "distance_correlation", refuse)
    terms = NoPeekLoss(0.0).terms(torch.rand(4, 3), torch.rand(4, 2), torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))
    assert terms["dcor"] is None
    assert torch.equal(terms["loss"], terms["cross_entropy"])


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), "heavy"])
def test_bad_weights_are_refused(weight):
    with pytest.raises(ConfigError, match="NoPeek weight"):
        NoPeekLoss(weight)


def test_the_nopeek_spec_adds_the_weighted_distance_correlation_to_the_loss():
    g = torch.Generator().manual_seed(4)
    inputs, intermediates = torch.rand(32, 1, 28, 28, generator=g), torch.rand(32, 500, generator=g)
    logits, targets = torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    terms = NoPeek(weight=0.7).loss_terms(inputs, intermediates, logits, targets)
    assert set(terms) == {"nopeek"}
    assert torch.isclose(terms["nopeek"], 0.7 * distance_correlation(inputs, intermediates))
    # The same loss as the reference's NoPeekLoss, once the cross-entropy is added.
    assert torch.isclose(
        F.cross_entropy(logits, targets) + terms["nopeek"], NoPeekLoss(0.7)(inputs, intermediates, logits, targets)
    )


def test_the_nopeek_spec_at_weight_zero_adds_nothing_and_computes_nothing(monkeypatch):
    def refuse(*args):
        raise AssertionError("distance correlation computed at weight 0")

    monkeypatch.setattr(nopeek, "distance_correlation", refuse)
    assert NoPeek(weight=0.0).loss_terms(torch.rand(4, 3), torch.rand(4, 2), torch.randn(4, 10), torch.arange(4)) == {}
    assert NoPeek(weight=0.0).is_identity()


def test_the_nopeek_spec_names_itself_and_couples_samples():
    spec = NoPeek(weight=0.1)
    assert spec.key() == "01nopeek" and NoPeek(weight=0.0).key() == "0nopeek"
    assert spec.label() == "NoPeek 0.1" and spec.spec() == "nopeek(weight=0.1)"
    assert spec.wire() is None  # it acts in training only
    assert spec.couples_samples and not spec.per_sample  # dCor is a statistic of the whole batch
    assert parse_defence("nopeek:weight=0.1") == spec


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), "heavy"])
def test_the_nopeek_spec_refuses_bad_weights(weight):
    with pytest.raises(ConfigError, match="NoPeek weight"):
        NoPeek(weight=weight)
