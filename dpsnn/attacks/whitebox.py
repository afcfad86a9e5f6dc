"""White-box model inversion: optimise images until the client maps them onto what the server saw (``whitebox``).

The attacker holds a copy of the client part's weights (frozen, in eval mode) but not
the wire's noise draws. For each recorded tensor ``t`` it searches for an image ``x`` in
``[0, 1]`` that minimises MindArmour's ``ImageInversionAttack`` loss (He et al. 2019;
Mahendran and Vedaldi 2015)::

    w1 · MSE(client(x), t) / MSE(t, 0)  +  w2 · TV(x)  +  w3 · MSE(x, 0)

with MSE the mean over elements, ``MSE(x, 0)`` the mean squared pixel (MindArmour's
"norm" term) and TV its total variation: for ``x`` of shape ``(C, H, W)``, the sum over
the ``H - 1`` pairs of neighbouring rows of the mean squared difference between them, plus
the same over the ``W - 1`` pairs of neighbouring columns. Each image has its own loss
and the batch minimises their sum: an image's gradient depends on it alone, so its
result does not depend on the batch it is in, and a whole chunk of ``batch_size`` images
is one optimisation problem (one forward and backward pass per step, whatever the count).
(Up to rounding: in float32 a convolution's kernels round differently at different batch
sizes, and Adam, which scales each pixel's step to that pixel's own gradient history,
amplifies the difference on pixels of almost no gradient, chiefly at the border. On the
reference client, 16 images and 100 steps, a mean pixel difference of 0.003 and SSIMs
within 0.013 of each other; in float64 the results agree to 1e-15.)

The steps are Adam (``optimizer=adam``, the default) or MindArmour's signed-gradient
steps (``optimizer=sign``: ``x -= learning_rate · sign(∇)``); MindArmour's defaults are
kept: 100 steps of 0.01, weights (1, 0.1, 5) as its MNIST tutorial, a start drawn from
U[0, 0.05). The box constraint is a clamp to ``[0, 1]`` after every step (projected
gradient descent), as MindArmour clips: pixels reach exactly 0 and 1, which a sigmoid
parametrisation only approaches while its gradient vanishes, and Fashion-MNIST's
backgrounds are exactly 0. Note that the ``w3`` term shrinks the images: through an
identity client the optimum of the first and third terms is ``t / (1 + 5 · mean(t²))``.

:func:`mindarmour_scores` scores reconstructions as MindArmour's ``evaluate`` does, per
image. The optimisation loop is written here because no well-kept PyTorch library
offers feature inversion with these terms (MindArmour itself is built on MindSpore).
Example::

    from dpsnn.attacks import make_attack, observe

    attack = make_attack("whitebox", {"steps": 200, "optimizer": "sign"})
    fitted = attack.fit(target, splits.aux, seed=0)             # copies target.client
    result = fitted.run(observe(target, splits.test.images))    # Reconstructions
    scores = mindarmour_scores(result.images, splits.test.images, splits.test.labels, validator)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dpsnn.attacks.base import (
    DEFAULT_TRAINING,
    Attack,
    AttackTraining,
    Observation,
    Reconstructions,
    ThreatModel,
    register_attack,
)
from dpsnn.defences.base import value_key
from dpsnn.errors import ConfigError, DataError
from dpsnn.inference import device_of
from dpsnn.metrics import per_image_confidence, per_image_l2_ratio, per_image_ssim

OPTIMIZERS = ("adam", "sign")
#: ``uniform``: U[0, 0.05) per pixel, MindArmour's start; ``zeros``: black; ``gray``: 0.5 everywhere.
STARTS = ("uniform", "zeros", "gray")
UNIFORM_START_SCALE = 0.05
MIN_TARGET_POWER = 1e-12  # MSE(t, 0) of an all-zero target would divide by zero


def total_variation(images: Tensor) -> Tensor:
    """MindArmour's total variation of each ``(N, C, H, W)`` image: row and column neighbours' mean squared gaps.

    ``Σ_i mean_{c,w} (x[c,i,w] − x[c,i−1,w])² + Σ_j mean_{c,h} (x[c,h,j] − x[c,h,j−1])²``.
    """
    channels, height, width = images.shape[1:]
    rows = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3)) / (channels * width)
    columns = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3)) / (channels * height)
    return rows + columns


def inversion_loss(
    client: nn.Module, images: Tensor, targets: Tensor, weights: tuple[float, float, float] = (1.0, 0.1, 5.0)
) -> Tensor:
    """MindArmour's inversion loss of each image against its target features (one value per image)."""
    features, targets = client(images).flatten(1), targets.flatten(1)
    target_power = targets.pow(2).mean(dim=1).clamp_min(MIN_TARGET_POWER)
    match = (features - targets).pow(2).mean(dim=1) / target_power
    norm = images.pow(2).flatten(1).mean(dim=1)
    return weights[0] * match + weights[1] * total_variation(images) + weights[2] * norm


