"""Datasets: registry, local lookup, download and deterministic splits.

A dataset is looked for in three places, in this order:

1. ``data/`` (or ``root``) in torchvision's layout, e.g. ``data/FashionMNIST/raw/``;
2. the system data folder ``/usr/share/datasets/<name>/`` (Debian's
   ``dataset-fashion-mnist`` package puts the four gzipped IDX files there); the files
   are unpacked once into ``data/`` so torchvision can read them;
3. a torchvision download (skipped when the environment sets ``DPSNN_OFFLINE=1``).

Whole datasets are held in memory as float tensors in ``[0, 1]`` with shape
``(N, 1, 28, 28)``: there are no per-item transforms. Example::

    from dpsnn.data import make_splits

    splits = make_splits("fashion-mnist", seed=0, train_size=5000)
    loader = splits.train.loader(batch_size=128, shuffle=True, seed=0)
    images, labels = next(iter(loader))
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
from torchvision import datasets as tv_datasets

from dpsnn.errors import DataError
from dpsnn.files import atomic_path

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DEFAULT_DATA_DIR = Path("data")
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class DatasetInfo:
    """What dpsnn needs to know about a registered dataset."""

    name: str
    torchvision_class: type
    num_classes: int
    raw_files: tuple[str, ...]
    install_hint: str
    split: str | None = None  # torchvision's ``split`` argument (EMNIST)
    label_offset: int = 0  # subtracted from the labels so they start at 0
    transpose: bool = False  # EMNIST stores its images transposed

    @property
    def folder_name(self) -> str:
        return self.torchvision_class.__name__


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        torchvision_class=tv_datasets.FashionMNIST,
        num_classes=10,
        raw_files=_MNIST_FILES,
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class=tv_datasets.MNIST,
        num_classes=10,
        raw_files=_MNIST_FILES,
        install_hint="run once on a machine with internet, or copy the four IDX files into {raw}/",
    ),
    "emnist-letters": DatasetInfo(
        name="emnist-letters",
        torchvision_class=tv_datasets.EMNIST,
        num_classes=26,
        raw_files=tuple(
            f"emnist-letters-{part}-{kind}-ubyte"
            for part in ("train", "test")
            for kind in ("images-idx3", "labels-idx1")
        ),
        install_hint="run once on a machine with internet, or copy the four IDX files into {raw}/",
        split="letters",
        label_offset=1,
        transpose=True,
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry of ``name`` or raise :class:`DataError`."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset '{name}'; choose one of: {known}") from None


def _raw_dir(info: DatasetInfo, root: Path) -> Path:
    return root / info.folder_name / "raw"


def _has_raw_files(folder: Path, info: DatasetInfo) -> bool:
    return all((folder / f).is_file() for f in info.raw_files)


def _install_from_system(info: DatasetInfo, root: Path, system_dir: Path) -> bool:
    """Unpack the system copy of a dataset into ``root``; False if there is none."""
    folder = system_dir / info.name
    sources = []
    for file_name in info.raw_files:
        plain, packed = folder / file_name, folder / f"{file_name}.gz"
        if plain.is_file():
            sources.append((plain, file_name))
        elif packed.is_file():
            sources.append((packed, file_name))
        else:
            return False
    target = _raw_dir(info, root)
    target.mkdir(parents=True, exist_ok=True)
    for source, file_name in sources:
        destination = target / file_name
        if destination.is_file():
            continue
        # An interrupted copy must never leave a truncated file that looks complete.
        opener = gzip.open if source.suffix == ".gz" else open
        try:
            with atomic_path(destination) as partial, opener(source, "rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise DataError(
                f"{source} is damaged ({error}); reinstall it (for Fashion-MNIST: "
                "apt-get install --reinstall dataset-fashion-mnist)"
            ) from None
    return True


def _download(info: DatasetInfo, root: Path) -> None:
    """Download with torchvision into a scratch folder, then move the raw files in."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        kwargs = {"split": info.split} if info.split else {}
        info.torchvision_class(str(scratch), train=True, download=True, **kwargs)
        target = _raw_dir(info, root)
        target.mkdir(parents=True, exist_ok=True)
        for file_name in info.raw_files:
            os.replace(_raw_dir(info, scratch) / file_name, target / file_name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_dataset(
    name: str,
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> Path:
    """Make sure the raw files of ``name`` are under ``root``; return their folder.

    Raises :class:`DataError` naming every place looked and the command that fixes it.
    """
    info = dataset_info(name)
    root, system_dir = Path(root), Path(system_dir)
    raw = _raw_dir(info, root)
    if _has_raw_files(raw, info) or _install_from_system(info, root, system_dir):
        return raw
    reason = "download not attempted"
    if os.environ.get("DPSNN_OFFLINE", "") not in ("", "0"):
        reason = "downloads are off (DPSNN_OFFLINE is set)"
    elif download:
        try:
            _download(info, root)
            return raw
        except Exception as error:  # network, HTTP and checksum errors all mean "not here"
            reason = f"download failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    raise DataError(
        f"dataset '{name}' not found: looked in {raw}/ and {system_dir / info.name}/, {reason}; "
        f"fix: {info.install_hint.format(raw=raw)}"
    )


def load_images(
    name: str,
    train: bool,
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load one official part of a dataset as ``(images, labels)``.

    ``images`` are float32 in ``[0, 1]`` with shape ``(N, 1, 28, 28)``; ``labels`` are
    int64 class indices starting at 0.
    """
    info = dataset_info(name)
    ensure_dataset(name, root, system_dir, download)
    kwargs = {"split": info.split} if info.split else {}
    try:
        dataset = info.torchvision_class(str(root), train=train, download=False, **kwargs)
    except (RuntimeError, ValueError, OSError, AssertionError) as error:  # torchvision asserts on bad headers
        raise DataError(f"dataset '{name}' under {root} cannot be read ({error}); delete it and retry") from None
    pixels = dataset.data
    if info.transpose:
        pixels = pixels.transpose(1, 2)
    images = pixels.unsqueeze(1).to(torch.float32).div_(255.0)
    labels = dataset.targets.to(torch.int64) - info.label_offset
    return images.contiguous(), labels


@dataclass
class Split:
    """A part of a dataset held in memory: images ``(N, 1, 28, 28)`` and labels ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def require(self, what: str) -> Split:
        """This split, or :class:`DataError` if it is empty."""
        if len(self) == 0:
            raise DataError(f"the {what} split is empty")
        return self

    def subset(self, size: int | None) -> Split:
        """The first ``size`` items (the split is already shuffled), or all if None."""
        if size is None:
            return self
        return Split(self.images[:size], self.labels[:size])

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches drawn by indexing whole tensors, with no per-item Python work."""
        dataset = TensorDataset(self.images, self.labels)
        order = (
            RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else SequentialSampler(dataset)
        )
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)


@dataclass
class Splits:
    """Disjoint parts of one dataset.

    ``train``, ``val`` and ``test`` belong to the target model; ``aux`` is the
    attacker's auxiliary data. ``test`` is the official test set, the others are drawn
    from the official training set by a seeded permutation.
    """

    name: str
    seed: int
    num_classes: int
    train: Split
    val: Split
    test: Split
    aux: Split


def make_splits(
    name: str = "fashion-mnist",
    seed: int = 0,
    train_size: int | None = None,
    val_size: int = 5000,
    aux_size: int = 5000,
    test_size: int | None = None,
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> Splits:
    """Draw the disjoint, seeded splits of ``name``.

    The official training set is permuted with ``seed``; the first ``val_size`` images
    become ``val``, the next ``aux_size`` become ``aux`` and the rest ``train``
    (truncated to ``train_size``). The same seed always gives the same splits, so an
    attacker can rebuild its auxiliary split from a model's recorded seed.
    """
    info = dataset_info(name)
    for label, value in (("train size", train_size), ("test size", test_size)):
        if value is not None and value <= 0:
            raise DataError(f"{label} must be a positive integer, got {value}")
    for label, value in (("val size", val_size), ("aux size", aux_size)):
        if value < 0:
            raise DataError(f"{label} must be a non-negative integer, got {value}")
    pool_images, pool_labels = load_images(name, True, root, system_dir, download)
    test_images, test_labels = load_images(name, False, root, system_dir, download)

    available = len(pool_labels) - val_size - aux_size
    if available <= 0:
        raise DataError(
            f"'{name}' has {len(pool_labels)} training images, too few for val_size={val_size} and aux_size={aux_size}"
        )
    if train_size is not None and train_size > available:
        raise DataError(
            f"--train-size {train_size} is larger than the target train split of '{name}' "
            f"({available} images); use at most {available}"
        )
    if test_size is not None and test_size > len(test_labels):
        raise DataError(f"test size {test_size} is larger than the test split of '{name}' ({len(test_labels)} images)")

    order = torch.randperm(len(pool_labels), generator=torch.Generator().manual_seed(seed))
    val_idx = order[:val_size]
    aux_idx = order[val_size : val_size + aux_size]
    train_idx = order[val_size + aux_size :]
    test_order = torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(seed))

    def take(images: Tensor, labels: Tensor, index: Tensor) -> Split:
        return Split(images[index], labels[index])

    return Splits(
        name=name,
        seed=seed,
        num_classes=info.num_classes,
        train=take(pool_images, pool_labels, train_idx).subset(train_size),
        val=take(pool_images, pool_labels, val_idx),
        test=take(test_images, test_labels, test_order).subset(test_size),
        aux=take(pool_images, pool_labels, aux_idx),
    )
