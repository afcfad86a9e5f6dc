"""Suppress-privacy training: the cubic schedule, masks that hold, the final sparsity, layers and bad input.

Every run trains the reference split on tiny random 1×16×16 images (64 training images,
batch 16: four optimiser steps per epoch), so each fit takes a second or two. Recording
callbacks read each watched layer's effective weight (``weight_orig * weight_mask`` while
it is being pruned) at the start and after every optimiser step, one before the schedule
acts (the weights an event ranks) and one after (what it masked). The expected sparsity
is MindArmour's curve, computed here from the definition: events at t₀ + kΔt (k = 1..n,
Δt = (end − start)/n, on the nearest step) with s_t = s_end + (s_start − s_end)(1 − (t − t₀)/(nΔt))³.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from dpsnn.checkpoints import load_classifier, save_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.defences import parse_defence
from dpsnn.defences.suppress import Suppress
from dpsnn.errors import ConfigError
from dpsnn.loops import make_trainer
from dpsnn.models import SplitNN
from dpsnn.training import train_classifier

pytestmark = [pytest.mark.filterwarnings("ignore:.*no `val_dataloader`.*")]

SHAPE = (1, 16, 16)
TRAIN, BATCH = 64, 16
STEPS_PER_EPOCH = TRAIN // BATCH
CLIENT_LAYERS = ("client.0", "client.2", "client.6")
SERVER_LAYERS = ("server.0", "server.2")
ALL_LAYERS = CLIENT_LAYERS + SERVER_LAYERS


pytestmark.append(pytest.mark.usefixtures("one_torch_thread"))


def random_split(size: int, generator: torch.Generator) -> Split:
    return Split(torch.rand(size, *SHAPE, generator=generator), torch.randint(0, 10, (size,), generator=generator))


def random_splits(seed: int = 0) -> Splits:
    """Random images in ten classes: enough for the plumbing, not for learning."""
    generator = torch.Generator().manual_seed(seed)
    return Splits("random", seed, 10, *(random_split(size, generator) for size in (TRAIN, 32, 32, 32)))


def effective(module: nn.Module) -> Tensor:
    """The weight the forward pass uses: the mask applied while the layer is being pruned."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


class Recorder(L.Callback):
    """The zero positions of each watched layer's effective weight at the start and after every step.

    With ``keep_weights`` it keeps the weights too; placed before the schedule among the
    callbacks, it sees them as they are when a masking event is due, before it fires.
    """

    def __init__(self, layers: tuple[str, ...], keep_weights: bool = False) -> None:
        self.layers, self.keep_weights = layers, keep_weights
        self.steps: list[int] = []
        self.zeros: list[dict[str, Tensor]] = []
        self.sums: list[dict[str, float]] = []  # Σ|w|: the unmasked weights move between steps
        self.weights: list[dict[str, Tensor]] = []

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modules = dict(pl_module.named_modules())
        weights = {name: effective(modules[name]).cpu().clone() for name in self.layers}
        self.steps.append(trainer.global_step)
        self.zeros.append({name: weight == 0 for name, weight in weights.items()})
        self.sums.append({name: float(weight.abs().sum()) for name, weight in weights.items()})
        if self.keep_weights:
            self.weights.append(weights)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._record(trainer, pl_module)


@dataclass
class Run:
    spec: Suppress
    model: SplitNN
    events: list[dict]
    recorder: Recorder
    before: Recorder  # the weights before the schedule acts, at the same steps
    epochs: int
    layers: tuple[str, ...] = field(default=CLIENT_LAYERS)  # the layers the spec prunes


def fit(spec: Suppress, epochs: int, layers: tuple[str, ...] = CLIENT_LAYERS) -> Run:
    """Train with ``spec``'s schedule as dpsnn does (``use_train_loader``, ``make_trainer``, ``fit``)."""
    L.seed_everything(0, verbose=False)
    model = SplitNN(defences=[spec], input_shape=SHAPE)
    (schedule,) = spec.callbacks()
    recorder, before = Recorder(ALL_LAYERS), Recorder(ALL_LAYERS, keep_weights=True)
    model.use_train_loader(random_splits().train.loader(BATCH, shuffle=True))
    make_trainer(epochs, progress=False, callbacks=[before, schedule, recorder]).fit(model)
    return Run(spec, model, schedule.events, recorder, before, epochs, layers)


# -- the schedule, from its definition ----------------------------------------------------


def curve(spec: Suppress, t: float) -> float:
    """MindArmour's s_t; at a one-shot event (nΔt = 0) the end sparsity."""
    span = spec.end_epoch - spec.start_epoch  # n·Δt
    if span == 0:
        return spec.sparse_end
    return spec.sparse_end + (spec.sparse_start - spec.sparse_end) * (1 - (t - spec.start_epoch) / span) ** 3


def event_epochs(spec: Suppress) -> list[float]:
    delta = (spec.end_epoch - spec.start_epoch) / spec.mask_times
    return [spec.start_epoch + k * delta for k in range(1, spec.mask_times + 1)]


