"""Reconstruction and privacy metrics, each reported with its standard error.

SSIM is Wang et al.'s (2004): an 11-tap Gaussian window of σ = 1.5, population
covariances, and the mean over the *valid* region only (no padding), equal to
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``. It is written here, batched on tensors and
differentiable (a decoder can be trained on it), because torchmetrics' SSIM pads by
reflection and averages over the padded border too: on 28×28 images a third of the
pixels lie within 5 pixels of the edge, and its figures are not comparable with
published ones.

Per-image metrics (MSE, PSNR, SSIM, MindArmour's L2 distance ratio, the Validator's
correctness and its confidence in the true label) return one value per image;
distance correlation is a property of a batch and returns one value per batch. All
images are in ``[0, 1]`` pixel space. :func:`mean_and_se` reduces either to
``(mean, standard error)``. Example::

    from dpsnn.metrics import mean_and_se, per_image_ssim

    ssim, ssim_se = mean_and_se(per_image_ssim(reconstructions, originals))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dpsnn.errors import DataError
from dpsnn.inference import batched, predict
from dpsnn.stats import distance_correlation

if TYPE_CHECKING:
    import numpy as np

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


SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # 5: an 11-tap window, as scipy.ndimage truncates it at 3.5 σ
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> Tensor:
    """The normalised 1-D Gaussian taps SSIM filters with (``2 * radius + 1`` of them), in float64."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _valid_gaussian_mean(images: Tensor, taps: Tensor) -> Tensor:
    """Gaussian-weighted local means over the valid region of ``(N, C, H, W)`` images: each channel on its own."""
    channels = images.shape[1]
    rows = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), columns, groups=channels)


