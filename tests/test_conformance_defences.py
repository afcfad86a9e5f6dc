"""Conformance of every registered defence: one suite, run over :func:`dpsnn.defences.registered_defences`.

A defence added to :mod:`dpsnn.defences` is tested here without new test code. Each is
exercised switched off (``spec.off()``: its strength at ``off_value``, 0 for most and ∞ for
a target ε), where it must change nothing, and at an example strength (:func:`example`),
where it must change something and survive every round trip: plain hyperparameters,
checkpoints, canonical strings, the command line, and a tiny end-to-end run of training,
attack and evaluation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsnn.checkpoints import _plain, load_classifier, save_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.defences import (
    DEFENCES,
    Defence,
    NoPeek,
    canonical,
    check,
    defence_from,
    make_defence,
    normalise,
    parse_canonical,
    parse_defence,
    register_defence,
    registered_defences,
    validate,
)
from dpsnn.defences.base import value_text
from dpsnn.errors import ConfigError
from dpsnn.evaluation import evaluate_attack, evaluate_classifier
from dpsnn.models import SplitNN
from dpsnn.training import train_attacker, train_classifier

NAMES = sorted(registered_defences())

#: Parameters of a defence whose defaults at strength 0.5 make a poor example; every other
#: defence is exercised as ``make_defence(name).at_strength(0.5)``. Suppress's schedule must
#: end within the one epoch of the tiny end-to-end run.
EXAMPLE_PARAMS: dict[str, dict[str, object]] = {"suppress": {"sparse_end": 0.5, "end_epoch": 1, "mask_times": 2}}

#: A second strength for each defence, other than the example's; every other defence takes 1.0
#: (suppress's sparse_end must stay below 1).
OTHER_STRENGTH: dict[str, float] = {"suppress": 0.8}

FILE_NAME_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def example(name: str) -> Defence:
    """An instance of the defence ``name`` at a non-zero strength."""
    if name in EXAMPLE_PARAMS:
        return make_defence(name, EXAMPLE_PARAMS[name])
    return make_defence(name).at_strength(0.5)


def zero(name: str) -> Defence:
    """The example switched off: its strength at the defence's ``off_value``."""
    return example(name).off()


def other(name: str) -> Defence:
    """The example at another strength than its own."""
    return example(name).at_strength(OTHER_STRENGTH.get(name, 1.0))


def wraps(spec: Defence) -> bool:
    """Whether the defence overrides :meth:`Defence.wrap` (DP-SGD replaces the optimiser and the loader)."""
    return type(spec).wrap is not Defence.wrap


