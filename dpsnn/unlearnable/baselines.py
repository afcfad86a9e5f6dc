"""The two baselines of the Neural Tangent Generalization Attack: random noise and error-minimising noise.

Both take a whole training set and return poisoned copies of its images, each pixel within
an L∞ budget ``ε`` of the original and inside ``[0, 1]``:

* :func:`random_noise` adds uniform noise in ``[-ε, ε]``. It is the control: noise of the same
  size that carries no information, so a network trained on it should generalise as well as
  on the clean images.
* :func:`error_minimising_noise` is the sample-wise "unlearnable examples" noise of Huang et
  al. (ICLR 2021, "Unlearnable Examples: Making Personal Data Unexploitable"). It solves the
  min-min problem ``min_θ min_δ loss(f_θ(x + δ), y)`` with ``‖δ‖∞ ≤ ε`` by alternating: train a
  surrogate network for ``train_steps`` batches on ``(x + δ, y)``, then move every image's
  ``δ`` by ``pgd_steps`` steps of projected signed-gradient *descent* on the loss; stop when
  the surrogate classifies the poisoned set with accuracy ``stop_accuracy`` (99%) or after
  ``max_rounds`` rounds. The noise becomes a shortcut: it alone predicts the label, so a
  network trained on the poisoned images learns the noise instead of the images.

What is hand-written, and why: no maintained PyTorch library implements sample-wise
error-minimising noise (the authors' code is a research repository; attack libraries such as
torchattacks and ART only *maximise* the loss). The procedure is a short loop; it follows the
published one (uniform start, signed steps of ``ε / 10``, 20 PGD steps per round, 10 model
batches between noise updates, SGD with momentum 0.9 and weight decay 5e-4, accuracy over
the whole poisoned set as the stopping rule). The surrogate is a registered split
architecture (:mod:`dpsnn.architectures`) with client and server composed. With
``state_dir``, every finished round is saved so that a killed run resumes. Example::

    import torch
    from dpsnn.unlearnable.baselines import ErrorMinimising, error_minimising_noise, random_noise

    images = torch.rand(256, 1, 28, 28)
    labels = torch.randint(0, 10, (256,))
    control = random_noise(images, epsilon=0.3, seed=0)
    config = ErrorMinimising(epsilon=0.3, pgd_steps=3, train_steps=4, max_rounds=3, batch_size=64)
    poisoned = error_minimising_noise(images, labels, num_classes=10, config=config, seed=0)
    assert (poisoned - images).abs().max() <= 0.3 + 1e-6
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from dpsnn.architectures import build_split, parse_architecture
from dpsnn.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from dpsnn.files import atomic_path

__all__ = ["STATE_FILE", "ErrorMinimising", "error_minimising_noise", "random_noise"]

STATE_FILE = "error_minimising.pt"  # the file in ``state_dir`` that holds the last finished round
_STATE_VERSION = 1
_MOMENTUM, _WEIGHT_DECAY = 0.9, 5e-4  # Huang et al.'s SGD


# -- checks (defined first: the default ErrorMinimising() in a signature below runs them) --------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_seed(seed: int) -> None:
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ConfigError(f"seed must be a non-negative whole number, got {seed!r}")


def _check_epsilon(epsilon: float) -> None:
    if not (_is_number(epsilon) and 0 < epsilon <= 1):
        raise ConfigError(f"epsilon must be a number in (0, 1] (pixels lie in [0, 1]), got {epsilon!r}")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        described = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
        raise DataError(f"images must be a float tensor of shape (N, C, H, W), got {described}")
    if len(images) == 0:
        raise DataError("images must hold at least one image, got none")
    low, high = float(images.min()), float(images.max())
    if not (0.0 <= low and high <= 1.0):  # also refuses NaN
        raise DataError(f"images must lie in [0, 1], got values in [{low}, {high}]; divide by 255 first")


def _check_labels(labels: Tensor, count: int, num_classes: int) -> None:
    if (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        described = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels)
        raise DataError(f"labels must be a 1-d tensor of class indices, got {described}")
    if len(labels) != count:
        raise DataError(f"labels must have one entry per image ({count}), got {len(labels)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(
            f"labels must be class indices in [0, {num_classes}), got values in [{int(labels.min())}, "
            f"{int(labels.max())}]; check num_classes"
        )


# -- the baselines ---------------------------------------------------------------------------


def random_noise(images: Tensor, epsilon: float, seed: int = 0) -> Tensor:
    """``images`` + uniform noise in ``[-ε, ε]`` per pixel (seeded), clipped to ``[0, 1]``.

    The noise is drawn on the CPU, so a seed gives the same noise on every device.
    """
    _check_epsilon(epsilon)
    _check_seed(seed)
    _check_images(images)
    return (images + _uniform(images, epsilon, seed)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class ErrorMinimising:
    """The settings of :func:`error_minimising_noise`; the defaults are Huang et al.'s, with MNIST's ``ε = 0.3``.

    ``step_size`` is the size of one signed PGD step (``None``: ``epsilon / 10``, as the
    published 0.8/255 for 8/255). A round trains the surrogate ``architecture`` for
    ``train_steps`` batches of ``batch_size`` poisoned images, then updates every image's
    noise by ``pgd_steps`` steps. The run stops once the surrogate's accuracy on the whole
    poisoned set reaches ``stop_accuracy``, or after ``max_rounds`` rounds.
    """

    epsilon: float = 0.3
    step_size: float | None = None
    pgd_steps: int = 20
    train_steps: int = 10
    stop_accuracy: float = 0.99
    max_rounds: int = 20
    architecture: str = "reference"
    batch_size: int = 512
    learning_rate: float = 0.1

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon)
        if self.step_size is not None and not (_is_number(self.step_size) and 0 < self.step_size <= self.epsilon):
            raise ConfigError(
                f"step_size must be a number in (0, epsilon={self.epsilon}] or None for epsilon / 10, "
                f"got {self.step_size!r}"
            )
        for name in ("pgd_steps", "train_steps", "max_rounds", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not (_is_number(self.stop_accuracy) and 0 < self.stop_accuracy <= 1):
            raise ConfigError(f"stop_accuracy must be a fraction in (0, 1], got {self.stop_accuracy!r}")
        if not (_is_number(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not isinstance(self.architecture, str):
            raise ConfigError(f"architecture must be the name of a registered architecture, got {self.architecture!r}")
        parse_architecture(self.architecture)  # ConfigError naming the choices when unknown

    @property
    def step(self) -> float:
        """The PGD step size in use: ``step_size``, or ``epsilon / 10`` when it is ``None``."""
        return self.epsilon / 10 if self.step_size is None else float(self.step_size)


def error_minimising_noise(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    config: ErrorMinimising = ErrorMinimising(),
    seed: int = 0,
    progress: bool = False,
    state_dir: str | Path | None = None,
) -> Tensor:
    """Sample-wise error-minimising noise (Huang et al., ICLR 2021, "Unlearnable Examples"): returns poisoned images.

    ``images`` are ``(N, C, H, W)`` floats in ``[0, 1]`` and ``labels`` ``N`` class indices
    below ``num_classes``; the result has the images' shape, device and dtype, lies in
    ``[0, 1]`` and within ``config.epsilon`` of ``images`` per pixel. Everything random (the
    surrogate's initialisation, the starting noise, the order of the training batches) comes
    from ``seed``, in independent streams (the surrogate is initialised by ``torch.manual_seed(seed)``,
    the other two from seeds that :class:`numpy.random.SeedSequence` derives); the global random
    state is left as it was. ``progress`` shows a tqdm bar of
    the rounds and the surrogate's accuracy.

    With ``state_dir``, the round number, the noise, the surrogate and its optimiser are saved
    to ``state_dir / STATE_FILE`` (atomically) after every round, and a later call with the
    same images, labels, seed and settings resumes from the last finished round: the result
    is the one an uninterrupted run gives. ``max_rounds`` and ``stop_accuracy`` may differ
    between the calls (a finished run is continued when they ask for more). The file of a
    finished run is *left* in place, so calling again returns at once; delete it to start
    over. A file written for other images, labels, seed or settings is refused
    (:class:`DataError`, :class:`ConfigError`) rather than used.
    """
    if not isinstance(config, ErrorMinimising):
        raise ConfigError(f"config must be an ErrorMinimising, got {type(config).__name__}")
    _check_images(images)
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2):
        raise ConfigError(f"num_classes must be a whole number of at least 2, got {num_classes!r}")
    _check_labels(labels, len(images), num_classes)
    _check_seed(seed)
    device = images.device
    labels = labels.to(device=device, dtype=torch.long)
    x = images.detach()

    model = _surrogate(config.architecture, tuple(x.shape[1:]), num_classes, seed).to(device=device, dtype=x.dtype)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=_MOMENTUM, weight_decay=_WEIGHT_DECAY
    )
    noise_seed, batch_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64))
    delta = (x + _uniform(x, config.epsilon, noise_seed)).clamp(0.0, 1.0) - x
    batches = _Batches(len(x), min(config.batch_size, len(x)), batch_seed)
    rounds_done, accuracy = 0, 0.0

    state_path = None if state_dir is None else Path(state_dir) / STATE_FILE
    fingerprint = _fingerprint(x, labels, num_classes, config, seed)
    if state_path is not None and state_path.exists():
        state = _read_state(state_path, fingerprint)
        rounds_done, accuracy = int(state["round"]), float(state["accuracy"])
        if rounds_done > config.max_rounds:
            raise ConfigError(
                f"{state_path} holds round {rounds_done}, past max_rounds={config.max_rounds}; raise max_rounds "
                "or delete the file to start over"
            )
        delta = state["delta"].to(device=device, dtype=x.dtype)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        batches.load_state_dict(state["batches"])

    bar = tqdm(
        total=config.max_rounds, initial=rounds_done, desc="error-minimising noise", unit="round", disable=not progress
    )
    with bar:
        if rounds_done:
            bar.set_postfix(round=rounds_done, accuracy=f"{accuracy:.4f}")
        while rounds_done < config.max_rounds and not (rounds_done and accuracy >= config.stop_accuracy):
            _train(model, optimiser, x, delta, labels, batches, config.train_steps)
            delta = _descend(model, x, delta, labels, config, f"round {rounds_done + 1}: noise", progress)
            accuracy = _accuracy(model, (x + delta).clamp(0.0, 1.0), labels, config.batch_size)
            rounds_done += 1
            if state_path is not None:
                _write_state(state_path, fingerprint, rounds_done, accuracy, delta, model, optimiser, batches)
            bar.update(1)
            bar.set_postfix(round=rounds_done, accuracy=f"{accuracy:.4f}")
    return (x + delta).clamp(0.0, 1.0)


# -- the procedure ---------------------------------------------------------------------------


def _surrogate(architecture: str, shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Sequential:
    """Client and server of ``architecture`` composed, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        client, server = build_split(architecture, shape, num_classes)
    return nn.Sequential(client, server)


class _Batches:
    """Training batches: shuffled epochs of ``batch_size`` indices, the last incomplete one dropped (as a loader)."""

    def __init__(self, count: int, batch_size: int, seed: int) -> None:
        self.count, self.batch_size = count, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(count, generator=self.generator)
        self.position = 0

    def take(self) -> Tensor:
        """The indices of the next batch."""
        if self.position + self.batch_size > self.count:
            self.order, self.position = torch.randperm(self.count, generator=self.generator), 0
        self.position += self.batch_size
        return self.order[self.position - self.batch_size : self.position]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], int(state["position"])


