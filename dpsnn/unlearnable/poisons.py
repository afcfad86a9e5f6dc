"""Making unlearnable copies of a dataset: the poison methods by name, and the derived dataset they write.

A poison method perturbs a whole training set within an L∞ budget ε, keeping its labels:
``ntga`` (:mod:`dpsnn.unlearnable.ntga`, block by block, resumable), and the two baselines of
:mod:`dpsnn.unlearnable.baselines`, ``random`` (uniform noise) and ``error-min`` (sample-wise
error-minimising noise). :func:`make_unlearnable` runs one on the official training set of a
registered dataset and writes the result as the derived dataset ``SOURCE+TAG``
(:func:`dpsnn.data.save_derived`), which every script then trains on by name. Pixels are stored
as bytes, rounded so that no pixel moves by more than ε. Example::

    from dpsnn.unlearnable.poisons import make_unlearnable

    name = make_unlearnable("fashion-mnist", "random", epsilon=0.3)   # "fashion-mnist+random"
    # python scripts/train_model.py --dataset fashion-mnist+random ...
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR, dataset_info, derived_file, load_images, save_derived
from dpsnn.errors import ConfigError, DataError
from dpsnn.files import atomic_path
from dpsnn.unlearnable.ntga import NTGA, attack_block, cross_kernel_function

__all__ = [
    "POISONS",
    "Poison",
    "PoisonJob",
    "check_poison",
    "make_unlearnable",
    "poison_images",
    "poison_with_ntga",
    "to_bytes_within",
]


@dataclass(frozen=True)
class PoisonJob:
    """What every poison method is given besides the images: the budget, the seed and where to keep its state."""

    epsilon: float
    num_classes: int
    seed: int = 0
    progress: bool = True
    state_dir: Path | None = None  # partial results, for resuming an interrupted run
    options: tuple[tuple[str, Any], ...] = ()  # the method's own settings, by name


PARTIAL_FOLDER = "partial"  # beside a derived dataset: the state of the run making it


@dataclass(frozen=True)
class Poison:
    """A registered poison method: ``configure`` checks a job's settings (nothing runs), ``run`` poisons."""

    configure: Callable[[PoisonJob], Any]
    run: Callable[[Any, Tensor, Tensor, PoisonJob], Tensor]


#: Poison methods by name.
POISONS: dict[str, Poison] = {}


def register_poison(name: str, configure: Callable[[PoisonJob], Any]) -> Callable[[Callable], Callable]:
    """Register ``run(config, images, labels, job) -> poisoned`` as ``name``; ``configure`` checks its settings."""

    def register(run: Callable[[Any, Tensor, Tensor, PoisonJob], Tensor]) -> Callable:
        POISONS[name] = Poison(configure, run)
        return run

    return register


def check_poison(method: str, job: PoisonJob) -> Any:
    """The method's checked configuration for ``job``: :class:`ConfigError` on an unknown method or a bad setting."""
    if method not in POISONS:
        raise ConfigError(f"unknown poison method {method!r}; choose from {', '.join(sorted(POISONS))}")
    if not 0 < job.epsilon <= 1:
        raise ConfigError(f"epsilon must be in (0, 1] (pixels lie in [0, 1]), got {job.epsilon}")
    return POISONS[method].configure(job)


def poison_images(method: str, images: Tensor, labels: Tensor, job: PoisonJob) -> Tensor:
    """Run the poison ``method`` on ``images`` (float in [0, 1]) and their ``labels``; return the poisoned images."""
    config = check_poison(method, job)
    return POISONS[method].run(config, images, labels, job)


def _options(job: PoisonJob, allowed: set[str], method: str) -> dict[str, Any]:
    options = dict(job.options)
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"{method} has no setting {', '.join(unknown)}; its settings: {known}")
    return options


# --- NTGA, block by block -----------------------------------------------------------------------


_NTGA_SETTINGS = {"iterations", "step_size", "time", "block_size", "target_size", "diag_reg", "precision"}


def _configure_ntga(job: PoisonJob) -> tuple[NTGA, bool]:
    options = _options(job, _NTGA_SETTINGS | {"compile"}, "ntga")
    compile_kernel = bool(options.pop("compile", True))
    return NTGA(epsilon=job.epsilon, **options), compile_kernel


@register_poison("ntga", _configure_ntga)
def _ntga(config: tuple[NTGA, bool], images: Tensor, labels: Tensor, job: PoisonJob) -> Tensor:
    attack, compile_kernel = config
    return poison_with_ntga(attack, images, labels, job, compile_kernel)


def _fingerprint(attack: NTGA, images: Tensor, labels: Tensor, job: PoisonJob) -> dict[str, Any]:
    """What a partial run's blocks depend on: a state folder of another run is refused, never mixed in."""
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    settings = asdict(attack)
    settings["kernel"] = asdict(attack.kernel)
    return {"method": "ntga", "settings": settings, "seed": job.seed, "data": digest, "shape": list(images.shape)}


def _plan(attack: NTGA, count: int, seed: int) -> tuple[Tensor, list[Tensor]]:
    """The clean target images' indices and the blocks' indices, both drawn from ``seed``."""
    if attack.block_size > count:
        raise ConfigError(f"the block size {attack.block_size} is larger than the training set ({count} images)")
    if attack.target_size > count:
        raise ConfigError(f"the target size {attack.target_size} is larger than the training set ({count} images)")
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randperm(count, generator=generator)[: attack.target_size]
    order = torch.randperm(count, generator=generator)
    return targets, list(order.tensor_split(math.ceil(count / attack.block_size)))


