import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpsnn import ClientNet, ServerNet, SplitNN, Validator
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
    assert model.wire.scale == 1.0
    assert model.hparams.noise_scale == 0.0
    assert not torch.equal(model.encode(images), model.encode(images))
    with pytest.raises(ConfigError):
        model.set_noise(-1.0)


@pytest.mark.parametrize("kwargs", [{"noise_scale": -1}, {"nopeek_weight": -0.1}, {"noise_scale": "x"}])
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


def test_shared_step_logs_the_same_names_in_every_stage(images):
    model = SplitNN(noise_scale=0.1, nopeek_weight=0.5)
    labels = torch.arange(6) % 10
    model.train()
    trained = model._step((images, labels))
    assert set(trained) == {"loss", "acc", "nopeek_dcor"}
    assert 0.0 < trained["nopeek_dcor"].item() <= 1.0
    assert trained["loss"].item() > 0.5 * trained["nopeek_dcor"].item()  # cross-entropy plus the weighted dCor
    trained["loss"].backward()
    assert model.client[0].weight.grad is not None
    model.eval()
    assert set(model._step((images, labels))) == {"loss", "acc", "dcor"}


def test_validator_is_a_different_classifier(images):
    validator = Validator(num_classes=10)
    assert validator(images).shape == (6, 10)
    assert not any(isinstance(layer, nn.Tanh) for layer in validator.modules())


class LearningRates(L.Callback):
    """Records the optimiser's learning rate before every training step."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def learning_rates(**kwargs) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    recorder = LearningRates()
    trainer = make_trainer(max_epochs=3, progress=False, callbacks=[recorder])
    trainer.fit(SplitNN(learning_rate=1e-3, **kwargs), DataLoader(data, batch_size=8))
    return recorder.seen


def test_constant_schedule_keeps_the_learning_rate():
    seen = learning_rates()
    assert len(seen) == 24
    assert seen == [1e-3] * 24


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
