"""Shadow models for membership inference, trained together (one stacked set of parameters, one vmapped step).

A membership attack imitates the target: it trains *shadow models* with the target's
recipe on data of its own, each on a known half of it, and learns from them how members
and non-members look. Training many small models one after another is the cost that
dominates, so :func:`train_shadows` trains them all at once: the shadows' parameters are
stacked (:func:`torch.func.stack_module_state`) and each optimiser step is one
:func:`torch.func.vmap` of :func:`torch.func.functional_call` over the stack, every shadow
on a mini-batch drawn from its own members. On the CPU, where vmap makes a convolutional
network's steps slower rather than faster, it trains such shadows one after another
instead (:func:`choose_strategy`; ``strategy=`` chooses by hand). Example::

    import torch
    from torch import nn
    from dpsnn.shadows import ShadowRecipe, member_masks, train_shadows

    images, labels = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    masks = member_masks(len(images), n_shadows=4)        # (4, 64): each example IN 2 shadows
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    shadows = train_shadows(make, images, labels, masks, ShadowRecipe(epochs=2, batch_size=16))
    shadows.logits(images).shape                          # (4, 64, 10)

The optimiser is ``torch.optim.Adam`` on the stacked leaf tensors. Adam is element-wise
(its moments, bias corrections and weight decay act on each element alone, with a step
count shared by all), and each shadow's parameters are a disjoint slice of the stack, so
one Adam over the stack makes exactly the updates of S separate Adams; the loss is the
sum of the shadows' mean losses, so each slice gets its own shadow's gradient. The tests
check this against :func:`train_shadows_one_by_one` (the same models, data order and
Adam, in a plain loop) to float tolerance.

What is written here by hand, and why: the per-shadow batch schedule (no sampler draws
mini-batches for many models from many member sets at once) and the vmapped step. The
shadows are trained on the cross-entropy of the whole forward pass (for a
:class:`~dpsnn.models.SplitNN`: client, wire noise, server) plus the loss terms of its
defences (NoPeek); defences that replace the optimiser (DP-SGD, suppress) are not
imitated. BatchNorm works: its running statistics are stacked buffers like the
parameters, and each shadow's slice is updated in place from its own batch (the tests
check it against the one-by-one loop too).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from dpsnn.errors import ConfigError, DataError

__all__ = [
    "ShadowModels",
    "ShadowRecipe",
    "STRATEGIES",
    "batch_schedule",
    "choose_strategy",
    "member_masks",
    "model_maker",
    "reset_copy",
    "EpochHook",
    "train_scheduled",
    "train_shadows",
    "train_shadows_one_by_one",
]

LOGITS_BATCH_SIZE = 1024


@dataclass(frozen=True)
class ShadowRecipe:
    """How each shadow model is trained: the target's recipe (Adam, a constant learning rate)."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"a shadow recipe needs epochs and batch size of at least 1, got {self}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"a shadow recipe's learning rate must be positive, got {self.learning_rate}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"a shadow recipe's weight decay must be non-negative, got {self.weight_decay}")


def reset_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with fresh weights: every submodule's ``reset_parameters`` called."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh.train()


def model_maker(target: nn.Module) -> Callable[[], nn.Module]:
    """Builds untrained models of ``target``'s architecture, a fresh one each call.

    A :class:`~dpsnn.models.SplitNN` of a registered architecture is rebuilt from its
    hyperparameters (the same architecture, wire and defences; new weights), as a
    checkpoint is; any other model is a deep copy with every ``reset_parameters`` called.
    """
    from dpsnn.models import CUSTOM, SplitNN

    if isinstance(target, SplitNN) and target.hparams.get("architecture") != CUSTOM:
        hyper_parameters = dict(target.hparams)
        device = next(target.parameters()).device
        return lambda: SplitNN(**hyper_parameters).to(device)
    return lambda: reset_copy(target)


