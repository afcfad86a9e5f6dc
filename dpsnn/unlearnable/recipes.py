"""Training recipes a competitor tries on an unlearnable training set, and the runner that trains with one.

An unlearnable training set is poisoned with small clean-label perturbations (NTGA, error-minimising
noise) so that a network trained on it fails on clean test data. The competitor is given only the
poisoned pool (its validation split is poisoned too) and may change anything about training. Each
way of training is a *recipe*: a small frozen dataclass registered by name, its fields the plain-data
parameters, checked in ``__post_init__``, with hooks that default to doing nothing:

=================================  ===============================================================
hook                               what it does
=================================  ===============================================================
``prepare(images)``                once, to the poisoned training images (JPEG re-encoding)
``test_view(images)``              how the model sees validation and test images (grayscale)
``batch(model, x, y, generator)``  each training batch: ``(x, targets)``, targets class indices or
                                   rows of class probabilities (cutout, mixup, PGD)
``selects_by``                     the validation accuracy whose best epoch is kept
                                   (``val_acc``, ``clean_val_acc``); None keeps the last epoch
``finish(…)``                      after training (last-layer retraining on clean data)
``needs``, ``obeys_rules``         the clean splits it needs; False when it uses clean data
``key()``, ``label()``             file names; tables and legends
=================================  ===============================================================

=====================  =================================================================  ===========
recipe                 what it does (defaults)                                            obeys rules
=====================  =================================================================  ===========
``plain``              a fixed number of epochs; the last epoch is kept                   yes
``early-stop``         the epoch of best accuracy on the (poisoned) validation split      yes
``oracle-early-stop``  the epoch of best accuracy on a *clean* validation split           no
``grayscale``          every image's channels averaged (the identity on 1-channel data)   yes
``jpeg``               training images re-encoded as JPEG (``quality=10``)                yes
``binarise``           every pixel set to 1 above ``threshold=0.5``, else 0, in training  yes
                       and at test time (bit-depth reduction to one bit)
``cutout``             a random square zeroed in each image (``size``: 8/28 of the side)  yes
``mixup``              pairs of images and their labels mixed (``alpha=1``)               yes
``adversarial``        Madry-style L∞ PGD training (``epsilon=0.3``, ``steps=10``)        yes
``last-layer``         then the last Linear layer refit on ``clean_size=1000`` clean      no
                       images for ``head_epochs=20`` epochs
=====================  =================================================================  ===========

Every recipe but the two early stops keeps the last epoch, so each measures one change on its
own. Grayscale, JPEG and binarising (bit-depth reduction) follow Liu et al. (2023), "Image
shortcut squeezing"; binarising above a threshold larger than the budget ε erases every
perturbation of a black background, which carries much of a poison on Fashion-MNIST; cutout DeVries &
Taylor (2017); mixup Zhang et al. (2018), one λ ~ Beta(α, α) per batch; adversarial training
Madry et al. (2018), with a random start and step size 2.5·ε/steps (the default ε = 0.3 matches
the poisons' L∞ budget on Fashion-MNIST; Madry et al. train CIFAR-10 at 8/255, which is
``adversarial:epsilon=0.0314``); last-layer retraining Kirichenko et al. (2023): a fresh final
layer fitted on clean features.

What is hand-written, and why: the augmentations act on whole in-memory tensors with a seeded
``torch.Generator`` (torchvision's transforms draw from the global generator, one image at a time),
and PGD is a few lines. JPEG coding is torchvision's (libjpeg). Example::

    from dpsnn.data import make_splits
    from dpsnn.unlearnable.recipes import recipe_from, train_with_recipe

    splits = make_splits("fashion-mnist", seed=0, train_size=5000)   # stand-ins for the poisoned splits
    recipe = recipe_from("jpeg:quality=10")
    recipe.key(), recipe.label()                                     # ('jpeg-q10', 'JPEG q=10')
    model, result = train_with_recipe(recipe, splits.train, splits.val, splits.test, 10, epochs=2)
    result.test_acc, result.test_acc_se                              # clean test accuracy ± its SE
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from dpsnn.architectures import build_split, canonical_architecture
from dpsnn.data import Split
from dpsnn.defences.base import build_spec, format_number, parse_spec_text, spec_registrar, value_text
from dpsnn.errors import ConfigError
from dpsnn.inference import predict
from dpsnn.loops import BestWeights, make_trainer
from dpsnn.models import _Classifier

__all__ = [
    "RECIPES",
    "Adversarial",
    "Binarise",
    "Cutout",
    "EarlyStop",
    "Grayscale",
    "Jpeg",
    "LastLayer",
    "Mixup",
    "OracleEarlyStop",
    "Plain",
    "Recipe",
    "RecipeClassifier",
    "RecipeResult",
    "binarise",
    "cutout",
    "jpeg_compress",
    "last_linear_name",
    "mixup",
    "projected_gradient_descent",
    "recipe_from",
    "recipe_names",
    "register_recipe",
    "to_grayscale",
    "train_with_recipe",
    "train_with_recipes",
    "trains_plainly",
]

#: The validation splits, in the order the trainer is given their loaders; metrics are ``{stage}_acc``.
VAL_STAGES = ("val", "clean_val")
EVAL_BATCH_SIZE = 512
JPEG_CHUNK = 4096  # images encoded per call, to bound the memory the encoded bytes take
NO_VALIDATION_WARNING = r".*no `val_dataloader`.*"  # Lightning's, when the last epoch is kept without validating
CUTOUT_FRACTION = 8 / 28  # the automatic cutout side, as a fraction of the image side: 8 px on 28×28


# -- checks ------------------------------------------------------------------------------


def _check_int(value: Any, what: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or :class:`ConfigError`."""
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"{what} must be an integer {bounds}, got {value!r}")
    return int(value)


