"""Conformance of every registered architecture: one suite, run over :func:`dpsnn.architectures.architecture_names`.

Each name (every option of an architecture that takes one) is built for 1×28×28 and
3×32×32 images: its shapes, a forward and backward pass, a decoder built from its shapes
and trained a few steps, and a checkpoint round trip. An architecture added to the
registry is tested here without new test code. Batches are tiny: ResNet-18 runs on the CPU.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F

from dpsnn.architectures import (
    ARCHITECTURES,
    architecture_names,
    build_split,
    canonical_architecture,
    intermediate_shape,
    parse_architecture,
)
from dpsnn.attacks.inversion import Decoder
from dpsnn.checkpoints import load_classifier, save_checkpoint
from dpsnn.errors import ConfigError
from dpsnn.models import SplitNN, Validator

NAMES = architecture_names()
SHAPES = [(1, 28, 28), (3, 32, 32)]
CASES = [pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}") for name in NAMES for shape in SHAPES]
BATCH = 2


def images(shape: tuple[int, ...], n: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_the_registry_lists_every_architecture():
    assert {"reference", "cifar-cnn", "resnet18:1", "resnet18:2", "resnet18:3"} <= set(NAMES)
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_names_are_canonical_and_described(name):
    assert canonical_architecture(name) == name
    info, option = parse_architecture(name)
    assert info.description.strip()
    if info.options:
        assert option in info.options and info.option and info.default in info.options
        assert canonical_architecture(info.name) == f"{info.name}:{info.default}"


@cache
def built(name: str, shape: tuple[int, ...]) -> dict:
    """The split of ``name`` for ``shape`` (7 classes), and what its client sends for a batch (built once)."""
    torch.manual_seed(0)
    client, server = build_split(name, shape, num_classes=7)
    client.eval()
    server.eval()
    x = images(shape)
    with torch.no_grad():
        h = client(x)
        logits = server(h)
    return {"client": client, "x": x, "h": h, "logits": logits, "intermediate": intermediate_shape(client, shape)}


@pytest.mark.parametrize("name,shape", CASES)
def test_build_split_shapes(name, shape):
    split = built(name, shape)
    inter = split["intermediate"]
    assert len(inter) in (1, 3) and all(size > 0 for size in inter)  # a vector or a feature map
    assert split["h"].shape == (BATCH, *inter)
    assert split["logits"].shape == (BATCH, 7)


@pytest.mark.parametrize("name,shape", CASES)
def test_forward_and_backward_reach_the_client(name, shape):
    torch.manual_seed(0)
    model = SplitNN(name, input_shape=shape, num_classes=10).train()
    assert model.hparams["architecture"] == name and model.hparams["input_shape"] == list(shape)
    x, y = images(shape), torch.arange(BATCH) % 10
    h = model.encode(x)
    assert h.shape == (BATCH, *built(name, shape)["intermediate"])
    logits = model.server(h)
    assert logits.shape == (BATCH, 10)
    F.cross_entropy(logits, y).backward()
    for part in (model.client, model.server):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,shape", CASES)
def test_a_decoder_built_from_the_shapes_trains(name, shape):
    split = built(name, shape)
    torch.manual_seed(0)
    decoder = Decoder(split["intermediate"], shape)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        reconstructions = decoder(split["h"])
        assert reconstructions.shape == (BATCH, *shape)
        assert reconstructions.min() >= 0 and reconstructions.max() <= 1
        loss = F.mse_loss(reconstructions, split["x"])
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in decoder.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_validator_takes_the_image_shape(shape):
    validator = Validator(num_classes=10, image_shape=shape)
    assert validator(images(shape)).shape == (BATCH, 10)
    assert validator.hparams["image_shape"] == list(shape)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = SplitNN(name, input_shape=shape, num_classes=10, dataset="random").eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", "classifier", epoch=0)
    loaded = load_classifier(path)
    assert loaded.hparams["architecture"] == name and loaded.hparams["input_shape"] == list(shape)
    x = images(shape, n=1)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_the_smallest_images_work_and_smaller_ones_are_refused(name):
    info, _ = parse_architecture(name)
    side = info.min_size
    shape = (3, side, side)
    client, server = build_split(name, shape, num_classes=10)
    client.eval()
    server.eval()
    with torch.no_grad():
        h = client(images(shape))
        assert server(h).shape == (BATCH, 10)
        assert Decoder(intermediate_shape(client, shape), shape)(h).shape == (BATCH, *shape)
    too_small = (1, side - 1, side - 1)
    with pytest.raises(ConfigError):
        build_split(name, too_small, num_classes=10)
    with pytest.raises(ConfigError):
        SplitNN(name, input_shape=too_small)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_unknown_names_and_bad_options_are_config_errors(name):
    info = ARCHITECTURES[name]
    bad = f"{name}:no-such-option" if info.options else f"{name}:2"
    for spec in (bad, f"{name}-no-such-net", ""):
        with pytest.raises(ConfigError):
            build_split(spec, (3, 32, 32), num_classes=10)
        with pytest.raises(ConfigError):
            SplitNN(spec, input_shape=(3, 32, 32))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28, 1), (0, 28, 28), (1, -28, 28)])
def test_bad_image_shapes_and_class_counts_are_config_errors(name, shape):
    with pytest.raises(ConfigError):
        build_split(name, shape, num_classes=10)
    with pytest.raises(ConfigError):
        build_split(name, (3, 32, 32), num_classes=1)
