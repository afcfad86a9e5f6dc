"""The variational information bottleneck on the wire (dpsnn.defences.vib)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dpsnn.checkpoints import load_classifier, save_checkpoint
from dpsnn.defences import make_defence, parse_defence, validate
from dpsnn.defences.vib import GaussianBottleneck
from dpsnn.errors import ConfigError
from dpsnn.models import SplitNN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kl_term_is_the_closed_form_kl_to_the_standard_normal():
    wire = GaussianBottleneck(beta=0.5, init_sigma=0.7)
    wire.build((6,))
    with torch.no_grad():
        wire.log_sigma.copy_(torch.linspace(-1, 0.5, 6))
    h = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    wire.train()
    wire(h)
    expected = kl_divergence(Normal(h, wire.log_sigma.exp()), Normal(0.0, 1.0)).sum(dim=1).mean()
    (term,) = wire.loss_terms().values()
    assert term.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert wire.loss_terms() == {}  # read once


def test_the_wire_samples_around_h_with_its_sigma_in_training_and_at_inference():
    wire = GaussianBottleneck(beta=1.0, init_sigma=0.5)
    wire.build((2000,))
    h = torch.full((3, 2000), 0.25)
    for mode in (wire.train, wire.eval):
        mode()
        torch.manual_seed(0)
        z = wire(h)
        assert (z - h).mean().abs() < 0.03 and (z - h).std().item() == pytest.approx(0.5, rel=0.03)
    assert wire.loss_terms() == {}  # no KL from a forward pass in eval mode


def test_a_split_network_builds_sigma_for_its_intermediate_and_trains_it():
    torch.manual_seed(0)
    model = SplitNN(defences=["vib:beta=0.01"])
    (wire,) = model.wire
    assert wire.log_sigma.shape == (500,) and any(p is wire.log_sigma for p in model.parameters())
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    model.train()
    measured = model._step((x, y))
    assert measured["vib_kl"].item() > 0
    assert measured["loss"].item() == pytest.approx(
        measured["cross_entropy"].item() + measured["vib_kl"].item(), rel=1e-5
    )
    before = wire.log_sigma.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    measured["loss"].backward()
    optimizer.step()
    assert not torch.equal(before, wire.log_sigma.detach())


def test_a_feature_map_intermediate_gets_one_sigma_per_element():
    model = SplitNN("cifar-cnn", defences=["vib:beta=0.001"], input_shape=(3, 32, 32))
    (wire,) = model.wire
    assert wire.log_sigma.shape == (64, 16, 16)


def test_the_learned_sigma_is_kept_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SplitNN(defences=["vib:beta=0.01"])
    with torch.no_grad():
        model.wire[0].log_sigma.uniform_(-2, 0)
    path = tmp_path / "vib.ckpt"
    save_checkpoint(model, path, "classifier", 1)
    loaded = load_classifier(path)
    torch.testing.assert_close(loaded.wire[0].log_sigma, model.wire[0].log_sigma)


def test_beta_zero_is_off_and_dp_is_refused_beside_it():
    assert make_defence("vib", {"beta": 0.0}).wire() is None
    problems = validate([parse_defence("vib:beta=0.01"), parse_defence("dp:epsilon=4")])
    assert problems and "cannot be trained together with 'dp'" in str(problems[0])


@pytest.mark.parametrize(
    ("params", "expect"),
    [({"beta": -1}, "vib beta must be a non-negative number"), ({"init_sigma": 0}, "init_sigma must be positive")],
)
def test_bad_parameters_are_config_errors(params, expect):
    with pytest.raises(ConfigError, match=expect):
        make_defence("vib", params)


def test_an_unbuilt_or_mismatched_wire_is_a_clear_error():
    wire = GaussianBottleneck(beta=1.0)
    with pytest.raises(ConfigError, match="no σ yet"):
        wire(torch.zeros(2, 4))
    wire.build((4,))
    with pytest.raises(ConfigError, match=r"built for intermediates of shape \(4,\), got \(5,\)"):
        wire(torch.zeros(2, 5))


def test_keys_and_labels():
    assert parse_defence("vib:beta=0.001").key() == "vib0001"
    assert parse_defence("vib:beta=1e-05").key() == "vib1em05"
    assert parse_defence("vib:beta=0.01,init_sigma=0.5").key() == "vib001-s05"
    assert parse_defence("vib:beta=0.01,init_sigma=0.5").label() == "VIB β 0.01 (σ₀ 0.5)"
    assert math.isclose(parse_defence("vib:beta=0.01").beta, 0.01)


def test_shadow_training_adds_the_kl_as_the_split_networks_step_does():
    from dpsnn.shadows import _loss

    torch.manual_seed(0)
    model = SplitNN(defences=["vib:beta=0.01", "nopeek:weight=0.5"]).train()
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    torch.manual_seed(1)
    expected = model._step((x, y))["loss"]
    torch.manual_seed(1)
    assert _loss(model, x, y).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("strategy", ["together", "one-by-one"])
def test_shadows_with_a_vib_wire_learn_their_own_sigma(strategy):
    from dpsnn.shadows import ShadowRecipe, member_masks, train_shadows

    shape = (1, 12, 12)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(48, *shape, generator=generator), torch.randint(0, 10, (48,), generator=generator)
    make = lambda: SplitNN("reference", defences=["vib:beta=0.1"], input_shape=shape)  # noqa: E731
    masks = member_masks(48, 2, seed=0)
    shadows = train_shadows(make, images, labels, masks, ShadowRecipe(epochs=2, batch_size=8), strategy=strategy)
    sigma = shadows.params["wire.0.log_sigma"]
    assert sigma.shape == (2, 500) and sigma.abs().max() > 0  # σ started at 1 (log σ = 0) and moved
    assert not torch.equal(sigma[0], sigma[1])