def per_image_ssim(
    reconstructions: Tensor, originals: Tensor, data_range: float = 1.0, compute_dtype: torch.dtype = torch.float64
) -> Tensor:
    """SSIM of each image pair (Wang et al. 2004, the valid region only), averaged over channels; differentiable.

    ``reconstructions`` and ``originals`` are ``(N, C, H, W)`` (or ``(N, H, W)``) with
    sides of at least 11 pixels. The result has the input's dtype. The arithmetic is
    float64 (``compute_dtype``): the local variances are differences of means, and
    float32 loses about 1e-4 of SSIM in flat regions, enough for a loss but not a metric.
    """
    if reconstructions.shape != originals.shape:
        raise DataError(
            f"SSIM needs images of one shape, got {tuple(reconstructions.shape)} and {tuple(originals.shape)}"
        )
    if reconstructions.dim() == 3:
        reconstructions, originals = reconstructions.unsqueeze(1), originals.unsqueeze(1)
    if min(reconstructions.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise DataError(
            f"SSIM needs images at least {2 * SSIM_RADIUS + 1} pixels a side, got {tuple(reconstructions.shape[-2:])}"
        )
    dtype = reconstructions.dtype if reconstructions.is_floating_point() else torch.float32
    x, y = reconstructions.to(compute_dtype), originals.to(compute_dtype)
    taps = gaussian_window().to(x.device, x.dtype)
    mean_x, mean_y = _valid_gaussian_mean(x, taps), _valid_gaussian_mean(y, taps)
    var_x = _valid_gaussian_mean(x * x, taps) - mean_x**2
    var_y = _valid_gaussian_mean(y * y, taps) - mean_y**2
    cov_xy = _valid_gaussian_mean(x * y, taps) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(2).mean(dim=2).mean(dim=1).to(dtype)


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


#: MindArmour's guard against an all-zero original in the L2 distance ratio.
L2_RATIO_EPSILON = 1e-14


def per_image_l2_ratio(reconstructions: Tensor, originals: Tensor) -> Tensor:
    """MindArmour's L2 distance ratio ``‖x̂ − x‖₂ / ‖x‖₂`` per image (0 is perfect; lower is better)."""
    gap = (reconstructions.double() - originals.double()).flatten(1).norm(dim=1)
    return gap / (originals.double().flatten(1).norm(dim=1) + L2_RATIO_EPSILON)


def per_image_confidence(classifier: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> Tensor:
    """The softmax probability ``classifier`` gives each image's true label (MindArmour's third score)."""
    probabilities = F.softmax(batched(classifier, images, batch_size=batch_size).double(), dim=1)
    return probabilities[torch.arange(len(labels)), labels.cpu()]


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
    measured["l2_ratio"] = per_image_l2_ratio(reconstructions, originals)
    if validator is not None:
        measured["validator_acc"] = per_image_correct(validator, reconstructions, labels)
        measured["validator_confidence"] = per_image_confidence(validator, reconstructions, labels)
    return measured


def summarise(prefix: str, measured: dict[str, Tensor]) -> dict[str, float]:
    """Flatten unreduced metrics into ``{prefix_name: mean, prefix_name_se: se}``."""
    row: dict[str, float] = {}
    for name, values in measured.items():
        row[f"{prefix}{name}"], row[f"{prefix}{name}_se"] = mean_and_se(values)
    return row


# -- membership inference -------------------------------------------------------------------

#: The false-positive rates at which the true-positive rate is reported (MICO's and LiRA's).
FPR_LEVELS = (0.001, 0.01, 0.1)
N_BOOTSTRAP = 200


def check_probabilities(probabilities: Tensor, what: str = "membership predictions") -> Tensor:
    """``probabilities`` as a float64 tensor, or :class:`DataError` if any is NaN or outside [0, 1]."""
    values = torch.as_tensor(probabilities).detach().double().flatten()
    bad = values.isnan() | (values < 0) | (values > 1)
    if bad.any():
        first = values[bad][0].item()
        raise DataError(f"{what} must be probabilities in [0, 1]; {int(bad.sum())} are not (e.g. {first})")
    return values


def check_fpr_levels(fpr_levels: tuple[float, ...]) -> tuple[float, ...]:
    """The levels as floats, or :class:`ConfigError` if one lies outside the open interval (0, 1)."""
    from dpsnn.errors import ConfigError

    levels = tuple(float(level) for level in fpr_levels)
    bad = [level for level in levels if not 0.0 < level < 1.0]
    if bad or not levels:
        raise ConfigError(f"false-positive-rate levels must lie strictly between 0 and 1, got {list(fpr_levels)}")
    return levels


def fpr_key(level: float) -> str:
    """``tpr_at_fpr_0_001`` for level 0.001: the metric's name (a dot would not make a column name)."""
    return "tpr_at_fpr_" + f"{level:g}".replace(".", "_").replace("-", "m")


def _membership_point(scores, members, levels: tuple[float, ...]) -> dict[str, float]:  # numpy arrays
    """AUC, TPR at each FPR level (ROC points strictly below the level) and advantage, on one sample."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    point = {"auc": float(auc(fpr, tpr))}  # what roc_auc_score computes, without drawing the curve twice
    for level in levels:
        point[fpr_key(level)] = float(tpr[fpr < level].max())  # (0, 0) is always a point: never empty
    point["advantage"] = float((tpr - fpr).max())
    return point


def stratified_draws(
    members: np.ndarray, n_bootstrap: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The indices of each bootstrap resample's members and of its non-members, each drawn apart with replacement.

    ``members`` is a boolean mask; every resample keeps the numbers of members and non-members.
    """
    import numpy as np

    inside, outside = np.flatnonzero(members), np.flatnonzero(~np.asarray(members, dtype=bool))
    for _ in range(n_bootstrap):
        yield rng.choice(inside, size=len(inside), replace=True), rng.choice(outside, size=len(outside), replace=True)


def membership_metrics(
    scores: Tensor,
    members: Tensor,
    fpr_levels: tuple[float, ...] = FPR_LEVELS,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, float]:
    """ROC metrics of membership ``scores`` (higher = more likely a member) against the truth ``members``.

    Keys: ``auc`` (the area under scikit-learn's ``roc_curve``, as ``roc_auc_score``); ``tpr_at_fpr_<L>`` for each level
    ``L``: the largest true-positive rate among the ROC points (scikit-learn's
    ``roc_curve``) whose false-positive rate is *strictly below* ``L``, the MICO
    challenge's convention; ``advantage``: max(TPR − FPR) over the ROC points. Each has
    ``_se``, the standard deviation of ``n_bootstrap`` bootstrap resamples of the
    candidates (stratified: members and non-members resampled apart, so each resample
    has both), and ``_ci_low`` / ``_ci_high``, their 2.5 and 97.5 percentiles. Example::

        membership_metrics(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 1, 0, 0]))["auc"]   # 1.0
    """
    import numpy as np

    from dpsnn.errors import ConfigError

    levels = check_fpr_levels(fpr_levels)
    if n_bootstrap < 2:
        raise ConfigError(f"the bootstrap needs at least 2 resamples, got {n_bootstrap}")
    score_values = torch.as_tensor(scores).detach().double().flatten().cpu().numpy()
    truth = torch.as_tensor(members).detach().flatten().cpu().numpy().astype(bool)
    if len(score_values) != len(truth):
        raise DataError(f"{len(score_values)} membership scores for {len(truth)} candidates")
    if np.isnan(score_values).any():
        raise DataError(f"membership scores must not be NaN ({int(np.isnan(score_values).sum())} are)")
    if truth.all() or not truth.any():
        raise DataError("membership metrics need both members and non-members among the candidates")
    point = _membership_point(score_values, truth, levels)
    samples = {name: np.empty(n_bootstrap) for name in point}
    for draw, (inside, outside) in enumerate(stratified_draws(truth, n_bootstrap, np.random.default_rng(seed))):
        chosen = np.concatenate([inside, outside])
        for name, value in _membership_point(score_values[chosen], truth[chosen], levels).items():
            samples[name][draw] = value
    row: dict[str, float] = {}
    for name, value in point.items():
        row[name] = value
        row[f"{name}_se"] = float(samples[name].std(ddof=1))
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = (float(q) for q in np.percentile(samples[name], [2.5, 97.5]))
    return row