def _check_positive(value: Any, what: str, high: float | None = None) -> float:
    """``value`` as a finite float in ``(0, high]``, or :class:`ConfigError`."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number > 0 and (high is None or number <= high)):
        bounds = f"in (0, {high:g}]" if high is not None else "greater than 0"
        raise ConfigError(f"{what} must be a number {bounds}, got {value!r}")
    return float(number)


# -- the image and batch transformations -------------------------------------------------


def to_grayscale(images: Tensor) -> Tensor:
    """Each image's channels replaced by their mean, repeated to keep the shape (1-channel images: unchanged)."""
    if images.shape[1] == 1:
        return images
    return images.mean(dim=1, keepdim=True).expand_as(images).contiguous()


def jpeg_compress(images: Tensor, quality: int) -> Tensor:
    """``images`` in [0, 1] (1 or 3 channels) encoded as JPEG at ``quality`` and decoded, with libjpeg.

    Pixels are rounded to 8 bits first. libjpeg subsamples colour 4:2:0 at every quality, so on
    3-channel images even quality 100 blurs colour edges; gray images at quality 100 come back
    within a few levels.
    """
    if images.shape[1] not in (1, 3):
        raise ConfigError(f"JPEG codes images of 1 or 3 channels, got {images.shape[1]}")
    if len(images) == 0:
        return images.clone()
    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    decoded = []
    for chunk in pixels.split(JPEG_CHUNK):
        encoded = encode_jpeg(list(chunk), quality=quality)
        decoded.append(torch.stack(decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED)))
    return (torch.cat(decoded).to(images.dtype) / 255).to(images.device)


def binarise(images: Tensor, threshold: float) -> Tensor:
    """Every pixel (of every channel) 1 where it is above ``threshold``, else 0, in ``images``' dtype."""
    return (images > threshold).to(images.dtype)


def cutout(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """``x`` with a ``size``×``size`` square, placed uniformly inside each image, set to 0."""
    n, _, height, width = x.shape
    if size > min(height, width):
        raise ConfigError(f"cutout size {size} does not fit in {height}×{width} images")
    top = torch.randint(0, height - size + 1, (n, 1), generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1), generator=generator)
    rows = torch.arange(height)
    cols = torch.arange(width)
    in_rows = (rows >= top) & (rows < top + size)  # (n, height)
    in_cols = (cols >= left) & (cols < left + size)  # (n, width)
    square = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(square.to(x.device), 0.0)