def expected_after(spec: Suppress, step: int) -> float:
    """The target sparsity once ``step`` optimiser steps are done: that of the last event due (0 before any)."""
    due = [t for t in event_epochs(spec) if math.floor(t * STEPS_PER_EPOCH + 0.5) <= step]
    return curve(spec, due[-1]) if due else 0.0


def within_one_weight(zeros: Tensor, target: float) -> bool:
    return abs(int(zeros.sum()) - target * zeros.numel()) <= 1


SCHEDULES = {
    # 3 epochs, events at epochs 0.4, 0.8, 1.2, 1.6, 2.0 (steps 2, 3, 5, 6, 8), 4 steps after the last.
    "cubic": (Suppress(sparse_end=0.9, end_epoch=2, mask_times=5), 3, CLIENT_LAYERS),
    "sparse_start": (
        Suppress(sparse_start=0.5, sparse_end=0.95, start_epoch=1, end_epoch=2, mask_times=3),
        2,
        CLIENT_LAYERS,
    ),
    # Every event on one step (the end of epoch 0), and before the first step.
    "one-shot": (Suppress(sparse_end=0.8, start_epoch=1, end_epoch=1, mask_times=3), 2, CLIENT_LAYERS),
    "one-shot-at-start": (Suppress(sparse_end=0.5, start_epoch=0, end_epoch=0, mask_times=1), 1, CLIENT_LAYERS),
    # Ten events on four steps: several fall on one step, one before the first step.
    "more-events-than-steps": (Suppress(sparse_end=0.9, end_epoch=1, mask_times=10), 1, CLIENT_LAYERS),
    "model": (Suppress(sparse_end=0.7, end_epoch=1, mask_times=2, layers="model"), 1, ALL_LAYERS),
    "two-layers": (
        Suppress(sparse_end=0.6, end_epoch=1, mask_times=2, layers="client.0/client.6"),
        1,
        ("client.0", "client.6"),
    ),
}


@pytest.fixture(scope="module")
def runs():
    """Each schedule of :data:`SCHEDULES` trained once, on first use."""
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            spec, epochs, layers = SCHEDULES[name]
            done[name] = fit(spec, epochs, layers)
        return done[name]

    return get


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_events_follow_the_cubic_curve_within_one_weight_per_layer(runs, name):
    run = runs(name)
    spec = run.spec
    assert len(run.events) == spec.mask_times
    for event, t in zip(run.events, event_epochs(spec), strict=True):
        assert event["epoch"] == pytest.approx(t)
        assert event["target"] == pytest.approx(curve(spec, t))
        assert set(event["sparsity"]) == set(run.layers)
    for event in run.events:
        for layer, value in event["sparsity"].items():
            total = dict(run.model.named_modules())[layer].weight.numel()
            assert abs(value * total - curve(spec, event["epoch"]) * total) <= 1, (name, layer, event)
    # Step by step, as training saw it: each layer at the target of the last event due, the others untouched.
    assert run.recorder.steps == list(range(run.epochs * STEPS_PER_EPOCH + 1))
    for step, zeros in zip(run.recorder.steps, run.recorder.zeros, strict=True):
        target = expected_after(spec, step)
        for layer in ALL_LAYERS:
            if layer in run.layers:
                assert within_one_weight(zeros[layer], target), (name, layer, step, int(zeros[layer].sum()), target)
            else:
                assert not zeros[layer].any(), f"{name}: {layer} is not pruned but has zero weights at step {step}"


def test_the_curve_rises_as_a_cube_towards_the_end(runs):
    """The recorded events of the main schedule, against numbers worked out by hand."""
    events = runs("cubic").events
    # s = 0.9 (1 − (1 − t/2)³) at t = 0.4, 0.8, 1.2, 1.6, 2.0
    assert [round(e["target"], 4) for e in events] == [0.4392, 0.7056, 0.8424, 0.8928, 0.9]
    assert [e["step"] for e in events] == [2, 3, 5, 6, 8]


@pytest.mark.parametrize("name", ["cubic", "sparse_start", "more-events-than-steps", "model"])
def test_each_event_masks_the_smallest_weights_as_they_are_then(runs, name):
    """The weights masked at an event are no larger than any kept, in the weights after the latest step."""
    run = runs(name)
    assert run.before.steps == run.recorder.steps
    previous = {layer: torch.zeros_like(zeros) for layer, zeros in run.recorder.zeros[0].items()}
    grew = 0
    for step, weights, zeros in zip(run.recorder.steps, run.before.weights, run.recorder.zeros, strict=True):
        for layer in run.layers:
            new = zeros[layer] & ~previous[layer]
            if new.any():
                grew += 1
                magnitude = weights[layer].abs()
                assert magnitude[new].max() <= magnitude[~zeros[layer]].min(), f"{name}: {layer} at step {step}"
        previous = zeros
    assert grew >= len(run.layers)


