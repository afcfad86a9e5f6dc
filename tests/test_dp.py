"""DP-SGD (:mod:`dpsnn.defences.dp`): ε, clipping and noise checked against Opacus and against sums made here.

The privacy monitor's ε is compared with Opacus's accountants fed the same steps, and,
for the noise-decay schedules, with the RDP sum over a per-step σ list built here from
MindArmour's formulas. The clipped gradient sum is compared with per-sample gradients
computed here one example at a time. Everything runs on tiny random data (1×8×8 images,
a two-layer client) so that a fit takes a second, except the script's run, on 256
Fashion-MNIST images.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import runpy
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpsnn.checkpoints import load_classifier, read_checkpoint, save_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.defences import NoPeek, label, parse_defence, validate
from dpsnn.defences.dp import DPSGD, make_private
from dpsnn.errors import ConfigError
from dpsnn.loops import make_trainer
from dpsnn.models import SplitNN
from dpsnn.training import train_classifier

# Opacus's notes: its fast, non-cryptographic noise; an RDP order at the end of its range; and its backward hooks
# on a first layer, whose input needs no gradient.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Secure RNG turned off",
        "ignore:Optimal order is the largest alpha",
        "ignore:Full backward hook is firing when gradients are computed with respect to module outputs",
    )
]

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH = 256, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH  # Poisson sampling at q = BATCH / N_TRAIN: N_TRAIN / BATCH batches an epoch
Q = 1 / STEPS_PER_EPOCH
DELTA = 1e-3  # 1/256 rounded down to a power of ten
ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}


pytestmark.append(pytest.mark.usefixtures("one_torch_thread"))


def random_splits(n_train: int = N_TRAIN, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> Splits:
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        return Split(torch.rand(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator))

    return Splits("random", seed, 10, split(n_train), split(32), split(32), split(32))


def tiny_parts(seed: int = 0, pixels: int = 64) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    client = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 16), nn.Tanh(), nn.Linear(16, 8))
    server = nn.Sequential(nn.Tanh(), nn.Linear(8, 10))
    return client, server


def train(defences: list[str], epochs: int, **kwargs) -> SplitNN:
    """A tiny split network trained on random 1×8×8 images with ``defences``."""
    client, server = tiny_parts()
    model, _ = train_classifier(
        random_splits(),
        defences=defences,
        max_epochs=epochs,
        batch_size=BATCH,
        progress=False,
        client=client,
        server=server,
        **kwargs,
    )
    return model


def opacus_epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    counter = ACCOUNTANTS[accountant]()
    counter.history = [tuple(entry) for entry in history]
    return float(counter.get_epsilon(delta=delta))


@functools.cache
def one_step_rdp(q: float, sigma: float) -> np.ndarray:
    """The RDP of one Poisson-subsampled Gaussian step at each of the RDP accountant's orders."""
    return np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


def rdp_epsilon(sigmas: list[float], q: float, delta: float) -> float:
    """ε of the steps with noise ``sigmas``: each step's RDP summed, then converted at ``delta``."""
    rdp = sum(one_step_rdp(q, sigma) for sigma in sigmas)
    epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


# -- the privacy monitor ------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_monitor_epsilon_is_opacus_accountant_on_the_steps_taken(accountant, tmp_path):
    model = train([f"dp:noise_multiplier=1.0,accountant={accountant}"], epochs=2, log_dir=tmp_path)
    record = model.hparams["privacy"]
    assert record["steps"] == 2 * STEPS_PER_EPOCH == 2 * len(random_splits().train.loader(BATCH))
    assert record["sample_rate"] == Q and record["delta"] == DELTA and record["accountant"] == accountant
    assert record["history"] == [[1.0, Q, 2 * STEPS_PER_EPOCH]]
    # A fresh accountant of Opacus's, stepped as many times, spends the same ε.
    fresh = ACCOUNTANTS[accountant]()
    for _ in range(2 * STEPS_PER_EPOCH):
        fresh.step(noise_multiplier=1.0, sample_rate=Q)
    assert record["epsilon"] == pytest.approx(fresh.get_epsilon(delta=DELTA), rel=1e-9)
    first, last = record["epsilons"]
    assert first == pytest.approx(opacus_epsilon(accountant, [(1.0, Q, STEPS_PER_EPOCH)], DELTA), rel=1e-9)
    assert 0 < first < last == record["epsilon"]  # ε in all is after the last step, not after the kept epoch
    measures = DPSGD(noise_multiplier=1.0, accountant=accountant).measures(model)
    assert measures["epsilon"] == record["epsilon"] and measures["delta"] == DELTA and measures["not_dp"] == 0.0
    # Lightning logged ε after each epoch.
    (metrics,) = tmp_path.glob("**/metrics.csv")
    with metrics.open() as file:
        logged = [float(row["epsilon"]) for row in csv.DictReader(file) if row.get("epsilon")]
    assert logged == pytest.approx(record["epsilons"], rel=1e-6)


