"""What the server of a two-party run received, written to disk as it trains: the recording.

The server records every tensor it receives, with the labels where it has them, in a
folder of safetensors files. Each phase of the run has its own files:

- ``train``: per epoch, ``activation`` (what crossed the wire, noise included), ``labels``
  and ``batch`` (the index of the step within its epoch, one per row); with several clients
  (:mod:`dpsnn.transport.several`) also ``client``, the index of the client that sent it;
- ``val``: per epoch, ``activation`` and ``batch``;
- ``inference``: the client's inference queries after training (its test split):
  ``activation`` and ``predicted`` (the class the server computed);
- ``queries``: the server's own queries of its auxiliary data through the client:
  ``images`` (which the server chose), ``labels``, ``activation`` (the answers) and
  ``predicted``. These pairs are what an inversion attack trains on.

A file is written whole or not at all (a temporary file renamed into place), at the latest
when the server acknowledges the end of an epoch, so an acknowledged step is never lost; a
long epoch is cut into parts of at most ``part_bytes``. Reading uses safetensors, which holds
tensors and strings only: opening a recording never runs code from it. Example::

    from dpsnn.transport.recording import Recording

    recording = Recording("recordings/split")
    recording.metadata["dataset"], recording.epochs("train")       # 'fashion-mnist', [0, 1, 2]
    pairs = recording.read("queries")                              # images, labels, activation, predicted
    seen = recording.read("train", epoch=2)["activation"]          # what the server saw in epoch 2
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from dpsnn.errors import DataError
from dpsnn.files import atomic_path

__all__ = ["PHASES", "Recording", "RecordingWriter"]

FORMAT = "dpsnn-recording"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
#: The phases of a run, in the order they happen; ``train`` and ``val`` come once per epoch.
PHASES = ("train", "val", "inference", "queries")
EPOCH_PHASES = ("train", "val")
PART_BYTES = 256 << 20
_NAME = re.compile(r"^(?P<phase>[a-z]+)(?:-epoch(?P<epoch>\d{3,}))?-part(?P<part>\d{3,})\.safetensors$")


def part_name(phase: str, epoch: int | None, part: int) -> str:
    """``train-epoch002-part000.safetensors``; phases after training have no epoch."""
    epoch_text = "" if epoch is None else f"-epoch{epoch:03d}"
    return f"{phase}{epoch_text}-part{part:03d}{SUFFIX}"


def _parse(path: Path) -> tuple[str, int | None, int] | None:
    match = _NAME.match(path.name)
    if match is None or match["phase"] not in PHASES:
        return None
    epoch = match["epoch"]
    return match["phase"], None if epoch is None else int(epoch), int(match["part"])


def _check_phase(phase: str, epoch: int | None) -> None:
    if phase not in PHASES:
        raise DataError(f"unknown recording phase '{phase}'; the phases are {', '.join(PHASES)}")
    if (epoch is None) == (phase in EPOCH_PHASES):
        raise DataError(
            f"the {phase} phase is recorded {'per epoch: give an epoch' if epoch is None else 'once, not per epoch'}"
        )


def _check_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """:class:`DataError` unless ``metadata`` says the file is a recording of the format this dpsnn reads."""
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path} is not a dpsnn recording (its metadata does not say format={FORMAT})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path} is a recording of format {metadata.get('format_version')}; this dpsnn reads {FORMAT_VERSION}"
        )


class RecordingWriter:
    """Buffers what the server receives and writes it, part by part, into ``folder``.

    ``metadata`` (plain strings: the dataset, seed, architecture, defences, ...) goes into
    every file, so any part says what run it belongs to.
    """

    def __init__(self, folder: str | Path, metadata: Mapping[str, object], part_bytes: int = PART_BYTES) -> None:
        self.folder = Path(folder)
        self.metadata = {"format": FORMAT, "format_version": FORMAT_VERSION} | {
            str(key): str(value) for key, value in metadata.items()
        }
        self.part_bytes = part_bytes
        self._buffers: dict[tuple[str, int | None], list[dict[str, Tensor]]] = {}
        self._sizes: dict[tuple[str, int | None], int] = {}
        self._parts: dict[tuple[str, int | None], int] = {}

    def clear(self, from_epoch: int = 0) -> list[Path]:
        """Delete the files of epochs ``from_epoch`` on and of the phases after training; return them.

        A run started afresh clears everything; a resumed one the epochs it will do again.
        """
        removed = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []:
            parsed = _parse(path)
            if parsed is not None and (parsed[1] is None or parsed[1] >= from_epoch):
                path.unlink()
                removed.append(path)
        self._buffers.clear()
        self._sizes.clear()
        self._parts.clear()
        return removed

    def add(self, phase: str, epoch: int | None = None, **tensors: Tensor) -> None:
        """Keep one step's ``tensors`` (rows aligned: the same first size) for ``phase``; a full part is written."""
        _check_phase(phase, epoch)
        key = (phase, epoch)
        rows = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        self._buffers.setdefault(key, []).append(rows)
        self._sizes[key] = self._sizes.get(key, 0) + sum(t.numel() * t.element_size() for t in rows.values())
        if self._sizes[key] >= self.part_bytes:
            self.flush(phase, epoch)

    def flush(self, phase: str, epoch: int | None = None) -> Path | None:
        """Write what is buffered for ``phase`` (and ``epoch``) as its next part; None if nothing is buffered."""
        key = (phase, epoch)
        steps = self._buffers.pop(key, [])
        self._sizes.pop(key, None)
        if not steps:
            return None
        part = self._parts.get(key, 0)
        self._parts[key] = part + 1
        tensors = {name: torch.cat([step[name] for step in steps]) for name in steps[0]}
        path = self.folder / part_name(phase, epoch, part)
        metadata = self.metadata | {"phase": phase, "epoch": "" if epoch is None else str(epoch)}
        with atomic_path(path) as partial:
            save_file(tensors, str(partial), metadata=metadata)
        return path


