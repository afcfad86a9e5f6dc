"""NTGA: the GP's closed-form prediction, its hand-written gradient, and the attack on a block and a training set."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dpsnn.errors import ConfigError, DataError
from dpsnn.unlearnable import ntga as ntga_module
from dpsnn.unlearnable.ntga import (
    NTGA,
    NotPositiveDefinite,
    attack_block,
    cross_kernel_function,
    gp_mean_prediction,
    trained_kernel_function,
)
from dpsnn.unlearnable.ntk import FullyConnectedKernel
from dpsnn.unlearnable.poisons import PoisonJob, poison_with_ntga, to_bytes_within

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kernel_matrix(count: int = 30, seed: int = 0) -> torch.Tensor:
    x = torch.rand(count, 50, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = FullyConnectedKernel()(x).ntk
    return k + 1e-4 * k.diagonal().mean() * torch.eye(count, dtype=k.dtype)


def reference_function(k: torch.Tensor, scale: float) -> torch.Tensor:
    """Θ⁻¹(I − e^{−Θs}) by matrix_exp and a solve, both differentiated by autograd: the oracle."""
    identity = torch.eye(len(k), dtype=k.dtype)
    return torch.linalg.solve(k, identity - torch.linalg.matrix_exp(-scale * k))


@pytest.mark.parametrize("scale", [1e-3, 0.05, 1.0, 30.0])
def test_trained_kernel_function_and_its_gradient_match_matrix_exp(scale):
    k = kernel_matrix()
    weights = torch.randn(len(k), len(k), generator=torch.Generator().manual_seed(1), dtype=k.dtype)
    ours = k.clone().requires_grad_(True)
    theirs = k.clone().requires_grad_(True)
    value, reference = trained_kernel_function(ours, scale), reference_function(theirs, scale)
    (gradient,) = torch.autograd.grad((value * weights).sum(), ours)
    (expected,) = torch.autograd.grad((reference * weights).sum(), theirs)
    expected = (expected + expected.T) / 2  # the kernel is symmetric: only the symmetric part is defined
    torch.testing.assert_close(value, reference, rtol=1e-8, atol=1e-10 * reference.abs().max().item())
    torch.testing.assert_close(gradient, expected, rtol=1e-6, atol=1e-8 * expected.abs().max().item())


def test_gradient_is_finite_and_right_at_repeated_eigenvalues():
    # Eigenvalues 1, 1, 1, 2, 2, 5: autograd through eigh divides by their zero gaps here.
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    k = basis @ torch.diag(torch.tensor([1.0, 1, 1, 2, 2, 5], dtype=torch.float64)) @ basis.T
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours, theirs = k.clone().requires_grad_(True), k.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad((trained_kernel_function(ours, 0.7) * weights).sum(), ours)
    (expected,) = torch.autograd.grad((reference_function(theirs, 0.7) * weights).sum(), theirs)
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(gradient, (expected + expected.T) / 2, rtol=1e-7, atol=1e-9)


def test_a_kernel_that_is_not_positive_definite_names_the_regulariser():
    k = torch.diag(torch.tensor([1.0, 0.5, -1e-3], dtype=torch.float64))
    with pytest.raises(NotPositiveDefinite, match="diagonal regulariser"):
        trained_kernel_function(k, 1.0)


def test_gp_prediction_has_neural_tangents_time_units():
    """Small t: f ≈ t/(n k) Θ_tn Y (one Euler step of the MSE flow); large t: kernel regression Θ_tn Θ_nn⁻¹ Y."""
    generator = torch.Generator().manual_seed(4)
    block, target = torch.rand(20, 1, 6, 6, generator=generator), torch.rand(7, 1, 6, 6, generator=generator)
    y = F.one_hot(torch.arange(20) % 4, 4).double()
    early = NTGA(time=1e-4, diag_reg=0.0, precision="float64")
    theta_tn = early.kernel(target, block).ntk
    first_order = (1e-4 / y.numel()) * theta_tn @ y
    torch.testing.assert_close(gp_mean_prediction(early, block, y, target), first_order, rtol=1e-4, atol=0)
    late = NTGA(time=1e9, diag_reg=1e-4, precision="float64")
    theta_nn = late.kernel(block).ntk
    theta_nn = theta_nn + 1e-4 * theta_nn.diagonal().mean() * torch.eye(20, dtype=theta_nn.dtype)
    regression = theta_tn @ torch.linalg.solve(theta_nn, y)
    torch.testing.assert_close(gp_mean_prediction(late, block, y, target), regression, rtol=1e-6, atol=1e-8)


def clustered(count: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``classes`` well-separated prototypes plus noise: a GP learns them from a few dozen."""
    generator = torch.Generator().manual_seed(100)
    prototypes = torch.rand(classes, 1, 8, 8, generator=generator)
    generator.manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    images = (prototypes[labels] + 0.15 * torch.randn(count, 1, 8, 8, generator=generator)).clamp(0, 1)
    return images, labels


