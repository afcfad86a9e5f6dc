"""Checkpoint file names and safe loading.

A dpsnn checkpoint is a ``torch.save`` file holding only plain data: a header
``{"kind", "format_version"}``, the hyperparameters (numbers and strings), the epoch and
the ``state_dict``. It is always loaded with ``weights_only=True``, so opening a file
never runs code from it; a file that needs more than plain data is refused. Example::

    from dpsnn import load_attacker, load_classifier

    target = load_classifier("models/classifiers/demo_05noise_01nopeek_epoch=01.ckpt")
    post_noise = load_classifier(path, noise=1.0)  # switch the wire noise on at inference
    mine = load_classifier(path, client=my_client, server=my_server)  # a split of your own modules
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from dpsnn.attacks._decoder_module import InversionAttacker
from dpsnn.defences import Defence
from dpsnn.defences.base import format_number
from dpsnn.errors import CheckpointError, ConfigError
from dpsnn.files import atomic_path
from dpsnn.models import CUSTOM, DefenceLike, SplitNN, Validator

FORMAT_VERSION = 1
MODELS_DIR = Path("models")
CLASSIFIERS_DIR = MODELS_DIR / "classifiers"
ATTACKERS_DIR = MODELS_DIR / "attackers"
VALIDATORS_DIR = MODELS_DIR / "validators"
SUFFIX = ".ckpt"

_KINDS: dict[str, type[L.LightningModule]] = {
    "classifier": SplitNN,
    "attacker": InversionAttacker,
    "validator": Validator,
}


__all__ = ["format_number", "load_attacker", "load_classifier", "load_validator", "save_checkpoint"]


def classifier_filename(saveas: str, defences: Sequence[Defence], epoch: int, architecture: str = "reference") -> str:
    """``<saveas>[_<architecture>]_<key>_<key>_epoch=XX.ckpt``: ``demo_05noise_01nopeek_epoch=03.ckpt``.

    Every defence given is named, at zero strength too (the reference's ``0noise``); the
    architecture is named unless it is the reference network.
    """
    parts = [saveas]
    if architecture != "reference":
        parts.append(architecture.replace(":", "-"))
    parts += [d.key() for d in defences]
    return f"{'_'.join(parts)}_epoch={epoch:02d}{SUFFIX}"


def attacker_filename(target_stem: str, wire_key: str, aux_dataset: str, aux_size: int, epoch: int) -> str:
    """``<target>_attacker_<wire>_<aux-dataset><N>aux_epoch=XX.ckpt``; ``wire_key`` names the wire (``05noise``)."""
    return f"{target_stem}_attacker_{wire_key}_{aux_dataset}{aux_size}aux_epoch={epoch:02d}{SUFFIX}"


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def save_checkpoint(
    model: L.LightningModule, path: str | Path, kind: str, epoch: int, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file renamed into place)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    hyper_parameters = dict(model.hparams)
    extra = dict(extra or {})
    for name, value in {**hyper_parameters, **extra}.items():
        if not _plain(value):
            raise ValueError(f"checkpoint field {name!r} is not plain data: {type(value).__name__}")
    payload = {
        "dpsnn": {"kind": kind, "format_version": FORMAT_VERSION},
        "hyper_parameters": hyper_parameters,
        "epoch": int(epoch),
        "extra": extra,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as partial:
        torch.save(payload, partial)
    return Path(path)


def read_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint's plain data safely and check that it is a ``kind`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # weights-only reading runs no code, so any failure just means "not a safe checkpoint"
        raise CheckpointError(
            f"{path} is corrupt or untrusted (it is not plain tensors and numbers, and dpsnn never "
            "unpickles code); re-create it with the dpsnn script that made it"
        ) from None
    header = payload.get("dpsnn") if isinstance(payload, dict) else None
    if not isinstance(header, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a dpsnn checkpoint; re-create it with a dpsnn script")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {header.get('format_version')}, this dpsnn reads {FORMAT_VERSION}"
        )
    if header.get("kind") != kind:
        raise CheckpointError(f"{path} is {_a(header.get('kind'))} checkpoint, not {_a(kind)} checkpoint")
    return payload


def _load(path: str | Path, kind: str, model: nn.Module | None = None, **overrides: Any) -> L.LightningModule:
    payload = read_checkpoint(path, kind)
    hyper_parameters = {**payload["hyper_parameters"], **overrides}
    if model is None:
        if hyper_parameters.get("architecture") == CUSTOM and "client" not in overrides:
            raise CheckpointError(
                f"{path} holds a split of the user's own modules; load it with "
                "load_classifier(path, client=my_client, server=my_server)"
            )
        try:
            model = _KINDS[kind](**hyper_parameters)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path} has hyperparameters this dpsnn cannot build: {error}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        # torch's first line only names the class; the next ones name the tensors and shapes.
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise CheckpointError(
            f"{path} holds another architecture than the {kind} it was loaded into ({'; '.join(details[:2])[:300]})"
        ) from None
    model.eval()
    model.checkpoint_epoch = payload["epoch"]
    model.checkpoint_extra = payload["extra"]
    return model


def load_classifier(
    path: str | Path,
    noise: float | None = None,
    model: SplitNN | None = None,
    client: nn.Module | None = None,
    server: nn.Module | None = None,
    wire: Iterable[DefenceLike] | None = None,
) -> SplitNN:
    """Load a :class:`SplitNN` checkpoint.

    A registered architecture is rebuilt from the checkpoint; a split of your own
    modules loads into the ``client`` and ``server`` you pass (or into ``model``).
    ``wire`` replaces the wire defences it was trained with (e.g. ``["laplace:scale=1"]``:
    noise switched on after training); ``noise`` is the same for Laplace noise alone.
    """
    if noise is not None and wire is not None:
        raise ConfigError("give the wire as noise= or as wire=, not both")
    overrides = {"client": client, "server": server} if client is not None or server is not None else {}
    loaded = _load(path, "classifier", model, **overrides)
    if wire is not None:
        loaded.set_wire(wire)
    if noise is not None:
        loaded.set_noise(noise)
    return loaded


def load_attacker(path: str | Path) -> InversionAttacker:
    """Load an :class:`InversionAttacker` checkpoint."""
    return _load(path, "attacker")


def load_validator(path: str | Path) -> Validator:
    """Load a :class:`Validator` checkpoint."""
    return _load(path, "validator")


def resolve_checkpoint(name: str, folder: str | Path) -> Path:
    """Find a checkpoint by path, by file name in ``folder``, or by a unique name prefix.

    ``demo_05noise_01nopeek`` finds ``demo_05noise_01nopeek_epoch=03.ckpt``.
    """
    folder = Path(folder)
    if not name:
        raise CheckpointError(f"a model name is needed; the checkpoints in {folder}/ are: {_listing(folder)}")
    candidate = Path(name)
    for path in (candidate, folder / name, folder / f"{name}{SUFFIX}"):
        if path.is_file():
            return path
    matches = sorted(folder.glob(f"{name}_epoch=*{SUFFIX}")) or sorted(folder.glob(f"{name}*{SUFFIX}"))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise CheckpointError(f"'{name}' matches several checkpoints in {folder}/: {names}; give the full name")
    raise CheckpointError(f"no checkpoint named '{name}' in {folder}/ (there: {_listing(folder)})")


def _a(word: object) -> str:
    return f"an {word}" if str(word)[:1] in "aeiou" else f"a {word}"


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def _listing(folder: Path) -> str:
    names = [path.name for path in _checkpoint_files(folder)]
    return ", ".join(names) if names else "none"


def checkpoints_in(folder: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """The checkpoints named by ``names`` (see :func:`resolve_checkpoint`), or all in ``folder``.

    Raises :class:`CheckpointError` when there are none.
    """
    folder = Path(folder)
    if names:
        return [resolve_checkpoint(name, folder) for name in names]
    found = _checkpoint_files(folder)
    if not found:
        raise CheckpointError(f"no checkpoints in {folder}/; train one first or pass a folder that has them")
    return found