def member_masks(n_examples: int, n_shadows: int, seed: int = 0) -> Tensor:
    """``(n_shadows, n_examples)`` bool: each example is IN exactly ``n_shadows // 2`` shadows (balanced, as LiRA).

    For each example a seeded random half of the shadows holds it, as in Carlini et
    al.'s code (``argsort`` of uniform draws over the shadows, the first half IN).
    """
    if n_shadows < 2:
        raise ConfigError(f"membership masks need at least 2 shadow models, got {n_shadows}")
    if n_examples < 1:
        raise DataError("membership masks need at least one example")
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(n_shadows, n_examples, generator=generator).argsort(dim=0)
    return order < n_shadows // 2


def _check_inputs(images: Tensor, labels: Tensor, masks: Tensor) -> None:
    if masks.dim() != 2 or masks.dtype != torch.bool:
        raise DataError(
            f"membership masks are a (shadows, examples) bool tensor, got {masks.dtype} {tuple(masks.shape)}"
        )
    if len(images) != len(labels) or masks.shape[1] != len(images):
        raise DataError(
            f"{len(images)} images, {len(labels)} labels and masks over {masks.shape[1]} examples do not match"
        )
    if len(masks) < 1:
        raise DataError("no shadow models to train: the masks have no rows")
    empty = (~masks.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"shadow model(s) {empty[:5]} have no member examples to train on")


def batch_schedule(masks: Tensor, batch_size: int, epochs: int, seed: int = 0) -> Tensor:
    """``(epochs, batches, S, batch_size)`` example indices: every shadow's mini-batches, from its own members.

    Each epoch, each shadow shuffles its members and the sequences are topped up to a
    common number of full batches (that of the largest member set) by cycling through a
    second shuffle, so a shadow with fewer members sees a few of them twice that epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    members = [row.nonzero().flatten() for row in masks.cpu()]
    batches = math.ceil(max(len(m) for m in members) / batch_size)
    length = batches * batch_size
    schedule = torch.empty(epochs, len(members), length, dtype=torch.long)
    for epoch in range(epochs):
        for shadow, indices in enumerate(members):
            draws = math.ceil(length / len(indices))
            order = torch.cat([indices[torch.randperm(len(indices), generator=generator)] for _ in range(draws)])
            schedule[epoch, shadow] = order[:length]
    return schedule.view(epochs, len(members), batches, batch_size).transpose(1, 2)


class ShadowModels:
    """Trained shadow models, stacked: ``logits(images)`` gives every shadow's logits at once.

    ``masks[s, i]`` is True when example ``i`` of the shadows' data was in shadow ``s``'s
    training set.
    """

    def __init__(self, base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], masks: Tensor) -> None:
        self.base = base  # a stateless copy of the architecture (on the meta device)
        self.params = {name: p.detach() for name, p in params.items()}
        self.buffers = {name: b.detach() for name, b in buffers.items()}
        self.masks = masks.cpu()

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = LOGITS_BATCH_SIZE) -> Tensor:
        """``(S, M, C)``: each shadow's logits on ``images``, in eval mode (wire noise still drawn), on the CPU."""
        self.base.eval()

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        every = vmap(one, in_dims=(0, 0, None), randomness="different")
        if len(images) == 0:  # one dummy image gives the class count
            return every(self.params, self.buffers, images.new_zeros((1, *images.shape[1:])).to(self.device)).cpu()[
                :, :0
            ]
        parts = [every(self.params, self.buffers, chunk.to(self.device)).cpu() for chunk in images.split(batch_size)]
        return torch.cat(parts, dim=1)

    def module(self, index: int) -> nn.Module:
        """Shadow ``index`` as an ordinary module (a copy, on the shadows' device)."""
        model = copy.deepcopy(self.base).to_empty(device=self.device)
        state = {name: t[index].clone() for name, t in {**self.params, **self.buffers}.items()}
        model.load_state_dict(state, strict=False)
        return model.eval()


