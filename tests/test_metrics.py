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
    assert set(result.measure(truth)) == set(Reconstructions.metrics) - {"validator_acc"}
    validator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    measured = result.measure(truth, validator)
    assert set(measured) == set(Reconstructions.metrics)
    assert measured["validator_acc"].shape == (8,)
    assert Reconstructions.baseline == "label-only"
