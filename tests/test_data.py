"""Tests of dpsnn.data: dataset lookup, loading, splits and loaders.

Every test works on small files in the datasets' real on-disk formats (IDX files, and
CIFAR's pickled python-version batches as Python 2 wrote them) written under
``tmp_path`` (except the one on the installed Fashion-MNIST), and downloads are off
unless a test turns them on with a fake torchvision download, so nothing touches the
network or the project's ``data/``.
"""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import shlex
import shutil
import struct
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from cifar_format import (
    CIFAR_FOLDERS,
    CIFAR_TEST_COUNT,
    CIFAR_TRAIN_COUNT,
    FakeCifar,
    as_loaded,
    cifar_files,
    cifar_ids,
    fake_cifar,
    python3_pickle,
    write_cifar,
)
from torch import Tensor
from torchvision import datasets as tv_datasets
from torchvision.datasets import utils as tv_utils

from dpsnn.data import (
    DATASETS,
    SYSTEM_DATA_DIR,
    Split,
    dataset_info,
    ensure_dataset,
    image_shape,
    load_images,
    make_splits,
)
from dpsnn.errors import DataError

TRAIN_COUNT = 300
TEST_COUNT = 60
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMNIST_FILES = {
    "train": ("emnist-letters-train-images-idx3-ubyte", "emnist-letters-train-labels-idx1-ubyte"),
    "test": ("emnist-letters-test-images-idx3-ubyte", "emnist-letters-test-labels-idx1-ubyte"),
}


def fake_images(count: int, salt: int = 0) -> Tensor:
    """``count`` distinct uint8 images ``(count, 28, 28)``.

    Every image holds its index in pixels (0, 0) and (0, 1) and ``salt`` in (0, 2); the
    rest is a pattern that differs from its own transpose and spans 0..255.
    """
    index = torch.arange(count).view(count, 1, 1)
    rows = torch.arange(28).view(1, 28, 1)
    cols = torch.arange(28).view(1, 1, 28)
    images = (rows * 9 + cols * 2 + index * 5 + salt) % 256
    images[:, 0, 0] = index[:, 0, 0] % 256
    images[:, 0, 1] = index[:, 0, 0] // 256
    images[:, 0, 2] = salt
    return images.to(torch.uint8)


def image_ids(images: Tensor) -> list[int]:
    """The indices written into images by :func:`fake_images` (images as loaded, in [0, 1])."""
    pixels = torch.round(images[:, 0, 0, :2] * 255).to(torch.int64)
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def idx_images(images: Tensor) -> bytes:
    count, height, width = images.shape
    return struct.pack(">IIII", 2051, count, height, width) + images.numpy().tobytes()


def idx_labels(labels: Tensor) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes()


@dataclass
class FakeSet:
    """What a fake dataset should load as: uint8 pixels and 0-based labels, per part."""

    train_pixels: Tensor
    train_labels: Tensor
    test_pixels: Tensor
    test_labels: Tensor

    def pixels(self, train: bool) -> Tensor:
        return self.train_pixels if train else self.test_pixels

    def labels(self, train: bool) -> Tensor:
        return self.train_labels if train else self.test_labels


def fake_mnist(salt: int = 0, train_count: int = TRAIN_COUNT, test_count: int = TEST_COUNT) -> FakeSet:
    return FakeSet(
        train_pixels=fake_images(train_count, salt),
        train_labels=(torch.arange(train_count) + salt) % 10,
        test_pixels=fake_images(test_count, salt + 100),
        test_labels=(torch.arange(test_count) * 3 + salt) % 10,
    )