def sigma_t(decay: str, sigma0: float, rate: float, t: int) -> float:
    """MindArmour's schedules, written out here: Time σ₀/(1+rt), Step σ₀(1−r)^t, Exp σ₀e^(−rt)."""
    return {"time": sigma0 / (1 + rate * t), "step": sigma0 * (1 - rate) ** t, "exp": sigma0 * math.exp(-rate * t)}[
        decay
    ]


@pytest.mark.parametrize("decay", ["exp", "time", "step"])
def test_decaying_noise_is_accounted_step_by_step(decay):
    epochs, sigma0, rate = 3, 1.5, 0.5
    model = train([f"dp:noise_multiplier={sigma0},decay={decay},decay_rate={rate}"], epochs=epochs)
    record = model.hparams["privacy"]
    # σ is set at each epoch's start, t counting the epochs done.
    sigmas = [sigma_t(decay, sigma0, rate, step // STEPS_PER_EPOCH) for step in range(epochs * STEPS_PER_EPOCH)]
    assert record["steps"] == len(sigmas)
    assert [s for s, _, n in record["history"] for _ in range(n)] == pytest.approx(sigmas, rel=1e-12)
    assert record["epsilon"] == pytest.approx(rdp_epsilon(sigmas, Q, DELTA), rel=1e-9)
    for epoch, epsilon in enumerate(record["epsilons"]):
        assert epsilon == pytest.approx(rdp_epsilon(sigmas[: (epoch + 1) * STEPS_PER_EPOCH], Q, DELTA), rel=1e-9)
    # Less noise spends more than σ₀ throughout would.
    assert record["epsilon"] > rdp_epsilon([sigma0] * len(sigmas), Q, DELTA)


@pytest.mark.parametrize("extra", ["", ",decay=exp,decay_rate=0.3"])
def test_a_target_epsilon_is_met(extra):
    model = train([f"dp:epsilon=2{extra}"], epochs=2)
    record = model.hparams["privacy"]
    assert 0.97 * 2 <= record["epsilon"] <= 2
    assert record["epsilon"] == pytest.approx(opacus_epsilon("rdp", record["history"], DELTA), rel=1e-9)
    if extra:
        assert record["history"][0][0] > record["history"][-1][0]


@pytest.mark.parametrize("grad_sample", ["ghost", "hooks"])
def test_adaptive_clipping_moves_the_norm_and_accounts_the_nominal_sigma(grad_sample):
    model = train([f"dp:noise_multiplier=1.0,clipping=adaptive,grad_sample={grad_sample}"], epochs=2)
    record = model.hparams["privacy"]
    assert record["max_grad_norm"] != 1.0  # the clipping norm followed the unclipped quantile
    assert record["history"] == [[1.0, Q, 2 * STEPS_PER_EPOCH]]  # the nominal σ, which pays for the quantile too
    assert record["epsilon"] == pytest.approx(opacus_epsilon("rdp", record["history"], DELTA), rel=1e-9)


# -- clipping and noise ---------------------------------------------------------------------------

EXAMPLES = 12  # one batch, not the expected batch size: the clipped sum is divided by the expected size
EXPECTED_BATCH = 8


def per_sample_gradients(client: nn.Module, server: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list]:
    """Each example's gradient of its cross-entropy, for every parameter (client's first), one example at a time."""
    params = [*client.parameters(), *server.parameters()]
    grads = []
    for i in range(len(x)):
        loss = F.cross_entropy(server(client(x[i : i + 1])), y[i : i + 1])
        grads.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return grads


class ClippingCase(NamedTuple):
    got: list[torch.Tensor]  # every parameter's gradient as DP-SGD hands it to the optimiser (client's first)
    clipped_mean: list[torch.Tensor]  # Σ clip(gᵢ) / expected batch size, computed here
    plain_mean: list[torch.Tensor]  # the ordinary mean gradient, computed here
    factors: torch.Tensor  # min(1, C / ‖gᵢ‖) per example
    bound: float  # C
    n_private: int  # how many of the parameters (in order) DP-SGD trains


def clipping_case(grad_sample: str, part: str, sigma: float = 0.0) -> ClippingCase:
    """Tiny parts, a batch, and the gradients DP-SGD gives them before the optimiser's step; the oracle's too."""
    client, server = tiny_parts(seed=1, pixels=16)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(EXAMPLES, 1, 4, 4, generator=generator), torch.randint(0, 10, (EXAMPLES,), generator=generator)
    grads = per_sample_gradients(client, server, x, y)
    n_private = len(list(client.parameters())) + (len(list(server.parameters())) if part == "model" else 0)
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in sample[:n_private])) for sample in grads])
    bound = float(norms.median())  # some examples are clipped, some are not
    factors = (bound / norms).clamp(max=1.0)
    clipped_mean = [
        sum(f * sample[k] for f, sample in zip(factors, grads, strict=True)) / EXPECTED_BATCH
        for k in range(len(grads[0]))
    ]
    plain_mean = [sum(sample[k] for sample in grads) / EXAMPLES for k in range(len(grads[0]))]

    optimizer = torch.optim.SGD([*client.parameters(), *server.parameters()], lr=0.1)
    data = DataLoader(TensorDataset(torch.zeros(64, 1, 4, 4), torch.zeros(64, dtype=torch.long)), batch_size=8)
    spec = DPSGD(noise_multiplier=sigma, max_grad_norm=bound, grad_sample=grad_sample, part=part)
    protected = client if part == "client" else nn.ModuleList([client, server])
    wrapped, _, privacy = make_private(spec, protected, optimizer, data, epochs=1)
    assert wrapped.private.expected_batch_size == EXPECTED_BATCH
    wrapped.zero_grad()
    per_sample_loss = F.cross_entropy(server(client(x)), y, reduction="none")
    if privacy.ghost:
        privacy.backward(per_sample_loss)
    else:
        per_sample_loss.mean().backward()
    assert wrapped.private.pre_step()  # clip, noise, divide by the expected batch size; the step is not taken
    got = [p.grad.detach().clone() for p in [*client.parameters(), *server.parameters()]]
    privacy.close()
    return ClippingCase(got, clipped_mean, plain_mean, factors, bound, n_private)


