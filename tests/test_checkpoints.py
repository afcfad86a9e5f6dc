import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpsnn import ClientNet, InversionAttacker, ServerNet, SplitNN, Validator, load_attacker, load_classifier
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
from dpsnn.defences import Laplace, NoPeek
from dpsnn.errors import CheckpointError, ConfigError


@pytest.fixture
def images():
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("value,text", [(0, "0"), (0.5, "05"), (0.1, "01"), (0.25, "025"), (1.0, "1"), (10, "10")])
def test_number_format_follows_the_reference_naming(value, text):
    assert format_number(value) == text


def test_file_names():
    assert classifier_filename("demo", [Laplace(0.5), NoPeek(0.1)], 3) == "demo_05noise_01nopeek_epoch=03.ckpt"
    # Every defence given is named, at zero strength too: the reference's names.
    assert classifier_filename("demo", [Laplace(0.0), NoPeek(0.0)], 1) == "demo_0noise_0nopeek_epoch=01.ckpt"
    assert classifier_filename("demo", [], 12) == "demo_epoch=12.ckpt"
    # The architecture is named unless it is the reference, with a file-name-safe separator.
    assert classifier_filename("demo", [Laplace(0.5)], 3, architecture="resnet18:2") == (
        "demo_resnet18-2_05noise_epoch=03.ckpt"
    )
    assert classifier_filename("demo", [Laplace(0.5)], 3, architecture="reference") == "demo_05noise_epoch=03.ckpt"
    assert attacker_filename("demo_05noise_01nopeek", "1noise", "mnist", 500, 9) == (
        "demo_05noise_01nopeek_attacker_1noise_mnist500aux_epoch=09.ckpt"
    )


def test_classifier_round_trip(tmp_path, images):
    model = SplitNN(noise_scale=0.0, nopeek_weight=0.25, dataset="fashion-mnist", seed=7).eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", "classifier", epoch=4)
    loaded = load_classifier(path)
    assert torch.equal(loaded(images), model(images))
    assert loaded.defences == (NoPeek(weight=0.25),) and loaded.trained_with() == "nopeek(weight=0.25)"
    assert loaded.hparams["defences"] == [{"name": "nopeek", "params": {"weight": 0.25}}]
    assert loaded.hparams["seed"] == 7 and loaded.hparams["architecture"] == "reference"
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
    assert noisy.wire_defences == (Laplace(scale=0.7),)
    assert noisy.defences == ()  # what it was trained with is unchanged
    assert not torch.equal(noisy.encode(images), noisy.encode(images))
    assert load_classifier(path, wire=["laplace:scale=0.7"]).wire_defences == (Laplace(scale=0.7),)


def test_the_wire_override_replaces_the_trained_wire(tmp_path, images):
    model = SplitNN(defences=["laplace:scale=0.5", "nopeek:weight=0.1"]).eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", "classifier", 0)
    assert load_classifier(path).wire_defences == (Laplace(scale=0.5),)
    clean = load_classifier(path, wire=[])
    assert clean.wire_defences == () and clean.defences == model.defences
    assert torch.equal(clean.encode(images), model.client(images))


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


def test_feature_map_attacker_and_cifar_validator_round_trip(tmp_path):
    attacker = InversionAttacker(intermediate_shape=(64, 16, 16), image_shape=(3, 32, 32)).eval()
    seen = torch.randn(2, 64, 16, 16)
    loaded = load_attacker(save_checkpoint(attacker, tmp_path / "a.ckpt", "attacker", 0))
    assert loaded.hparams["intermediate_shape"] == [64, 16, 16] and loaded.hparams["image_shape"] == [3, 32, 32]
    assert torch.equal(loaded(seen), attacker(seen)) and loaded(seen).shape == (2, 3, 32, 32)
    validator = Validator(num_classes=10, image_shape=(3, 32, 32)).eval()
    loaded_validator = load_validator(save_checkpoint(validator, tmp_path / "v.ckpt", "validator", 0))
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded_validator(images), validator(images))


# -- checkpoints written by the previous release ----------------------------------------------

OLD_CLASSIFIER_SHAPES = {
    "client.0.weight": (32, 1, 3, 3),
    "client.0.bias": (32,),
    "client.2.weight": (64, 32, 3, 3),
    "client.2.bias": (64,),
    "client.6.weight": (500, 9216),
    "client.6.bias": (500,),
    "server.0.weight": (128, 500),
    "server.0.bias": (128,),
    "server.2.weight": (10, 128),
    "server.2.bias": (10,),
}
OLD_ATTACKER_SHAPES = {
    "decoder.0.weight": (3136, 500),
    "decoder.0.bias": (3136,),
    "decoder.3.weight": (64, 32, 4, 4),
    "decoder.3.bias": (32,),
    "decoder.5.weight": (32, 16, 4, 4),
    "decoder.5.bias": (16,),
    "decoder.7.weight": (1, 16, 3, 3),
    "decoder.7.bias": (1,),
}


