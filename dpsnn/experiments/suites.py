"""The experiment suites: which configurations each one measures, and on what budget.

A :class:`RunConfig` is one measurement: a target model (architecture and the defence
specs it was trained with), the wire defences switched on after training if any, and an
attack spec with its auxiliary data. A :class:`Suite` is one entry of the registry
:data:`SUITES`: the configurations it measures for a dataset, budget and seed, the values
it tries while accuracy has not collapsed, what it varies, whether it belongs on the
privacy-utility frontier and the curves drawn against it. A configuration shared by
several suites (the undefended model is in six) is run once and reported in each.
Adding a suite is one :func:`register_suite` call; the runner, the run store, the
summaries and the report need no edit. Example::

    from dpsnn.experiments.suites import FULL, SUITES

    configs = SUITES["noise"].configs("fashion-mnist", FULL)
    [SUITES["noise"].values(c) for c in configs]   # (0.0,), (0.1,), (0.2,), (0.5,), (1.0,)
    configs[3].label()                             # 'noise 0.5'
    configs[3].key                                 # 'fashion-mnist_seed0_reference_05noise_decoder_same5000aux_alltest'
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dpsnn.architectures import canonical_architecture
from dpsnn.attacks.base import Attack, attack_from
from dpsnn.defences import Defence, canonical, check, defence_class, make_defence, normalise, parse_canonical
from dpsnn.defences import label as defences_label
from dpsnn.defences.base import param_of
from dpsnn.errors import ConfigError

# Accuracy "collapses" when it keeps less than this share of the way from chance to the
# undefended model's accuracy.
COLLAPSE_SHARE = 0.5
ALL = "all"
UNDEFENDED = "plain"  # the suite of the undefended model under the default attacker
DEFAULT_ATTACK = "decoder"
TEST_CLASSES = ("all", "lower-half")
# The other dataset an aux-shift attacker may draw from, when it is on this machine.
OTHER_DATASET = {"fashion-mnist": "mnist", "mnist": "fashion-mnist", "emnist-letters": "mnist"}
OWN_AUX_SOURCES = ("same", "other-classes")


@dataclass(frozen=True)
class Budget:
    """How long every model and attacker of a suite trains, and on how much data.

    The attacker trains for a number of optimiser steps, not epochs, so that attackers
    with 100 and with 5,000 auxiliary images get the same optimisation. ``grid`` names
    which of each suite's grids it runs (``full`` or ``quick``; a suite without that
    grid runs its full one).
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
    learning_rate: float = 1e-3  # Adam: every attacker's rate, and the target models' unless model_learning_rate
    model_lr_schedule: str = "constant"  # the target models': constant, or one-cycle (warm up, then anneal)
    model_learning_rate: float | None = None  # the target models' rate (one-cycle: its peak); None: learning_rate
    grid: str = "full"
    membership_candidates: int = 2000  # half from the target's training split, half from its test split

    @property
    def aux_split_size(self) -> int:
        """The auxiliary split's images: the most any suite's run asks for on this budget.

        That is ``best-of``'s: the default attacker's images plus the share it holds back to
        choose with, so that it fits its decoders on exactly the images the decoder runs
        beside it were fitted on, and reuses them (see :func:`best_of_aux_size`); or a
        ``data-volume`` value, when a customised budget's attacker has fewer images than the
        grid. A function of the budget alone, so every run of it trains on the same split.
        """
        asked = [self.aux_size, best_of_aux_size(self.aux_size, attack_from("best-of").holdout)]
        for suite in SUITES.values():
            configs = suite.configs("fashion-mnist", self, 0) + suite.extension_configs("fashion-mnist", self, 0)
            asked += [config.aux_size for config in configs]
        return max(asked)


# The converged budget: the whole train split (51,750 images beside the validation and the
# 6,250-image auxiliary split) for 4 epochs of a one-cycle schedule brings the undefended
# model within a point of a 10-epoch run (benchmarks/bench_budget.py).
FULL = Budget(
    name="full",
    train_size=None,
    val_size=2000,
    model_epochs=4,
    attack_steps=500,
    aux_size=5000,
    test_size=None,
    validator_epochs=3,
    validator_train_size=None,
    model_lr_schedule="one-cycle",
    model_learning_rate=3e-3,
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
    grid="quick",
    membership_candidates=400,
)


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