def mixup(
    x: Tensor, y: Tensor, num_classes: int, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Mixup: ``λ·x + (1−λ)·x[perm]`` and the same mixture of one-hot labels, one λ ~ Beta(α, α) per batch."""
    # torch's Beta takes no generator: a seed drawn from ours seeds numpy's, so the draw is reproducible.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    weight = float(np.random.default_rng(seed).beta(alpha, alpha))
    order = torch.randperm(len(x), generator=generator).to(x.device)
    one_hot = F.one_hot(y, num_classes).to(x.dtype)
    return weight * x + (1 - weight) * x[order], weight * one_hot + (1 - weight) * one_hot[order]


def projected_gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L∞ PGD from a uniform random start: images within ``epsilon`` of ``x`` (and in [0, 1]) that raise the loss.

    The model crafts in eval mode (batch norm neither uses nor updates batch statistics) and goes
    back to its mode after; its parameters' gradients are left alone.
    """
    was_training = model.training
    model.eval()
    x = x.detach()
    start = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype) * epsilon
    adversarial = (x + start).clamp(0, 1)
    try:
        for _ in range(steps):
            adversarial.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(adversarial), y)
                (gradient,) = torch.autograd.grad(loss, adversarial)
            stepped = adversarial.detach() + step_size * gradient.sign()
            adversarial = torch.minimum(torch.maximum(stepped, x - epsilon), x + epsilon).clamp(0, 1)
    finally:
        model.train(was_training)
    return adversarial.detach()


def last_linear_name(model: nn.Module) -> str:
    """The name of ``model``'s last ``nn.Linear`` (its final layer, in dpsnn's architectures)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Linear layer to retrain")
    return names[-1]


def _num_classes(model: nn.Module) -> int:
    """``model.num_classes`` when it says, else the width of its last Linear layer."""
    declared = getattr(model, "num_classes", None)
    return int(declared) if declared else model.get_submodule(last_linear_name(model)).out_features


# -- the recipe seam ---------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Base of every recipe spec: a frozen dataclass registered by name; every hook does nothing by default."""

    name: ClassVar[str] = ""
    obeys_rules: ClassVar[bool] = True  # False only when it uses clean data
    needs: ClassVar[tuple[str, ...]] = ()  # the clean splits train_with_recipe must be given
    selects_by: ClassVar[str | None] = None  # the validation metric whose best epoch is kept; None: the last

    def prepare(self, images: Tensor) -> Tensor:
        """The training images to train on, made once from the poisoned ones."""
        return images

    def test_view(self, images: Tensor) -> Tensor:
        """How the model sees validation and test images."""
        return images

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch ``(x, targets)``: targets are class indices or rows of class probabilities."""
        return x, y

    def check_splits(self, splits: Mapping[str, Split | None]) -> None:
        """Raise :class:`ConfigError` when a clean split the recipe needs is missing."""
        for needed in self.needs:
            if splits.get(needed) is None:
                raise ConfigError(f"recipe '{self.name}' trains with clean data: pass a clean split as {needed}")

    def finish(self, module: RecipeClassifier, clean_extra: Split | None, batch_size: int, progress: bool) -> None:
        """Change the trained ``module`` once training on the poisoned data is over."""

    # -- names and plain data -------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The parameters as plain data, in field order."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def spec(self) -> str:
        """The canonical text, which :func:`recipe_from` parses back: ``jpeg(quality=10)``, ``plain``."""
        params = ",".join(f"{k}={value_text(v)}" for k, v in self.params().items())
        return f"{self.name}({params})" if params else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    def key(self) -> str:
        """A short, file-name-safe name."""
        return self.name

    def label(self) -> str:
        """How tables and legends name it."""
        return self.name


RECIPES: dict[str, type[Recipe]] = {}
R = TypeVar("R", bound=type[Recipe])


def register_recipe(name: str) -> Callable[[R], R]:
    """Class decorator: register a recipe spec (a frozen dataclass) under ``name``."""
    return spec_registrar(RECIPES, "recipe")(name)


def recipe_names() -> list[str]:
    """Every registered recipe name, sorted."""
    return sorted(RECIPES)


def recipe_from(spec: Recipe | str | Mapping[str, Any]) -> Recipe:
    """A recipe from a spec, its text (``jpeg:quality=10``, ``jpeg(quality=10)``, ``plain``) or plain-data dict."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Mapping):
        name, params = spec.get("name"), spec.get("params")
    else:
        name, params = parse_spec_text(str(spec), "recipe")
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}'; choose from {', '.join(recipe_names())}")
    return build_spec(RECIPES[name], "recipe", params)