def target_loss(attack: NTGA, block, labels, target, target_labels) -> float:
    with torch.no_grad():
        logits = gp_mean_prediction(attack, block.double(), F.one_hot(labels, 4).double(), target)
    return F.cross_entropy(logits, target_labels).item()


def test_attack_stays_in_budget_and_raises_the_gp_loss_more_than_random_noise():
    attack = NTGA(epsilon=0.1, iterations=5, time=1e4, target_size=64)
    images, labels = clustered(48, seed=1)
    target, target_labels = clustered(64, seed=2)
    poisoned = attack_block(attack, images, labels, target, target_labels, num_classes=4)
    assert poisoned.shape == images.shape and poisoned.dtype == images.dtype
    assert (poisoned - images).abs().max() <= 0.1 + 1e-6
    assert poisoned.min() >= 0 and poisoned.max() <= 1
    noise = torch.empty_like(images).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(5))
    randomised = (images + noise).clamp(0, 1)
    clean_loss = target_loss(attack, images, labels, target, target_labels)
    random_loss = target_loss(attack, randomised, labels, target, target_labels)
    attacked_loss = target_loss(attack, poisoned, labels, target, target_labels)
    assert attacked_loss > 1.1 * clean_loss, (clean_loss, random_loss, attacked_loss)
    assert attacked_loss - clean_loss > 10 * abs(random_loss - clean_loss)