# -- one measurement ----------------------------------------------------------------------


def wire_of(defences: Iterable[Defence]) -> tuple[Defence, ...]:
    """The defences among ``defences`` that put a module on the wire (Laplace noise, not NoPeek)."""
    return tuple(d for d in defences if d.wire() is not None)


@dataclass(frozen=True)
class RunConfig:
    """One measurement: a target model, the wire it is attacked through, and an attack.

    ``defences`` are the specs the model is trained with (specs, their command-line or
    canonical strings, or plain dicts; zero strengths are dropped). ``inference_defences``
    are the wire defences switched on after training (the post-noise suite); it is None
    when the wire is the model's own. ``aux_source`` is ``"same"`` (the target dataset's
    auxiliary split), ``"other-classes"`` (its images of the classes the attacker is not
    scored on) or another dataset's name. ``test_classes`` is ``"all"`` or
    ``"lower-half"`` (the first half of the classes: the ones an ``other-classes``
    attacker never saw).
    """

    dataset: str
    seed: int
    defences: tuple[Defence, ...] = ()
    architecture: str = "reference"
    inference_defences: tuple[Defence, ...] | None = None
    attack: Attack = DEFAULT_ATTACK  # type: ignore[assignment]  # text or spec; a spec once built
    aux_source: str = "same"
    aux_size: int = 5000
    test_classes: str = "all"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("seed", int(self.seed))
        put("aux_size", int(self.aux_size))
        put("architecture", canonical_architecture(self.architecture))
        put("defences", check(normalise(self.defences)))
        if self.inference_defences is not None:
            wire = wire_of(check(normalise(self.inference_defences)))
            put("inference_defences", None if wire == wire_of(self.defences) else wire)
        put("attack", attack_from(self.attack))
        if self.test_classes not in TEST_CLASSES:
            raise ConfigError(f"unknown test classes '{self.test_classes}'; choose from {', '.join(TEST_CLASSES)}")
        if self.aux_size <= 0:
            raise ConfigError(f"the attacker's auxiliary size must be positive, got {self.aux_size}")

    @property
    def model_key(self) -> str:
        """The trained model this configuration needs (shared by every attack on it)."""
        defences = "_".join(d.key() for d in self.defences) or "none"
        return f"{self.dataset}_seed{self.seed}_{self.architecture.replace(':', '-')}_{defences}"

    @property
    def key(self) -> str:
        """A unique, file-name-safe name of this measurement."""
        wire = ""
        if self.inference_defences is not None:
            wire = "_wire-" + ("-".join(d.key() for d in self.inference_defences) or "none")
        return f"{self.model_key}{wire}_{self.attack.key()}_{self.aux_source}{self.aux_size}aux_{self.test_classes}test"

    @property
    def defended(self) -> bool:
        """Whether any defence is on: in training, or on the wire after training."""
        return bool(self.defences) or self.inference_defences is not None

    @property
    def other_dataset(self) -> str | None:
        """The dataset the attacker's images come from, when it is not the target's own."""
        return None if self.aux_source in OWN_AUX_SOURCES else self.aux_source

    def label(self) -> str:
        """``'noise 0.5 + NoPeek 0.25'``, ``'post-noise 1'``, ``'none'``: the specs' own labels."""
        parts = [defences_label(self.defences)] if self.defences else []
        if self.inference_defences is not None:
            after = [f"post-{d.label()}" for d in self.inference_defences]
            parts += after or ["no wire defence after training"]
        return " + ".join(parts) or "none"

    def params(self) -> dict[str, Any]:
        """The rest of the setting, as plain data (the ``params`` column of ``runs.csv``)."""
        params: dict[str, Any] = {
            "aux_source": self.aux_source,
            "aux_size": self.aux_size,
            "test_classes": self.test_classes,
        }
        if self.inference_defences is not None:
            params["inference_defences"] = canonical(self.inference_defences)
        return params

    def as_row(self) -> dict[str, Any]:
        """The configuration's columns of ``runs.csv``: plain text and numbers."""
        return {
            "dataset": self.dataset,
            "seed": self.seed,
            "architecture": self.architecture,
            "defences": canonical(self.defences),
            "attack": self.attack.spec(),
            "params": json.dumps(self.params(), sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], seed: int | None = None) -> RunConfig:
        """The configuration of a ``runs.csv`` or summary row (``seed`` overrides the row's)."""
        params = json.loads(row["params"]) if isinstance(row["params"], str) else dict(row["params"])
        if not isinstance(params, dict):
            raise ConfigError(f"the params of a run must be a JSON object, got {row['params']!r}")
        inference = params.pop("inference_defences", None)
        return cls(
            dataset=row["dataset"],
            seed=row["seed"] if seed is None else seed,
            defences=parse_canonical(row["defences"]),
            architecture=row["architecture"],
            inference_defences=None if inference is None else parse_canonical(inference),
            attack=row["attack"],
            **params,
        )