@pytest.mark.parametrize("part", ["client", "model"])
@pytest.mark.parametrize("grad_sample", ["ghost", "hooks"])
def test_per_sample_gradients_are_clipped_to_the_norm(grad_sample, part):
    # σ = 0 (the spec alone would be off; make_private is driven directly): the update is the clipped sum itself.
    case = clipping_case(grad_sample, part)
    assert (case.factors < 1).any() and (case.factors == 1).any()
    for k, grad in enumerate(case.got):
        # The private part: Σ clip(gᵢ) / expected batch size. The server, with part=client: its plain mean gradient.
        expected = case.clipped_mean[k] if k < case.n_private else case.plain_mean[k]
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_noise_on_the_clipped_sum_has_standard_deviation_sigma_times_the_norm():
    torch.manual_seed(0)
    sigma = 2.0
    case = clipping_case("hooks", "client", sigma=sigma)
    private = zip(case.got[: case.n_private], case.clipped_mean[: case.n_private], strict=True)
    noise = torch.cat([(got - clipped).flatten() for got, clipped in private]) * EXPECTED_BATCH
    assert noise.numel() > 400  # enough draws for the standard deviation to within a few per cent
    assert float(noise.std()) == pytest.approx(sigma * case.bound, rel=0.1)
    assert abs(float(noise.mean())) < 0.2 * sigma * case.bound
    # The server, trained plainly, gets no noise.
    for k in range(case.n_private, len(case.got)):
        torch.testing.assert_close(case.got[k], case.plain_mean[k], rtol=1e-4, atol=1e-7)