def write_idx(
    folder: Path,
    files: dict[str, tuple[str, str]],
    data: FakeSet,
    *,
    gz: bool = False,
    transpose: bool = False,
    label_offset: int = 0,
) -> dict[str, bytes]:
    """Write ``data`` as the four IDX files into ``folder``; return the uncompressed bytes by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, bytes] = {}
    for part, (images_name, labels_name) in files.items():
        pixels = data.pixels(part == "train")
        if transpose:
            pixels = pixels.transpose(1, 2).contiguous()
        written[images_name] = idx_images(pixels)
        written[labels_name] = idx_labels(data.labels(part == "train") + label_offset)
    for name, content in written.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return written


def write_mnist(root: Path, data: FakeSet) -> dict[str, bytes]:
    return write_idx(root / "MNIST" / "raw", MNIST_FILES, data)


def leftovers(root: Path) -> list[Path]:
    """Hidden files or folders (temporary copies, download scratch) anywhere under ``root``."""
    return [path for path in root.rglob("*") if path.name.startswith(".")]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test downloads anything unless it deletes this variable and fakes the download."""
    monkeypatch.setenv("DPSNN_OFFLINE", "1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def system_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "system"
    folder.mkdir()
    return folder


@pytest.fixture
def mnist(root: Path) -> FakeSet:
    """A fake MNIST (300 train, 60 test images) in ``root`` in torchvision's layout."""
    data = fake_mnist()
    write_mnist(root, data)
    return data


# --- loading -------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_load_images_scales_bytes_exactly(mnist: FakeSet, root: Path, system_dir: Path, train: bool) -> None:
    images, labels = load_images("mnist", train, root=root, system_dir=system_dir)

    count = TRAIN_COUNT if train else TEST_COUNT
    assert images.dtype == torch.float32
    assert images.shape == (count, 1, 28, 28)
    assert images.is_contiguous()
    assert images.min().item() == 0.0
    assert images.max().item() == 1.0
    expected = mnist.pixels(train).unsqueeze(1).to(torch.float32) / 255.0
    assert torch.equal(images, expected)
    assert labels.dtype == torch.int64
    assert labels.shape == (count,)
    assert torch.equal(labels, mnist.labels(train))


@pytest.mark.parametrize("train", [True, False])
def test_emnist_letters_are_transposed_back_and_labels_start_at_zero(root: Path, system_dir: Path, train: bool) -> None:
    data = FakeSet(
        train_pixels=fake_images(TRAIN_COUNT, salt=3),
        train_labels=torch.arange(TRAIN_COUNT) % 26,
        test_pixels=fake_images(TEST_COUNT, salt=4),
        test_labels=(torch.arange(TEST_COUNT) * 7) % 26,
    )
    write_idx(root / "EMNIST" / "raw", EMNIST_FILES, data, transpose=True, label_offset=1)

    images, labels = load_images("emnist-letters", train, root=root, system_dir=system_dir)

    pixels = data.pixels(train)
    assert not torch.equal(pixels, pixels.transpose(1, 2))  # the check below can tell the two apart
    assert images.shape == (len(pixels), 1, 28, 28)
    assert images.is_contiguous()
    assert torch.equal(images, pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, data.labels(train))
    assert labels.min().item() == 0
    assert labels.max().item() == 25


def test_emnist_letters_splits_have_26_classes(root: Path, system_dir: Path) -> None:
    data = FakeSet(
        train_pixels=fake_images(TRAIN_COUNT),
        train_labels=torch.arange(TRAIN_COUNT) % 26,
        test_pixels=fake_images(TEST_COUNT),
        test_labels=torch.arange(TEST_COUNT) % 26,
    )
    write_idx(root / "EMNIST" / "raw", EMNIST_FILES, data, transpose=True, label_offset=1)

    splits = make_splits("emnist-letters", val_size=30, aux_size=30, root=root, system_dir=system_dir)

    assert splits.num_classes == 26
    assert splits.name == "emnist-letters"
    assert len(splits.train) == TRAIN_COUNT - 60


def test_unreadable_raw_file_is_a_data_error(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    images_file = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:1000])  # header says 300 images, holds barely one

    with pytest.raises(DataError, match="cannot be read") as caught:
        load_images("mnist", True, root=root, system_dir=system_dir)
    assert "'mnist'" in str(caught.value)
    assert str(root) in str(caught.value)