def setting_label(config: RunConfig, default: RunConfig | None = None) -> str:
    """The label of ``config``'s setting; where its attacker differs from ``default``'s, that too.

    ``'noise 0.5'``, ``'none; 100 aux images'``, ``'none; aux other-classes, scored on lower-half classes'``.
    """
    text = config.label()
    if default is None:
        return text
    if config.attack != default.attack:
        text += f"; attack {config.attack.label()}"
    if (config.aux_source, config.test_classes) != (default.aux_source, default.test_classes):
        text += f"; aux {config.aux_source}, scored on {config.test_classes} classes"
    elif config.aux_size != default.aux_size:
        text += f"; {config.aux_size} aux images"
    return text


# -- the suite registry -------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a suite's configurations depend on besides the value it varies."""

    dataset: str
    budget: Budget
    seed: int = 0
    other_dataset: str | None = None  # a second dataset on this machine, for aux-shift

    def undefended(self) -> RunConfig:
        """The undefended model under the default attacker."""
        return undefended_config(self.dataset, self.budget, self.seed)


def undefended_config(dataset: str, budget: Budget, seed: int = 0) -> RunConfig:
    """The undefended model of ``dataset`` under the budget's default attacker."""
    return RunConfig(dataset, seed, aux_size=budget.aux_size)


#: When a grid stops growing: accuracy has ``collapsed`` (:func:`collapsed`), or has lost more than
#: :data:`ONE_POINT` against the undefended model (``one-point``: the sweep the defences aimed at the
#: label-only floor need, up to the first strength that costs more than a point).
STOP_RULES = ("collapse", "one-point")
ONE_POINT = 0.01


@dataclass(frozen=True)
class Grid:
    """The values a suite measures; ``extension`` values follow, one at a time, until ``stop`` says so."""

    values: tuple[Any, ...]
    extension: tuple[Any, ...] = ()
    stop: str = "collapse"

    def __post_init__(self) -> None:
        if self.stop not in STOP_RULES:
            raise ConfigError(f"a grid stops growing on {' or '.join(STOP_RULES)}, got '{self.stop}'")

    def stops(self, accuracy: float, undefended_accuracy: float, num_classes: int) -> bool:
        """Whether a value that reached ``accuracy`` ends the extension (its rule against the undefended model)."""
        if self.stop == "one-point":
            return accuracy < undefended_accuracy - ONE_POINT
        return collapsed(accuracy, undefended_accuracy, num_classes)


@dataclass(frozen=True)
class Axis:
    """One thing a suite varies: its column in the tables, its axis label, and its value in a configuration."""

    column: str
    label: str
    value: Callable[[RunConfig], Any]
    log: bool = False  # a symlog axis in the curves

    def text(self, value: Any) -> str:
        """``'noise scale 0.5'``: the column and the value, for figure rows."""
        return f"{self.column.replace('_', ' ')} {value:g}" if isinstance(value, float | int) else str(value)


# A panel of curves: (y label, [(column, legend label), ...]).
Panel = tuple[str, tuple[tuple[str, str], ...]]
ACCURACY_PANEL: Panel = ("test accuracy", (("accuracy", "test accuracy"),))
LEAK_PANEL: Panel = ("dCor(x, what the server sees)", (("dcor", "dCor(x, h̃)"),))
SSIM_PANEL: Panel = ("SSIM to the original", (("attack_ssim", "attack"), ("baseline_ssim", "label-only baseline")))
VALIDATOR_PANEL: Panel = (
    "Validator accuracy",
    (("attack_validator_acc", "on the attack"), ("baseline_validator_acc", "on the baseline")),
)


