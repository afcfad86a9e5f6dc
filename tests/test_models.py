import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpsnn import ClientNet, ServerNet, SplitNN, Validator
from dpsnn.architectures import architecture_names
from dpsnn.defences import Laplace, NoPeek
from dpsnn.errors import ConfigError
from dpsnn.training import make_trainer


@pytest.fixture
def images():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_default_client_is_the_reference_shape(images):
    client = ClientNet()
    kinds = [type(layer).__name__ for layer in client]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "Tanh"]
    assert client[0].out_channels == 32 and client[2].out_channels == 64
    h = client(images)
    assert h.shape == (6, 500)
    assert h.abs().max() <= 1.0


def test_server_returns_logits(images):
    server = ServerNet(10)
    assert [type(layer).__name__ for layer in server] == ["Linear", "ReLU", "Linear"]
    assert server[0].in_features == 500 and server[0].out_features == 128
    logits = server(torch.rand(6, 500))
    assert logits.shape == (6, 10)
    assert not torch.allclose(logits.exp().sum(dim=1), torch.ones(6))  # no softmax


def test_forward_is_server_of_encode(images):
    model = SplitNN(noise_scale=0.0).eval()
    assert torch.equal(model(images), model.server(model.encode(images)))


def test_encode_is_deterministic_without_noise(images):
    model = SplitNN(noise_scale=0.0).eval()
    assert torch.equal(model.encode(images), model.encode(images))
    assert torch.equal(model.encode(images), model.client(images))


def test_encode_is_stochastic_with_noise_in_eval_mode(images):
    model = SplitNN(noise_scale=0.5).eval()
    first, second = model.encode(images), model.encode(images)
    assert not torch.equal(first, second)
    assert (first - model.client(images)).std().item() == pytest.approx(0.5 * 2**0.5, rel=0.1)


def test_set_noise_changes_the_wire_but_not_the_recorded_training_noise(images):
    model = SplitNN(noise_scale=0.0).eval()
    model.set_noise(1.0)
    assert model.wire_defences == (Laplace(scale=1.0),)
    assert model.defences == () and model.hparams["defences"] == [] and model.trained_with() == "none"
    assert not torch.equal(model.encode(images), model.encode(images))
    with pytest.raises(ConfigError):
        model.set_noise(-1.0)
    assert model.wire_defences == (Laplace(scale=1.0),)  # a refused change leaves the wire as it was


def test_set_wire_replaces_the_wire_and_ignores_training_only_defences(images):
    model = SplitNN(defences=["laplace:scale=0.5", "nopeek:weight=0.1"]).eval()
    assert model.wire_defences == (Laplace(scale=0.5),)
    model.set_wire(["laplace:scale=2", {"name": "nopeek", "params": {"weight": 0.3}}])
    assert model.wire_defences == (Laplace(scale=2.0),)
    assert (model.encode(images) - model.client(images)).std().item() == pytest.approx(2 * 2**0.5, rel=0.1)
    assert model.defences == (Laplace(scale=0.5), NoPeek(weight=0.1))  # what it was trained with
    assert model.trained_with() == "laplace(scale=0.5)+nopeek(weight=0.1)"
    model.set_wire([])
    assert model.wire_defences == () and torch.equal(model.encode(images), model.client(images))
    with pytest.raises(ConfigError):
        model.set_wire(["laplace:scale=1", "laplace:scale=2"])


@pytest.mark.parametrize(
    "defences",
    [
        ["laplace:scale=0.5", "nopeek:weight=0.1"],
        ["nopeek(weight=0.1)", "laplace(scale=0.5)"],
        [{"name": "laplace", "params": {"scale": 0.5}}, {"name": "nopeek", "params": {"weight": "0.1"}}],
        [NoPeek(weight=0.1), Laplace(scale=0.5)],
        [Laplace(scale=0.5).to_dict(), NoPeek(weight=0.1).spec()],
    ],
)
def test_defences_as_strings_dicts_or_specs(defences):
    model = SplitNN(defences=defences)
    assert model.defences == (Laplace(scale=0.5), NoPeek(weight=0.1))  # normalised: sorted by name
    assert model.hparams["defences"] == [
        {"name": "laplace", "params": {"scale": 0.5}},
        {"name": "nopeek", "params": {"weight": 0.1}},
    ]
    assert model.wire_defences == (Laplace(scale=0.5),)


def test_zero_strength_defences_are_dropped():
    model = SplitNN(defences=["laplace:scale=0", {"name": "nopeek", "params": {"weight": 0}}])
    assert model.defences == () and model.hparams["defences"] == [] and model.trained_with() == "none"