# --- lookup: root, then the system folder --------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_system_copy_is_unpacked_into_root(root: Path, system_dir: Path, gz: bool) -> None:
    data = fake_mnist(salt=11)
    written = write_idx(system_dir / "mnist", MNIST_FILES, data, gz=gz)

    raw = ensure_dataset("mnist", root=root, system_dir=system_dir)

    assert raw == root / "MNIST" / "raw"
    assert sorted(path.name for path in raw.iterdir()) == sorted(written)
    for name, content in written.items():
        assert (raw / name).read_bytes() == content
    assert leftovers(root) == []
    images, labels = load_images("mnist", True, root=root, system_dir=system_dir)
    assert torch.equal(images, data.train_pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert torch.equal(labels, data.train_labels)


def test_unpacked_copy_is_used_once_the_system_copy_is_gone(root: Path, system_dir: Path) -> None:
    data = fake_mnist(salt=5)
    write_idx(system_dir / "mnist", MNIST_FILES, data, gz=True)
    load_images("mnist", False, root=root, system_dir=system_dir)
    for path in (system_dir / "mnist").iterdir():
        path.unlink()

    images, labels = load_images("mnist", False, root=root, system_dir=system_dir)

    assert torch.equal(images, data.test_pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert torch.equal(labels, data.test_labels)


def test_root_copy_is_preferred_to_system_copy(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    system_data = fake_mnist(salt=42)
    write_idx(system_dir / "mnist", MNIST_FILES, system_data, gz=True)
    before = {path.name: path.read_bytes() for path in (root / "MNIST" / "raw").iterdir()}

    images, labels = load_images("mnist", True, root=root, system_dir=system_dir)

    assert torch.equal(images, mnist.train_pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert torch.equal(labels, mnist.train_labels)
    assert not torch.equal(images, system_data.train_pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert {path.name: path.read_bytes() for path in (root / "MNIST" / "raw").iterdir()} == before


def test_incomplete_system_copy_is_not_used(root: Path, system_dir: Path) -> None:
    write_idx(system_dir / "mnist", MNIST_FILES, fake_mnist(), gz=True)
    (system_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DataError, match="not found"):
        ensure_dataset("mnist", root=root, system_dir=system_dir)
    assert not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


# --- nowhere to be found -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder", "fix"),
    [
        ("fashion-mnist", "FashionMNIST", "apt-get install dataset-fashion-mnist"),
        ("mnist", "MNIST", "copy the four IDX files into {raw}/"),
        ("emnist-letters", "EMNIST", "copy the four IDX files into {raw}/"),
    ],
)
def test_offline_and_missing_names_both_places_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, root: Path, system_dir: Path, name: str, folder: str, fix: str
) -> None:
    calls: list[str] = []

    def no_download(self: object) -> None:
        calls.append(name)
        raise AssertionError("download attempted while offline")

    monkeypatch.setattr(tv_datasets.MNIST, "download", no_download)
    monkeypatch.setattr(tv_datasets.EMNIST, "download", no_download)

    with pytest.raises(DataError) as caught:
        make_splits(name, root=root, system_dir=system_dir)

    message = str(caught.value)
    assert f"'{name}'" in message
    assert str(root / folder / "raw") in message
    assert str(system_dir / name) in message
    assert "DPSNN_OFFLINE" in message
    assert fix.format(raw=root / folder / "raw") in message.partition("fix: ")[2]
    assert calls == []
    assert not root.exists()


def test_download_disabled_by_argument(root: Path, system_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPSNN_OFFLINE")

    with pytest.raises(DataError, match="download not attempted"):
        load_images("mnist", True, root=root, system_dir=system_dir, download=False)
    assert not root.exists()


def test_failed_download_is_a_data_error_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, root: Path, system_dir: Path
) -> None:
    monkeypatch.delenv("DPSNN_OFFLINE")
    raw_folders: list[Path] = []

    def failing_download(self: tv_datasets.MNIST) -> None:
        raw = Path(self.raw_folder)
        raw_folders.append(raw)
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte").write_bytes(idx_images(fake_images(3))[:100])  # cut off midway
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_datasets.MNIST, "download", failing_download)

    with pytest.raises(DataError) as caught:
        make_splits("mnist", root=root, system_dir=system_dir)

    message = str(caught.value)
    assert "download failed" in message
    assert "URLError" in message
    assert "Temporary failure in name resolution" in message
    assert "'mnist'" in message
    assert len(raw_folders) == 1
    scratch = raw_folders[0].parents[1]  # torchvision wrote into <scratch>/MNIST/raw
    assert scratch.parent == root
    assert scratch.name.startswith(".download-")
    assert list(root.rglob("*-ubyte")) == []
    assert leftovers(root) == []


def test_successful_download_moves_raw_files_into_root(
    monkeypatch: pytest.MonkeyPatch, root: Path, system_dir: Path
) -> None:
    monkeypatch.delenv("DPSNN_OFFLINE")
    data = fake_mnist(salt=9)

    def fake_download(self: tv_datasets.MNIST) -> None:
        write_idx(Path(self.raw_folder), MNIST_FILES, data)
        (Path(self.raw_folder) / "train-images-idx3-ubyte.gz").write_bytes(b"archive")

    monkeypatch.setattr(tv_datasets.MNIST, "download", fake_download)

    images, labels = load_images("mnist", False, root=root, system_dir=system_dir)

    assert torch.equal(images, data.test_pixels.unsqueeze(1).to(torch.float32) / 255.0)
    assert torch.equal(labels, data.test_labels)
    assert sorted(path.name for path in (root / "MNIST" / "raw").iterdir()) == sorted(
        MNIST_FILES["train"] + MNIST_FILES["test"]
    )
    assert leftovers(root) == []


@pytest.mark.parametrize("call", [ensure_dataset, load_images, make_splits])
def test_unknown_dataset_lists_known_names(call: Callable[..., object], root: Path, system_dir: Path) -> None:
    kwargs: dict[str, object] = {"root": root, "system_dir": system_dir}
    if call is load_images:
        kwargs["train"] = True

    with pytest.raises(DataError) as caught:
        call("cifar-10", **kwargs)

    message = str(caught.value)
    assert "unknown dataset 'cifar-10'" in message
    assert message.endswith(
        "choose one of: cifar10, cifar100, emnist-letters, fashion-mnist, mnist, or SOURCE+TAG for a derived copy"
    )
    assert not root.exists()


# --- splits --------------------------------------------------------------------------


def test_make_splits_sizes_and_labels(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    splits = make_splits("mnist", seed=0, val_size=40, aux_size=60, root=root, system_dir=system_dir)

    assert splits.name == "mnist"
    assert splits.seed == 0
    assert splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.aux), len(splits.test)) == (200, 40, 60, TEST_COUNT)
    for split in (splits.train, splits.val, splits.aux, splits.test):
        assert split.images.shape == (len(split), 1, 28, 28)
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
    for split in (splits.train, splits.val, splits.aux):  # every label still belongs to its image
        assert torch.equal(split.labels, mnist.train_labels[image_ids(split.images)])
    assert torch.equal(splits.test.labels, mnist.test_labels[image_ids(splits.test.images)])


def test_make_splits_are_disjoint_and_cover_the_training_set(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    splits = make_splits("mnist", seed=3, val_size=40, aux_size=60, root=root, system_dir=system_dir)

    train, val, aux = (set(image_ids(split.images)) for split in (splits.train, splits.val, splits.aux))
    assert (len(train), len(val), len(aux)) == (200, 40, 60)  # no image twice within a split
    assert train.isdisjoint(val)
    assert train.isdisjoint(aux)
    assert val.isdisjoint(aux)
    assert train | val | aux == set(range(TRAIN_COUNT))
    assert sorted(image_ids(splits.test.images)) == list(range(TEST_COUNT))


def test_make_splits_depend_only_on_the_seed(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    def draw(seed: int) -> dict[str, list[int]]:
        splits = make_splits("mnist", seed=seed, val_size=40, aux_size=60, root=root, system_dir=system_dir)
        return {part: image_ids(getattr(splits, part).images) for part in ("train", "val", "aux", "test")}

    first, again, other = draw(1), draw(1), draw(2)

    assert first == again
    for part in ("train", "val", "aux", "test"):
        assert first[part] != other[part]
    assert first["val"] != list(range(40))  # the pool is shuffled, not cut in order


def test_train_size_truncates_only_train(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    full = make_splits("mnist", seed=0, val_size=40, aux_size=60, root=root, system_dir=system_dir)
    small = make_splits("mnist", seed=0, train_size=50, val_size=40, aux_size=60, root=root, system_dir=system_dir)

    assert len(small.train) == 50
    assert image_ids(small.train.images) == image_ids(full.train.images)[:50]
    assert torch.equal(small.train.labels, full.train.labels[:50])
    for part in ("val", "aux", "test"):
        assert image_ids(getattr(small, part).images) == image_ids(getattr(full, part).images)


def test_train_size_equal_to_available_is_allowed(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    splits = make_splits("mnist", train_size=200, val_size=40, aux_size=60, root=root, system_dir=system_dir)

    assert len(splits.train) == 200


def test_train_size_larger_than_available(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    with pytest.raises(DataError) as caught:
        make_splits("mnist", train_size=201, val_size=40, aux_size=60, root=root, system_dir=system_dir)

    message = str(caught.value)
    assert "--train-size 201" in message
    assert "200" in message
    assert "'mnist'" in message


@pytest.mark.parametrize("field", ["train_size", "test_size"])
@pytest.mark.parametrize("value", [0, -5])
def test_sizes_must_be_positive(mnist: FakeSet, root: Path, system_dir: Path, field: str, value: int) -> None:
    with pytest.raises(DataError, match=f"{field.replace('_', ' ')} must be a positive integer, got {value}"):
        make_splits("mnist", val_size=40, aux_size=60, root=root, system_dir=system_dir, **{field: value})


def test_val_and_aux_too_large_for_the_pool(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    with pytest.raises(DataError, match=f"has {TRAIN_COUNT} training images, too few") as caught:
        make_splits("mnist", val_size=150, aux_size=150, root=root, system_dir=system_dir)
    assert "val_size=150" in str(caught.value)
    assert "aux_size=150" in str(caught.value)


def test_test_size(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    full = make_splits("mnist", seed=4, val_size=40, aux_size=60, root=root, system_dir=system_dir)
    small = make_splits("mnist", seed=4, test_size=25, val_size=40, aux_size=60, root=root, system_dir=system_dir)
    whole = make_splits(
        "mnist", seed=4, test_size=TEST_COUNT, val_size=40, aux_size=60, root=root, system_dir=system_dir
    )

    assert len(small.test) == 25
    assert image_ids(small.test.images) == image_ids(full.test.images)[:25]
    assert torch.equal(small.test.labels, mnist.test_labels[image_ids(small.test.images)])
    assert len(whole.test) == TEST_COUNT
    with pytest.raises(DataError, match=f"test size {TEST_COUNT + 1} is larger than the test split"):
        make_splits("mnist", test_size=TEST_COUNT + 1, val_size=40, aux_size=60, root=root, system_dir=system_dir)


# --- loaders -------------------------------------------------------------------------


@pytest.fixture
def split() -> Split:
    """103 distinct items, so a batch size of 10 leaves a last batch of 3."""
    images = fake_images(103).unsqueeze(1).to(torch.float32) / 255.0
    return Split(images, torch.arange(103) % 10)


def batch_ids(loader: torch.utils.data.DataLoader) -> list[list[int]]:
    return [image_ids(images) for images, _ in loader]


def test_loader_batches_are_whole_tensors(split: Split) -> None:
    batches = list(split.loader(batch_size=10))

    assert [len(labels) for _, labels in batches] == [10] * 10 + [3]
    for images, labels in batches:
        assert isinstance(images, Tensor)
        assert isinstance(labels, Tensor)
        assert images.shape == (len(labels), 1, 28, 28)
        assert images.dtype == torch.float32
        assert labels.dtype == torch.int64
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert torch.equal(images, split.images)  # no shuffle: the original order
    assert torch.equal(labels, split.labels)


def test_loader_shuffle_covers_every_item_once(split: Split) -> None:
    batches = list(split.loader(batch_size=10, shuffle=True, seed=0))

    assert [len(labels) for _, labels in batches] == [10] * 10 + [3]
    ids = [i for images, _ in batches for i in image_ids(images)]
    assert sorted(ids) == list(range(103))
    assert ids != list(range(103))
    for images, labels in batches:  # labels travel with their images
        assert torch.equal(labels, split.labels[image_ids(images)])


def test_loader_shuffle_is_seeded(split: Split) -> None:
    first = batch_ids(split.loader(batch_size=10, shuffle=True, seed=7))
    again = batch_ids(split.loader(batch_size=10, shuffle=True, seed=7))
    other = batch_ids(split.loader(batch_size=10, shuffle=True, seed=8))

    assert first == again
    assert first != other


def test_subset(split: Split) -> None:
    assert split.subset(None) is split
    head = split.subset(5)
    assert len(head) == 5
    assert image_ids(head.images) == [0, 1, 2, 3, 4]
    assert torch.equal(head.labels, split.labels[:5])


# --- CIFAR: pickled batches ----------------------------------------------------------

# The writers of CIFAR-format files live in cifar_format.py, shared with the end-to-end tests.


@pytest.fixture(autouse=True)
def no_unrestricted_cifar_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CIFAR classes unpickle without restriction: dpsnn must never build one."""

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("torchvision's CIFAR reader was used")

    monkeypatch.setattr(tv_datasets.CIFAR10, "__init__", refuse)
    monkeypatch.setattr(tv_datasets.CIFAR100, "__init__", refuse)


@pytest.fixture(params=["cifar10", "cifar100"])
def cifar(request: pytest.FixtureRequest, root: Path) -> FakeCifar:
    """A fake CIFAR-10 or CIFAR-100 (60 train, 20 test images) in ``root`` in torchvision's layout."""
    data = fake_cifar(request.param)
    write_cifar(root / CIFAR_FOLDERS[request.param], data)
    return data


@pytest.mark.parametrize("style", ["python2", "python3"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batches_load_exactly(root: Path, system_dir: Path, name: str, train: bool, style: str) -> None:
    data = fake_cifar(name, salt=3)
    write_cifar(root / CIFAR_FOLDERS[name], data, style=style)

    images, labels = load_images(name, train, root=root, system_dir=system_dir)

    count = CIFAR_TRAIN_COUNT if train else CIFAR_TEST_COUNT
    assert images.dtype == torch.float32
    assert images.shape == (count, 3, 32, 32)
    assert images.is_contiguous()
    assert images.min().item() == 0.0
    assert images.max().item() == 1.0
    assert torch.equal(images, as_loaded(data.pixels(train)))
    assert cifar_ids(images) == list(range(count))  # the training batches are read in order 1..5
    assert labels.dtype == torch.int64
    assert torch.equal(labels, data.labels(train))


def test_cifar_rows_are_red_green_blue_planes_row_major(root: Path, system_dir: Path) -> None:
    data = fake_cifar("cifar10")
    pixels = np.zeros((CIFAR_TEST_COUNT, 3072), dtype=np.uint8)
    pokes = {  # position in the stored row -> (channel, row, column) once loaded
        0: (0, 0, 0),
        31: (0, 0, 31),
        32: (0, 1, 0),
        5 * 32 + 7: (0, 5, 7),
        1024: (1, 0, 0),
        1024 + 2 * 32 + 3: (1, 2, 3),
        2048: (2, 0, 0),
        3071: (2, 31, 31),
    }
    for value, position in enumerate(pokes, start=10):
        pixels[4, position] = value
    data.test_pixels = pixels
    write_cifar(root / "cifar-10-batches-py", data)

    images, _ = load_images("cifar10", False, root=root, system_dir=system_dir)

    stored = torch.round(images * 255).to(torch.int64)
    for value, (channel, row, column) in enumerate(pokes.values(), start=10):
        assert stored[4, channel, row, column].item() == value
    assert stored[4].count_nonzero().item() == len(pokes)
    assert stored[[i for i in range(CIFAR_TEST_COUNT) if i != 4]].count_nonzero().item() == 0


def test_cifar100_uses_the_fine_labels(root: Path, system_dir: Path) -> None:
    data = fake_cifar("cifar100")
    written = cifar_files(data)
    write_cifar(root / "cifar-100-python", data)

    _, labels = load_images("cifar100", True, root=root, system_dir=system_dir)

    fine, coarse = written["train"][b"fine_labels"], written["train"][b"coarse_labels"]  # type: ignore[index]
    assert labels.tolist() == fine
    assert labels.tolist() != coarse
    assert labels.max().item() > 19  # beyond the 20 coarse classes


def test_cifar_splits(cifar: FakeCifar, root: Path, system_dir: Path) -> None:
    splits = make_splits(cifar.name, seed=0, val_size=10, aux_size=15, root=root, system_dir=system_dir)

    assert splits.name == cifar.name
    assert splits.num_classes == (10 if cifar.name == "cifar10" else 100)
    assert splits.image_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.aux), len(splits.test)) == (35, 10, 15, CIFAR_TEST_COUNT)
    for split in (splits.train, splits.val, splits.aux):  # images and labels still belong together
        ids = cifar_ids(split.images)
        assert split.images.shape == (len(split), 3, 32, 32)
        assert torch.equal(split.images, as_loaded(cifar.train_pixels[ids]))
        assert torch.equal(split.labels, cifar.labels(True)[ids])
    assert torch.equal(splits.test.labels, cifar.labels(False)[cifar_ids(splits.test.images)])
    train, val, aux = (set(cifar_ids(split.images)) for split in (splits.train, splits.val, splits.aux))
    assert (len(train), len(val), len(aux)) == (35, 10, 15)
    assert train.isdisjoint(val) and train.isdisjoint(aux) and val.isdisjoint(aux)
    assert train | val | aux == set(range(CIFAR_TRAIN_COUNT))
    images, labels = next(iter(splits.train.loader(batch_size=8, shuffle=True, seed=0)))
    assert images.shape == (8, 3, 32, 32)
    assert torch.equal(labels, cifar.labels(True)[cifar_ids(images)])


def test_cifar_splits_depend_only_on_the_seed(cifar: FakeCifar, root: Path, system_dir: Path) -> None:
    def draw(seed: int) -> dict[str, list[int]]:
        splits = make_splits(cifar.name, seed=seed, val_size=10, aux_size=15, root=root, system_dir=system_dir)
        return {part: cifar_ids(getattr(splits, part).images) for part in ("train", "val", "aux", "test")}

    first, again, other = draw(1), draw(1), draw(2)

    assert first == again
    for part in ("train", "val", "aux", "test"):
        assert first[part] != other[part]


@pytest.mark.parametrize("inner", [False, True], ids=["files-directly", "in-batches-folder"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_system_copy_is_copied_into_root(root: Path, system_dir: Path, name: str, inner: bool) -> None:
    data = fake_cifar(name, salt=17)
    source = system_dir / name / CIFAR_FOLDERS[name] if inner else system_dir / name
    written = write_cifar(source, data)

    raw = ensure_dataset(name, root=root, system_dir=system_dir)

    assert raw == root / CIFAR_FOLDERS[name]
    assert {path.name: path.read_bytes() for path in raw.iterdir()} == written
    assert {path.name: path.read_bytes() for path in source.iterdir() if path.is_file()} == written
    assert leftovers(root) == []
    images, labels = load_images(name, True, root=root, system_dir=system_dir)
    assert torch.equal(images, as_loaded(data.train_pixels))
    assert torch.equal(labels, data.labels(True))


def test_cifar_root_copy_is_preferred_to_system_copy(root: Path, system_dir: Path) -> None:
    mine, system = fake_cifar("cifar10", salt=1), fake_cifar("cifar10", salt=2)
    write_cifar(root / "cifar-10-batches-py", mine)
    write_cifar(system_dir / "cifar10", system)

    images, labels = load_images("cifar10", False, root=root, system_dir=system_dir)

    assert torch.equal(images, as_loaded(mine.test_pixels))
    assert not torch.equal(images, as_loaded(system.test_pixels))
    assert torch.equal(labels, mine.labels(False))


def test_image_shapes_and_classes_of_the_registry() -> None:
    expected = {
        "fashion-mnist": ((1, 28, 28), 10),
        "mnist": ((1, 28, 28), 10),
        "emnist-letters": ((1, 28, 28), 26),
        "cifar10": ((3, 32, 32), 10),
        "cifar100": ((3, 32, 32), 100),
    }
    assert set(DATASETS) == set(expected)
    for name, (shape, classes) in expected.items():
        assert image_shape(name) == shape
        assert dataset_info(name).image_shape == shape
        assert dataset_info(name).num_classes == classes
    with pytest.raises(DataError, match="unknown dataset 'cifar-10'"):
        image_shape("cifar-10")


def test_splits_image_shape_of_a_gray_dataset(mnist: FakeSet, root: Path, system_dir: Path) -> None:
    splits = make_splits("mnist", val_size=40, aux_size=60, root=root, system_dir=system_dir)

    assert splits.image_shape == (1, 28, 28)
    assert splits.image_shape == image_shape("mnist")


# --- CIFAR: untrusted and damaged files ----------------------------------------------


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class Evaluates:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (lambda marker: RunsShell(marker), "system"),
        (lambda marker: Evaluates(marker), "eval"),
        (lambda marker: {b"data": RunsShell(marker), b"labels": [0]}, "system"),
        (lambda marker: OrderedDict([(b"data", np.zeros((1, 3072), np.uint8)), (b"labels", [0])]), "OrderedDict"),
    ],
    ids=["os.system", "builtins.eval", "hidden-in-a-batch", "class-not-allowed"],
)
def test_a_pickle_that_runs_code_is_refused_unrun(
    tmp_path: Path, root: Path, system_dir: Path, payload: Callable[[Path], object], refused: str, protocol: int
) -> None:
    marker = tmp_path / "ran"
    write_cifar(root / "cifar-10-batches-py", fake_cifar("cifar10"))
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps(payload(marker), protocol=protocol))

    with pytest.raises(DataError) as caught:
        load_images("cifar10", True, root=root, system_dir=system_dir)

    message = str(caught.value)
    assert str(batch) in message
    assert "would run code" in message
    assert "refused" in message
    assert f".{refused}) and was refused" in message  # the refused name, e.g. (posix.system)
    assert "\n" not in message
    assert not marker.exists()


def with_entry(key: bytes, value: object) -> Callable[[dict[bytes, object], bytes], bytes]:
    """A damage that stores ``value`` under ``key`` in an otherwise intact batch."""
    return lambda batch, stored: python3_pickle({**batch, key: value})


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        pytest.param(lambda batch, stored: stored[: len(stored) // 2], "", id="truncated"),
        pytest.param(lambda batch, stored: b"<html>404 not found</html>", "", id="garbage"),
        pytest.param(lambda batch, stored: b"", "", id="empty"),
        pytest.param(
            lambda batch, stored: b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.",
            "latin-1",
            id="codec-other-than-latin-1",
        ),
        pytest.param(lambda batch, stored: python3_pickle([batch]), "holds a list", id="not-a-dict"),
        pytest.param(
            lambda batch, stored: python3_pickle({k: v for k, v in batch.items() if k != b"labels"}),
            "no 'data' or 'labels' entry",
            id="no-labels",
        ),
        pytest.param(with_entry(b"data", np.zeros((12, 1024), np.uint8)), "shape (12, 1024)", id="short-rows"),
        pytest.param(with_entry(b"data", np.zeros((12, 3072), np.float32)), "float32", id="float-pixels"),
        pytest.param(with_entry(b"data", np.zeros((12, 3072), object)), "object", id="object-pixels"),
        pytest.param(with_entry(b"data", [[0] * 3072] * 12), "found no array", id="list-pixels"),
        pytest.param(with_entry(b"labels", [0] * 11), "12 images but 11 labels", id="too-few-labels"),
        pytest.param(with_entry(b"labels", [0] * 11 + [10]), "labels outside 0..9", id="label-too-large"),
        pytest.param(with_entry(b"labels", [0] * 11 + [-1]), "labels outside 0..9", id="negative-label"),
        pytest.param(with_entry(b"labels", ["cat"] * 12), "not a list of integers", id="text-labels"),
    ],
)
def test_a_damaged_batch_is_a_data_error(
    root: Path, system_dir: Path, damage: Callable[[dict[bytes, object], bytes], bytes], detail: str
) -> None:
    data = fake_cifar("cifar10")
    write_cifar(root / "cifar-10-batches-py", data)
    batch_file = root / "cifar-10-batches-py" / "data_batch_2"
    batch = cifar_files(data)["data_batch_2"]
    assert isinstance(batch, dict)
    batch_file.write_bytes(damage(batch, batch_file.read_bytes()))

    with pytest.raises(DataError) as caught:
        load_images("cifar10", True, root=root, system_dir=system_dir)

    message = str(caught.value)
    assert message.startswith(f"{batch_file} is damaged (")
    assert message.endswith("); delete it and retry")
    assert detail in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("cifar10", "copy the python-version batches (cifar-10-python.tar.gz, extracted"),
        ("cifar100", "copy the python-version files (cifar-100-python.tar.gz, extracted"),
    ],
)
def test_cifar_offline_and_missing_names_every_place_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, root: Path, system_dir: Path, name: str, hint: str
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", lambda *args, **kwargs: calls.append(name))
    write_cifar(system_dir / name, fake_cifar(name))
    (system_dir / name / ("test_batch" if name == "cifar10" else "test")).unlink()  # an incomplete copy

    with pytest.raises(DataError) as caught:
        make_splits(name, root=root, system_dir=system_dir)

    message = str(caught.value)
    folder = CIFAR_FOLDERS[name]
    assert message.startswith(f"dataset '{name}' not found: ")
    assert f"{root / folder}/" in message
    assert f"{system_dir / name}/" in message
    assert f"{system_dir / name / folder}/" in message
    assert "DPSNN_OFFLINE" in message
    fix = message.partition("fix: ")[2]
    assert fix.startswith(hint)
    assert f"into {root / folder}/" in fix
    assert "run once on a machine with internet" in fix
    assert "\n" not in message
    assert calls == []
    assert not root.exists()


def fake_cifar_archive(data: FakeCifar, folder: Path, archive: Path) -> None:
    """Write ``data`` as CIFAR's tar.gz: every file inside the batches folder, as published."""
    staging = folder / "staging"
    write_cifar(staging / CIFAR_FOLDERS[data.name], data)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / CIFAR_FOLDERS[data.name], arcname=CIFAR_FOLDERS[data.name])
    shutil.rmtree(staging)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_download_unpacks_the_archive_and_moves_the_batches_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root: Path, system_dir: Path, name: str
) -> None:
    monkeypatch.delenv("DPSNN_OFFLINE")
    data = fake_cifar(name, salt=23)
    published = tmp_path / "published.tar.gz"
    fake_cifar_archive(data, tmp_path, published)
    downloads: list[tuple[str, Path, str, str]] = []

    def fake_download(url: str, download_root: str, filename: str, md5: str) -> None:
        downloads.append((url, Path(download_root), filename, md5))
        shutil.copyfile(published, Path(download_root) / filename)
        tv_utils.extract_archive(str(Path(download_root) / filename), download_root)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)

    images, labels = load_images(name, False, root=root, system_dir=system_dir)

    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    assert len(downloads) == 1
    url, scratch, filename, md5 = downloads[0]
    assert (url, filename, md5) == (cls.url, cls.filename, cls.tgz_md5)
    assert scratch.parent == root
    assert scratch.name.startswith(".download-")
    assert torch.equal(images, as_loaded(data.test_pixels))
    assert torch.equal(labels, data.labels(False))
    assert sorted(path.name for path in (root / CIFAR_FOLDERS[name]).iterdir()) == sorted(cifar_files(data))
    assert sorted(path.name for path in root.iterdir()) == [CIFAR_FOLDERS[name]]  # no archive, no scratch
    assert leftovers(root) == []


def test_cifar_failed_download_is_a_data_error_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, root: Path, system_dir: Path
) -> None:
    monkeypatch.delenv("DPSNN_OFFLINE")

    def failing_download(url: str, download_root: str, filename: str, md5: str) -> None:
        (Path(download_root) / filename).write_bytes(b"\x1f\x8b partial")
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing_download)

    with pytest.raises(DataError) as caught:
        load_images("cifar10", True, root=root, system_dir=system_dir)

    message = str(caught.value)
    assert "dataset 'cifar10' not found" in message
    assert "download failed: URLError" in message
    assert "Temporary failure in name resolution" in message
    assert list(root.rglob("*")) == []


