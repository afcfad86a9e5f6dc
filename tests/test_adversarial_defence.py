"""The adversarial defence (dpsnn.defences.adversarial): a client trained against a proxy decoder."""

from __future__ import annotations

import pytest
import torch

from dpsnn.checkpoints import load_classifier, save_checkpoint
from dpsnn.defences import make_defence, parse_defence, validate
from dpsnn.defences.adversarial import ProxyAttacker
from dpsnn.errors import ConfigError
from dpsnn.metrics import per_image_ssim
from dpsnn.mico.build import stackable
from dpsnn.models import SplitNN
from dpsnn.shadows import ShadowRecipe, choose_strategy, member_masks, train_shadows
from dpsnn.transport.parties import two_party_defences

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def test_the_proxy_is_beside_the_model_never_in_it_so_never_the_scored_attacker(tmp_path):
    torch.manual_seed(0)
    plain = SplitNN()
    torch.manual_seed(0)
    model = SplitNN(defences=["adversarial:weight=1"])
    (proxy,) = model.companions
    assert set(model.state_dict()) == set(plain.state_dict())  # no proxy weights in the model or its checkpoint
    proxy_weights = {id(p) for p in proxy.decoder.parameters()}
    assert not proxy_weights & {id(p) for p in model.parameters()}  # the model's optimiser never sees them
    model.train()
    for _ in range(3):
        model._step(batch())
    path = tmp_path / "adversarial.ckpt"
    save_checkpoint(model, path, "classifier", 1)
    loaded = load_classifier(path)
    (fresh,) = loaded.companions  # a loaded model brings a new, untrained proxy: the trained one is gone
    trained, untrained = proxy.decoder.state_dict(), fresh.decoder.state_dict()
    assert any(not torch.equal(trained[name], untrained[name]) for name in trained)


def test_the_proxy_learns_from_the_clients_outputs_at_every_step():
    torch.manual_seed(0)
    model = SplitNN(defences=["adversarial:weight=0.1,proxy_steps=5"]).train()
    (proxy,) = model.companions
    x, y = batch()

    def proxy_error() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(proxy.decoder(model.client(x)), x).item()

    before = proxy_error()
    for _ in range(4):
        model._step((x, y))
    assert proxy_error() < before


def test_the_penalty_moves_the_client_and_not_the_proxy():
    torch.manual_seed(0)
    model = SplitNN(defences=["adversarial:weight=1,tau=0"]).train()
    (proxy,) = model.companions
    x, y = batch()
    terms = proxy.loss_terms(x, model.client(x), y)
    proxy.optimizer.zero_grad(set_to_none=True)
    terms["adversarial"].backward()
    assert terms["adversarial"].item() > 0  # τ = 0: any positive SSIM is penalised
    assert all(p.grad is None for p in proxy.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.client.parameters())


def test_the_auto_floor_is_each_images_label_only_baseline():
    spec = make_defence("adversarial", {"weight": 1.0})
    proxy = ProxyAttacker(spec)
    proxy.build((500,), (1, 28, 28), 10)
    x, y = batch(20)
    floor = proxy.floor(x, y)
    means = torch.stack([x[y == label].mean(dim=0) for label in y])  # the running means: this batch is all seen
    torch.testing.assert_close(floor, per_image_ssim(means, x))
    identical = x[:1].expand(8, -1, -1, -1).clone()  # one image per class: its class mean is itself
    fresh = ProxyAttacker(spec)
    fresh.build((500,), (1, 28, 28), 10)
    assert torch.allclose(fresh.floor(identical, torch.zeros(8, dtype=torch.long)), torch.ones(8))
    fixed = ProxyAttacker(make_defence("adversarial", {"weight": 1.0, "tau": 0.3}))
    assert torch.equal(fixed.floor(x, y), torch.full((20,), 0.3))


def test_when_every_image_is_its_class_mean_nothing_is_penalised():
    torch.manual_seed(0)
    model = SplitNN(defences=["adversarial:weight=1"]).train()
    x = torch.rand(1, 1, 28, 28).expand(16, -1, -1, -1).clone()
    terms = model.companions[0].loss_terms(x, model.client(x), torch.zeros(16, dtype=torch.long))
    assert terms["adversarial"].item() == 0.0  # SSIM ≤ 1 = the floor


def test_it_trains_one_model_at_a_time_and_alone_on_its_party():
    spec = parse_defence("adversarial:weight=1")
    assert not stackable([spec])
    shape = (1, 12, 12)
    make = lambda: SplitNN("reference", defences=[spec], input_shape=shape)  # noqa: E731
    assert choose_strategy(make()) == "one-by-one"
    images, labels = torch.rand(24, *shape), torch.arange(24) % 10
    masks = member_masks(24, 2, seed=0)
    with pytest.raises(ConfigError, match="train one by one"):
        train_shadows(make, images, labels, masks, ShadowRecipe(epochs=1, batch_size=8), strategy="together")
    shadows = train_shadows(make, images, labels, masks, ShadowRecipe(epochs=1, batch_size=8))
    assert len(shadows) == 2
    with pytest.raises(ConfigError, match="needs the single-process trainer"):
        two_party_defences([spec])
    problems = validate([spec, parse_defence("dp:epsilon=4")])
    assert problems and "cannot be trained together with 'dp'" in str(problems[0])


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"tau": 1.5}, "tau is an SSIM floor in"),
        ({"proxy_lr": 0}, "proxy_lr must be positive"),
        ({"proxy_steps": 0}, "proxy_steps must be a whole number"),
        ({"proxy_size": "huge"}, "proxy_size must be one of standard, large"),
        ({"weight": -1}, "weight must be a non-negative number"),
    ],
)
def test_bad_parameters_are_config_errors(params, expect):
    with pytest.raises(ConfigError, match=expect):
        make_defence("adversarial", params)


def test_images_too_small_for_ssim_are_refused():
    with pytest.raises(ConfigError, match="at least 11 pixels"):
        SplitNN("mlp:64", defences=["adversarial:weight=1"], input_shape=(1, 8, 8))


def test_keys_and_labels():
    assert parse_defence("adversarial:weight=0.5").key() == "05adv"
    assert parse_defence("adversarial:weight=1,tau=0.3").key() == "1adv-tau03"
    assert parse_defence("adversarial:weight=1,proxy_steps=3").key() == "1adv-lr0001-s3-standard"
    assert parse_defence("adversarial:weight=1").label() == "adversarial 1 (τ auto)"
    assert make_defence("adversarial", {"weight": 0.0}).companion() is None