def test_default_step_is_the_published_one_and_settings_are_checked():
    assert NTGA(epsilon=0.3, iterations=10).step == pytest.approx(0.033)
    assert NTGA(step_size=0.01).step == 0.01


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"iterations": 0}, "iterations"),
        ({"step_size": 0}, "step size"),
        ({"time": 0}, "training time"),
        ({"time": math.inf}, "training time"),
        ({"block_size": 1}, "block size"),
        ({"target_size": 0}, "target size"),
        ({"diag_reg": -1}, "regulariser"),
        ({"precision": "float16"}, "precision"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        NTGA(**settings)


def test_misaligned_blocks_are_data_errors():
    attack = NTGA(iterations=1)
    images, labels = clustered(8, seed=1)
    with pytest.raises(DataError, match="aligned"):
        attack_block(attack, images, labels[:5], images, labels, num_classes=4)
    with pytest.raises(DataError, match="labels must lie"):
        attack_block(attack, images, labels + 4, images, labels, num_classes=4)


def test_a_failing_compiler_falls_back_to_the_eager_kernel(monkeypatch):
    def broken_compile(function, **_):
        def fail(*args):
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(ntga_module.torch, "compile", broken_compile)
    attack = NTGA(precision="float64")
    images, _ = clustered(6, seed=1)
    target, _ = clustered(5, seed=2)
    kernel = cross_kernel_function(attack, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        value = kernel(target, images)
    torch.testing.assert_close(value, attack.kernel(target, images).ntk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(kernel(target, images), value)  # eager from now on, no second warning


@pytest.mark.slow
def test_the_compiled_kernel_and_its_gradient_equal_the_eager_ones():
    attack = NTGA()
    images, _ = clustered(16, seed=1)
    target, _ = clustered(32, seed=2)
    results = []
    for compile_kernel in (False, True):
        block = images.double().requires_grad_(True)
        value = cross_kernel_function(attack, compile=compile_kernel)(target, block)
        (gradient,) = torch.autograd.grad(value.sum(), block)
        results.append((value, gradient))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


# --- a whole training set, block by block ------------------------------------------------------------

SMALL = NTGA(epsilon=0.2, iterations=2, block_size=10, target_size=16)


def test_every_image_is_attacked_once_within_budget(tmp_path):
    images, labels = clustered(45, seed=3)
    job = PoisonJob(epsilon=0.2, num_classes=4, seed=0, progress=False)
    poisoned = poison_with_ntga(SMALL, images, labels, job, compile_kernel=False)
    changed = (poisoned - images).abs().flatten(1).amax(1)
    assert (changed > 0.05).all(), "an image was left out of every block"
    assert changed.max() <= 0.2 + 1e-6


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    images, labels = clustered(45, seed=3)
    job = PoisonJob(epsilon=0.2, num_classes=4, seed=0, progress=False, state_dir=tmp_path / "state")
    straight = poison_with_ntga(SMALL, images, labels, PoisonJob(0.2, 4, 0, False), compile_kernel=False)
    calls = {"count": 0}
    real = ntga_module.attack_block

    def stop_after_two(*args, **kwargs):
        if calls["count"] == 2:
            raise KeyboardInterrupt
        calls["count"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr("dpsnn.unlearnable.poisons.attack_block", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        poison_with_ntga(SMALL, images, labels, job, compile_kernel=False)
    assert len(list((tmp_path / "state").glob("block-*.safetensors"))) == 2
    monkeypatch.setattr("dpsnn.unlearnable.poisons.attack_block", real)
    resumed = poison_with_ntga(SMALL, images, labels, job, compile_kernel=False)
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)


def test_the_state_of_another_run_is_refused(tmp_path):
    images, labels = clustered(30, seed=3)
    job = PoisonJob(epsilon=0.2, num_classes=4, seed=0, progress=False, state_dir=tmp_path / "state")
    poison_with_ntga(SMALL, images, labels, job, compile_kernel=False)
    other = NTGA(epsilon=0.2, iterations=3, block_size=10, target_size=16)
    with pytest.raises(ConfigError, match="another poisoning run"):
        poison_with_ntga(other, images, labels, job, compile_kernel=False)


@pytest.mark.parametrize(("settings", "message"), [({"block_size": 50}, "block size 50"), ({"target_size": 99}, "99")])
def test_blocks_and_targets_larger_than_the_set_are_refused(settings, message, tmp_path):
    images, labels = clustered(30, seed=3)
    attack = NTGA(**{"iterations": 1, "block_size": 10, "target_size": 10, **settings})
    job = PoisonJob(epsilon=0.3, num_classes=4, progress=False, state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match=message):
        poison_with_ntga(attack, images, labels, job, compile_kernel=False)
    assert not (tmp_path / "state").exists()


def test_bytes_never_move_a_pixel_further_than_epsilon():
    clean = torch.randint(0, 256, (500,)).float() / 255
    poisoned = (clean + torch.empty(500).uniform_(-0.5, 0.5)).clamp(0, 1)
    stored = to_bytes_within(poisoned, clean, 0.3)
    assert stored.dtype == torch.uint8
    assert (stored.float() / 255 - clean).abs().max() <= 0.3 + 1e-7
    inside = (poisoned - clean).abs() <= 0.29
    assert ((stored.float() / 255 - poisoned)[inside].abs() <= 0.5 / 255 + 1e-7).all()