# --- the installed Fashion-MNIST -----------------------------------------------------


def test_installed_fashion_mnist(tmp_path: Path) -> None:
    splits = make_splits("fashion-mnist", seed=0, root=tmp_path, system_dir=SYSTEM_DATA_DIR)

    assert (len(splits.train), len(splits.val), len(splits.aux), len(splits.test)) == (50000, 5000, 5000, 10000)
    assert splits.num_classes == 10
    for split in (splits.train, splits.val, splits.aux, splits.test):
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.images.dtype == torch.float32
        assert 0.0 <= split.images.min().item() and split.images.max().item() <= 1.0
        assert sorted(split.labels.unique().tolist()) == list(range(10))
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 16 + 60000 * 784
    assert leftovers(tmp_path) == []


def test_raw_file_with_bad_header_is_a_data_error(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", fake_mnist())
    (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="cannot be read"):
        load_images("mnist", True, root=tmp_path / "data", system_dir=tmp_path / "system")


def test_truncated_system_gzip_is_a_data_error(tmp_path: Path) -> None:
    system = tmp_path / "system"
    write_idx(system / "mnist", MNIST_FILES, fake_mnist(), gz=True)
    packed = system / "mnist" / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:1000])
    with pytest.raises(DataError, match="damaged"):
        load_images("mnist", True, root=tmp_path / "data", system_dir=system)
    assert list((tmp_path / "data").rglob("*-ubyte")) == []


@pytest.mark.parametrize(("val_size", "aux_size"), [(-5, 60), (40, -5)])
def test_negative_val_or_aux_size_is_a_data_error(tmp_path: Path, val_size: int, aux_size: int) -> None:
    write_mnist(tmp_path / "data", fake_mnist())
    with pytest.raises(DataError, match="must be a non-negative integer"):
        make_splits(
            "mnist", val_size=val_size, aux_size=aux_size, root=tmp_path / "data", system_dir=tmp_path / "system"
        )


def test_fix_hint_names_the_root_in_use(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_images("mnist", True, root=tmp_path / "elsewhere", system_dir=tmp_path / "system")
    assert str(tmp_path / "elsewhere" / "MNIST" / "raw") in str(caught.value).partition("fix: ")[2]
