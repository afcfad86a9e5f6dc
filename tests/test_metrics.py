import math

import pytest
import torch

from dpsnn import LabelOnlyBaseline, SplitNN
from dpsnn.attacks import Observation, Reconstructions, make_attack
from dpsnn.data import Split
from dpsnn.errors import DataError
from dpsnn.metrics import (
    mean_and_se,
    per_batch_dcor,
    per_image_correct,
    per_image_mse,
    per_image_psnr,
    per_image_ssim,
    reconstruction_metrics,
    summarise,
)


def test_mean_and_standard_error():
    mean, se = mean_and_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert se == pytest.approx(torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item() / 2)
    assert math.isnan(mean_and_se(torch.tensor([5.0]))[1])
    assert all(math.isnan(v) for v in mean_and_se(torch.tensor([])))


def test_mse_and_psnr_per_image():
    originals = torch.zeros(2, 1, 28, 28)
    reconstructions = torch.stack([torch.full((1, 28, 28), 0.1), torch.zeros(1, 28, 28)])
    assert torch.allclose(per_image_mse(reconstructions, originals), torch.tensor([0.01, 0.0]))
    psnr = per_image_psnr(reconstructions, originals)
    assert psnr[0].item() == pytest.approx(20.0)
    assert psnr[1].item() == pytest.approx(100.0)  # a perfect copy is capped, not infinite