# -- the recipes -------------------------------------------------------------------------


@register_recipe("plain")
@dataclass(frozen=True)
class Plain(Recipe):
    """Train for a fixed number of epochs and keep the last: the baseline every other recipe changes."""

    def label(self) -> str:
        return "plain (last epoch)"


@register_recipe("early-stop")
@dataclass(frozen=True)
class EarlyStop(Recipe):
    """Keep the epoch of best accuracy on the validation split, which is poisoned like the training set."""

    selects_by: ClassVar[str | None] = "val_acc"

    def label(self) -> str:
        return "early stop (poisoned val)"


@register_recipe("oracle-early-stop")
@dataclass(frozen=True)
class OracleEarlyStop(Recipe):
    """Keep the epoch of best accuracy on a clean validation split: outside the rules, the ceiling of early stopping."""

    obeys_rules: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ("clean_val",)
    selects_by: ClassVar[str | None] = "clean_val_acc"

    def label(self) -> str:
        return "early stop (clean val, oracle)"


@register_recipe("grayscale")
@dataclass(frozen=True)
class Grayscale(Recipe):
    """Average every image's channels, in training and at test time alike; the identity on 1-channel data."""

    def prepare(self, images: Tensor) -> Tensor:
        return to_grayscale(images)

    def test_view(self, images: Tensor) -> Tensor:
        return to_grayscale(images)


@register_recipe("jpeg")
@dataclass(frozen=True)
class Jpeg(Recipe):
    """Re-encode the training images as JPEG at ``quality`` (1-100), once; clean test images are left as they are."""

    quality: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "quality", _check_int(self.quality, "JPEG quality", 1, 100))

    def prepare(self, images: Tensor) -> Tensor:
        return jpeg_compress(images, self.quality)

    def key(self) -> str:
        return f"jpeg-q{self.quality}"

    def label(self) -> str:
        return f"JPEG q={self.quality}"


@register_recipe("binarise")
@dataclass(frozen=True)
class Binarise(Recipe):
    """Set every pixel to 1 above ``threshold`` (in (0, 1)), else to 0, in training and at test time alike."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        threshold = _check_positive(self.threshold, "binarise threshold", high=1.0)
        if threshold >= 1:
            raise ConfigError(f"binarise threshold must be a number in (0, 1), got {self.threshold!r}")
        object.__setattr__(self, "threshold", threshold)

    def prepare(self, images: Tensor) -> Tensor:
        return binarise(images, self.threshold)

    def test_view(self, images: Tensor) -> Tensor:
        return binarise(images, self.threshold)

    def key(self) -> str:
        return f"binarise-t{format_number(self.threshold)}"

    def label(self) -> str:
        return f"binarise at {self.threshold:g}"


@register_recipe("cutout")
@dataclass(frozen=True)
class Cutout(Recipe):
    """Zero a random ``size``×``size`` square in each training image; ``None`` (auto): 8/28 of the image side."""

    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", _check_int(self.size, "cutout size", 1))

    def side(self, height: int, width: int) -> int:
        """The square's side on ``height``×``width`` images."""
        return self.size if self.size is not None else max(1, round(CUTOUT_FRACTION * min(height, width)))

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return cutout(x, self.side(*x.shape[2:]), generator), y

    def key(self) -> str:
        return f"cutout-s{self.size if self.size is not None else 'auto'}"

    def label(self) -> str:
        return f"cutout {self.size} px" if self.size is not None else "cutout"