@dataclass(frozen=True)
class Suite:
    """One suite: a name, the settings it measures, what it varies, and how it is shown.

    ``setting(context, value)`` is the configuration at one value of the grid (None
    leaves the value out, e.g. a dataset not on the machine). ``grids`` maps a budget's
    ``grid`` name to its :class:`Grid` (``"full"`` is the fallback). ``axes`` are what it
    varies, in sort order; the first is the x axis of its ``curves``. ``frontier``: its
    settings trade accuracy for privacy and are drawn on the privacy-utility frontier,
    grouped under ``title``.
    """

    name: str
    description: str
    title: str
    setting: Callable[[Context, Any], RunConfig | None]
    grids: Mapping[str, Grid] = field(hash=False)
    axes: tuple[Axis, ...] = ()
    frontier: bool = False
    curves: tuple[Panel, ...] = ()

    def grid(self, budget: Budget) -> Grid:
        """The grid this suite runs on ``budget``."""
        return self.grids.get(budget.grid, self.grids["full"])

    def _configs(self, values: Sequence[Any], context: Context) -> list[RunConfig]:
        configs = [self.setting(context, value) for value in values]
        return [config for config in configs if config is not None]

    def configs(self, dataset: str, budget: Budget, seed: int = 0, other_dataset: str | None = None) -> list[RunConfig]:
        """The fixed configurations for one seed (extensions come at run time)."""
        return self._configs(self.grid(budget).values, Context(dataset, budget, seed, other_dataset))

    def extension_configs(
        self, dataset: str, budget: Budget, seed: int = 0, other_dataset: str | None = None
    ) -> list[RunConfig]:
        """The configurations tried, in order, after the grid while accuracy has not collapsed."""
        return self._configs(self.grid(budget).extension, Context(dataset, budget, seed, other_dataset))

    def holds(self, config: RunConfig, budget: Budget) -> bool:
        """Whether ``config`` is one of this suite's settings (extensions included) on ``budget``."""
        return config in _settings_of(self, config.dataset, budget, config.seed, config.other_dataset)

    def values(self, config: RunConfig) -> tuple[Any, ...]:
        """What this suite varies, read off ``config`` (one value per axis)."""
        return tuple(axis.value(config) for axis in self.axes)


@functools.lru_cache(maxsize=256)
def _settings_of(suite: Suite, dataset: str, budget: Budget, seed: int, other: str | None) -> frozenset[RunConfig]:
    """Every configuration of ``suite`` (extensions included), built once per dataset, budget and seed."""
    return frozenset(
        suite.configs(dataset, budget, seed, other) + suite.extension_configs(dataset, budget, seed, other)
    )


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Add ``suite`` to :data:`SUITES` (in order: tables, reports and ``all`` follow it)."""
    if suite.name in SUITES or suite.name == ALL:
        raise ValueError(f"a suite named {suite.name!r} is already registered")
    if "full" not in suite.grids:
        raise ValueError(f"suite {suite.name!r} needs a 'full' grid")
    SUITES[suite.name] = suite
    return suite


def expand_suites(names: Iterable[str]) -> list[str]:
    """The suites ``names`` asks for (``all`` is every one), each once, in registry order."""
    names = list(names)
    for name in names:
        if name not in (*SUITES, ALL):
            raise ConfigError(f"unknown suite '{name}': choose from {', '.join((*SUITES, ALL))}")
    return [suite for suite in SUITES if suite in names or ALL in names]


def suite_configs(
    suite: str, dataset: str, budget: Budget, seed: int = 0, other_dataset: str | None = None
) -> list[RunConfig]:
    """The fixed configurations of the suite named ``suite`` (see :meth:`Suite.configs`)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite '{suite}': choose from {', '.join(SUITES)}")
    return SUITES[suite].configs(dataset, budget, seed, other_dataset)


def suites_of(config: RunConfig, budget: Budget) -> list[str]:
    """Every suite whose grid (extensions included) holds ``config``'s setting."""
    return [name for name, suite in SUITES.items() if suite.holds(config, budget)]