def _train(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    x: Tensor,
    delta: Tensor,
    labels: Tensor,
    batches: _Batches,
    steps: int,
) -> None:
    """``steps`` SGD steps of the surrogate on batches of the poisoned images."""
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            index = batches.take().to(x.device)
            loss = F.cross_entropy(model((x[index] + delta[index]).clamp(0.0, 1.0)), labels[index])
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the surrogate's training loss became {loss.item()}; lower learning_rate "
                    f"(now {optimiser.param_groups[0]['lr']})"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()


def _descend(
    model: nn.Module,
    x: Tensor,
    delta: Tensor,
    labels: Tensor,
    config: ErrorMinimising,
    description: str = "noise",
    progress: bool = False,
) -> Tensor:
    """``pgd_steps`` signed-gradient descent steps on every image's noise, projected to the budget and ``[0, 1]``.

    With ``progress``, a bar over the images (a round over 60,000 images takes most of an hour on one CPU core).
    """
    model.eval()  # batch norm uses its running statistics: each image's noise depends on that image only
    eps, step = config.epsilon, config.step
    updated = torch.empty_like(delta)
    with tqdm(total=len(x), desc=description, unit="image", leave=False, disable=not progress) as bar:
        for start in range(0, len(x), config.batch_size):
            clean, target = x[start : start + config.batch_size], labels[start : start + config.batch_size]
            noise = delta[start : start + config.batch_size].clone()
            for _ in range(config.pgd_steps):
                with torch.enable_grad():
                    poisoned = (clean + noise).requires_grad_(True)
                    loss = F.cross_entropy(model(poisoned), target)
                    (gradient,) = torch.autograd.grad(loss, poisoned)  # the parameters' gradients are not computed
                with torch.no_grad():
                    noise = (noise - step * gradient.sign()).clamp(-eps, eps)
                    noise = (clean + noise).clamp(0.0, 1.0) - clean
            updated[start : start + config.batch_size] = noise
            bar.update(len(clean))
    return updated