def test_the_reference_keyword_arguments_are_shorthand_for_specs():
    model = SplitNN(noise_scale=0.5, nopeek_weight=0.1)
    assert model.defences == SplitNN(defences=["laplace:scale=0.5", "nopeek:weight=0.1"]).defences
    assert "noise_scale" not in model.hparams and "nopeek_weight" not in model.hparams
    assert SplitNN(noise_scale=0.0, nopeek_weight=0.0).defences == ()
    with pytest.raises(ConfigError, match="more than once"):
        SplitNN(defences=["laplace:scale=0.1"], noise_scale=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_scale": -1},
        {"nopeek_weight": -0.1},
        {"noise_scale": "x"},
        {"defences": ["laplace:scale=-1"]},
        {"defences": ["gaussian:sigma=1"]},
        {"defences": ["laplace:sigma=1"]},
        {"defences": ["laplace:scale"]},
        {"defences": [42]},
        {"defences": [{"params": {"scale": 1}}]},
    ],
)
def test_bad_defence_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SplitNN(**kwargs)


def test_custom_client_and_server(images):
    client = nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.Tanh())
    server = nn.Linear(20, 3)
    model = SplitNN(client=client, server=server, num_classes=3)
    assert model.encode(images).shape == (6, 20)
    assert model(images).shape == (6, 3)
    assert "client" not in model.hparams and "server" not in model.hparams
    assert model.hparams["architecture"] == "custom"


@pytest.mark.parametrize("kwargs", [{"client": ClientNet()}, {"server": ServerNet()}])
def test_a_client_without_a_server_or_the_reverse_is_refused(kwargs):
    with pytest.raises(ConfigError, match="both a client and a server"):
        SplitNN(**kwargs)


@pytest.mark.parametrize("architecture", architecture_names())
def test_every_architecture_takes_cifar_size_images(architecture):
    model = SplitNN(architecture, input_shape=(3, 32, 32), num_classes=10).eval()
    assert model.hparams["architecture"] == architecture and model.hparams["input_shape"] == [3, 32, 32]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_the_default_architecture_is_the_reference_network():
    model = SplitNN()
    assert model.hparams["architecture"] == "reference" and model.hparams["input_shape"] == [1, 28, 28]
    assert isinstance(model.client, ClientNet) and isinstance(model.server, ServerNet)
    assert SplitNN("resnet18", input_shape=(3, 32, 32)).hparams["architecture"] == "resnet18:2"


def test_shared_step_logs_the_same_names_in_every_stage(images):
    model = SplitNN(noise_scale=0.1, nopeek_weight=0.5)
    labels = torch.arange(6) % 10
    model.train()
    trained = model._step((images, labels))
    assert set(trained) == {"loss", "acc", "cross_entropy", "nopeek"}
    assert 0.0 < trained["nopeek"].item() <= 0.5  # 0.5 dCor(x, h), with dCor in [0, 1]
    # cross-entropy plus the weighted dCor
    assert trained["loss"].item() == pytest.approx(trained["cross_entropy"].item() + trained["nopeek"].item())
    trained["loss"].backward()
    assert model.client[0].weight.grad is not None
    model.eval()
    assert set(model._step((images, labels))) == {"loss", "acc", "dcor"}


def test_validator_is_a_different_classifier(images):
    validator = Validator(num_classes=10)
    assert validator(images).shape == (6, 10)
    assert Validator(num_classes=10, image_shape=(3, 32, 32))(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError):
        Validator(image_shape=(28, 28))
    assert not any(isinstance(layer, nn.Tanh) for layer in validator.modules())


class LearningRates(L.Callback):
    """Records the optimiser's learning rate before every training step."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


# The schedule is read off the training steps alone: no validation loop is wanted.
NO_VALIDATION = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def learning_rates(**kwargs) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    # Small images: the schedule does not depend on them, and the steps are quick.
    data = TensorDataset(
        torch.rand(64, 1, 12, 12, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    recorder = LearningRates()
    trainer = make_trainer(max_epochs=3, progress=False, callbacks=[recorder])
    trainer.fit(SplitNN(learning_rate=1e-3, input_shape=(1, 12, 12), **kwargs), DataLoader(data, batch_size=8))
    return recorder.seen


@NO_VALIDATION
def test_constant_schedule_keeps_the_learning_rate():
    seen = learning_rates()
    assert len(seen) == 24
    assert seen == [1e-3] * 24


@NO_VALIDATION
def test_one_cycle_warms_up_to_the_learning_rate_then_anneals():
    seen = learning_rates(lr_schedule="one-cycle")
    assert len(seen) == 24
    peak = seen.index(max(seen))
    assert 0 < peak < 23
    assert max(seen) == pytest.approx(1e-3, rel=0.05)
    assert seen[0] < 1e-4 and seen[-1] < 1e-5
    assert seen[: peak + 1] == sorted(seen[: peak + 1])
    assert seen[peak:] == sorted(seen[peak:], reverse=True)


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="learning-rate schedule 'cosine'"):
        SplitNN(lr_schedule="cosine")


def test_a_defence_without_parameters_is_labelled_by_its_name():
    from dataclasses import dataclass

    from dpsnn.defences.base import Defence

    @dataclass(frozen=True)
    class Bare(Defence):
        name = "bare"

    assert Bare().label() == "bare"
    assert Bare().spec() == "bare()"