def collapsed(accuracy: float, undefended_accuracy: float, num_classes: int) -> bool:
    """Whether ``accuracy`` kept less than :data:`COLLAPSE_SHARE` of the way from chance to undefended."""
    chance = 1.0 / num_classes
    return accuracy - chance < COLLAPSE_SHARE * (undefended_accuracy - chance)


# -- building blocks of suite entries -------------------------------------------------------


def defence_param(name: str, param: str | None = None) -> Callable[[RunConfig], Any]:
    """A function reading defence ``name``'s ``param`` (its strength by default) off the trained model; 0 when off."""

    def value(config: RunConfig) -> Any:
        return param_of(config.defences, name, param)

    return value


def wire_param(name: str, param: str | None = None) -> Callable[[RunConfig], Any]:
    """Like :func:`defence_param`, for the wire the model is attacked through (after training)."""

    def value(config: RunConfig) -> Any:
        wire = config.inference_defences if config.inference_defences is not None else wire_of(config.defences)
        return param_of(wire, name, param)

    return value


def trained_with(*names: str) -> Callable[[Context, Any], RunConfig]:
    """A suite's setting: the undefended configuration trained with defences ``names`` at the grid's strengths.

    With one name a grid value is that defence's strength; with several it is a tuple
    of strengths, one per name.
    """

    def setting(context: Context, value: Any) -> RunConfig:
        strengths = value if len(names) > 1 else (value,)
        defences = [_at_strength(name, strength) for name, strength in zip(names, strengths, strict=True)]
        return replace(context.undefended(), defences=tuple(defences))

    return setting


def switched_on_after_training(name: str) -> Callable[[Context, Any], RunConfig]:
    """A suite's setting: the undefended model with wire defence ``name`` at the grid's strength at inference."""

    def setting(context: Context, value: Any) -> RunConfig:
        return replace(context.undefended(), inference_defences=(_at_strength(name, value),))

    return setting


def _at_strength(name: str, strength: Any) -> Defence:
    parameter = defence_class(name).strength
    if parameter is None:
        raise ConfigError(f"defence '{name}' has no strength parameter to sweep")
    return make_defence(name, {parameter: strength})


def _undefended(context: Context, value: Any) -> RunConfig:
    return context.undefended()


def _aux_volume(context: Context, size: int) -> RunConfig:
    return replace(context.undefended(), aux_size=size)


OTHER = "other-dataset"  # aux-shift's value for the second dataset, when one is on the machine


def _aux_shift(context: Context, source: str) -> RunConfig | None:
    # Scored on the lower half of the classes; the shifted attacker knows only the upper half.
    if source == OTHER:
        if context.other_dataset is None:
            return None
        source = context.other_dataset
    half = context.budget.aux_size // 2
    return replace(context.undefended(), aux_source=source, aux_size=half, test_classes="lower-half")


NOISE_SCALES = (0.0, 0.1, 0.2, 0.5, 1.0)
NOPEEK_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
NOISE_AXIS = Axis(
    "noise_scale", "Laplace scale b (trained and attacked with it)", defence_param("laplace", "scale"), log=True
)
NOPEEK_AXIS = Axis("nopeek_weight", "NoPeek weight w", defence_param("nopeek", "weight"), log=True)

