"""Datasets: registry, local lookup, download and deterministic splits.

Registered datasets: ``fashion-mnist``, ``mnist`` and ``emnist-letters`` (gray 1×28×28
images stored as IDX files) and ``cifar10`` and ``cifar100`` (colour 3×32×32 images
stored as CIFAR's "python version" batches; ``cifar100`` uses the 100 fine labels).
:func:`dataset_info` and :func:`image_shape` tell what a name holds.

A dataset is looked for in three places, in this order:

1. ``data/`` (or ``root``) in torchvision's layout: ``data/FashionMNIST/raw/``,
   ``data/MNIST/raw/``, ``data/EMNIST/raw/``, ``data/cifar-10-batches-py/`` or
   ``data/cifar-100-python/``. Files placed there by hand are used as they are;
2. the system data folder ``/usr/share/datasets/<name>/`` (Debian's
   ``dataset-fashion-mnist`` package puts the four gzipped IDX files there; for CIFAR
   the extracted batches may sit there directly or in their ``cifar-10-batches-py/``
   or ``cifar-100-python/`` folder); the files are copied (unpacked if gzipped) once
   into ``data/``;
3. a torchvision download into a scratch folder under ``data/``, moved into place when
   complete (skipped when the environment sets ``DPSNN_OFFLINE=1``).

A *derived* dataset ``SOURCE+TAG`` (e.g. ``fashion-mnist+ntga``) is a perturbed copy of the
official training set of ``SOURCE`` (same images in the same order, same labels), such as the
unlearnable copies :mod:`dpsnn.unlearnable` makes; its test set is the clean official one. It is
stored as ``data/derived/SOURCE+TAG/train.safetensors`` (uint8 ``images``, int64 ``labels`` and
string metadata) and checked against its source when read: a copy whose shape or labels differ
is refused. Splits of it are drawn as from the source, so its val and aux splits are perturbed too.

CIFAR's batches are pickles. They are read with a restricted unpickler that rebuilds
numpy arrays and nothing else: a file that would run any other code when read is
refused with :class:`DataError`, and so is a file whose content is not a CIFAR batch.

Whole datasets are held in memory as float32 tensors in ``[0, 1]`` with shape
``(N, C, H, W)`` (``(N, 1, 28, 28)`` or ``(N, 3, 32, 32)``): there are no per-item
transforms. Example::

    from dpsnn.data import make_splits

    splits = make_splits("fashion-mnist", seed=0, train_size=5000)
    loader = splits.train.loader(batch_size=128, shuffle=True, seed=0)
    images, labels = next(iter(loader))
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
from torchvision import datasets as tv_datasets
from torchvision.datasets import utils as tv_utils

from dpsnn.errors import ConfigError, DataError
from dpsnn.files import atomic_path

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True)
class DatasetInfo:
    """What dpsnn needs to know about a registered dataset."""

    name: str
    torchvision_class: type
    num_classes: int
    image_shape: tuple[int, int, int]  # (channels, height, width) of one image
    raw_files: tuple[str, ...]  # every file that must be present in :attr:`folder`
    install_hint: str
    file_format: Literal["idx", "cifar"] = "idx"
    split: str | None = None  # torchvision's ``split`` argument (EMNIST)
    label_offset: int = 0  # subtracted from the labels so they start at 0
    transpose: bool = False  # EMNIST stores its images transposed
    train_files: tuple[str, ...] = ()  # CIFAR: the batches of the official training set
    test_files: tuple[str, ...] = ()  # CIFAR: the batches of the official test set
    labels_key: str = "labels"  # CIFAR: the key of the labels in a batch
    derived_from: str | None = None  # a derived dataset: the registered dataset it is a perturbed copy of

    @property
    def folder(self) -> Path:
        """Where the files live relative to the data folder, as torchvision lays them out."""
        if self.file_format == "cifar":
            return Path(self.torchvision_class.base_folder)
        return Path(self.torchvision_class.__name__) / "raw"


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _cifar_info(name: str, torchvision_class: type, num_classes: int, labels_key: str, hint: str) -> DatasetInfo:
    train_files = tuple(file_name for file_name, _ in torchvision_class.train_list)
    test_files = tuple(file_name for file_name, _ in torchvision_class.test_list)
    return DatasetInfo(
        name=name,
        torchvision_class=torchvision_class,
        num_classes=num_classes,
        image_shape=(3, 32, 32),
        raw_files=train_files + test_files + (torchvision_class.meta["filename"],),
        install_hint=hint,
        file_format="cifar",
        train_files=train_files,
        test_files=test_files,
        labels_key=labels_key,
    )


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        torchvision_class=tv_datasets.FashionMNIST,
        num_classes=10,
        image_shape=(1, 28, 28),
        raw_files=_MNIST_FILES,
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class=tv_datasets.MNIST,
        num_classes=10,
        image_shape=(1, 28, 28),
        raw_files=_MNIST_FILES,
        install_hint="run once on a machine with internet, or copy the four IDX files into {raw}/",
    ),
    "emnist-letters": DatasetInfo(
        name="emnist-letters",
        torchvision_class=tv_datasets.EMNIST,
        num_classes=26,
        image_shape=(1, 28, 28),
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
    "cifar10": _cifar_info(
        "cifar10",
        tv_datasets.CIFAR10,
        num_classes=10,
        labels_key="labels",
        hint="copy the python-version batches (cifar-10-python.tar.gz, extracted: data_batch_1..5, test_batch, "
        "batches.meta) into {raw}/, or run once on a machine with internet",
    ),
    "cifar100": _cifar_info(
        "cifar100",
        tv_datasets.CIFAR100,
        num_classes=100,
        labels_key="fine_labels",
        hint="copy the python-version files (cifar-100-python.tar.gz, extracted: train, test, meta) into {raw}/, "
        "or run once on a machine with internet",
    ),
}


DERIVED_FOLDER = "derived"
_DERIVED_TAG = re.compile(r"[a-z0-9][a-z0-9.\-]*")


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry of ``name`` (``SOURCE+TAG`` for a derived dataset) or raise :class:`DataError`."""
    source, plus, tag = name.partition("+")
    try:
        info = DATASETS[source]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset '{name}'; choose one of: {known}, or SOURCE+TAG for a derived copy") from None
    if not plus:
        return info
    if not _DERIVED_TAG.fullmatch(tag):
        raise DataError(
            f"'{name}' is not a derived dataset name: after '+' use lower-case letters, digits, '.' and '-'"
        )
    return dataclasses.replace(info, name=name, derived_from=source)