def old_payload(kind: str, hyper_parameters: dict, shapes: dict) -> dict:
    """A checkpoint as the previous release wrote it: its header, its hyperparameters, its layer names."""
    generator = torch.Generator().manual_seed(0)
    state = {name: 0.05 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    return {
        "dpsnn": {"kind": kind, "format_version": 1},
        "hyper_parameters": hyper_parameters,
        "epoch": 2,
        "extra": {"val_accuracy": 0.85},
        "state_dict": state,
    }


def reference_network(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2021 reference network written out with torch's functions: (h, logits) without noise."""
    h = F.relu(F.conv2d(x, state["client.0.weight"], state["client.0.bias"]))
    h = F.max_pool2d(F.relu(F.conv2d(h, state["client.2.weight"], state["client.2.bias"])), 2)
    h = torch.tanh(F.linear(h.flatten(1), state["client.6.weight"], state["client.6.bias"]))
    hidden = F.relu(F.linear(h, state["server.0.weight"], state["server.0.bias"]))
    return h, F.linear(hidden, state["server.2.weight"], state["server.2.bias"])


@pytest.mark.parametrize(
    "noise,nopeek,defences,canonical",
    [
        (0.5, 0.1, (Laplace(scale=0.5), NoPeek(weight=0.1)), "laplace(scale=0.5)+nopeek(weight=0.1)"),
        (0.0, 0.0, (), "none"),
    ],
)
def test_a_classifier_of_the_previous_release_loads(tmp_path, images, noise, nopeek, defences, canonical):
    hyper_parameters = {
        "noise_scale": noise,
        "nopeek_weight": nopeek,
        "learning_rate": 0.001,
        "num_classes": 10,
        "dataset": "fashion-mnist",
        "seed": 3,
        "train_size": 10000,
    }
    payload = old_payload("classifier", hyper_parameters, OLD_CLASSIFIER_SHAPES)
    torch.save(payload, tmp_path / "old.ckpt")
    model = load_classifier(tmp_path / "old.ckpt")
    assert model.defences == defences and model.trained_with() == canonical
    assert model.wire_defences == tuple(d for d in defences if d.name == "laplace")
    assert model.hparams["architecture"] == "reference" and model.hparams["input_shape"] == [1, 28, 28]
    assert model.hparams["dataset"] == "fashion-mnist" and model.hparams["seed"] == 3
    assert model.checkpoint_epoch == 2 and model.checkpoint_extra == {"val_accuracy": 0.85}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["state_dict"][name])
    # The layers mean what they meant: the same numbers as the reference network written out by hand.
    h, logits = reference_network(payload["state_dict"], images)
    assert torch.allclose(model.client(images), h, atol=1e-6)
    assert torch.allclose(model.server(model.client(images)), logits, atol=1e-5)
    if noise:
        assert not torch.equal(model.encode(images), h)
    else:
        assert torch.allclose(model(images), logits, atol=1e-5)


def test_an_attacker_of_the_previous_release_loads(tmp_path):
    hyper_parameters = {
        "learning_rate": 0.001,
        "intermediate_size": 500,
        "target_model": "demo_05noise_01nopeek_epoch=02.ckpt",
        "dataset": "fashion-mnist",
        "noise_scale": 0.5,
        "aux_dataset": "fashion-mnist",
        "aux_size": 2000,
        "data_seed": 0,
        "seed": 0,
    }
    payload = old_payload("attacker", hyper_parameters, OLD_ATTACKER_SHAPES)
    torch.save(payload, tmp_path / "old.ckpt")
    attacker = load_attacker(tmp_path / "old.ckpt")
    assert attacker.hparams["intermediate_shape"] == [500] and attacker.hparams["image_shape"] == [1, 28, 28]
    assert attacker.hparams["target_model"] == hyper_parameters["target_model"]
    assert attacker.hparams["noise_scale"] == 0.5
    for name, tensor in attacker.state_dict().items():
        assert torch.equal(tensor, payload["state_dict"][name])
    reconstructions = attacker(torch.randn(3, 500))
    assert reconstructions.shape == (3, 1, 28, 28)
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1


# -- splits of the user's own modules -----------------------------------------------------------


def own_modules() -> tuple[nn.Module, nn.Module]:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.Tanh()), nn.Sequential(nn.Linear(40, 10))


def test_own_modules_need_to_be_passed_to_load(tmp_path, images):
    torch.manual_seed(0)
    client, server = own_modules()
    model = SplitNN(client=client, server=server, defences=["laplace:scale=0.2"]).eval()
    path = save_checkpoint(model, tmp_path / "own.ckpt", "classifier", 0)
    with pytest.raises(CheckpointError, match=r"own modules.*client=my_client, server=my_server"):
        load_classifier(path)
    torch.manual_seed(1)
    client, server = own_modules()  # fresh weights: the checkpoint's replace them
    loaded = load_classifier(path, client=client, server=server)
    assert loaded.client is client and loaded.server is server
    assert loaded.defences == (Laplace(scale=0.2),) and loaded.hparams["architecture"] == "custom"
    torch.manual_seed(2)
    expected = model(images)
    torch.manual_seed(2)
    assert torch.equal(loaded(images), expected)


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
    client, server = own_modules()
    path = save_checkpoint(SplitNN(client=client, server=server), tmp_path / "other.ckpt", "classifier", 0)
    with pytest.raises(CheckpointError, match=r"another architecture .*client\.1\.weight"):
        load_classifier(path, client=ClientNet(), server=ServerNet())
    with pytest.raises(CheckpointError, match="another architecture"):
        load_classifier(path, model=SplitNN())
    # ...but it loads into a model of its own architecture.
    same = SplitNN(client=own_modules()[0], server=own_modules()[1])
    assert load_classifier(path, model=same) is same


def test_a_registered_architecture_of_another_shape_is_refused(tmp_path):
    path = save_checkpoint(SplitNN("cifar-cnn", input_shape=(3, 32, 32)), tmp_path / "c.ckpt", "classifier", 0)
    assert load_classifier(path).hparams["architecture"] == "cifar-cnn"
    with pytest.raises(CheckpointError, match="another architecture"):
        load_classifier(path, model=SplitNN("cifar-cnn", input_shape=(1, 28, 28)))


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


def test_noise_and_wire_together_are_refused(tmp_path):
    path = save_checkpoint(SplitNN(), tmp_path / "m.ckpt", "classifier", epoch=0)
    with pytest.raises(ConfigError, match="not both"):
        load_classifier(path, noise=1.0, wire=["laplace:scale=0.5"])