register_suite(Suite("plain", "nothing: the undefended model", "undefended", _undefended, {"full": Grid((None,))}))
register_suite(
    Suite(
        "noise",
        "Laplace noise on the wire, trained with and attacked through",
        "Laplacian noise",
        trained_with("laplace"),
        {
            "full": Grid(NOISE_SCALES, extension=(3.0, 10.0, 30.0, 100.0)),
            "quick": Grid((0.0, 0.5), extension=(2.0,)),
        },
        axes=(NOISE_AXIS,),
        frontier=True,
        curves=(ACCURACY_PANEL, SSIM_PANEL),
    )
)
register_suite(
    Suite(
        "nopeek",
        "NoPeek's w · dCor(x, h) added to the client's loss",
        "NoPeek",
        trained_with("nopeek"),
        {
            "full": Grid(NOPEEK_WEIGHTS, extension=(3.0, 10.0, 30.0, 100.0)),
            "quick": Grid((0.0, 0.5), extension=(2.0,)),
        },
        axes=(NOPEEK_AXIS,),
        frontier=True,
        curves=(ACCURACY_PANEL, SSIM_PANEL),
    )
)
register_suite(
    Suite(
        "combo",
        "every pair of a noise scale and a NoPeek weight",
        "noise + NoPeek",
        trained_with("laplace", "nopeek"),
        {
            "full": Grid(tuple((s, w) for s in NOISE_SCALES for w in NOPEEK_WEIGHTS)),
            "quick": Grid(tuple((s, w) for s in (0.0, 0.5) for w in (0.0, 0.5))),
        },
        axes=(NOISE_AXIS, NOPEEK_AXIS),
        frontier=True,
    )
)
register_suite(
    Suite(
        "post-noise",
        "a model trained without noise, Laplace noise switched on at inference only",
        "noise at inference only",
        switched_on_after_training("laplace"),
        {"full": Grid((0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)), "quick": Grid((0.0, 0.5))},
        axes=(Axis("wire_noise", "Laplace scale b, switched on after training", wire_param("laplace"), log=True),),
        frontier=True,
        curves=(ACCURACY_PANEL, SSIM_PANEL),
    )
)
register_suite(
    Suite(
        "data-volume",
        "the attacker's auxiliary images",
        "attacker's data volume",
        _aux_volume,
        {"full": Grid((100, 500, 1250, 2500, 5000)), "quick": Grid((100, 1000))},
        axes=(Axis("aux_size", "attacker's auxiliary images", lambda config: config.aux_size),),
        curves=(SSIM_PANEL, VALIDATOR_PANEL),
    )
)
register_suite(
    Suite(
        "aux-shift",
        "the attacker's data: all classes, the other half of the classes, or another dataset; "
        "scored on the first half of the classes",
        "attacker's data distribution",
        _aux_shift,
        {"full": Grid(("same", "other-classes", OTHER))},
        axes=(Axis("aux_source", "attacker's auxiliary data", lambda config: config.aux_source),),
    )
)


# -- differential privacy and suppress-privacy -------------------------------------------------

DP_EPSILONS = (math.inf, 10.0, 4.0, 1.0)
#: The dp-adaptive suite's budget, and its schedules' rates per epoch: over the full budget's
#: three epochs each decays σ to about half of σ₀ in the last.
ADAPTIVE_EPSILON = 4.0
DP_VARIANTS: dict[str, dict[str, Any]] = {
    "constant": {},
    "time-decay": {"decay": "time", "decay_rate": 0.5},
    "step-decay": {"decay": "step", "decay_rate": 0.3},
    "exp-decay": {"decay": "exp", "decay_rate": 0.35},
    "adaptive-clip": {"clipping": "adaptive", "target_quantile": 0.5},
}
SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)


def _dp_epsilon(config: RunConfig) -> float:
    """The target ε the model was trained to (∞ without DP-SGD)."""
    return next((d.epsilon for d in config.defences if d.name == "dp"), math.inf)


def _dp_variant(config: RunConfig) -> str:
    for defence in config.defences:
        if defence.name == "dp":
            params = defence.params()
            for name, changes in DP_VARIANTS.items():
                if changes and all(params[key] == value for key, value in changes.items()):
                    return name
            return "constant"
    return "none"


def _dp_adaptive(context: Context, variant: str) -> RunConfig:
    spec = make_defence("dp", {"epsilon": ADAPTIVE_EPSILON, **DP_VARIANTS[variant]})
    return replace(context.undefended(), defences=(spec,))


def _suppress(context: Context, sparse_end: float) -> RunConfig:
    """Suppress-privacy to ``sparse_end``, its schedule ending an epoch before training does (that epoch is kept)."""
    end_epoch = max(context.budget.model_epochs - 1, 1)
    spec = make_defence("suppress", {"sparse_end": sparse_end, "end_epoch": end_epoch, "mask_times": 10})
    return replace(context.undefended(), defences=(spec,))