def wrap_parts(spec: Defence, model: SplitNN, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """``spec.wrap`` as training calls it: the part it protects, Adam on the model, a real loader, one epoch."""
    parts = {"client": model.client, "model": torch.nn.ModuleList([model.client, model.server])}
    optimizer = torch.optim.Adam(model.parameters())
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return optimizer, loader, spec.wrap(parts[spec.wrapped_part()], optimizer, loader, epochs=1)


def command_line(spec: Defence) -> str:
    """``--defence``'s form of ``spec``: ``laplace:scale=0.5``."""
    return f"{spec.name}:" + ",".join(f"{key}={value_text(value)}" for key, value in spec.params().items())


def random_splits(n_train: int = 64, n_test: int = 384, seed: int = 0) -> Splits:
    """Random 1×16×16 images in ten classes: enough for the plumbing, not for learning (and small, to be fast).

    ``n_test`` of 384 gives two batches for dCor (256 and 128), so every standard error is finite.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        return Split(
            torch.rand(size, 1, 16, 16, generator=generator), torch.randint(0, 10, (size,), generator=generator)
        )

    return Splits("random", seed, 10, split(n_train), split(32), split(n_test), split(32))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 28, 28, generator=generator), torch.arange(16) % 10


def twins(defences: list[Defence]) -> tuple[SplitNN, SplitNN]:
    """An undefended SplitNN and one with ``defences``, with the same weights."""
    torch.manual_seed(0)
    plain = SplitNN()
    torch.manual_seed(0)
    defended = SplitNN(defences=defences)
    # A defence may bring parameters of its own (a learned wire); the split's weights are the same.
    assert defended.load_state_dict(plain.state_dict(), strict=False).unexpected_keys == []
    return plain, defended


# -- strength ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_strength_names_a_parameter(name):
    cls = DEFENCES[name]
    assert cls.name == name
    assert cls.strength in [field.name for field in fields(cls)], f"{name}: strength must name one of its parameters"
    assert zero(name).is_identity()
    assert not example(name).is_identity()


@pytest.mark.parametrize("name", NAMES)
def test_zero_strength_is_the_identity_on_encode_and_adds_no_loss(name, batch):
    x, y = batch
    off = zero(name)
    plain, defended = twins([off])
    plain.eval()
    defended.eval()
    assert defended.defences == () and defended.trained_with() == "none"
    torch.manual_seed(3)
    expected = plain.encode(x)
    torch.manual_seed(3)
    assert torch.equal(defended.encode(x), expected)
    assert torch.equal(defended._step((x, y))["loss"], plain._step((x, y))["loss"])
    # The hooks themselves, not only the normalisation that drops the spec.
    h = plain.client(x)
    wire = off.wire()
    if wire is not None:
        for mode in (True, False):
            wire.train(mode)
            assert torch.equal(wire(h), h)
    logits = plain.server(h)
    assert all(float(term.detach()) == 0.0 for term in off.loss_terms(x, h, logits, y).values())
    optimizer, loader, wrapped = wrap_parts(off, plain, x, y)
    assert wrapped[0] is optimizer and wrapped[1] is loader
    assert off.callbacks() == []


@pytest.mark.parametrize("name", NAMES)
def test_example_strength_changes_something(name, batch):
    x, y = batch
    spec = example(name)
    plain, defended = twins([spec])
    plain.train()
    defended.train()
    assert defended.defences == (spec,)
    torch.manual_seed(3)
    seen_plain = plain.encode(x)
    torch.manual_seed(3)
    seen_defended = defended.encode(x)
    terms = spec.loss_terms(x, plain.client(x), plain(x), y)
    optimizer, loader, wrapped = wrap_parts(spec, plain, x, y)
    if wraps(spec):
        assert wrapped[0] is not optimizer and wrapped[1] is not loader
    else:
        assert wrapped[0] is optimizer and wrapped[1] is loader
    changes = {
        "wire": not torch.equal(seen_plain, seen_defended),
        "loss": any(float(term.detach()) != 0.0 for term in terms.values()),
        "wrap": wrapped[0] is not optimizer or wrapped[1] is not loader,
        "callbacks": bool(spec.callbacks()),
        "companion": spec.companion() is not None,
    }
    assert any(changes.values()), f"{spec.spec()} changes nothing: {changes}"
    if changes["loss"]:
        assert defended._step((x, y))["loss"] != plain._step((x, y))["loss"]
    if changes["companion"]:  # trained beside the model, it reports a term of its own at every training step
        assert set(defended._step((x, y))) > set(plain._step((x, y)))


# -- plain data and round trips ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_are_plain_data(name):
    spec = example(name)
    model = SplitNN(defences=[spec], dataset="random", seed=0)
    assert _plain(dict(model.hparams))
    assert model.hparams["defences"] == [spec.to_dict()]
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()
    assert _plain(spec.params())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path, batch):
    x, _ = batch
    spec = example(name)
    torch.manual_seed(0)
    model = SplitNN(defences=[spec]).eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", "classifier", epoch=1)
    loaded = load_classifier(path)
    assert loaded.defences == model.defences == (spec,)
    assert loaded.wire_defences == model.wire_defences
    assert loaded.trained_with() == model.trained_with() == canonical([spec])
    for method in ("encode", "forward"):
        torch.manual_seed(5)
        expected = getattr(model, method)(x)
        torch.manual_seed(5)
        assert torch.equal(getattr(loaded, method)(x), expected)


@pytest.mark.parametrize("name", NAMES)
def test_canonical_string_and_dict_round_trips(name):
    spec = example(name)
    assert parse_canonical(canonical([spec])) == normalise([spec]) == (spec,)
    assert defence_from(spec.to_dict()) == spec
    assert defence_from(json.loads(json.dumps(spec.to_dict()))) == spec
    assert defence_from(spec.spec()) == spec
    assert canonical([zero(name)]) == "none" and parse_canonical("none") == ()


@pytest.mark.parametrize("name", NAMES)
def test_command_line_round_trip(name):
    spec = example(name)
    assert parse_defence(command_line(spec)) == spec
    assert parse_defence(command_line(zero(name))) == zero(name)
    assert parse_defence(name) == make_defence(name)  # every parameter has a default


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameters_are_config_errors(name):
    strength = DEFENCES[name].strength
    for text in (
        f"{name}:no_such_parameter=1",
        f"{name}:{strength}=loud",
        f"{name}:{strength}=-1",
        f"{name}:{strength}",
    ):
        with pytest.raises(ConfigError):
            parse_defence(text)
    with pytest.raises(ConfigError):
        make_defence(name, {"no_such_parameter": 1})
    with pytest.raises(ConfigError):
        SplitNN(defences=[{"name": name, "params": {strength: -1.0}}])


@pytest.mark.parametrize("name", NAMES)
def test_validate_refuses_a_defence_given_twice(name):
    spec = example(name)
    assert validate([spec]) == []
    problems = validate([spec, other(name)])
    assert problems and all(isinstance(problem, ConfigError) for problem in problems)
    assert name in str(problems[0])
    with pytest.raises(ConfigError):
        check([spec, spec])
    with pytest.raises(ConfigError):
        SplitNN(defences=[spec, spec])


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_key_is_file_name_safe_and_label_is_not_empty(name):
    for spec in (example(name), zero(name), other(name)):
        assert FILE_NAME_SAFE.fullmatch(spec.key()), f"{spec.key()!r} is not file-name safe"
        assert isinstance(spec.label(), str) and spec.label().strip()
    assert example(name).key() != other(name).key()
    assert example(name).label() != other(name).label()


def test_keys_and_labels_are_unique_across_the_registry():
    specs = [example(name) for name in NAMES] + [zero(name) for name in NAMES]
    keys = [spec.key() for spec in specs]
    labels = [spec.label() for spec in specs]
    assert len(set(keys)) == len(keys), keys
    assert len(set(labels)) == len(labels), labels


# -- combinations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PerSampleToy(Defence):
    """A stand-in for a defence that needs per-sample gradients (DP-SGD); not registered."""

    noise: float = 0.0
    name = "toy-per-sample"
    strength = "noise"
    per_sample = True


@dataclass(frozen=True)
class CouplingToy(Defence):
    """A stand-in for a loss that couples the samples of a batch; not registered."""

    weight: float = 0.0
    name = "toy-coupling"
    strength = "weight"
    couples_samples = True


def test_validate_refuses_per_sample_gradients_with_nopeek():
    problems = validate([PerSampleToy(noise=1.0), NoPeek(weight=0.1)])
    assert len(problems) == 1
    assert "toy-per-sample" in str(problems[0]) and "nopeek" in str(problems[0])
    with pytest.raises(ConfigError, match="per-sample"):
        SplitNN(defences=[PerSampleToy(noise=1.0), NoPeek(weight=0.1)])
    assert validate([PerSampleToy(noise=1.0), NoPeek(weight=0.0)]) == []  # NoPeek at 0 is off


@pytest.mark.parametrize("name", NAMES)
def test_validate_knows_what_couples_samples_and_what_needs_per_sample_gradients(name):
    spec = example(name)
    with_per_sample = validate([spec, PerSampleToy(noise=1.0)])
    with_coupling = validate([spec, CouplingToy(weight=1.0)])
    assert bool(with_per_sample) == spec.couples_samples
    assert bool(with_coupling) == spec.per_sample


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tiny_end_to_end_run(name):
    spec = example(name)
    splits = random_splits()
    model, epoch = train_classifier(splits, defences=[spec], max_epochs=1, batch_size=32, progress=False)
    assert model.defences == (spec,) and epoch == 0
    attacker = train_attacker(model, splits.aux.images, batch_size=16, max_steps=2, progress=False)
    classifier_row = evaluate_classifier(model, splits.test)
    attack_row = evaluate_attack(model, attacker, splits.test, splits.aux)
    for key, value in {**classifier_row, **attack_row}.items():
        assert math.isfinite(value), f"{key} = {value}"
    assert {"accuracy", "dcor", "attack_mse", "baseline_ssim", "gap_psnr"} <= set(classifier_row) | set(attack_row)
    for key, value in spec.measures(model).items():
        assert isinstance(key, str) and math.isfinite(float(value))


# -- the hooks are really called by training ----------------------------------------------------


class CountingLoader:
    """A training loader that counts the batches drawn from it."""

    def __init__(self, loader, counts: dict[str, int]) -> None:
        self.loader, self.counts = loader, counts

    def __iter__(self):
        for item in self.loader:
            self.counts["batches_drawn"] += 1
            yield item

    def __len__(self) -> int:
        return len(self.loader)


class CountBatches(L.Callback):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counts["callback_batches"] += 1


@pytest.fixture
def toy_defence():
    """A test-only defence using every training hook, registered for the test and removed after it."""
    counts = {"wrap": 0, "batches_drawn": 0, "callback_batches": 0, "loss_terms": 0, "measures": 0, "epochs": None}
    clients = []

    @register_defence("toy-hooks")
    @dataclass(frozen=True)
    class ToyHooks(Defence):
        level: float = 0.0
        strength = "level"

        def wrap(self, part, optimizer, loader, epochs=None):
            counts["wrap"] += 1
            counts["epochs"] = epochs
            clients.append(part)
            return optimizer, CountingLoader(loader, counts)

        def callbacks(self):
            return [CountBatches(counts)]

        def loss_terms(self, x, h, logits, y):
            counts["loss_terms"] += 1
            return {"toy": self.level * h.pow(2).mean()}

        def measures(self, model):
            counts["measures"] += 1
            return {"level_seen": self.level}

    try:
        yield ToyHooks, counts, clients
    finally:
        DEFENCES.pop("toy-hooks", None)


def test_training_calls_wrap_callbacks_loss_terms_and_measures(toy_defence):
    from dpsnn.experiments.runner import defence_measures

    ToyHooks, counts, clients = toy_defence
    assert "toy-hooks" in registered_defences()
    splits = random_splits(n_test=8)
    model, _ = train_classifier(splits, defences=["toy-hooks:level=0.5"], max_epochs=1, batch_size=32, progress=False)
    assert model.defences == (ToyHooks(level=0.5),)
    assert counts["wrap"] == 1 and clients == [model.client] and counts["epochs"] == 1
    assert counts["batches_drawn"] == 2  # 64 images in batches of 32: the wrapped loader fed the training
    assert counts["callback_batches"] == 2
    assert counts["loss_terms"] >= 2
    assert defence_measures(model) == {"toy_hooks_level_seen": 0.5}
    assert counts["measures"] == 1


def test_the_toy_defence_is_gone_after_its_test():
    assert "toy-hooks" not in registered_defences()


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_a_wrapping_defence_needs_the_loader_it_wraps(toy_defence):
    from dpsnn.loops import make_trainer

    ToyHooks, counts, _ = toy_defence
    splits = random_splits(n_test=8)
    model = SplitNN(defences=[ToyHooks(level=0.5)], input_shape=splits.image_shape)
    # Lightning given the loader directly: the defence would never see it, so training is refused.
    with pytest.raises(ConfigError, match="wraps the training data"):
        make_trainer(1, progress=False).fit(model, train_dataloaders=splits.train.loader(32))
    # Given through use_train_loader, each fit wraps the loader it was given once, never a wrapped one.
    model.use_train_loader(splits.train.loader(32))
    for _ in range(2):
        make_trainer(1, progress=False).fit(model)
    assert counts["wrap"] == 2 and counts["batches_drawn"] == 4
    assert isinstance(model.train_dataloader().loader, type(splits.train.loader(32)))


def test_the_shared_registrar_refuses_a_taken_name_and_a_class_that_is_not_a_frozen_dataclass():
    from dpsnn.defences.base import spec_registrar

    registry: dict[str, type] = {}
    register_as = spec_registrar(registry, "attack")

    @register_as("first")
    @dataclass(frozen=True)
    class First:
        pass

    assert registry == {"first": First} and First.name == "first"
    assert register_as("first")(First) is First  # registering the same class again is harmless
    with pytest.raises(ValueError, match="an attack named 'first' is already registered \\(First\\)"):

        @register_as("first")
        @dataclass(frozen=True)
        class Second:
            pass

    with pytest.raises(TypeError, match="Mutable must be a frozen dataclass"):

        @register_as("mutable")
        @dataclass
        class Mutable:
            pass

    assert list(registry) == ["first"]
