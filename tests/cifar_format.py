"""Small CIFAR-10 and CIFAR-100 datasets written in CIFAR's real on-disk format, for tests.

CIFAR's python-version files are pickled dicts with byte-string keys, written by
Python 2's cPickle: ``data`` holds one uint8 row of 3072 values per image (the red,
green and blue 32×32 planes, row-major), ``labels`` (CIFAR-10) or ``fine_labels`` and
``coarse_labels`` (CIFAR-100) the classes. The images written here are distinct and
carry their index, so a test can tell which image landed in which split. Example::

    from cifar_format import write_cifar_dataset

    data = write_cifar_dataset(tmp_path / "data", "cifar10", train_count=200, test_count=40)
    make_splits("cifar10", val_size=40, aux_size=60, root=tmp_path / "data")
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CIFAR_TRAIN_COUNT = 60
CIFAR_TEST_COUNT = 20
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class Python2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote CIFAR's batches.

    Byte strings become Python 2 ``str`` opcodes (``SHORT_BINSTRING``/``BINSTRING``)
    instead of Python 3's ``_codecs.encode`` calls, and numpy is named by its Python 2
    module path ``numpy.core.multiarray``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def python2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2 wrote CIFAR's files."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    content = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in content
    assert b"numpy._core" not in content
    return content


def python3_pickle(obj: object) -> bytes:
    """``obj`` pickled by today's Python (protocol 2, as a user re-saving the files might)."""
    return pickle.dumps(obj, protocol=2)


PICKLERS = {"python2": python2_pickle, "python3": python3_pickle}


def cifar_pixels(count: int, salt: int = 0) -> np.ndarray:
    """``count`` distinct CIFAR rows, uint8 ``(count, 3072)``: red plane, green plane, blue plane.

    Every image holds its index in red pixels (0, 0) and (0, 1); every plane differs from
    the others and from its own transpose, and the values span 0..255.
    """
    index = np.arange(count).reshape(count, 1, 1, 1)
    channel = np.arange(3).reshape(1, 3, 1, 1)
    rows = np.arange(32).reshape(1, 1, 32, 1)
    cols = np.arange(32).reshape(1, 1, 1, 32)
    planes = (index * 5 + channel * 85 + rows * 9 + cols * 2 + salt) % 256
    planes[:, 0, 0, 0] = index[:, 0, 0, 0] % 256
    planes[:, 0, 0, 1] = index[:, 0, 0, 0] // 256
    return planes.astype(np.uint8).reshape(count, 3 * 32 * 32)


def as_loaded(pixels: np.ndarray) -> Tensor:
    """What CIFAR rows should load as: float32 ``(N, 3, 32, 32)`` in [0, 1]."""
    return torch.from_numpy(pixels.reshape(len(pixels), 3, 32, 32)).to(torch.float32) / 255.0


@dataclass
class FakeCifar:
    """What a fake CIFAR-10 or CIFAR-100 should load as: stored rows and labels, per part."""

    name: str
    train_pixels: np.ndarray
    train_labels: list[int]
    test_pixels: np.ndarray
    test_labels: list[int]

    def pixels(self, train: bool) -> np.ndarray:
        return self.train_pixels if train else self.test_pixels

    def labels(self, train: bool) -> Tensor:
        return torch.tensor(self.train_labels if train else self.test_labels, dtype=torch.int64)


def fake_cifar(
    name: str, salt: int = 0, train_count: int = CIFAR_TRAIN_COUNT, test_count: int = CIFAR_TEST_COUNT
) -> FakeCifar:
    """A fake ``cifar10`` or ``cifar100`` of ``train_count`` training and ``test_count`` test images."""
    classes = 10 if name == "cifar10" else 100
    return FakeCifar(
        name=name,
        train_pixels=cifar_pixels(train_count, salt),
        train_labels=[(i * 7 + salt) % classes for i in range(train_count)],
        test_pixels=cifar_pixels(test_count, salt + 100),
        test_labels=[(i * 3 + salt) % classes for i in range(test_count)],
    )


def cifar_batch(name: str, label: bytes, pixels: np.ndarray, labels: list[int]) -> dict[bytes, object]:
    """One batch as CIFAR stores it: a dict with byte keys."""
    batch: dict[bytes, object] = {b"batch_label": label}
    if name == "cifar10":
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [(fine + 1) % 20 for fine in labels]  # never equal to the fine labels
    batch[b"data"] = pixels
    batch[b"filenames"] = [f"image_{i:05d}.png".encode() for i in range(len(pixels))]
    return batch


def cifar_files(data: FakeCifar) -> dict[str, object]:
    """Every file of ``data`` in CIFAR's layout, as the objects to pickle, by file name."""
    train_count = len(data.train_pixels)
    if data.name == "cifar10":
        files: dict[str, object] = {}
        cuts = np.array_split(np.arange(train_count), len(CIFAR10_TRAIN_BATCHES))
        for number, (file_name, part) in enumerate(zip(CIFAR10_TRAIN_BATCHES, cuts, strict=True), start=1):
            files[file_name] = cifar_batch(
                "cifar10",
                f"training batch {number} of 5".encode(),
                data.train_pixels[part],
                [data.train_labels[i] for i in part],
            )
        files["test_batch"] = cifar_batch("cifar10", b"testing batch 1 of 1", data.test_pixels, data.test_labels)
        files["batches.meta"] = {
            b"num_cases_per_batch": train_count // 5,
            b"label_names": [f"class-{i}".encode() for i in range(10)],
            b"num_vis": 3072,
        }
        return files
    return {
        "train": cifar_batch("cifar100", b"training batch 1 of 1", data.train_pixels, data.train_labels),
        "test": cifar_batch("cifar100", b"testing batch 1 of 1", data.test_pixels, data.test_labels),
        "meta": {
            b"fine_label_names": [f"fine-{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse-{i}".encode() for i in range(20)],
        },
    }


def write_cifar(folder: Path, data: FakeCifar, style: str = "python2") -> dict[str, bytes]:
    """Write ``data`` as CIFAR's python-version files into ``folder``; return their bytes by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {file_name: PICKLERS[style](obj) for file_name, obj in cifar_files(data).items()}
    for file_name, content in written.items():
        (folder / file_name).write_bytes(content)
    return written


def write_cifar_dataset(
    root: Path, name: str = "cifar10", train_count: int = CIFAR_TRAIN_COUNT, test_count: int = CIFAR_TEST_COUNT
) -> FakeCifar:
    """A fake ``name`` written where dpsnn looks for it under the data folder ``root``; what it holds."""
    data = fake_cifar(name, train_count=train_count, test_count=test_count)
    write_cifar(Path(root) / CIFAR_FOLDERS[name], data)
    return data


def cifar_ids(images: Tensor) -> list[int]:
    """The indices written into images by :func:`cifar_pixels` (images as loaded, in [0, 1])."""
    pixels = torch.round(images[:, 0, 0, :2] * 255).to(torch.int64)
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()
