import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dpsnn import InversionAttacker, SplitNN, Validator, load_attacker, load_classifier
from dpsnn.checkpoints import (
    attacker_filename,
    checkpoints_in,
    classifier_filename,
    format_number,
    load_validator,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from dpsnn.errors import CheckpointError


@pytest.fixture
def images():
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("value,text", [(0, "0"), (0.5, "05"), (0.1, "01"), (0.25, "025"), (1.0, "1"), (10, "10")])
def test_number_format_follows_the_reference_naming(value, text):
    assert format_number(value) == text


def test_file_names():
    assert classifier_filename("demo", 0.5, 0.1, 3) == "demo_05noise_01nopeek_epoch=03.ckpt"
    assert attacker_filename("demo_05noise_01nopeek", 1.0, "mnist", 500, 9) == (
        "demo_05noise_01nopeek_attacker_1noise_mnist500aux_epoch=09.ckpt"
    )


def test_classifier_round_trip(tmp_path, images):
    model = SplitNN(noise_scale=0.0, nopeek_weight=0.25, dataset="fashion-mnist", seed=7).eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", "classifier", epoch=4)
    loaded = load_classifier(path)
    assert torch.equal(loaded(images), model(images))
    assert loaded.hparams["nopeek_weight"] == 0.25 and loaded.hparams["seed"] == 7
    assert loaded.checkpoint_epoch == 4
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary file left


def test_the_learning_rate_schedule_travels_with_the_checkpoint(tmp_path):
    path = save_checkpoint(SplitNN(lr_schedule="one-cycle"), tmp_path / "m.ckpt", "classifier", epoch=0)
    assert load_classifier(path).hparams["lr_schedule"] == "one-cycle"
    # A checkpoint written before the option existed trained at a constant rate.
    payload = read_checkpoint(path, "classifier")
    del payload["hyper_parameters"]["lr_schedule"]
    torch.save(payload, path)
    assert load_classifier(path).hparams["lr_schedule"] == "constant"


def test_classifier_noise_override(tmp_path, images):
    path = save_checkpoint(SplitNN(noise_scale=0.0), tmp_path / "m.ckpt", "classifier", 0)
    noisy = load_classifier(path, noise=0.7)
    assert noisy.wire.scale == 0.7
    assert not torch.equal(noisy.encode(images), noisy.encode(images))


def test_attacker_and_validator_round_trip(tmp_path):
    attacker = InversionAttacker(target_model="x.ckpt", aux_size=10).eval()
    seen = torch.randn(3, 500)
    loaded = load_attacker(save_checkpoint(attacker, tmp_path / "a.ckpt", "attacker", 1))
    assert torch.equal(loaded(seen), attacker(seen))
    reconstruction = loaded(seen)
    assert reconstruction.shape == (3, 1, 28, 28)
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    validator = Validator(num_classes=26).eval()
    assert load_validator(save_checkpoint(validator, tmp_path / "v.ckpt", "validator", 0)).hparams.num_classes == 26


class Payload:
    """Unpickling this runs code: it would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    state = SplitNN().state_dict()
    path = tmp_path / "evil.ckpt"
    torch.save({"dpsnn": {"kind": "classifier", "format_version": 1}, "state_dict": state, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="untrusted"):
        load_classifier(path)
    assert not marker.exists()
    # The payload is real: unpickling without the safeguard would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", os.urandom(4096)])
def test_corrupt_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_classifier(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_without_torch_container_is_refused(tmp_path):
    path = tmp_path / "pickle.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(CheckpointError):
        load_classifier(path)


def test_a_foreign_torch_file_is_not_a_dpsnn_checkpoint(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": SplitNN().state_dict()}, path)
    with pytest.raises(CheckpointError, match="not a dpsnn checkpoint"):
        load_classifier(path)


def test_kind_mismatch_is_refused(tmp_path):
    path = save_checkpoint(InversionAttacker(), tmp_path / "a.ckpt", "attacker", 0)
    with pytest.raises(CheckpointError, match="is an attacker checkpoint, not a classifier checkpoint"):
        load_classifier(path)


def test_another_architecture_is_refused(tmp_path):
    other = SplitNN(client=nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.Tanh()))
    path = save_checkpoint(other, tmp_path / "other.ckpt", "classifier", 0)
    with pytest.raises(CheckpointError, match=r"another architecture .*client\.1\.weight"):
        load_classifier(path)
    # ...but it loads into a model of its own architecture.
    same = SplitNN(client=nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.Tanh()))
    assert load_classifier(path, model=same) is same


def test_other_format_version_is_refused(tmp_path):
    path = save_checkpoint(SplitNN(), tmp_path / "m.ckpt", "classifier", 0)
    payload = read_checkpoint(path, "classifier")
    payload["dpsnn"]["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format 99"):
        load_classifier(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_classifier(tmp_path / "nothing.ckpt")


def test_resolve_by_path_name_and_prefix(tmp_path):
    for name in ("demo_05noise_01nopeek_epoch=03.ckpt", "demo_0noise_0nopeek_epoch=01.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_checkpoint("demo_05noise_01nopeek", tmp_path).name == "demo_05noise_01nopeek_epoch=03.ckpt"
    assert resolve_checkpoint("demo_0noise_0nopeek_epoch=01.ckpt", tmp_path).parent == tmp_path
    assert resolve_checkpoint(str(tmp_path / "demo_0noise_0nopeek_epoch=01.ckpt"), "elsewhere").is_file()
    with pytest.raises(CheckpointError, match="several"):
        resolve_checkpoint("demo", tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint named 'other'.*demo_0noise"):
        resolve_checkpoint("other", tmp_path)
    with pytest.raises(CheckpointError, match="model name is needed"):
        resolve_checkpoint("", tmp_path)


def test_checkpoints_in_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        checkpoints_in(tmp_path)


def test_non_plain_hyperparameters_are_not_saved(tmp_path):
    model = SplitNN(note=object())
    with pytest.raises(ValueError, match="not plain data"):
        save_checkpoint(model, tmp_path / "m.ckpt", "classifier", 0)
    assert list(tmp_path.iterdir()) == []
