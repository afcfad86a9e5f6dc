"""The experiment suites: which configurations each one measures, and on what budget.

A :class:`RunConfig` is one measurement: a target model trained with some defence, the
noise on its wire at inference, and an attacker with some auxiliary data. Suites are
lists of configurations; a configuration shared by several suites (the undefended model
is in all of them) is run once and reported in each. Example::

    from dpsnn.experiments.suites import FULL, suite_configs

    configs = suite_configs("noise", "fashion-mnist", FULL)
    [c.noise_scale for c in configs]      # 0, 0.1, 0.2, 0.5, 1 (extensions follow at run time)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from dpsnn.checkpoints import format_number
from dpsnn.errors import ConfigError

# The grids the issue asks for; ``*_EXTENSION`` values are added, one at a time, while
# the accuracy at the largest value tried has not yet collapsed.
NOISE_SCALES = (0.0, 0.1, 0.2, 0.5, 1.0)
NOISE_EXTENSION = (3.0, 10.0, 30.0, 100.0)
NOPEEK_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
NOPEEK_EXTENSION = (3.0, 10.0, 30.0, 100.0)
POST_NOISE_SCALES = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
AUX_SIZES = (100, 500, 1250, 2500, 5000)
# Accuracy "collapses" when it keeps less than this share of the way from chance to the
# undefended model's accuracy.
COLLAPSE_SHARE = 0.5

SUITES = ("plain", "noise", "nopeek", "combo", "post-noise", "data-volume", "aux-shift")
ALL = "all"
# The other dataset an aux-shift attacker may draw from, when it is on this machine.
OTHER_DATASET = {"fashion-mnist": "mnist", "mnist": "fashion-mnist", "emnist-letters": "mnist"}


@dataclass(frozen=True)
class Budget:
    """How long every model and attacker of a suite trains, and on how much data.

    The attacker trains for a number of optimiser steps, not epochs, so that attackers
    with 100 and with 5,000 auxiliary images get the same optimisation.
    """

    name: str
    train_size: int | None  # images of the target train split (None: all)
    model_epochs: int
    attack_steps: int
    aux_size: int  # the default attacker's auxiliary images
    test_size: int | None  # images of the test split everything is scored on (None: all)
    validator_epochs: int
    validator_train_size: int | None
    val_size: int = 5000  # target validation images (the best epoch is kept)
    batch_size: int = 128
    learning_rate: float = 1e-3
    noise_extension: tuple[float, ...] = NOISE_EXTENSION
    nopeek_extension: tuple[float, ...] = NOPEEK_EXTENSION
    aux_sizes: tuple[int, ...] = AUX_SIZES
    post_noise_scales: tuple[float, ...] = POST_NOISE_SCALES
    noise_scales: tuple[float, ...] = NOISE_SCALES
    nopeek_weights: tuple[float, ...] = NOPEEK_WEIGHTS


FULL = Budget(
    name="full",
    train_size=20000,
    val_size=2000,
    model_epochs=3,
    attack_steps=500,
    aux_size=5000,
    test_size=None,
    validator_epochs=3,
    validator_train_size=None,
)
QUICK = Budget(
    name="quick",
    train_size=2000,
    model_epochs=2,
    attack_steps=60,
    aux_size=1000,
    test_size=1000,
    validator_epochs=1,
    validator_train_size=5000,
    noise_extension=(2.0,),
    nopeek_extension=(2.0,),
    aux_sizes=(100, 1000),
    post_noise_scales=(0.0, 0.5),
    noise_scales=(0.0, 0.5),
    nopeek_weights=(0.0, 0.5),
)


@dataclass(frozen=True)
class RunConfig:
    """One measurement: a target model, the noise on its wire, and an attacker.

    ``aux_source`` is ``"same"`` (the target dataset's auxiliary split),
    ``"other-classes"`` (its images of the classes the attacker is not scored on) or
    another dataset's name. ``test_classes`` is ``"all"`` or ``"lower-half"`` (the first
    half of the classes: the ones an ``other-classes`` attacker never saw).
    """

    dataset: str
    seed: int
    noise_scale: float  # the noise the model was trained with
    nopeek_weight: float
    wire_noise: float  # the noise on the wire when it is attacked and scored
    aux_source: str = "same"
    aux_size: int = 5000
    test_classes: str = "all"

    @property
    def model_key(self) -> str:
        """The trained model this configuration needs (shared by every attack on it)."""
        return (
            f"{self.dataset}_seed{self.seed}_{format_number(self.noise_scale)}noise_"
            f"{format_number(self.nopeek_weight)}nopeek"
        )

    @property
    def key(self) -> str:
        """A unique, file-name-safe name of this measurement."""
        return (
            f"{self.model_key}_{format_number(self.wire_noise)}wire_{self.aux_source}{self.aux_size}aux_"
            f"{self.test_classes}test"
        )

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def customised(budget: Budget, **overrides: Any) -> Budget:
    """``budget`` with some sizes changed; its name records them, so its models are cached apart."""
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if not overrides:
        return budget
    unknown = set(overrides) - set(Budget.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown budget field(s): {', '.join(sorted(unknown))}")
    tag = "-".join(f"{name.replace('_', '')}{value}" for name, value in sorted(overrides.items()))
    return replace(budget, name=f"{budget.name}-{tag}", **overrides)


def _model(dataset: str, seed: int, budget: Budget, noise: float, nopeek: float) -> RunConfig:
    return RunConfig(dataset, seed, noise, nopeek, noise, aux_size=budget.aux_size)


def suite_configs(
    suite: str, dataset: str, budget: Budget, seed: int = 0, other_dataset: str | None = None
) -> list[RunConfig]:
    """The fixed configurations of ``suite`` for one seed (extensions come at run time).

    ``other_dataset``: a second dataset present on this machine, for ``aux-shift``.
    """
    base = _model(dataset, seed, budget, 0.0, 0.0)
    if suite == "plain":
        return [base]
    if suite == "noise":
        return [_model(dataset, seed, budget, s, 0.0) for s in budget.noise_scales]
    if suite == "nopeek":
        return [_model(dataset, seed, budget, 0.0, w) for w in budget.nopeek_weights]
    if suite == "combo":
        return [_model(dataset, seed, budget, s, w) for s in budget.noise_scales for w in budget.nopeek_weights]
    if suite == "post-noise":
        return [replace(base, wire_noise=s) for s in budget.post_noise_scales]
    if suite == "data-volume":
        return [replace(base, aux_size=n) for n in budget.aux_sizes]
    if suite == "aux-shift":
        # Scored on the lower half of the classes; the shifted attacker knows only the upper half.
        half = budget.aux_size // 2
        sources = ["same", "other-classes"] + ([other_dataset] if other_dataset else [])
        return [replace(base, aux_source=s, aux_size=half, test_classes="lower-half") for s in sources]
    raise ConfigError(f"unknown suite '{suite}': choose from {', '.join((*SUITES, ALL))}")


def expand_suites(names: list[str] | tuple[str, ...]) -> list[str]:
    """The suites ``names`` asks for (``all`` is every one), each once, in :data:`SUITES` order."""
    for name in names:
        if name not in (*SUITES, ALL):
            raise ConfigError(f"unknown suite '{name}': choose from {', '.join((*SUITES, ALL))}")
    return [suite for suite in SUITES if suite in names or ALL in names]


def extension_configs(suite: str, dataset: str, budget: Budget, seed: int) -> list[RunConfig]:
    """The values tried, in order, after ``suite``'s grid while accuracy has not collapsed."""
    if suite == "noise":
        return [_model(dataset, seed, budget, s, 0.0) for s in budget.noise_extension]
    if suite == "nopeek":
        return [_model(dataset, seed, budget, 0.0, w) for w in budget.nopeek_extension]
    return []


def suites_of(config: RunConfig, budget: Budget) -> list[str]:
    """Every suite whose grid (extensions included) holds ``config``'s setting."""
    other = config.aux_source if config.aux_source not in ("same", "other-classes") else None
    member = []
    for suite in SUITES:
        candidates = suite_configs(suite, config.dataset, budget, config.seed, other_dataset=other)
        candidates += extension_configs(suite, config.dataset, budget, config.seed)
        if any(candidate == config for candidate in candidates):
            member.append(suite)
    return member


def collapsed(accuracy: float, undefended_accuracy: float, num_classes: int) -> bool:
    """Whether ``accuracy`` kept less than :data:`COLLAPSE_SHARE` of the way from chance to undefended."""
    chance = 1.0 / num_classes
    return accuracy - chance < COLLAPSE_SHARE * (undefended_accuracy - chance)
