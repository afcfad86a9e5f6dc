"""Reconstruction and privacy metrics, each reported with its standard error.

Per-image metrics (MSE, PSNR, SSIM, Validator correctness) return one value per image;
distance correlation is a property of a batch and returns one value per batch. All
images are in ``[0, 1]`` pixel space. :func:`mean_and_se` reduces either to
``(mean, standard error)``. Example::

    from dpsnn.metrics import mean_and_se, per_image_ssim

    ssim, ssim_se = mean_and_se(per_image_ssim(reconstructions, originals))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from dpsnn.inference import predict
from dpsnn.stats import distance_correlation

DCOR_BATCH_SIZE = 256  # dCor is a batch statistic: every script measures it at this size


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (``std / sqrt(n)``; NaN SE for a single value)."""
    values = values.detach().double().flatten()
    if values.numel() == 0:
        return math.nan, math.nan
    if values.numel() == 1:
        return values.item(), math.nan
    return values.mean().item(), (values.std(unbiased=True) / math.sqrt(values.numel())).item()


def per_image_mse(reconstructions: Tensor, originals: Tensor) -> Tensor:
    return (reconstructions - originals).pow(2).flatten(1).mean(dim=1)


def per_image_psnr(reconstructions: Tensor, originals: Tensor, min_mse: float = 1e-10) -> Tensor:
    """PSNR in dB for data range 1; a perfect copy is capped at ``10 * log10(1 / min_mse)``."""
    return -10.0 * torch.log10(per_image_mse(reconstructions, originals).clamp_min(min_mse))


def per_image_ssim(reconstructions: Tensor, originals: Tensor) -> Tensor:
    return structural_similarity_index_measure(
        reconstructions.float(), originals.float(), data_range=1.0, reduction="none"
    )


def per_batch_dcor(x: Tensor, y: Tensor, batch_size: int = DCOR_BATCH_SIZE) -> Tensor:
    """dCor(x, y) on consecutive batches; a last batch smaller than half the size is dropped."""
    values = [
        distance_correlation(x_part.double(), y_part.double())
        for x_part, y_part in zip(x.split(batch_size), y.split(batch_size), strict=True)
        if len(x_part) >= max(2, batch_size // 2)
    ]
    return torch.stack(values) if values else torch.empty(0, dtype=torch.float64)


def per_image_correct(classifier: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> Tensor:
    """1.0 where ``classifier`` gets the label right, else 0.0."""
    return (predict(classifier, images, batch_size) == labels).float()


def reconstruction_metrics(
    reconstructions: Tensor,
    originals: Tensor,
    labels: Tensor,
    validator: torch.nn.Module | None = None,
) -> dict[str, Tensor]:
    """Every reconstruction metric, unreduced: per image, or per batch for ``dcor``."""
    measured = {
        "mse": per_image_mse(reconstructions, originals),
        "psnr": per_image_psnr(reconstructions, originals),
        "ssim": per_image_ssim(reconstructions, originals),
        "dcor": per_batch_dcor(originals, reconstructions),
    }
    if validator is not None:
        measured["validator_acc"] = per_image_correct(validator, reconstructions, labels)
    return measured


def summarise(prefix: str, measured: dict[str, Tensor]) -> dict[str, float]:
    """Flatten unreduced metrics into ``{prefix_name: mean, prefix_name_se: se}``."""
    row: dict[str, float] = {}
    for name, values in measured.items():
        row[f"{prefix}{name}"], row[f"{prefix}{name}_se"] = mean_and_se(values)
    return row