def _open_state(folder: Path, fingerprint: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "run.json"
    if record.is_file():
        try:
            stored = json.loads(record.read_text())
        except (OSError, ValueError):
            stored = None
        if stored != fingerprint:
            raise ConfigError(
                f"{folder} holds the partial state of another poisoning run; delete it or choose another --state-dir"
            )
        return
    with atomic_path(record) as partial:
        partial.write_text(json.dumps(fingerprint, indent=1))


def _load_block(path: Path, size: int) -> Tensor | None:
    """A finished block, or None if its file is missing or damaged (then it is attacked again)."""
    if not path.is_file():
        return None
    try:
        block = load_file(str(path))["poisoned"]
    except Exception:  # a damaged file is recomputed rather than trusted
        return None
    return block if len(block) == size else None


def poison_with_ntga(
    attack: NTGA, images: Tensor, labels: Tensor, job: PoisonJob, compile_kernel: bool = True
) -> Tensor:
    """Attack every block of ``images`` with NTGA; return the poisoned images.

    The target images are ``attack.target_size`` clean training images drawn with ``job.seed``
    (they are poisoned too, in their own blocks); the blocks are a seeded partition into nearly
    equal parts of at most ``attack.block_size``. With ``job.state_dir`` each finished block is
    kept there, and a rerun with the same settings and data resumes after the last one.
    """
    targets, blocks = _plan(attack, len(images), job.seed)
    state = job.state_dir
    if state is not None:
        _open_state(state, _fingerprint(attack, images, labels, job))
    cross_kernel = cross_kernel_function(attack, compile_kernel)
    target, target_labels = images[targets], labels[targets]
    poisoned = images.clone()
    bar = tqdm(blocks, desc="NTGA blocks", unit="block", disable=not job.progress)
    for number, index in enumerate(bar):
        path = None if state is None else state / f"block-{number:05d}.safetensors"
        block = None if path is None else _load_block(path, len(index))
        if block is None:
            block = attack_block(
                attack, images[index], labels[index], target, target_labels, job.num_classes, cross_kernel
            )
            if path is not None:
                with atomic_path(path) as partial:
                    save_file({"poisoned": block.contiguous()}, str(partial))
        poisoned[index] = block
    return poisoned


# --- the baselines --------------------------------------------------------------------------------


def _configure_random(job: PoisonJob) -> None:
    _options(job, set(), "random")


@register_poison("random", _configure_random)
def _random(config: None, images: Tensor, labels: Tensor, job: PoisonJob) -> Tensor:
    from dpsnn.unlearnable.baselines import random_noise

    return random_noise(images, job.epsilon, seed=job.seed)


_ERROR_MIN_SETTINGS = {
    "step_size",
    "pgd_steps",
    "train_steps",
    "stop_accuracy",
    "max_rounds",
    "architecture",
    "batch_size",
    "learning_rate",
}


def _configure_error_min(job: PoisonJob) -> Any:
    from dpsnn.unlearnable.baselines import ErrorMinimising

    return ErrorMinimising(epsilon=job.epsilon, **_options(job, _ERROR_MIN_SETTINGS, "error-min"))


@register_poison("error-min", _configure_error_min)
def _error_minimising(config: Any, images: Tensor, labels: Tensor, job: PoisonJob) -> Tensor:
    from dpsnn.unlearnable.baselines import error_minimising_noise

    return error_minimising_noise(images, labels, job.num_classes, config, job.seed, job.progress, job.state_dir)


# --- writing the derived dataset -----------------------------------------------------------------


def to_bytes_within(poisoned: Tensor, clean: Tensor, epsilon: float) -> Tensor:
    """``poisoned`` as uint8 pixels, rounded but never further than ε from ``clean`` (itself bytes / 255)."""
    clean_bytes = torch.round(clean * 255)
    reach = math.floor(epsilon * 255 + 1e-6)
    rounded = torch.round(poisoned.double() * 255)
    rounded = torch.minimum(torch.maximum(rounded, clean_bytes - reach), clean_bytes + reach)
    return rounded.clamp(0, 255).to(torch.uint8)


def make_unlearnable(
    dataset: str,
    method: str,
    epsilon: float,
    tag: str | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
    state_dir: str | Path | None = None,
    progress: bool = True,
) -> str:
    """Poison the official training set of ``dataset`` with ``method``; write it as ``dataset+tag``; return that name.

    ``tag`` defaults to the method's name. Partial state lives in ``state_dir``; by default that
    is a folder beside the derived dataset, removed once the dataset is written (a folder you
    name is left as it is).
    """
    info = dataset_info(dataset)
    if info.derived_from is not None:
        raise DataError(f"'{dataset}' is itself a derived dataset: poison a registered one")
    name = f"{dataset}+{tag or method}"
    target = derived_file(name, root)
    state = Path(state_dir) if state_dir is not None else target.parent / PARTIAL_FOLDER
    job = PoisonJob(epsilon, info.num_classes, seed, progress, state, tuple(sorted((options or {}).items())))
    check_poison(method, job)  # before anything is read or written
    images, labels = load_images(dataset, True, root, system_dir, download)
    stored = to_bytes_within(poison_images(method, images, labels, job), images, epsilon)
    largest = float((stored / 255 - images).abs().max())
    metadata = {
        "method": method,
        "epsilon": repr(epsilon),
        "seed": str(seed),
        "options": json.dumps(options or {}, sort_keys=True),
        "largest_change": f"{largest:.6f}",
    }
    save_derived(name, stored, metadata, root, system_dir=system_dir, download=download)
    if state_dir is None:
        shutil.rmtree(state, ignore_errors=True)
    return name