class Recording:
    """A server's recording, read back (see the module's docstring for what each phase holds)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"no recording at {self.folder}: give the folder the server recorded into (--record)")
        self._files: dict[tuple[str, int | None], list[Path]] = {}
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            parsed = _parse(path)
            if parsed is not None:
                self._files.setdefault(parsed[:2], []).append(path)
        for paths in self._files.values():  # by part number: part1000 comes after part999
            paths.sort(key=lambda path: _parse(path)[2])
        if not self._files:
            raise DataError(f"{self.folder} holds no recording (no {part_name('train', 0, 0)} or alike)")
        self.metadata = self._metadata(next(iter(self._files.values()))[0])

    def phases(self) -> list[str]:
        """The phases recorded, in the order they happen."""
        return [phase for phase in PHASES if any(key[0] == phase for key in self._files)]

    def epochs(self, phase: str = "train") -> list[int]:
        """The epochs ``phase`` was recorded for."""
        return sorted(epoch for name, epoch in self._files if name == phase and epoch is not None)

    def has(self, phase: str, epoch: int | None = None) -> bool:
        return (phase, epoch) in self._files

    def read(self, phase: str, epoch: int | None = None) -> dict[str, Tensor]:
        """Every tensor of ``phase`` (of ``epoch`` for train and val), its parts joined in order."""
        _check_phase(phase, epoch)
        paths = self._files.get((phase, epoch))
        if not paths:
            where = "" if epoch is None else f" of epoch {epoch}"
            there = ", ".join(self.phases())
            raise DataError(f"{self.folder} has no {phase} phase{where} (it has: {there})")
        parts = [self._tensors(path) for path in paths]
        names = set(parts[0])
        for path, part in zip(paths, parts, strict=True):
            if set(part) != names:
                raise DataError(f"{path} holds other tensors ({', '.join(sorted(part))}) than its phase's first part")
        return {name: torch.cat([part[name] for part in parts]) for name in sorted(names)}

    def _metadata(self, path: Path) -> dict[str, str]:
        return self._open(path, with_tensors=False)[0]

    def _open(self, path: Path, with_tensors: bool = True) -> tuple[dict[str, str], dict[str, Tensor]]:
        """The file's metadata, checked to be a recording's, and (``with_tensors``) its tensors; one opening."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                _check_metadata(path, metadata)
                names = list(handle.keys()) if with_tensors else []
                tensors = {name: handle.get_tensor(name) for name in names}
        except (SafetensorError, OSError, ValueError) as error:
            raise DataError(f"{path} is not a readable safetensors file ({error})") from None
        return metadata, tensors

    def _tensors(self, path: Path) -> dict[str, Tensor]:
        tensors = self._open(path)[1]
        lengths = {len(tensor) for tensor in tensors.values()}
        if len(lengths) > 1:
            raise DataError(f"{path} holds tensors of different lengths: not a recording's aligned rows")
        return tensors