def derived_file(name: str, root: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Where the derived dataset ``name`` (``SOURCE+TAG``) is stored under ``root``."""
    if dataset_info(name).derived_from is None:
        raise DataError(f"'{name}' is a registered dataset, not a derived one (SOURCE+TAG)")
    return Path(root) / DERIVED_FOLDER / name / "train.safetensors"


def save_derived(
    name: str, images: Tensor, metadata: dict[str, str], root: str | Path = DEFAULT_DATA_DIR, **source_options: Any
) -> Path:
    """Write ``images`` (uint8, the source's training set perturbed, in its order) as the derived dataset ``name``.

    The labels are the source's own. The file is written atomically; ``source_options``
    (``system_dir``, ``download``) are passed to :func:`load_images` for the source.
    """
    info = dataset_info(name)
    path = derived_file(name, root)
    _, labels = load_images(info.derived_from, True, root, **source_options)
    expected = (len(labels), *info.image_shape)
    if images.dtype != torch.uint8 or tuple(images.shape) != expected:
        raise DataError(
            f"a derived copy of '{info.derived_from}' holds {expected} uint8 images, not {tuple(images.shape)} "
            f"{images.dtype}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": images.contiguous(), "labels": labels.to(torch.int64).contiguous()}
    with atomic_path(path) as partial:
        save_safetensors(tensors, str(partial), metadata={"source": info.derived_from, **metadata})
    return path


def derived_metadata(name: str, root: str | Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """The string metadata stored with the derived dataset ``name`` (how it was made)."""
    path = derived_file(name, root)
    if not path.is_file():
        raise _derived_missing(name, path)
    try:
        with safe_open(str(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise DataError(f"derived dataset {path} cannot be read ({error}); delete it and make it again") from None


def _derived_missing(name: str, path: Path) -> DataError:
    source, _, tag = name.partition("+")
    return DataError(
        f"derived dataset '{name}' not found at {path}; make it with: "
        f"python scripts/unlearnable.py make --dataset {source} --method {tag}"
    )


def _load_derived(info: DatasetInfo, root: Path, system_dir: Path, download: bool) -> tuple[Tensor, Tensor]:
    """The derived copy of the source's training set, checked against the source (safetensors: no code runs)."""
    path = derived_file(info.name, root)
    if not path.is_file():
        raise _derived_missing(info.name, path)
    try:
        tensors = load_safetensors(str(path))
    except Exception as error:  # a truncated or foreign file
        raise DataError(f"derived dataset {path} cannot be read ({error}); delete it and make it again") from None
    images, labels = tensors.get("images"), tensors.get("labels")
    _, source_labels = load_images(info.derived_from, True, root, system_dir, download)
    expected = (len(source_labels), *info.image_shape)
    if images is None or labels is None or images.dtype != torch.uint8 or tuple(images.shape) != expected:
        raise DataError(
            f"derived dataset {path} does not match its source '{info.derived_from}' (it must hold {expected} "
            "uint8 images and their labels); make it again"
        )
    if not torch.equal(labels.to(torch.int64), source_labels):
        raise DataError(
            f"derived dataset {path} does not match its source '{info.derived_from}': its labels differ; make it again"
        )
    return images.to(torch.float32).div_(255.0), source_labels


def image_shape(name: str) -> tuple[int, int, int]:
    """The ``(channels, height, width)`` of one image of ``name``, e.g. ``(3, 32, 32)`` for ``cifar10``."""
    return dataset_info(name).image_shape


def _raw_dir(info: DatasetInfo, root: Path) -> Path:
    return root / info.folder


def _system_dirs(info: DatasetInfo, system_dir: Path) -> list[Path]:
    """The folders of the system copy that may hold the files, in the order tried."""
    folders = [system_dir / info.name]
    if info.file_format == "cifar":
        folders.append(system_dir / info.name / info.folder)
    return folders


def _has_raw_files(folder: Path, info: DatasetInfo) -> bool:
    return all((folder / f).is_file() for f in info.raw_files)


def _system_sources(info: DatasetInfo, folder: Path) -> list[tuple[Path, str]] | None:
    """``(source, file name)`` for every raw file in ``folder``, plain or gzipped; None if one is missing."""
    sources = []
    for file_name in info.raw_files:
        plain, packed = folder / file_name, folder / f"{file_name}.gz"
        if plain.is_file():
            sources.append((plain, file_name))
        elif packed.is_file():
            sources.append((packed, file_name))
        else:
            return None
    return sources


def _install_from_system(info: DatasetInfo, root: Path, system_dir: Path) -> bool:
    """Copy (unpacking if gzipped) the system copy of a dataset into ``root``; False if there is none."""
    for folder in _system_dirs(info, system_dir):
        sources = _system_sources(info, folder)
        if sources is not None:
            break
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
    """Download with torchvision into a scratch folder, then move the raw files in.

    IDX datasets are fetched by their torchvision class. CIFAR is fetched with the
    archive address and checksum of its torchvision class, without letting torchvision
    read the batches (it would unpickle them unrestricted); the archive unpacks into
    ``<scratch>/cifar-10-batches-py/`` (or ``cifar-100-python/``), the folder moved from.
    """
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        cls = info.torchvision_class
        if info.file_format == "cifar":
            tv_utils.download_and_extract_archive(cls.url, str(scratch), filename=cls.filename, md5=cls.tgz_md5)
        else:
            kwargs = {"split": info.split} if info.split else {}
            cls(str(scratch), train=True, download=True, **kwargs)
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
    if info.derived_from is not None:
        path = derived_file(name, root)
        if not path.is_file():
            raise _derived_missing(name, path)
        return ensure_dataset(info.derived_from, root, system_dir, download)
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
    places = [f"{folder}/" for folder in [raw, *_system_dirs(info, system_dir)]]
    looked = ", ".join(places[:-1]) + f" and {places[-1]}"
    raise DataError(
        f"dataset '{name}' not found: looked in {looked}, {reason}; fix: {info.install_hint.format(raw=raw)}"
    )


# --- CIFAR's pickled batches ---------------------------------------------------------


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` that pickles of bytes need (protocol 2 from Python 3)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to turn latin-1 text into bytes")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, plain containers and nothing else.

    Pickles name the functions they call while being read; any name outside this list
    is refused before anything is called.
    """

    _ALLOWED: dict[tuple[str, str], object] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file: object, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path} would run code when read ({module}.{name}) and was refused; "
                "it is not a CIFAR batch: delete it and get the dataset from its official source"
            ) from None


def _read_pickle(path: Path) -> dict[str, object]:
    """Read one pickled CIFAR file as a dict with text keys, refusing anything that runs code."""
    try:
        with path.open("rb") as file:
            content = _ArrayUnpickler(file, path).load()
    except DataError:
        raise
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror or error})") from None
    except Exception as error:  # garbage and truncated pickles raise many kinds of error
        detail = " ".join(str(error).split())  # one line, whatever the error says
        raise DataError(f"{path} is damaged ({type(error).__name__}: {detail}); delete it and retry") from None
    if not isinstance(content, dict):
        raise DataError(f"{path} is damaged (not a CIFAR batch: holds a {type(content).__name__}); delete it and retry")
    # Python 2 wrote the keys as byte strings; latin-1 turns them into text, Python 3 keeps bytes.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batch(path: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """The pixels ``(N, 3072)`` uint8 and labels ``(N,)`` int64 of one checked CIFAR batch."""
    batch = _read_pickle(path)

    def damaged(why: str) -> DataError:
        return DataError(f"{path} is damaged ({why}); delete it and retry")

    pixels, labels = batch.get("data"), batch.get(info.labels_key)
    if pixels is None or labels is None:
        raise damaged(f"no 'data' or '{info.labels_key}' entry")
    row = int(np.prod(info.image_shape))
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != row:
        described = f"{pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray) else "no array"
        raise damaged(f"'data' should be a uint8 array of shape (N, {row}), found {described}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise damaged(f"'{info.labels_key}' is not a list of integers: {error}") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise damaged(f"'{info.labels_key}' is not a list of integers")
    if len(labels) != len(pixels):
        raise damaged(f"{len(pixels)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise damaged(f"labels outside 0..{info.num_classes - 1}")
    return pixels, labels.astype(np.int64)


def _load_cifar(info: DatasetInfo, folder: Path, train: bool) -> tuple[Tensor, Tensor]:
    batches = [
        _read_cifar_batch(folder / file_name, info) for file_name in (info.train_files if train else info.test_files)
    ]
    pixels = np.concatenate([batch_pixels for batch_pixels, _ in batches])
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    # Each row holds the red plane, then the green, then the blue, each 32×32 row-major.
    images = torch.from_numpy(pixels).view(len(pixels), *info.image_shape).to(torch.float32).div_(255.0)
    return images.contiguous(), torch.from_numpy(labels)


def _load_idx(info: DatasetInfo, root: Path, train: bool) -> tuple[Tensor, Tensor]:
    kwargs = {"split": info.split} if info.split else {}
    try:
        dataset = info.torchvision_class(str(root), train=train, download=False, **kwargs)
    except (RuntimeError, ValueError, OSError, AssertionError) as error:  # torchvision asserts on bad headers
        raise DataError(f"dataset '{info.name}' under {root} cannot be read ({error}); delete it and retry") from None
    pixels = dataset.data
    if info.transpose:
        pixels = pixels.transpose(1, 2)
    images = pixels.unsqueeze(1).to(torch.float32).div_(255.0)
    labels = dataset.targets.to(torch.int64) - info.label_offset
    return images.contiguous(), labels


def load_images(
    name: str,
    train: bool,
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load one official part of a dataset as ``(images, labels)``.

    ``images`` are float32 in ``[0, 1]`` with shape ``(N, *image_shape(name))``, e.g.
    ``(N, 1, 28, 28)`` or ``(N, 3, 32, 32)``; ``labels`` are int64 class indices
    starting at 0.
    """
    info = dataset_info(name)
    if info.derived_from is not None:
        if train:
            return _load_derived(info, Path(root), Path(system_dir), download)
        return load_images(info.derived_from, False, root, system_dir, download)
    folder = ensure_dataset(name, root, system_dir, download)
    if info.file_format == "cifar":
        return _load_cifar(info, folder, train)
    return _load_idx(info, Path(root), train)


@dataclass
class Split:
    """A part of a dataset held in memory: images ``(N, C, H, W)`` and labels ``(N,)``."""

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

    def part(self, index: int, count: int) -> Split:
        """The ``index``-th of ``count`` disjoint parts of nearly equal size (a client's own data among several)."""
        if not 0 <= index < count:
            raise ConfigError(f"part {index} of {count} does not exist: the parts are 0 to {count - 1}")
        return Split(self.images.tensor_split(count)[index], self.labels.tensor_split(count)[index])

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches of ``(images, labels)`` drawn by indexing whole tensors, with no per-item Python work."""
        return tensor_loader(self.images, self.labels, batch_size=batch_size, shuffle=shuffle, seed=seed)


def tensor_loader(*tensors: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches of aligned ``tensors``, each batch one index into every whole tensor (shuffled with ``seed``)."""
    dataset = TensorDataset(*tensors)
    order = (
        RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(dataset)
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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image, e.g. ``(3, 32, 32)`` for CIFAR."""
        channels, height, width = self.train.images.shape[1:]
        return (channels, height, width)


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