def start_images(start: str, count: int, image_shape: tuple[int, ...], seed: int) -> Tensor:
    """The first guesses for ``count`` images; the ``uniform`` draws come from a generator seeded by ``seed``."""
    if start == "zeros":
        return torch.zeros(count, *image_shape)
    if start == "gray":
        return torch.full((count, *image_shape), 0.5)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, *image_shape, generator=generator) * UNIFORM_START_SCALE


def invert(
    client: nn.Module,
    targets: Tensor,
    start: Tensor,
    steps: int,
    learning_rate: float,
    optimizer: str = "adam",
    weights: tuple[float, float, float] = (1.0, 0.1, 5.0),
) -> Tensor:
    """Minimise the summed per-image :func:`inversion_loss` from ``start``, clamping to [0, 1] after each step."""
    images = start.detach().clone().clamp_(0.0, 1.0).requires_grad_(True)
    adam = torch.optim.Adam([images], lr=learning_rate) if optimizer == "adam" else None
    with torch.enable_grad():
        for _ in range(steps):
            (gradient,) = torch.autograd.grad(inversion_loss(client, images, targets, weights).sum(), images)
            with torch.no_grad():
                if adam is None:
                    images -= learning_rate * gradient.sign()
                else:
                    images.grad = gradient
                    adam.step()
                images.clamp_(0.0, 1.0)
    return images.detach()


class WhiteBoxInverter:
    """A fitted ``whitebox`` attack: a frozen copy of the client and the optimisation's settings."""

    def __init__(
        self, client: nn.Module, image_shape: tuple[int, ...], spec: WhiteBoxInversion, seed: int, steps: int
    ) -> None:
        self.client = client
        self.image_shape = image_shape
        self.spec = spec
        self.seed = seed
        self.steps = steps

    def run(self, observation: Observation) -> Reconstructions:
        """Images whose client features match ``observation.seen``, optimised ``batch_size`` at a time, on the CPU.

        The ``uniform`` start of the k-th image is the k-th draw of the seeded generator,
        whatever ``batch_size``.
        """
        targets = observation.seen
        self._check_shapes(targets)
        device = device_of(self.client)
        starts = start_images(self.spec.start, len(targets), self.image_shape, self.seed)
        chunks = [
            invert(
                self.client,
                target.to(device),
                start.to(device, targets.dtype),
                self.steps,
                self.spec.learning_rate,
                self.spec.optimizer,
                self.spec.weights(),
            ).cpu()
            for target, start in zip(
                targets.split(self.spec.batch_size), starts.split(self.spec.batch_size), strict=True
            )
        ]
        return Reconstructions(torch.cat(chunks) if chunks else starts)

    def _check_shapes(self, targets: Tensor) -> None:
        with torch.no_grad():
            probe = self.client(torch.zeros(1, *self.image_shape, device=device_of(self.client), dtype=targets.dtype))
        if tuple(probe.shape[1:]) != tuple(targets.shape[1:]):
            raise DataError(
                f"the client maps {self.image_shape} images to {tuple(probe.shape[1:])}, but the server saw "
                f"{tuple(targets.shape[1:])}: the observation is not of this client"
            )


def frozen_client(target: Any) -> nn.Module:
    """A copy of ``target.client`` in eval mode with gradients off; :class:`ConfigError` when there is none."""
    client = getattr(target, "client", None)
    if not isinstance(client, nn.Module):
        raise ConfigError(
            f"white-box inversion needs the client part's weights, but {type(target).__name__} has no client module"
        )
    client = copy.deepcopy(client).eval()
    client.requires_grad_(False)
    return client


