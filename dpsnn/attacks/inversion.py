"""Black-box model inversion: decoders from what the server sees back to the image.

The curious server feeds its own auxiliary images through the client, records the
pairs ``(what_server_sees, image)`` (noise included) and trains a decoder on them. The
decoder is built from the shapes alone: a vector intermediate gets a linear map and
transposed convolutions, a feature map a convolutional decoder. An adaptive attacker
tries several, and a defence is judged by the best of them:

=================  ==================================================================
attack             the decoder and how it is trained
=================  ==================================================================
``decoder``        the reference decoder, MSE
``decoder-large``  twice as wide, a refining convolution after every upsampling, 10×
                   the training budget
``decoder-ssim``   the reference decoder, MSE + (1 − SSIM)
``decoder-label``  the reference decoder, also given the label the server predicts
``best-of``        all four, each test image reconstructed by the one that did best on
                   held-out auxiliary images of the class the server predicts for it
=================  ==================================================================

Example::

    from dpsnn.attacks import AttackTraining, make_attack, observe

    attacker = make_attack("decoder-ssim").fit(target, splits.aux, AttackTraining(max_epochs=10))
    reconstructions = attacker.run(observe(target, splits.test.images)).images
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpsnn.attacks.base import (
    DEFAULT_TRAINING,
    Attack,
    AttackTraining,
    ThreatModel,
    observe,
    register_attack,
)
from dpsnn.data import tensor_loader
from dpsnn.errors import ConfigError, DataError
from dpsnn.inference import batched
from dpsnn.metrics import per_image_ssim

if TYPE_CHECKING:
    import lightning as L

    from dpsnn.attacks._decoder_module import InversionAttacker

Shape = tuple[int, ...]


DECODER_SIZES = ("standard", "large")


class Decoder(nn.Sequential):
    """From an intermediate of ``intermediate_shape`` to an image of ``image_shape`` in [0, 1].

    A vector ``(D,)``: a linear map to 64 channels at a quarter of the image size, two
    transposed convolutions doubling it, a 3×3 convolution to the image's channels
    (for ``(500,)`` and 1×28×28, exactly the reference decoder). A feature map
    ``(C, h, w)``: two 3×3 convolutions, one transposed convolution per doubling from
    ``h`` to the image height, a 3×3 convolution to the image's channels. Either is
    resized to the image size when the doublings do not land on it, then a sigmoid
    bounds it like the pixels it predicts. ``size="large"`` doubles every width and adds
    a 3×3 convolution after each upsampling.
    """

    def __init__(
        self,
        intermediate_shape: Sequence[int] = (500,),
        image_shape: Sequence[int] = (1, 28, 28),
        size: str = "standard",
    ) -> None:
        intermediate_shape, image_shape = tuple(intermediate_shape), tuple(image_shape)
        if size not in DECODER_SIZES:
            raise ConfigError(f"unknown decoder size '{size}'; choose from {', '.join(DECODER_SIZES)}")
        scale, refine = (2, True) if size == "large" else (1, False)
        if len(intermediate_shape) == 1:
            layers, built = _vector_decoder(intermediate_shape[0], image_shape, scale, refine)
        elif len(intermediate_shape) == 3:
            layers, built = _feature_map_decoder(intermediate_shape, image_shape, scale, refine)
        else:
            raise ConfigError(
                f"a decoder needs a vector (D,) or a feature map (C, H, W) intermediate, got {intermediate_shape}"
            )
        if built != tuple(image_shape[1:]):
            layers.append(nn.Upsample(size=tuple(image_shape[1:]), mode="bilinear", align_corners=False))
        super().__init__(*layers, nn.Sigmoid())


def _upsample(in_channels: int, out_channels: int, refine: bool) -> list[nn.Module]:
    """A transposed convolution doubling the size, and with ``refine`` a 3×3 convolution after it."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
    if refine:
        layers += [nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
    return layers


def _vector_decoder(
    features: int, image_shape: Shape, scale: int, refine: bool
) -> tuple[list[nn.Module], tuple[int, int]]:
    channels, height, width = image_shape
    start = (math.ceil(height / 4), math.ceil(width / 4))
    layers: list[nn.Module] = [
        nn.Linear(features, 64 * scale * start[0] * start[1]),
        nn.ReLU(),
        nn.Unflatten(1, (64 * scale, *start)),
        *_upsample(64 * scale, 32 * scale, refine),
        *_upsample(32 * scale, 16 * scale, refine),
        nn.Conv2d(16 * scale, channels, kernel_size=3, padding=1),
    ]
    return layers, (4 * start[0], 4 * start[1])


def _feature_map_decoder(
    intermediate_shape: Shape, image_shape: Shape, scale: int, refine: bool
) -> tuple[list[nn.Module], tuple[int, int]]:
    in_channels, h, w = intermediate_shape
    channels, height, _ = image_shape
    width_ = min(max(in_channels, 32), 128) * scale
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width_, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width_, width_, kernel_size=3, padding=1),
        nn.ReLU(),
    ]
    doublings = max(0, round(math.log2(max(height / h, 1))))
    for _ in range(doublings):
        narrower = max(width_ // 2, 16)
        layers += _upsample(width_, narrower, refine)
        width_ = narrower
    layers.append(nn.Conv2d(width_, channels, kernel_size=3, padding=1))
    return layers, (h * 2**doublings, w * 2**doublings)


def with_labels(what_server_sees: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``what_server_sees`` with the one-hot ``labels`` appended: as features of a vector, as channels of a map."""
    one_hot = F.one_hot(labels.long(), num_classes).to(what_server_sees.dtype)
    if what_server_sees.dim() == 2:
        return torch.cat([what_server_sees, one_hot], dim=1)
    planes = one_hot[:, :, None, None].expand(-1, -1, *what_server_sees.shape[2:])
    return torch.cat([what_server_sees, planes], dim=1)


def conditioned_shape(intermediate_shape: Sequence[int], num_classes: int) -> Shape:
    """The decoder's input shape once ``num_classes`` one-hot labels are appended (none when 0)."""
    shape = tuple(intermediate_shape)
    return shape if num_classes == 0 else (shape[0] + num_classes, *shape[1:])


LOSSES = ("mse", "ssim")


def reconstruction_loss(reconstructions: Tensor, images: Tensor, loss: str) -> Tensor:
    """MSE, or (``"ssim"``) MSE + mean(1 − SSIM), the SSIM computed in float32 to train fast."""
    mse = F.mse_loss(reconstructions, images)
    if loss == "mse":
        return mse
    return mse + (1 - per_image_ssim(reconstructions, images, compute_dtype=torch.float32)).mean()


def _seed_everything(seed: int) -> None:
    import lightning as L  # here, not at import: the attack specs are read without Lightning

    L.seed_everything(seed, verbose=False)


def __getattr__(name: str) -> Any:
    """:class:`InversionAttacker` lives in its own module (it is a LightningModule); it is still found here."""
    if name == "InversionAttacker":
        from dpsnn.attacks._decoder_module import InversionAttacker

        return InversionAttacker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def what_server_sees(target: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Run ``images`` through the client and the wire, batch by batch; the tensors the server receives, on the CPU.

    The noise is drawn afresh, as it is every time an image crosses the wire.
    """
    return batched(target.encode, images, module=target, batch_size=batch_size)


def _check_pairs(seen: Tensor, images: Tensor, predicted: Tensor | None, num_classes: int) -> None:
    """:class:`DataError` unless ``seen``, ``images`` (and ``predicted``, classes below ``num_classes``) pair up."""
    if len(images) == 0:
        raise DataError("no (what the server saw, image) pairs to train on")
    for name, tensor in (("recorded intermediates", seen), ("predicted labels", predicted)):
        if tensor is not None and len(tensor) != len(images):
            raise DataError(f"{len(tensor)} {name} for {len(images)} images: they must pair up one to one")
    if predicted is not None and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise DataError(f"predicted labels outside 0..{num_classes - 1}: not classes of {num_classes}")


@register_attack("decoder")
@dataclass(frozen=True)
class DecoderAttack(Attack):
    """Train a :class:`Decoder` on what the server sees of the attacker's auxiliary images."""

    threat_model = ThreatModel(what_server_sees=True, aux_data=True)
    decoder_size: ClassVar[str] = "standard"
    loss: ClassVar[str] = "mse"
    conditioned: ClassVar[bool] = False  # also given the label the server predicts
    budget_factor: ClassVar[int] = 1  # times the training budget it is given

    def fit(
        self, target: nn.Module, aux: Any, training: AttackTraining = DEFAULT_TRAINING, seed: int = 0, **metadata: Any
    ) -> InversionAttacker:
        """Record what the server sees of ``aux`` once, as a curious server would, and train on it.

        ``aux`` is a split (or a tensor of images). With ``training.max_steps`` the budget
        is that many optimiser steps whatever the auxiliary set's size, so attackers with
        little and with much data get the same optimisation; either budget is multiplied
        by the attack's ``budget_factor``.
        """
        images = aux.images if hasattr(aux, "images") else aux
        if len(images) == 0:
            raise DataError("the attacker's auxiliary split is empty")
        _seed_everything(seed)
        observation = observe(target, images, seed) if self.conditioned else None
        seen = observation.seen if observation is not None else what_server_sees(target, images)
        predicted = observation.predicted if observation is not None else None
        num_classes = int(target.hparams.get("num_classes", 10)) if self.conditioned else 0
        return self._train(seen, images, training, seed, predicted, num_classes, metadata)

    def fit_pairs(
        self,
        seen: Tensor,
        images: Tensor,
        training: AttackTraining = DEFAULT_TRAINING,
        seed: int = 0,
        predicted: Tensor | None = None,
        num_classes: int = 10,
        **metadata: Any,
    ) -> InversionAttacker:
        """Train on pairs already recorded: ``seen[i]`` is what the server received of ``images[i]``.

        For a server that kept what it received when it queried the client with images of
        its own (a recording, :mod:`dpsnn.transport.recording`), rather than a target to
        query here. ``predicted`` (the class the server computed for each, of
        ``num_classes``) is needed by the attacks conditioned on it (``decoder-label``)
        and ignored by the others. ``L.seed_everything(seed)`` fixes the decoder's
        initialisation and the batches; the budget is as in :meth:`fit`.
        """
        if self.conditioned and predicted is None:
            raise ConfigError(f"attack '{self.name}' is conditioned on the label the server predicts: pass predicted")
        labels = predicted if self.conditioned else None
        _check_pairs(seen, images, labels, num_classes)
        _seed_everything(seed)
        classes = num_classes if self.conditioned else 0
        return self._train(seen.float(), images.float(), training, seed, labels, classes, metadata)

    def _train(
        self,
        seen: Tensor,
        images: Tensor,
        training: AttackTraining,
        seed: int,
        predicted: Tensor | None,
        num_classes: int,
        metadata: dict[str, Any],
    ) -> InversionAttacker:
        """A decoder trained on ``(seen, image[, predicted])`` batches (``num_classes`` 0: not conditioned)."""
        from dpsnn.attacks._decoder_module import InversionAttacker

        attacker = InversionAttacker(
            learning_rate=training.learning_rate,
            intermediate_shape=tuple(seen.shape[1:]),
            image_shape=tuple(images.shape[1:]),
            decoder_size=self.decoder_size,
            loss=self.loss,
            num_classes=num_classes,
            seed=seed,
            **metadata,
        )
        tensors = (seen, images) if predicted is None else (seen, images, predicted)
        self._trainer(training).fit(
            attacker, tensor_loader(*tensors, batch_size=training.batch_size, shuffle=True, seed=seed)
        )
        attacker.eval()
        return attacker

    def _trainer(self, training: AttackTraining) -> L.Trainer:
        from dpsnn.loops import make_trainer

        if training.max_steps is None:
            epochs = training.max_epochs * self.budget_factor
            return make_trainer(epochs, training.progress, training.log_dir, "attacker")
        steps = training.max_steps * self.budget_factor
        return make_trainer(-1, training.progress, training.log_dir, "attacker", max_steps=steps)


@register_attack("decoder-large")
@dataclass(frozen=True)
class LargeDecoderAttack(DecoderAttack):
    """A wider, deeper decoder (``Decoder(size="large")``) trained on 10× the budget."""

    decoder_size = "large"
    budget_factor = 10


@register_attack("decoder-ssim")
@dataclass(frozen=True)
class SSIMDecoderAttack(DecoderAttack):
    """The reference decoder trained on MSE + (1 − SSIM): it is rewarded for structure, not only for pixels."""

    loss = "ssim"


@register_attack("decoder-label")
@dataclass(frozen=True)
class LabelDecoderAttack(DecoderAttack):
    """The reference decoder given, beside what the server sees, the label the server predicts for it."""

    threat_model = ThreatModel(what_server_sees=True, predicted_labels=True, aux_data=True)
    conditioned = True


__all__ = [
    "Decoder",
    "DecoderAttack",
    "InversionAttacker",
    "LabelDecoderAttack",
    "LargeDecoderAttack",
    "SSIMDecoderAttack",
    "what_server_sees",
]