# -- bad input and combinations -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "dp:epsilon=0",
        "dp:epsilon=-1",
        "dp:delta=0",
        "dp:delta=1",
        "dp:delta=-0.1",
        "dp:noise_multiplier=-1",
        "dp:max_grad_norm=0",
        "dp:max_grad_norm=-1",
        "dp:decay=exp,decay_rate=-0.1",
        "dp:decay=step,decay_rate=1",
        "dp:epsilon=2,noise_multiplier=1",
        "dp:accountant=gdp",
        "dp:decay=linear",
        "dp:clipping=perlayer",
        "dp:part=server",
        "dp:grad_sample=functorch",
        "dp:target_quantile=1",
    ],
)
def test_bad_parameters_are_one_line_config_errors(text):
    with pytest.raises(ConfigError) as error:
        parse_defence(text)
    assert "\n" not in str(error.value) and str(error.value).strip()


def batch_norm_client() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8))


@pytest.mark.parametrize("part", ["client", "model"])
def test_a_batch_norm_layer_is_named_with_its_fix(part):
    server = nn.Sequential(nn.Tanh(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match=r"layer 'client\.1' \(BatchNorm2d\).*GroupNorm") as error:
        SplitNN(
            client=batch_norm_client(), server=server, input_shape=(1, 8, 8), defences=[f"dp:epsilon=4,part={part}"]
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"BatchNorm.*GroupNorm"):
        SplitNN("resnet18:1", input_shape=(3, 32, 32), defences=["dp:epsilon=4"])


def test_a_batch_norm_in_the_server_is_refused_only_when_the_server_is_private():
    client = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    server = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 10))
    SplitNN(client=client, server=server, input_shape=(1, 8, 8), defences=["dp:epsilon=4"])  # the server trains plainly
    with pytest.raises(ConfigError, match=r"layer 'server\.0' \(BatchNorm1d\).*GroupNorm"):
        SplitNN(client=client, server=server, input_shape=(1, 8, 8), defences=["dp:epsilon=4,part=model"])


def test_dp_beside_nopeek_is_refused_unless_asked_for_and_then_reported_not_dp():
    problems = validate([DPSGD(epsilon=4), NoPeek(weight=0.1)])
    assert (
        len(problems) == 1
        and "allow_coupling=true" in str(problems[0])
        and "not be differentially private" in str(problems[0])
    )
    with pytest.raises(ConfigError, match="per-sample"):
        SplitNN(defences=["dp:epsilon=4", "nopeek:weight=0.1"])
    assert validate([DPSGD(epsilon=4, allow_coupling=True), NoPeek(weight=0.1)]) == []
    defences = ["dp:noise_multiplier=1,allow_coupling=true", "nopeek:weight=0.1"]
    model = train(defences, epochs=1)
    assert DPSGD(noise_multiplier=1.0, allow_coupling=True).measures(model)["not_dp"] == 1.0
    assert "not DP" in label(model.defences)


def test_dp_beside_suppress_is_refused():
    problems = validate([parse_defence("dp:epsilon=4"), parse_defence("suppress:sparse_end=0.5")])
    assert problems and "suppress" in str(problems[0])
    with pytest.raises(ConfigError):
        SplitNN(defences=["dp:epsilon=4", "suppress:sparse_end=0.5"])
    assert validate([parse_defence("dp:epsilon=4"), parse_defence("suppress:sparse_end=0")]) == []  # suppress off