def _build(make_model: Callable[[], nn.Module], count: int, seed: int) -> list[nn.Module]:
    torch.manual_seed(seed)
    models = [make_model() for _ in range(count)]
    for model in models:
        model.train()
    return models


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The training loss of ``model`` on one batch: cross-entropy, plus a split network's defence loss terms."""
    if not all(hasattr(model, part) for part in ("client", "wire", "server", "loss_terms")):
        return F.cross_entropy(model(x), y)
    h = model.client(x)
    logits = model.server(model.wire(h))
    loss = F.cross_entropy(logits, y)
    for term in model.loss_terms(x, h, logits, y).values():  # the defences' terms, as the model's own step adds them
        loss = loss + term
    return loss


class _Functional(nn.Module):
    """Calls :func:`_loss` on the wrapped model, so that ``functional_call`` can swap its parameters in."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return _loss(self.model, x, y)


def _prefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"model.{name}": t for name, t in tensors.items()}


STRATEGIES = ("auto", "together", "one-by-one")


def choose_strategy(model: nn.Module) -> str:
    """``"together"`` unless ``model`` is convolutional and on the CPU, where ``"one-by-one"`` is faster.

    Measured by ``benchmarks/bench_shadows.py`` on the idle CPU: the vmapped step is about 2.7× faster
    than the loop for a two-layer perceptron, but about 2.4× slower for the reference split
    network (vmap runs its convolutions per shadow, with the stacking as extra work). On a GPU
    the stacked step is the fast one.
    """
    if getattr(model, "companions", ()):
        return "one-by-one"  # a proxy attacker takes optimiser steps of its own: no vmapped step can hold it
    parameter = next(model.parameters(), None)
    on_cpu = parameter is None or parameter.device.type == "cpu"
    convolutional = any(isinstance(module, nn.modules.conv._ConvNd) for module in model.modules())
    return "one-by-one" if on_cpu and convolutional else "together"


def train_shadows(
    make_model: Callable[[], nn.Module],
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    recipe: ShadowRecipe = ShadowRecipe(),
    seed: int = 0,
    progress: bool = False,
    strategy: str = "auto",
) -> ShadowModels:
    """Train ``len(masks)`` models from ``make_model()``, shadow ``s`` on ``images[masks[s]]``.

    ``strategy`` ``"together"``: one stacked set of parameters and one vmapped forward and
    backward per step (``randomness="different"``: each shadow draws its own dropout and wire
    noise); ``"one-by-one"``: the same models, data order and Adam in a plain loop, one model
    after another; ``"auto"`` (default): :func:`choose_strategy`. Each shadow's mini-batches
    come from its own members (:func:`batch_schedule`). The models are built after
    ``torch.manual_seed(seed)``, on the device ``make_model`` puts them on; the images follow
    them there.
    """
    _check_inputs(images, labels, masks)
    models = _build(make_model, len(masks), seed)
    schedule = batch_schedule(masks, recipe.batch_size, recipe.epochs, seed)
    torch.manual_seed(seed)
    base, params, buffers = train_scheduled(models, images, labels, schedule, recipe, strategy, progress)
    return ShadowModels(base, params, buffers, masks)


def train_shadows_one_by_one(
    make_model: Callable[[], nn.Module],
    images: Tensor,
    labels: Tensor,
    masks: Tensor,
    recipe: ShadowRecipe = ShadowRecipe(),
    seed: int = 0,
    progress: bool = False,
) -> ShadowModels:
    """:func:`train_shadows` with ``strategy="one-by-one"``: the benchmark and the tests compare the two."""
    return train_shadows(make_model, images, labels, masks, recipe, seed, progress, strategy="one-by-one")


#: Called after every epoch: ``(epoch, model indices, their stacked parameters, their stacked buffers)``.
EpochHook = Callable[[int, list[int], dict[str, Tensor], dict[str, Tensor]], None]


def train_scheduled(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    schedule: Tensor,
    recipe: ShadowRecipe,
    strategy: str = "auto",
    progress: bool = False,
    on_epoch: EpochHook | None = None,
    desc: str = "shadow models",
) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    """Train built ``models`` on ``schedule`` (``(epochs, batches, S, B)`` indices into ``images``, as
    :func:`batch_schedule` makes) with Adam at ``recipe``'s rate, together or one by one.

    The engine under :func:`train_shadows`, for callers with a schedule of their own (the MICO
    build: each model's batch order from its own seed). Returns a stateless copy of the
    architecture and the trained, stacked parameters and buffers. ``on_epoch`` sees the
    models after each of their epochs: all of them at once when trained together, one at a
    time (its index alone) when one by one. Random draws inside the models (dropout, wire
    noise) come from torch's global generator, seeded by the caller. ``desc`` names the progress bar
    (shown with ``progress``, over epochs).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown shadow training strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if schedule.dim() != 4 or schedule.shape[2] != len(models):
        raise DataError(
            f"a schedule for {len(models)} models is (epochs, batches, {len(models)}, batch), "
            f"got {tuple(schedule.shape)}"
        )
    if strategy == "auto":
        strategy = choose_strategy(models[0])
    if strategy == "together" and getattr(models[0], "companions", ()):
        raise ConfigError("models whose defence trains a proxy attacker beside them (adversarial) train one by one")
    train = _train_together if strategy == "together" else _train_one_by_one
    return train(models, images, labels, schedule, recipe, progress, on_epoch, desc)


def _train_together(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    schedule: Tensor,
    recipe: ShadowRecipe,
    progress: bool,
    on_epoch: EpochHook | None,
    desc: str = "shadow models",
) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    params, buffers = stack_module_state(models)
    params = {name: p.detach().requires_grad_() for name, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    wrapped = _Functional(base)
    device = next(iter(params.values())).device
    images, labels = images.to(device), labels.to(device)
    optimizer = torch.optim.Adam(params.values(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)

    def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return functional_call(wrapped, (_prefixed(params), _prefixed(buffers)), (x, y))

    step_losses = vmap(one, randomness="different")
    everyone = list(range(len(models)))
    for epoch, epoch_batches in enumerate(_epochs(schedule, progress, desc)):
        base.train()
        for indices in epoch_batches:  # (S, B)
            indices = indices.to(device)
            losses = step_losses(params, buffers, images[indices], labels[indices])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # disjoint slices: each shadow's parameters get its own loss's gradient
            optimizer.step()
        if on_epoch is not None:
            with torch.no_grad():
                on_epoch(epoch, everyone, {n: p.detach() for n, p in params.items()}, buffers)
    return base, {n: p.detach() for n, p in params.items()}, buffers


def _train_one_by_one(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    schedule: Tensor,
    recipe: ShadowRecipe,
    progress: bool,
    on_epoch: EpochHook | None,
    desc: str = "shadow models",
) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    device = next(models[0].parameters()).device
    images, labels = images.to(device), labels.to(device)
    for shadow, model in enumerate(models):
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        for epoch, epoch_batches in enumerate(_epochs(schedule, progress and shadow == 0, desc)):
            model.train()
            for indices in epoch_batches[:, shadow]:  # (B,)
                indices = indices.to(device)
                loss = _loss(model, images[indices], labels[indices])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if on_epoch is not None:
                with torch.no_grad():
                    state = {n: t.detach().unsqueeze(0) for n, t in model.named_parameters()}
                    buffers = {n: b.unsqueeze(0) for n, b in model.named_buffers()}
                    on_epoch(epoch, [shadow], state, buffers)
    params, buffers = stack_module_state(models)
    return copy.deepcopy(models[0]).to("meta"), params, buffers


def _epochs(schedule: Tensor, progress: bool, desc: str) -> Tensor | object:
    if not progress:
        return schedule
    from tqdm.auto import tqdm

    return tqdm(schedule, desc=desc, unit="epoch")