@register_recipe("mixup")
@dataclass(frozen=True)
class Mixup(Recipe):
    """Train on mixtures of pairs of images and of their one-hot labels, λ ~ Beta(``alpha``, ``alpha``)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_positive(self.alpha, "mixup alpha"))

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return mixup(x, y, _num_classes(model), self.alpha, generator)

    def key(self) -> str:
        return f"mixup-a{format_number(self.alpha)}"

    def label(self) -> str:
        return f"mixup α={self.alpha:g}"


@register_recipe("adversarial")
@dataclass(frozen=True)
class Adversarial(Recipe):
    """Train on L∞ PGD examples of radius ``epsilon`` (``steps`` steps of 2.5·ε/steps from a random start)."""

    epsilon: float = 0.3
    steps: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_positive(self.epsilon, "adversarial epsilon", high=1.0))
        object.__setattr__(self, "steps", _check_int(self.steps, "adversarial steps", 1))

    @property
    def step_size(self) -> float:
        return 2.5 * self.epsilon / self.steps

    def batch(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return projected_gradient_descent(model, x, y, self.epsilon, self.steps, self.step_size, generator), y

    def key(self) -> str:
        return f"adversarial-eps{format_number(self.epsilon)}-steps{self.steps}"

    def label(self) -> str:
        return f"PGD ε={self.epsilon:.3g}, {self.steps} steps"


@register_recipe("last-layer")
@dataclass(frozen=True)
class LastLayer(Recipe):
    """After training on the poisoned data, refit the final Linear layer, from scratch, on ``clean_size`` clean images.

    The rest of the network is frozen, batch norm included (its running statistics stay those
    of the poisoned data); the layer trains for ``head_epochs`` epochs. Outside the rules.
    """

    clean_size: int = 1000
    head_epochs: int = 20

    obeys_rules: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ("clean_extra",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clean_size", _check_int(self.clean_size, "last-layer clean_size", 1))
        object.__setattr__(self, "head_epochs", _check_int(self.head_epochs, "last-layer head_epochs", 1))

    def check_splits(self, splits: Mapping[str, Split | None]) -> None:
        super().check_splits(splits)
        available = len(splits["clean_extra"])
        if available < self.clean_size:
            raise ConfigError(
                f"recipe 'last-layer' retrains on {self.clean_size} clean images, but clean_extra holds {available}"
            )

    def finish(self, module: RecipeClassifier, clean_extra: Split | None, batch_size: int, progress: bool) -> None:
        clean = clean_extra.subset(self.clean_size)
        with module.head_only():
            _fit(module, clean, self.head_epochs, batch_size, module.hparams.seed, progress)

    def key(self) -> str:
        return f"last-layer-n{self.clean_size}-e{self.head_epochs}"

    def label(self) -> str:
        return f"last layer on {self.clean_size} clean"


# -- training ----------------------------------------------------------------------------


class RecipeClassifier(_Classifier):
    """``net`` trained with ``recipe``: the recipe's ``batch`` changes training batches only.

    The loss is cross-entropy against class indices or rows of class probabilities (mixup);
    accuracy is against the most likely class of the targets. Its inputs are images as the
    recipe's ``test_view`` shows them.
    """

    def __init__(self, net: nn.Module, recipe: Recipe, num_classes: int, learning_rate: float = 1e-3, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(
            {
                "recipe": recipe.spec(),
                "num_classes": int(num_classes),
                "learning_rate": float(learning_rate),
                "seed": seed,
            }
        )
        self.net = net
        self.recipe = recipe
        self.num_classes = int(num_classes)
        self.generator = torch.Generator().manual_seed(seed)  # the recipe's batch randomness
        self._head_only: str | None = None  # the one layer that trains, inside head_only()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, targets = batch
        if self.training:
            x, targets = self.recipe.batch(self, x, targets, self.generator)
        logits = self(x)
        classes = targets if targets.dim() == 1 else targets.argmax(dim=1)
        return {"loss": F.cross_entropy(logits, targets), "acc": (logits.argmax(dim=1) == classes).float().mean()}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        stage = VAL_STAGES[dataloader_idx]
        measured = self._step(batch)
        for key, value in measured.items():
            self.log(f"{stage}_{key}", value, on_epoch=True, prog_bar=key == "acc", add_dataloader_idx=False)
        return measured["loss"]

    def on_train_epoch_start(self) -> None:
        if self._head_only is not None:  # the frozen rest in eval mode: batch norm keeps its statistics
            self.net.eval()
            self.net.get_submodule(self._head_only).train()

    @contextmanager
    def head_only(self) -> Iterator[None]:
        """Inside the block, only the final Linear layer trains, re-initialised; the rest is frozen."""
        name = last_linear_name(self.net)
        head = self.net.get_submodule(name)
        head.reset_parameters()
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        self._head_only = name
        try:
            yield
        finally:
            self._head_only = None
            for parameter in self.net.parameters():
                parameter.requires_grad_(True)


def _fit(
    module: RecipeClassifier,
    train: Split,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
    val_loaders: Sequence[Any] = (),
    callbacks: Sequence[L.Callback] = (),
) -> None:
    """Fit ``module`` on ``train``, validating on ``val_loaders`` (if any) for ``callbacks``; leave it in eval mode."""
    trainer = make_trainer(epochs, progress, log_name="recipe", callbacks=list(callbacks))
    module.use_train_loader(train.loader(batch_size, shuffle=True, seed=seed))
    module.train()
    with warnings.catch_warnings():  # validation runs only when it selects an epoch
        warnings.filterwarnings("ignore", message=NO_VALIDATION_WARNING)
        trainer.fit(module, val_dataloaders=list(val_loaders) or None)
    module.eval()


@dataclass
class RecipeResult:
    """What one training run gave, as plain numbers (callers write them to CSV).

    ``best_epoch`` is the epoch (from 0) the recipe selected by validation accuracy, None when it
    keeps the last of ``epochs``. ``test_acc`` is the clean test accuracy, ``test_acc_se`` its
    binomial standard error ``sqrt(p(1-p)/n)``.
    """

    recipe: str
    architecture: str
    seed: int
    epochs: int
    best_epoch: int | None
    test_acc: float
    test_acc_se: float
    poisoned_val_acc: float
    clean_val_acc: float | None


def _accuracy(module: nn.Module, split: Split) -> float:
    return float((predict(module, split.images, EVAL_BATCH_SIZE) == split.labels).float().mean())


def _view(recipe: Recipe, split: Split | None) -> Split | None:
    return None if split is None else Split(recipe.test_view(split.images), split.labels)


def train_with_recipe(
    recipe: Recipe | str | Mapping[str, Any],
    train: Split,
    val: Split,
    test: Split,
    num_classes: int,
    architecture: str = "reference",
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    clean_val: Split | None = None,
    clean_extra: Split | None = None,
) -> tuple[nn.Module, RecipeResult]:
    """Train ``nn.Sequential(client, server)`` of ``architecture`` on the poisoned ``train`` split with ``recipe``.

    ``val`` is poisoned like ``train``; ``test`` is clean. ``clean_val`` and ``clean_extra`` are
    clean splits for the recipes outside the rules (``oracle-early-stop``, ``last-layer``); a
    given ``clean_val`` is also scored. Adam at ``learning_rate``; the same ``seed`` gives the same
    model. Returns the trained :class:`RecipeClassifier` (in eval mode; its inputs go through
    ``recipe.test_view``) and its :class:`RecipeResult`.
    """
    settings = (architecture, epochs, batch_size, learning_rate, seed, progress)
    module, (result,) = _train([recipe_from(recipe)], train, val, test, num_classes, settings, clean_val, clean_extra)
    return module, result


def trains_plainly(recipe: Recipe | str | Mapping[str, Any]) -> bool:
    """Whether ``recipe`` trains exactly as ``plain`` does (same images, batches and views), differing only in
    the epoch it keeps (``selects_by``) and what it does afterwards (``finish``): such recipes can share a run."""
    kind = type(recipe_from(recipe))
    return all(getattr(kind, hook) is getattr(Recipe, hook) for hook in ("prepare", "test_view", "batch"))


def train_with_recipes(
    recipes: Sequence[Recipe | str | Mapping[str, Any]],
    train: Split,
    val: Split,
    test: Split,
    num_classes: int,
    architecture: str = "reference",
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    clean_val: Split | None = None,
    clean_extra: Split | None = None,
) -> list[RecipeResult]:
    """:func:`train_with_recipe` for several recipes that :func:`trains_plainly`, from one training run.

    ``plain``, ``early-stop``, ``oracle-early-stop`` and ``last-layer`` train the same network on
    the same batches; they differ only in the epoch they keep and, for ``last-layer``, a head
    refitted afterwards. One run validates on what the recipes select by, keeps each one's
    epoch, then finishes and scores each recipe from its own epoch's weights, with the global
    random state each would have had after its own run. The results equal those of separate
    runs (the tests check it) at a fraction of the cost. Returns one result per recipe, in order.
    """
    recipes = [recipe_from(recipe) for recipe in recipes]
    shared = [recipe.spec() for recipe in recipes if not trains_plainly(recipe)]
    if shared:
        raise ConfigError(f"recipes {', '.join(shared)} change the training itself: train them with train_with_recipe")
    settings = (architecture, epochs, batch_size, learning_rate, seed, progress)
    return _train(recipes, train, val, test, num_classes, settings, clean_val, clean_extra)[1]


def _train(
    recipes: list[Recipe],
    train: Split,
    val: Split,
    test: Split,
    num_classes: int,
    settings: tuple[str, int, int, float, int, bool],
    clean_val: Split | None,
    clean_extra: Split | None,
) -> tuple[RecipeClassifier, list[RecipeResult]]:
    """One training run for one recipe, or for several that train alike (the first's views serve all).

    ``settings`` are ``(architecture, epochs, batch_size, learning_rate, seed, progress)``.
    Validation runs only for the epochs the recipes select by, on loaders with their own
    generator, so validating draws nothing from the global one; each recipe is then finished
    from its own epoch's weights and the random state the run left, as if it had trained alone.
    The module is returned as the last recipe left it.
    """
    architecture, epochs, batch_size, learning_rate, seed, progress = settings
    epochs = _check_int(epochs, "the number of epochs", 1)
    train.require("poisoned train")
    val.require("poisoned val")
    test.require("clean test")
    for recipe in recipes:
        recipe.check_splits({"clean_val": clean_val, "clean_extra": clean_extra})
    first = recipes[0]
    L.seed_everything(seed, verbose=False)
    prepared = Split(first.prepare(train.images), train.labels)
    client, server = build_split(architecture, tuple(prepared.images.shape[1:]), num_classes)
    module = RecipeClassifier(nn.Sequential(client, server), first, num_classes, learning_rate, seed)
    val_view, clean_val_view, test_view = _view(first, val), _view(first, clean_val), _view(first, test)
    selectors = [stage for stage in VAL_STAGES if any(r.selects_by == f"{stage}_acc" for r in recipes)]
    keep = {f"{stage}_acc": BestWeights(f"{stage}_acc", "max") for stage in selectors}
    needed = max((VAL_STAGES.index(stage) for stage in selectors), default=-1)  # the loaders up to the last needed
    loaders = [split.loader(EVAL_BATCH_SIZE) for split in (val_view, clean_val_view)[: needed + 1]]
    for loader in loaders:  # validating draws no number from the global generator, as a run without it would not
        loader.generator = torch.Generator().manual_seed(seed)
    _fit(module, prepared, epochs, batch_size, seed, progress, loaders, list(keep.values()))
    last = copy.deepcopy(module.state_dict())
    after_training = torch.get_rng_state()
    results = []
    for recipe in recipes:
        chosen = keep[recipe.selects_by] if recipe.selects_by else None
        module.load_state_dict(chosen.best_state if chosen else last)
        module.recipe = recipe
        torch.set_rng_state(after_training)  # as if this recipe had trained alone
        recipe.finish(module, clean_extra, batch_size, progress)
        module.eval()
        test_acc = _accuracy(module, test_view)
        results.append(
            RecipeResult(
                recipe=recipe.spec(),
                architecture=canonical_architecture(architecture),
                seed=seed,
                epochs=epochs,
                best_epoch=chosen.best_epoch if chosen else None,
                test_acc=test_acc,
                test_acc_se=math.sqrt(test_acc * (1 - test_acc) / len(test)),
                poisoned_val_acc=_accuracy(module, val_view),
                clean_val_acc=None if clean_val_view is None else _accuracy(module, clean_val_view),
            )
        )
    return module, results