register_suite(
    Suite(
        "dp",
        "DP-SGD (Opacus, ghost clipping, C = 1) on the client part, to a target ε at δ = 1/N rounded down",
        "DP-SGD on the client",
        trained_with("dp"),
        {"full": Grid(DP_EPSILONS), "quick": Grid((math.inf, 4.0))},
        axes=(Axis("target_epsilon", "target ε of the client's DP-SGD", _dp_epsilon),),
        frontier=True,
    )
)
register_suite(
    Suite(
        "dp-adaptive",
        f"DP-SGD at ε = {ADAPTIVE_EPSILON:g}: constant σ, MindArmour's three noise decays, adaptive clipping",
        "DP-SGD schedules",
        _dp_adaptive,
        {"full": Grid(tuple(DP_VARIANTS)), "quick": Grid(("constant", "exp-decay"))},
        axes=(Axis("dp_variant", "noise schedule or clipping", _dp_variant),),
        frontier=True,
    )
)
register_suite(
    Suite(
        "suppress",
        "suppress-privacy: the client's smallest weights zeroed on MindArmour's cubic schedule",
        "suppress-privacy",
        _suppress,
        {"full": Grid(SPARSITIES), "quick": Grid((0.0, 0.9))},
        axes=(Axis("sparse_end", "final sparsity of the client's layers", defence_param("suppress", "sparse_end")),),
        frontier=True,
        curves=(ACCURACY_PANEL, SSIM_PANEL),
    )
)


# -- the defences aimed at the label-only floor ------------------------------------------------------

#: Each such defence's setting in its suites (its strength is what the grid sweeps), and its sweep:
#: the fixed grid, then stronger values one at a time until accuracy has lost more than a point.
FLOOR_DEFENCES: dict[str, tuple[dict[str, Any], tuple[float, ...], tuple[float, ...]]] = {
    "class-collapse": ({"loss": "centre", "smoothing": 0.1}, (0.0, 0.3, 1.0, 3.0), (10.0, 30.0, 100.0)),
    # VIB's β: 1e-4 already cost 1.6 points at seed 0 of the converged budget, so the grid starts lower.
    "vib": ({}, (0.0, 1e-6, 1e-5, 1e-4), (1e-3, 1e-2)),
    "adversarial": ({}, (0.0, 0.3, 1.0, 3.0), (10.0, 30.0)),
}
#: The small Laplace noise each of them is also measured with: about no accuracy on its own.
FLOOR_NOISE = 0.1


def floor_defence(name: str, noise: float = 0.0) -> Callable[[Context, Any], RunConfig]:
    """A suite's setting: defence ``name`` (with its suite parameters) at the grid's strength, plus Laplace noise."""
    fixed, _, _ = FLOOR_DEFENCES[name]

    def setting(context: Context, strength: float) -> RunConfig:
        defences = [make_defence(name, {**fixed, defence_class(name).strength: strength})]
        if noise:
            defences.append(make_defence("laplace", {"scale": noise}))
        return replace(context.undefended(), defences=tuple(defences))

    return setting


def _register_floor_suites(name: str) -> None:
    """Suites ``name`` and ``name+noise``: its strength swept until accuracy has lost more than a point."""
    fixed, values, extension = FLOOR_DEFENCES[name]
    strength = defence_class(name).strength
    axis = Axis(f"{name.replace('-', '_')}_{strength}", f"{name} {strength}", defence_param(name), log=True)
    grids = {
        "full": Grid(values, extension=extension, stop="one-point"),
        "quick": Grid((values[0], values[2]), extension=(extension[0],), stop="one-point"),
    }
    settings = "".join(f"{key} {value}; " for key, value in fixed.items())
    for noise in (0.0, FLOOR_NOISE):
        register_suite(
            Suite(
                f"{name}+noise" if noise else name,
                f"{name} ({settings}{strength} swept until accuracy has lost more than a point)"
                + (f", with Laplace noise {noise:g} on the wire" if noise else ""),
                f"{name} + noise {noise:g}" if noise else name,
                floor_defence(name, noise),
                grids,
                axes=(axis,),
                frontier=True,
                curves=(ACCURACY_PANEL, SSIM_PANEL),
            )
        )


for _floor_defence in FLOOR_DEFENCES:
    _register_floor_suites(_floor_defence)


# -- every defence against every attack ---------------------------------------------------------