# -- the trained model ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize("grad_sample", ["ghost", "hooks"])
def test_fit_leaves_no_opacus_hooks_and_the_checkpoint_keeps_the_record(grad_sample, tmp_path):
    splits = random_splits(n_train=64, shape=(1, 16, 16))  # the reference network, rebuilt from the checkpoint
    torch.manual_seed(0)
    model, epoch = train_classifier(
        splits,
        defences=[f"dp:noise_multiplier=1,grad_sample={grad_sample}"],
        max_epochs=1,
        batch_size=BATCH,
        progress=False,
    )
    for name, module in model.named_modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks), f"{name} keeps hooks"
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    record = model.hparams["privacy"]
    path = save_checkpoint(model, tmp_path / "dp.ckpt", "classifier", epoch)
    assert read_checkpoint(path, "classifier")["hyper_parameters"]["privacy"] == record
    loaded = load_classifier(path)
    assert loaded.hparams["privacy"] == record
    plain = SplitNN(input_shape=(1, 16, 16))
    assert list(loaded.state_dict()) == list(model.state_dict()) == list(plain.state_dict())
    x = splits.test.images
    torch.testing.assert_close(loaded(x), model(x))
    # Fitting the trained model again: refused in eval mode, where Opacus records no per-sample gradients;
    # trained by DP-SGD again in training mode.
    model.use_train_loader(splits.train.loader(BATCH))
    with pytest.raises(ConfigError, match="training mode"):
        make_trainer(1, progress=False, callbacks=model.defences[0].callbacks()).fit(model)
    model.train()
    make_trainer(1, progress=False, callbacks=model.defences[0].callbacks()).fit(model)
    assert model.hparams["privacy"]["steps"] >= len(splits.train.loader(BATCH))


@pytest.mark.parametrize("grad_sample", ["ghost", "hooks"])
def test_make_private_on_an_unsplit_model(grad_sample):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_split = random_splits(n_train=128).train
    loader = DataLoader(TensorDataset(train_split.images, train_split.labels), batch_size=16)
    spec = DPSGD(noise_multiplier=1.0, part="model", grad_sample=grad_sample)
    wrapped, batches, privacy = make_private(spec, model, optimizer, loader, epochs=1)
    assert wrapped.public is None and wrapped.privacy is privacy and len(batches) == 8
    for x, y in batches:
        wrapped.zero_grad()
        per_sample_loss = F.cross_entropy(model(x), y, reduction="none")
        if privacy.ghost:
            privacy.backward(per_sample_loss)
        else:
            per_sample_loss.mean().backward()
        wrapped.step()
    privacy.close()
    assert privacy.steps == 8 and privacy.sample_rate == 1 / 8
    assert privacy.epsilon() == pytest.approx(opacus_epsilon("rdp", [(1.0, 1 / 8, 8)], 1e-3), rel=1e-9)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert not any(module._forward_hooks for module in model.modules())


# -- the script ----------------------------------------------------------------------------------


def test_train_model_prints_epsilon_per_epoch_and_writes_it(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    main = runpy.run_path(str(REPO / "scripts" / "train_model.py"))["main"]
    models, results = tmp_path / "models", tmp_path / "results"
    code = main(
        [
            *("--defence", "dp:noise_multiplier=1", "--max-epochs", "2", "--train-size", "256", "--batch-size", "64"),
            *("--val-size", "256", "--aux-split-size", "16", "--saveas", "dp", "--data-dir", str(data_root)),
            *("--models-dir", str(models), "--results-dir", str(results), "--no-progress"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    per_epoch = [float(value) for value in re.findall(r"^ε after epoch \d+: ([\d.e+-]+)", out, flags=re.MULTILINE)]
    (checkpoint,) = models.glob("*.ckpt")
    record = load_classifier(checkpoint).hparams["privacy"]
    assert len(per_epoch) == 2 and per_epoch == pytest.approx(record["epsilons"], rel=1e-3)
    with (results / "train_model.csv").open() as file:
        (row,) = list(csv.DictReader(file))
    assert row["defences"] == DPSGD(noise_multiplier=1.0).spec()
    assert json.loads(row["measures"])["dp_epsilon"] == pytest.approx(record["epsilon"], rel=1e-9)