@pytest.mark.parametrize("name", ["cubic", "sparse_start", "more-events-than-steps", "model"])
def test_masked_weights_stay_exactly_zero_through_later_steps(runs, name):
    run = runs(name)
    recorder = run.recorder
    for layer in run.layers:
        for before, after in zip(recorder.zeros, recorder.zeros[1:], strict=False):
            assert torch.equal(before[layer] & after[layer], before[layer]), f"{layer}: a masked weight moved"
        final = dict(run.model.named_modules())[layer].weight.detach()
        assert torch.all(final[recorder.zeros[-1][layer]] == 0)
    # Every step moved the weights that were not masked: the masks held against real updates.
    for before, after in zip(recorder.sums, recorder.sums[1:], strict=False):
        assert all(before[layer] != after[layer] for layer in run.layers)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_final_sparsity_is_sparse_end_and_the_layout_plain(runs, name):
    run = runs(name)
    modules = dict(run.model.named_modules())
    measures = run.spec.measures(run.model)
    for layer in run.layers:
        weight = modules[layer].weight
        assert isinstance(weight, nn.Parameter)
        assert within_one_weight(weight == 0, run.spec.sparse_end), layer
        assert measures[f"sparsity_{layer.replace('.', '_')}"] == pytest.approx(float((weight == 0).float().mean()))
    assert set(measures) == {"sparsity", *(f"sparsity_{layer.replace('.', '_')}" for layer in run.layers)}
    total = sum(modules[layer].weight.numel() for layer in run.layers)
    assert abs(measures["sparsity"] - run.spec.sparse_end) <= len(run.layers) / total
    state = run.model.state_dict()
    assert not [key for key in state if key.endswith(("_orig", "_mask"))]
    assert {f"{layer}.weight" for layer in ALL_LAYERS} <= set(state)
    assert not prune.is_pruned(run.model)


def test_each_layer_keeps_at_least_min_kept_weights():
    run = fit(Suppress(sparse_end=0.9, end_epoch=1, mask_times=1, min_kept=100), 1)
    modules = dict(run.model.named_modules())
    assert int((modules["client.0"].weight != 0).sum()) == 100  # 288 weights: 0.9 would keep 29
    assert within_one_weight(modules["client.2"].weight == 0, 0.9)  # 18,432 weights: 1,843 kept
    assert run.events[-1]["sparsity"]["client.0"] == pytest.approx(188 / 288)


def test_train_classifier_keeps_weights_at_the_final_sparsity_and_they_round_trip(tmp_path):
    spec = parse_defence("suppress:sparse_end=0.8,end_epoch=2,mask_times=4")
    model, epoch = train_classifier(random_splits(), defences=[spec], batch_size=BATCH, max_epochs=4, progress=False)
    assert epoch >= spec.end_epoch - 1  # no epoch before the last event is kept
    measures = spec.measures(model)
    for layer in CLIENT_LAYERS:
        weight = dict(model.named_modules())[layer].weight
        assert within_one_weight(weight == 0, 0.8), layer
        assert measures[f"sparsity_{layer.replace('.', '_')}"] == pytest.approx(float((weight == 0).float().mean()))
    for layer in SERVER_LAYERS:
        assert not (dict(model.named_modules())[layer].weight == 0).any()
    assert not [key for key in model.state_dict() if key.endswith(("_orig", "_mask"))]

    path = save_checkpoint(model, tmp_path / "suppressed.ckpt", "classifier", epoch)
    loaded = load_classifier(path)
    assert loaded.defences == model.defences == (spec,)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert spec.measures(loaded) == measures
    images = random_splits().test.images
    assert torch.equal(loaded(images), model.eval()(images))


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("sparse_end=1.0", "sparse_end"),
        ("sparse_end=-0.1", "sparse_end"),
        ("sparse_end=0.5,sparse_start=0.5", "sparse_start"),
        ("sparse_end=0.3,sparse_start=0.6", "sparse_start"),
        ("sparse_end=0.5,start_epoch=3,end_epoch=2", "start_epoch"),
        ("sparse_end=0.5,mask_times=0", "mask_times"),
    ],
)
def test_bad_parameters_are_one_clear_config_error(text, names):
    with pytest.raises(ConfigError) as error:
        parse_defence(f"suppress:{text}")
    message = str(error.value)
    assert names in message and "\n" not in message


def test_a_layer_the_model_lacks_is_named():
    with pytest.raises(ConfigError, match=r"client\.99") as error:
        SplitNN(defences=["suppress:sparse_end=0.5,layers=client.99"], input_shape=SHAPE)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"client\.99"):
        SplitNN(defences=["suppress:sparse_end=0.5,layers=client.0/client.99"], input_shape=SHAPE)


def test_a_schedule_ending_after_training_is_refused_when_training_starts():
    spec = Suppress(sparse_end=0.5, end_epoch=3)
    SplitNN(defences=[spec], input_shape=SHAPE)  # the model alone does not know how long it will train
    with pytest.raises(ConfigError, match=r"end_epoch") as error:
        train_classifier(random_splits(), defences=[spec], batch_size=BATCH, max_epochs=2, progress=False)
    assert "\n" not in str(error.value)