#: The defended settings the attacks suite measures, by label: each is a point of another suite
#: (so its trained model and its ``decoder`` run are shared with it), built for a context.
ATTACKED_SETTINGS: dict[str, Callable[[Context], RunConfig]] = {
    "none": lambda context: context.undefended(),
    "noise 3": lambda context: trained_with("laplace")(context, 3.0),
    "NoPeek 1": lambda context: trained_with("nopeek")(context, 1.0),
    "noise 0.5 + NoPeek 0.5": lambda context: trained_with("laplace", "nopeek")(context, (0.5, 0.5)),
    **{
        f"DP-SGD ε {epsilon:g}": (lambda context, epsilon=epsilon: trained_with("dp")(context, epsilon))
        for epsilon in DP_EPSILONS
        if math.isfinite(epsilon)
    },
    **{
        f"suppress {sparsity:g}": (lambda context, sparsity=sparsity: _suppress(context, sparsity))
        for sparsity in SPARSITIES
        if sparsity
    },
    "class-collapse 3": lambda context: floor_defence("class-collapse")(context, 3.0),
    "class-collapse 10": lambda context: floor_defence("class-collapse")(context, 10.0),
    "adversarial 0.3": lambda context: floor_defence("adversarial")(context, 0.3),
}
#: Every inversion attack; ``best-of`` chooses among the four decoders (see :func:`_attacked`).
INVERSION_ATTACKS = ("decoder", "decoder-large", "decoder-ssim", "decoder-label", "best-of", "whitebox")
#: Every membership attack: the threshold attacks need no shadows for their ROC; the four trained
#: attack models share one set of shadows per target; LiRA trains its own (online).
MEMBERSHIP_ATTACKS = (
    *(f"membership-threshold(signal={signal})" for signal in ("loss", "confidence", "entropy")),
    *(f"membership-classifier(model={model})" for model in ("logistic", "knn", "mlp", "forest")),
    "lira",
)
#: The quick grid: two settings, and shadow attacks with few, short-trained shadows.
QUICK_ATTACKED_SETTINGS = ("none", "noise 3")
QUICK_ATTACKS = (
    *INVERSION_ATTACKS,
    "membership-threshold(signal=loss)",
    "membership-classifier(model=logistic,shadow_models=2,epochs=1)",
    "lira(shadow_models=2,epochs=1)",
)


def attack_column(attack: Attack) -> str:
    """A short name for ``attack`` in the attacks suite's tables: ``decoder-ssim``, ``threshold (loss)``, ``LiRA``."""
    params = attack.params()
    if attack.name == "membership-threshold":
        return f"threshold ({params['signal']})"
    if attack.name == "membership-classifier":
        return f"{params['model']} on shadows"
    if attack.name == "lira":
        return f"LiRA {params['mode']}"
    return attack.name


def best_of_aux_size(aux_size: int, holdout: float) -> int:
    """The auxiliary images ``best-of`` is given so that it fits its decoders on exactly ``aux_size`` of them."""
    return math.ceil(aux_size / (1 - holdout))


def _attacked(context: Context, value: tuple[str, str]) -> RunConfig:
    """Setting ``value[0]`` under attack ``value[1]``.

    ``best-of`` gets its decoders' auxiliary images plus its held-out share: its decoders are
    then fitted on the very images the four decoder runs beside it were, and the runner
    reuses them instead of fitting them again (see :meth:`ExperimentRunner.measure`).
    """
    setting, attack = value
    config = replace(ATTACKED_SETTINGS[setting](context), attack=attack)
    if config.attack.name == "best-of":
        config = replace(config, aux_size=best_of_aux_size(config.aux_size, config.attack.holdout))
    return config


register_suite(
    Suite(
        "attacks",
        "every inversion and membership attack against a setting of every defence: each defence is judged by "
        "its strongest attack",
        "defences against every attack",
        _attacked,
        {
            "full": Grid(tuple((s, a) for s in ATTACKED_SETTINGS for a in INVERSION_ATTACKS + MEMBERSHIP_ATTACKS)),
            "quick": Grid(tuple((s, a) for s in QUICK_ATTACKED_SETTINGS for a in QUICK_ATTACKS)),
        },
        axes=(
            Axis("defence_setting", "defence", lambda config: config.label()),
            Axis("attack_name", "attack", lambda config: attack_column(config.attack)),
        ),
    )
)
