"""The adaptive black-box inversion attacks: decoder-large, decoder-ssim, decoder-label and best-of."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpsnn.attacks import AttackTraining, Observation, Reconstructions, make_attack, observe
from dpsnn.attacks.best_of import ALL, BestOfAttacker, choose
from dpsnn.attacks.inversion import InversionAttacker, reconstruction_loss
from dpsnn.checkpoints import load_attacker, save_checkpoint
from dpsnn.data import Split
from dpsnn.errors import ConfigError, DataError
from dpsnn.metrics import per_image_ssim
from dpsnn.models import SplitNN

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAINING = AttackTraining(batch_size=16, max_steps=3, progress=False)
ONE_STEP = AttackTraining(batch_size=16, max_steps=1, progress=False)


@pytest.fixture(scope="module")
def target() -> SplitNN:
    torch.manual_seed(0)
    return SplitNN("reference", input_shape=(1, 28, 28)).eval()


@pytest.fixture(scope="module")
def aux() -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.rand(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g))


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_decoder_large_is_wider_deeper_and_trained_ten_times_longer(target, aux):
    plain = make_attack("decoder").fit(target, aux, TRAINING)
    large = make_attack("decoder-large").fit(target, aux, TRAINING)
    assert parameters(large) > 2 * parameters(plain)
    convolutions = [m for m in large.decoder if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) > len([m for m in plain.decoder if isinstance(m, torch.nn.Conv2d)])
    assert (plain.trainer.global_step, large.trainer.global_step) == (3, 30)
    assert large.run(observe(target, aux.images[:5])).images.shape == (5, 1, 28, 28)


def test_decoder_ssim_trains_on_mse_plus_one_minus_ssim(target, aux):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 1, 28, 28, generator=g)
    guess = torch.full_like(images, 0.5, requires_grad=True)
    loss = reconstruction_loss(guess, images, "ssim")
    expected = F.mse_loss(guess, images) + (1 - per_image_ssim(guess, images)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-4)  # float32 SSIM inside the loss
    loss.backward()
    assert guess.grad.abs().sum() > 0
    fitted = make_attack("decoder-ssim").fit(target, aux, TRAINING)
    assert fitted.hparams.loss == "ssim" and "train_ssim" in fitted.trainer.logged_metrics


def test_decoder_label_uses_the_label_the_server_predicts(target, aux):
    fitted = make_attack("decoder-label").fit(target, aux, TRAINING)
    assert fitted.hparams.num_classes == 10
    observation = observe(target, aux.images[:6])
    relabelled = Observation(observation.seen, (observation.predicted + 1) % 10)
    same = fitted.run(observation).images
    assert torch.equal(same, fitted.run(observation).images)
    assert not torch.allclose(same, fitted.run(relabelled).images)
    with pytest.raises(ConfigError, match="predicted label"):
        fitted(observation.seen)


def test_decoder_label_works_on_a_feature_map_intermediate():
    torch.manual_seed(0)
    target = SplitNN("cifar-cnn", input_shape=(3, 16, 16)).eval()
    aux = Split(torch.rand(20, 3, 16, 16), torch.randint(0, 10, (20,)))
    fitted = make_attack("decoder-label").fit(target, aux, TRAINING)
    assert fitted.run(observe(target, aux.images[:3])).images.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("name", ["decoder-large", "decoder-ssim", "decoder-label"])
def test_every_variant_saves_and_loads_as_it_was_trained(tmp_path, target, aux, name):
    fitted = make_attack(name).fit(target, aux, ONE_STEP)
    path = save_checkpoint(fitted, tmp_path / f"{name}.ckpt", "attacker", 0)
    loaded = load_attacker(path)
    observation = observe(target, aux.images[:4])
    assert torch.allclose(loaded.run(observation).images, fitted.run(observation).images)
    for field in ("decoder_size", "loss", "num_classes"):
        assert loaded.hparams[field] == fitted.hparams[field]


def test_an_attacker_saved_before_the_variants_loads_as_the_plain_decoder():
    old = InversionAttacker(learning_rate=1e-3, intermediate_size=500)
    assert (old.hparams.decoder_size, old.hparams.loss, old.hparams.num_classes) == ("standard", "mse", 0)
    with pytest.raises(ConfigError, match="decoder loss"):
        InversionAttacker(loss="perceptual")


def test_choose_picks_the_best_member_per_predicted_class_and_falls_back_for_small_classes():
    ssim = {
        "a": torch.tensor([0.9, 0.9, 0.9, 0.1, 0.1, 0.5]),
        "b": torch.tensor([0.2, 0.2, 0.2, 0.8, 0.8, 0.6]),
    }
    predicted = torch.tensor([0, 0, 0, 1, 1, 2])
    choice = choose(ssim, predicted, "class", min_per_class=2)
    assert choice == {ALL: "a", 0: "a", 1: "b"}  # class 2 has one held-out image: the overall choice serves it
    assert choose(ssim, predicted, "all", min_per_class=2) == {ALL: "a"}


class Constant:
    """A fitted attack that reconstructs every image as one value, and counts its calls."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def run(self, observation: Observation) -> Reconstructions:
        self.calls += 1
        return Reconstructions(torch.full((len(observation.seen), 1, 12, 12), self.value))


def test_best_of_reconstructs_each_image_with_the_member_chosen_for_its_predicted_class():
    members = {"dark": Constant(0.0), "light": Constant(1.0), "unused": Constant(0.5)}
    attacker = BestOfAttacker(members, {}, {ALL: "dark", 3: "light"})
    observation = Observation(torch.zeros(4, 7), torch.tensor([3, 1, 3, 0]))
    images = attacker.run(observation).images
    assert images[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert members["unused"].calls == 0  # a member chosen for no image is not run


def test_best_of_chooses_on_held_out_auxiliary_images_only(target, aux):
    attack = make_attack("best-of", {"holdout": 0.25, "min_per_class": 1})
    fit_part, held_out = attack.split_aux(aux)
    assert (len(fit_part), len(held_out)) == (45, 15)
    assert torch.equal(torch.cat([fit_part.images, held_out.images]), aux.images)
    members = {"dark": Constant(0.0), "light": Constant(1.0)}
    bright = Split(torch.ones(60, 1, 12, 12), aux.labels)  # images a light guess matches best

    class Encoder(torch.nn.Module):
        hparams = {"num_classes": 10}

        def encode(self, x):
            return x.flatten(1)[:, :5]

        def server(self, h):
            return torch.zeros(len(h), 10)

    fitted = attack.fit(Encoder(), bright, TRAINING, members=members)
    assert fitted.choice[ALL] == "light" and set(fitted.held_out_ssim["dark"].shape) == {15}


def test_best_of_fits_every_decoder_attack_when_given_none(target, aux):
    fitted = make_attack("best-of").fit(target, aux, ONE_STEP)
    assert set(fitted.members) == {"decoder", "decoder-large", "decoder-ssim", "decoder-label"}
    assert set(fitted.choice.values()) <= set(fitted.members)
    result = fitted.run(observe(target, aux.images[:8]))
    assert result.images.shape == (8, 1, 28, 28)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"holdout": 0}, "holdout"),
        ({"holdout": 1.5}, "holdout"),
        ({"by": "image"}, "chooses by"),
        ({"min_per_class": 0}, "min_per_class"),
    ],
)
def test_best_of_refuses_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        make_attack("best-of", params)


def test_best_of_needs_two_auxiliary_images(target):
    with pytest.raises(DataError, match="at least 2"):
        make_attack("best-of").fit(target, Split(torch.rand(1, 1, 28, 28), torch.zeros(1, dtype=torch.long)))