def image_shape_of(target: Any, aux: Any) -> tuple[int, ...]:
    """The input image shape: the target's recorded ``input_shape``, else that of the auxiliary images."""
    shape = getattr(target, "hparams", {}).get("input_shape")
    if shape is None:
        images = aux.images if hasattr(aux, "images") else aux
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ConfigError("white-box inversion cannot tell the image shape: the target records no input_shape")
        shape = images.shape[1:]
    return tuple(int(size) for size in shape)


@register_attack("whitebox")
@dataclass(frozen=True)
class WhiteBoxInversion(Attack):
    """Optimise images so that the client's copy maps them onto what the server saw (MindArmour's loss)."""

    threat_model = ThreatModel(what_server_sees=True, client_weights=True)
    test_images = 1000  # an optimisation per image: an experiment scores it on the first 1,000 test images

    steps: int = 100
    learning_rate: float = 0.01
    optimizer: str = "adam"
    mse_weight: float = 1.0
    tv_weight: float = 0.1
    norm_weight: float = 5.0
    start: str = "uniform"
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"attack 'whitebox': {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, int | float) and math.isfinite(self.learning_rate)):
            raise ConfigError(f"attack 'whitebox': learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"attack 'whitebox': learning_rate must be a positive number, got {self.learning_rate!r}")
        for name in ("mse_weight", "tv_weight", "norm_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"attack 'whitebox': {name} must be a non-negative number, got {value!r}")
        if self.mse_weight == 0:
            raise ConfigError("attack 'whitebox': mse_weight must be positive, or nothing ties the images to the wire")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"attack 'whitebox': unknown optimizer {self.optimizer!r}; choose from adam, sign")
        if self.start not in STARTS:
            raise ConfigError(f"attack 'whitebox': unknown start {self.start!r}; choose from {', '.join(STARTS)}")

    def weights(self) -> tuple[float, float, float]:
        """``(w1, w2, w3)``: the feature match, total variation and mean-squared-pixel weights."""
        return float(self.mse_weight), float(self.tv_weight), float(self.norm_weight)

    def key(self) -> str:
        """File-name-safe, naming only the parameters off their defaults: ``whitebox``, ``whitebox-optimizersign``."""
        defaults = type(self)()
        changed = {k: v for k, v in self.params().items() if v != getattr(defaults, k)}
        return self.name + "".join(f"-{k.replace('_', '')}{value_key(v)}" for k, v in changed.items())

    def fit(
        self, target: Any, aux: Any = None, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0, **metadata: Any
    ) -> WhiteBoxInverter:
        """Copy ``target.client`` (frozen, eval mode); nothing is trained, and ``aux`` is read only for a shape.

        ``training.max_steps``, when set, caps the optimisation steps: an experiment's
        attack budget bounds every attack, this one's ``steps`` included.
        """
        steps = self.steps if training.max_steps is None else max(1, min(self.steps, training.max_steps))
        return WhiteBoxInverter(frozen_client(target), image_shape_of(target, aux), self, seed, steps)


def mindarmour_scores(
    reconstructions: Tensor, originals: Tensor, labels: Tensor, classifier: nn.Module | None = None
) -> dict[str, Tensor]:
    """MindArmour's three scores per image: ``l2_ratio``, ``ssim`` and (with a classifier) ``confidence``.

    ``l2_ratio`` is ``‖x̂ − x‖₂ / ‖x‖₂``; ``ssim`` is :func:`dpsnn.metrics.per_image_ssim`;
    ``confidence`` is the softmax probability an independent ``classifier`` gives the
    true label of the reconstruction. MindArmour reports their means.
    """
    if reconstructions.shape != originals.shape or len(labels) != len(originals):
        raise DataError(
            f"scoring needs one reconstruction and one label per original, got {tuple(reconstructions.shape)}, "
            f"{tuple(originals.shape)} and {len(labels)} labels"
        )
    scores = {
        "l2_ratio": per_image_l2_ratio(reconstructions, originals),
        "ssim": per_image_ssim(reconstructions, originals),
    }
    if classifier is not None:
        scores["confidence"] = per_image_confidence(classifier, reconstructions, labels)
    return scores


__all__ = [
    "WhiteBoxInversion",
    "WhiteBoxInverter",
    "frozen_client",
    "invert",
    "inversion_loss",
    "mindarmour_scores",
    "total_variation",
]