def _skimage_ssim(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """The oracle: scikit-image's SSIM with Wang et al.'s settings, one image at a time, in float64."""
    from skimage.metrics import structural_similarity

    values = [
        structural_similarity(
            x.permute(1, 2, 0).double().numpy(),
            y.permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        for x, y in zip(reconstructions, originals, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture(scope="module")
def fashion_images(data_root) -> torch.Tensor:
    from dpsnn.data import load_images

    images, _ = load_images("fashion-mnist", train=False, root=data_root)
    return images[:64]


def _reconstruction_like(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Blurred, noisy and shifted copies of ``images``, as an imperfect decoder returns them."""
    g = torch.Generator().manual_seed(seed)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    shifted = torch.roll(blurred, shifts=(1, -1), dims=(2, 3))
    return (shifted + 0.15 * torch.randn(images.shape, generator=g)).clamp(0, 1)


def test_ssim_equals_scikit_image_on_real_images_and_reconstructions(fashion_images):
    reconstructions = _reconstruction_like(fashion_images, seed=0)
    others = fashion_images.flip(0)  # unrelated real images: SSIM near 0, sometimes negative
    for x, y in ((reconstructions, fashion_images), (others, fashion_images), (fashion_images, fashion_images)):
        ours = per_image_ssim(x, y).double()
        assert (ours - _skimage_ssim(x, y)).abs().max() < 1e-4
    assert per_image_ssim(others, fashion_images).min() < 0.3  # the check spans a real range of values


def test_ssim_equals_scikit_image_on_colour_images():
    g = torch.Generator().manual_seed(2)
    images = torch.nn.functional.avg_pool2d(torch.rand(6, 3, 36, 36, generator=g), 5, stride=1)  # 32×32, smooth
    reconstructions = _reconstruction_like(images, seed=3)
    ours = per_image_ssim(reconstructions, images).double()
    assert (ours - _skimage_ssim(reconstructions, images)).abs().max() < 1e-4


def test_ssim_sees_the_border_only_through_windows_inside_the_image():
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 1, 28, 28, generator=g)
    changed = images.clone()
    changed[..., :, :1] = 1 - changed[..., :, :1]  # only the outermost column differs
    # The 11×11 window centred 5 pixels in still covers column 0, so SSIM falls a little; it is not reflected twice.
    assert (per_image_ssim(changed, images) < 1).all()
    assert torch.allclose(per_image_ssim(changed, images).double(), _skimage_ssim(changed, images), atol=1e-4)


def test_ssim_is_differentiable_and_refuses_small_or_mismatched_images():
    g = torch.Generator().manual_seed(5)
    originals = torch.rand(2, 1, 28, 28, generator=g)
    guess = torch.full_like(originals, 0.5, requires_grad=True)
    per_image_ssim(guess, originals).sum().backward()
    assert guess.grad is not None and guess.grad.abs().sum() > 0
    with pytest.raises(DataError, match="11 pixels"):
        per_image_ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(DataError, match="one shape"):
        per_image_ssim(torch.rand(1, 1, 28, 28), torch.rand(1, 1, 27, 28))


def test_ssim_per_image():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 28, 28, generator=g)
    assert torch.allclose(per_image_ssim(images, images), torch.ones(3))
    noisy = (images + 0.3 * torch.randn(3, 1, 28, 28, generator=g)).clamp(0, 1)
    assert (per_image_ssim(noisy, images) < 0.9).all()


def test_dcor_is_measured_per_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 10, generator=g)
    values = per_batch_dcor(x, x**2, batch_size=256)
    assert values.shape == (2,)  # 256, 256; the last 88 are under half a batch and dropped
    assert (values > 0.9).all()
    assert per_batch_dcor(x[:100], x[:100], batch_size=256).numel() == 0


def test_validator_correctness():
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        classifier[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0]]).view(3, 1, 2, 2)
    assert torch.equal(per_image_correct(classifier, images, torch.tensor([0, 1, 1])), torch.tensor([1.0, 1.0, 0.0]))


def test_reconstruction_metrics_and_summary_keys():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(300, 1, 28, 28, generator=g)
    measured = reconstruction_metrics(images * 0.9, images, torch.zeros(300, dtype=torch.long))
    row = summarise("attack_", measured)
    for name in ("mse", "psnr", "ssim", "dcor"):
        assert f"attack_{name}" in row and f"attack_{name}_se" in row
    assert row["attack_dcor"] == pytest.approx(1.0, abs=1e-6)  # a scaled copy is fully dependent


def test_label_only_baseline_is_the_class_mean():
    images = torch.tensor([[0.0], [1.0], [0.5], [0.2]]).view(4, 1, 1, 1)
    labels = torch.tensor([0, 0, 1, 1])
    baseline = LabelOnlyBaseline.fit(images, labels, num_classes=3)
    guesses = baseline(torch.tensor([1, 0, 2]))
    assert torch.allclose(guesses.flatten(), torch.tensor([0.35, 0.5, 0.425]))  # class 2 unseen: overall mean


def test_label_only_baseline_needs_images():
    with pytest.raises(DataError, match="empty"):
        LabelOnlyBaseline.fit(torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.long), 10)


def test_the_label_only_attack_guesses_the_class_mean_of_the_label_the_server_predicts():
    images = torch.tensor([[0.0], [1.0], [0.5], [0.2]]).view(4, 1, 1, 1).expand(4, 1, 6, 6)
    aux = Split(images, torch.tensor([0, 0, 1, 1]))
    target = SplitNN(num_classes=3, input_shape=(1, 6, 6))
    fitted = make_attack("label-only").fit(target, aux)
    observation = Observation(seen=torch.zeros(3, 500), predicted=torch.tensor([1, 0, 2]))
    result = fitted.run(observation)
    assert isinstance(result, Reconstructions) and result.images.shape == (3, 1, 6, 6)
    assert torch.allclose(result.images[:, 0, 0, 0], torch.tensor([0.35, 0.5, 0.425]))


def test_reconstructions_name_the_metrics_they_measure():
    g = torch.Generator().manual_seed(2)
    truth = Split(torch.rand(8, 1, 28, 28, generator=g), torch.arange(8) % 10)
    result = Reconstructions(truth.images * 0.5)
    assert set(result.measure(truth)) == set(Reconstructions.metrics) - {"validator_acc", "validator_confidence"}
    validator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    measured = result.measure(truth, validator)
    assert set(measured) == set(Reconstructions.metrics)
    assert measured["validator_acc"].shape == measured["validator_confidence"].shape == (8,)
    # MindArmour's L2 distance ratio: half of every pixel is off by half of it.
    torch.testing.assert_close(measured["l2_ratio"], torch.full((8,), 0.5, dtype=torch.float64))
    # The Validator's confidence is the softmax probability of the true label, and it is right where that is largest.
    probabilities = validator(result.images).softmax(dim=1)
    expected = probabilities[torch.arange(8), truth.labels].double()
    torch.testing.assert_close(measured["validator_confidence"], expected, rtol=1e-6, atol=1e-7)
    argmax_right = (probabilities.argmax(dim=1) == truth.labels).float()
    torch.testing.assert_close(measured["validator_acc"], argmax_right)
    assert Reconstructions.baseline == "label-only"