@torch.no_grad()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> float:
    """The fraction of ``images`` the model classifies as ``labels``, in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


# -- saving and resuming ----------------------------------------------------------------------


def _fingerprint(x: Tensor, labels: Tensor, num_classes: int, config: ErrorMinimising, seed: int) -> dict[str, str]:
    """What a saved state must match to be resumed: the data and every setting that changes the trajectory."""
    data = hashlib.sha256()
    data.update(str((tuple(x.shape), str(x.dtype), num_classes)).encode())
    for tensor in (x, labels):
        data.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = {k: v for k, v in asdict(config).items() if k not in ("max_rounds", "stop_accuracy")}
    settings["step_size"], settings["seed"] = config.step, int(seed)
    return {"data": data.hexdigest(), **{f"setting {k}": repr(v) for k, v in settings.items()}}


def _write_state(
    path: Path,
    fingerprint: dict[str, str],
    rounds_done: int,
    accuracy: float,
    delta: Tensor,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    batches: _Batches,
) -> None:
    def cpu(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach().cpu()
        if isinstance(value, dict):
            return {k: cpu(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(cpu(v) for v in value)
        return value

    state = {
        "version": _STATE_VERSION,
        "fingerprint": fingerprint,
        "round": rounds_done,
        "accuracy": accuracy,
        "delta": delta.detach().cpu(),
        "model": cpu(model.state_dict()),
        "optimiser": cpu(optimiser.state_dict()),
        "batches": batches.state_dict(),
    }
    with atomic_path(path) as partial:
        torch.save(state, partial)


def _read_state(path: Path, fingerprint: dict[str, str]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # weights-only loading runs no code: any failure means the file is not ours
        raise CheckpointError(f"{path} is corrupt or not an error-minimising state; delete it to start over") from None
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION or "fingerprint" not in state:
        raise CheckpointError(f"{path} is not an error-minimising state of this dpsnn; delete it to start over")
    saved = state["fingerprint"]
    if saved.get("data") != fingerprint["data"]:
        raise DataError(
            f"{path} was written for other images, labels or classes; use another state_dir or delete the file"
        )
    differences = [
        f"{key.removeprefix('setting ')}={saved.get(key)} (now {value})"
        for key, value in fingerprint.items()
        if key != "data" and saved.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"{path} was written with {', '.join(differences)}; use another state_dir, the same settings, or "
            "delete the file"
        )
    return state


def _uniform(images: Tensor, epsilon: float, seed: int) -> Tensor:
    """Uniform noise in ``[-ε, ε]`` of ``images``' shape, drawn on the CPU from ``seed``, on ``images``' device."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(images.shape, generator=generator, dtype=torch.float32)
    return ((noise * 2 - 1) * epsilon).to(device=images.device, dtype=images.dtype)
