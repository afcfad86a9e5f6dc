"""The defence seam: a spec per defence, a registry by name, and the combinations that cannot hold.

A defence is a small frozen dataclass (its *spec*): its fields are its parameters,
checked in ``__post_init__``, and it is registered under a name with
:func:`register_defence`. The split network asks each spec for the hooks it needs:

===============================  ================================================
hook                             used by
===============================  ================================================
``wire()``                       a module on the wire, in training and inference (it may
                                 learn, with ``build(shape)`` and ``loss_terms()``: vib)
``loss_terms(x, h, logits, y)``  terms added to the client's loss (NoPeek)
``companion()``                  state trained beside the model, never saved (a proxy attacker)
``wrap(part, optimizer, loader)``    optimiser and data wrappers (DP-SGD)
``check_parts(parts)``           refuse a model the defence cannot work on
``callbacks()``                  Lightning callbacks (pruning schedules)
``measures(model)``              numbers for the results (ε spent, sparsity)
``key()``, ``label()``           file names; tables and legends
===============================  ================================================

Everything a checkpoint or a results row stores about a defence is plain data:
``{"name": "laplace", "params": {"scale": 0.5}}`` or the canonical string
``laplace(scale=0.5)+nopeek(weight=0.1)``. Adding a defence is one file that defines
a spec and registers it. Example::

    from dpsnn.defences import canonical, parse_defence, validate

    defences = [parse_defence("laplace:scale=0.5"), parse_defence("nopeek:weight=0.1")]
    canonical(defences)            # 'laplace(scale=0.5)+nopeek(weight=0.1)'
    validate(defences)             # [] : nothing refuses this combination
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, get_type_hints

from torch import Tensor, nn

from dpsnn.errors import ConfigError


def format_number(value: float) -> str:
    """The file-name form of a number: ``0.5 -> '05'``, ``1.0 -> '1'``, ``0.25 -> '025'``."""
    return f"{value:g}".replace(".", "")


def check_non_negative(value: Any, what: str) -> float:
    """``value`` as a float, or :class:`ConfigError` if it is negative, not finite or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a non-negative number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ConfigError(f"{what} must be a non-negative number, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class Defence:
    """Base of every defence spec. Subclasses are frozen dataclasses registered by name.

    ``strength`` names the parameter that sets how strong the defence is; at 0 the
    defence must change nothing (the conformance tests check it). ``couples_samples``
    says that a loss term depends on several samples of a batch at once (NoPeek's dCor),
    and ``per_sample`` that the defence needs per-sample gradients (DP-SGD): the two
    cannot hold together (:func:`validate`) unless the per-sample defence says it
    :meth:`tolerates_coupling`. ``off_value`` is the strength at which the defence is off
    (0 for most; ∞ for a target ε). ``excludes`` names defences it cannot train beside.
    """

    name: ClassVar[str] = ""
    strength: ClassVar[str | None] = None
    off_value: ClassVar[float] = 0.0
    couples_samples: ClassVar[bool] = False
    per_sample: ClassVar[bool] = False
    excludes: ClassVar[tuple[str, ...]] = ()

    # -- hooks ------------------------------------------------------------------------

    def wire(self) -> nn.Module | None:
        """A module applied to what crosses the wire (train and inference alike), or None.

        A wire with weights of its own may define ``build(intermediate_shape)``, which the
        split network calls with its client's output shape before training, and
        ``loss_terms()``, the terms its last training forward pass adds to the loss (vib's KL).
        """
        return None

    def loss_terms(self, x: Tensor, h: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Named terms added to the training loss; ``h`` is the client's output before the wire."""
        return {}

    def companion(self) -> Any:
        """An object the split network keeps beside its parts for this defence, or None (the default).

        It is built with ``build(intermediate_shape, input_shape, num_classes)`` and asked for
        ``loss_terms(x, h, y)`` at every training step; it is not a submodule, so nothing of
        it is optimised with the model or saved in a checkpoint (the adversarial defence's
        proxy attacker).
        """
        return None

    def needs_logits(self) -> bool:
        """Whether :meth:`loss_terms` reads the server's ``logits`` (a client alone, across two parties, has none)."""
        return False

    def wrap(self, part: nn.Module, optimizer: Any, loader: Any, epochs: int | None = None) -> tuple[Any, Any]:
        """Return the optimiser and loader to train with (the identity unless the defence wraps them).

        ``part`` is the module the defence protects (:meth:`wrapped_part`: the client by
        default), ``optimizer`` trains the whole split network, and ``epochs`` is the
        planned length of training (None when it is not known).
        """
        return optimizer, loader

    def wrapped_part(self) -> str:
        """Which part :meth:`wrap` is given: ``"client"`` (default) or ``"model"`` (client and server)."""
        return "client"

    def check_parts(self, parts: Mapping[str, nn.Module]) -> None:
        """Raise :class:`ConfigError` if the defence cannot work on these parts (``client``, ``server``)."""

    def tolerates_coupling(self) -> bool:
        """Whether a per-sample defence was explicitly asked to train beside a loss that couples samples."""
        return False

    def callbacks(self) -> list[Any]:
        """Lightning callbacks the defence needs during training."""
        return []

    def measures(self, model: nn.Module) -> dict[str, float]:
        """Numbers about the trained model that belong in the results (plain floats)."""
        return {}

    # -- names ------------------------------------------------------------------------

    def key(self) -> str:
        """A short, file-name-safe name: ``05noise``. Subclasses may shorten it."""
        return self.name + "".join(f"-{k}{value_key(v)}" for k, v in self.params().items())

    def label(self) -> str:
        """How tables and legends name it: ``noise 0.5``."""
        params = ", ".join(f"{k} {value_text(v)}" for k, v in self.params().items())
        return f"{self.name} {params}" if params else self.name

    # -- plain data -------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The parameters as plain data, in field order."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    def spec(self) -> str:
        """The canonical text: ``laplace(scale=0.5)``."""
        return f"{self.name}(" + ",".join(f"{k}={value_text(v)}" for k, v in self.params().items()) + ")"

    def is_identity(self) -> bool:
        """Whether the defence is at its off strength (0 for most) and so changes nothing."""
        return self.strength is not None and getattr(self, self.strength) == self.off_value

    def off(self) -> Defence:
        """The same defence switched off (its strength at ``off_value``)."""
        return self.at_strength(self.off_value)

    def at_strength(self, value: float) -> Defence:
        """The same defence with its strength parameter set to ``value``."""
        if self.strength is None:
            raise ConfigError(f"defence '{self.name}' has no strength parameter")
        return dataclasses.replace(self, **{self.strength: value})


#: How text writes a parameter left to its automatic value (``None`` in the spec).
AUTO = "auto"


def value_text(value: Any) -> str:
    """A parameter's value as tables and canonical strings write it (``0.5``, ``1``, ``ssim``, ``auto``)."""
    if value is None:
        return AUTO
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_key(value: Any) -> str:
    """A parameter's value as file names write it (``05``, ``1``, ``ssim``, ``auto``)."""
    if value is None:
        return AUTO
    return format_number(value) if isinstance(value, float) else re.sub(r"[^A-Za-z0-9]+", "", str(value))


# -- registry ---------------------------------------------------------------------------

DEFENCES: dict[str, type[Defence]] = {}
D = TypeVar("D", bound=type[Defence])
T = TypeVar("T")


def spec_registrar(registry: dict[str, type], kind: str) -> Callable[[str], Callable[[T], T]]:
    """The class decorator factory of a seam whose specs are frozen dataclasses registered by name.

    ``spec_registrar(DEFENCES, "defence")("noise")`` registers a class in ``DEFENCES`` under
    ``noise`` and sets its ``name``; a second class under a taken name is refused.
    """
    article = "an" if kind[:1] in "aeiou" else "a"

    def register_as(name: str) -> Callable[[T], T]:
        def register(cls: T) -> T:
            if name in registry and registry[name] is not cls:
                raise ValueError(f"{article} {kind} named {name!r} is already registered ({registry[name].__name__})")
            if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
                raise TypeError(f"{cls.__name__} must be a frozen dataclass")
            cls.name = name
            registry[name] = cls
            return cls

        return register

    return register_as


def register_defence(name: str) -> Callable[[D], D]:
    """Class decorator: register a defence spec (a frozen dataclass) under ``name``."""
    return spec_registrar(DEFENCES, "defence")(name)


def registered_defences() -> dict[str, type[Defence]]:
    """Every defence, by name: each module of :mod:`dpsnn.defences` is imported (and so registers its own)."""
    import dpsnn.defences

    for module in pkgutil.iter_modules(dpsnn.defences.__path__):
        importlib.import_module(f"dpsnn.defences.{module.name}")
    return dict(DEFENCES)


def defence_class(name: str) -> type[Defence]:
    """The spec class registered as ``name``, or :class:`ConfigError` listing the known ones."""
    defences = DEFENCES if name in DEFENCES else registered_defences()
    if name not in defences:
        raise ConfigError(f"unknown defence '{name}'; choose from {', '.join(sorted(defences))}")
    return defences[name]


def _parameter_types(cls: type) -> dict[str, type]:
    hints = get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def make_defence(name: str, params: Mapping[str, Any] | None = None) -> Defence:
    """Build the spec ``name`` from its parameters (text values are converted to the field's type)."""
    return build_spec(defence_class(name), "defence", params)


def build_spec(cls: type[T], what: str, params: Mapping[str, Any] | None = None) -> T:
    """An instance of the spec dataclass ``cls`` from ``params``, text converted to each field's type.

    A parameter ``cls`` does not take, a value of the wrong type or a missing required
    parameter is a :class:`ConfigError` naming ``what`` (``"defence"``, ``"attack"``).
    """
    name = getattr(cls, "name", cls.__name__)
    types = _parameter_types(cls)
    params = dict(params or {})
    unknown = sorted(set(params) - set(types))
    if unknown:
        takes = ", ".join(types) or "no parameters"
        raise ConfigError(f"{what} '{name}' takes no parameter {', '.join(unknown)} (it takes {takes})")
    converted = {key: _convert(f"{what} '{name}'", key, value, types[key]) for key, value in params.items()}
    try:
        return cls(**converted)
    except TypeError as error:  # a required parameter is missing
        raise ConfigError(f"{what} '{name}': {error}") from None


def _convert(where: str, key: str, value: Any, kind: Any) -> Any:
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:  # ``float | None``: None is written ``auto``
        if isinstance(value, str) and value.strip().lower() in (AUTO, "none"):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be {kind.__name__}, got '{value}'") from None


_ARGUMENT = re.compile(r"^(?P<name>[a-z][\w-]*)(?::(?P<params>.*))?$")
_CANONICAL = re.compile(r"^(?P<name>[a-z][\w-]*)\((?P<params>[^()]*)\)$")


def _pairs(text: str, whole: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"malformed '{whole}': expected key=value, got '{item}'")
        if key.strip() in pairs:
            raise ConfigError(f"malformed '{whole}': '{key.strip()}' given twice")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_spec_text(text: str, what: str = "defence") -> tuple[str, dict[str, str]]:
    """``NAME:key=value,...`` (the command line's form) or ``NAME(key=value,...)`` (the canonical form)."""
    text = text.strip()
    match = _CANONICAL.match(text) or _ARGUMENT.match(text)
    if not match:
        raise ConfigError(f"malformed {what} '{text}': expected NAME:key=value,key=value")
    return match["name"], _pairs(match["params"] or "", text)


def parse_defence(text: str) -> Defence:
    """A spec from the command line's ``NAME:key=value,key=value`` (``laplace:scale=0.5``)."""
    return make_defence(*parse_spec_text(text))


def defence_from(value: Defence | str | Mapping[str, Any]) -> Defence:
    """A spec from a spec, a command-line or canonical string, or its plain-data dict."""
    if isinstance(value, Defence):
        return value
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(f"a defence needs a name, got {dict(value)!r}")
        return make_defence(value["name"], value.get("params"))
    if isinstance(value, str):
        return parse_defence(value)
    raise ConfigError(f"not a defence: {value!r}")


def normalise(defences: Iterable[Defence | str | Mapping[str, Any]]) -> tuple[Defence, ...]:
    """Specs in canonical order (by name), without those at zero strength."""
    specs = [defence_from(d) for d in defences]
    return tuple(sorted((d for d in specs if not d.is_identity()), key=lambda d: d.name))


def canonical(defences: Iterable[Defence | str | Mapping[str, Any]]) -> str:
    """``laplace(scale=0.5)+nopeek(weight=0.1)``, or ``none``: the same defences always give the same text."""
    return "+".join(d.spec() for d in normalise(defences)) or "none"


def parse_canonical(text: str) -> tuple[Defence, ...]:
    """The specs of a canonical string (``none`` is no defence)."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    return normalise(defence_from(part) for part in text.split("+"))


def param_of(defences: Iterable[Defence], name: str, param: str | None = None) -> Any:
    """The ``param`` (by default the strength) of the defence ``name`` among ``defences``; 0 when it is not there."""
    for defence in defences:
        if defence.name == name:
            if (param or defence.strength) is None:
                raise ConfigError(f"defence '{name}' has no strength parameter; name the parameter to read")
            return defence.params()[param or defence.strength]
    return 0.0


def label(defences: Iterable[Defence]) -> str:
    """``noise 0.5 + NoPeek 0.1``, or ``none``."""
    return " + ".join(d.label() for d in normalise(defences)) or "none"


def validate(defences: Sequence[Defence]) -> list[ConfigError]:
    """The reasons these defences cannot be combined (empty when they can)."""
    problems = []
    names = [d.name for d in defences]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(ConfigError(f"defence '{name}' is given more than once; give it once"))
    active = [d for d in defences if not d.is_identity()]
    for defence in active:
        for other in active:
            if other.name in defence.excludes:
                problems.append(ConfigError(f"defence '{defence.name}' cannot be trained together with '{other.name}'"))
    coupling = [d.name for d in active if d.couples_samples]
    per_sample = [d.name for d in active if d.per_sample and not d.tolerates_coupling()]
    if coupling and per_sample:
        problems.append(
            ConfigError(
                f"{', '.join(per_sample)} needs per-sample gradients, but {', '.join(coupling)} adds a loss that "
                "couples the samples of a batch: the result would not be differentially private "
                "(say allow_coupling=true to train it anyway, reported as not DP)"
            )
        )
    return problems


def check(defences: Sequence[Defence]) -> tuple[Defence, ...]:
    """``defences`` as a tuple, or the first :class:`ConfigError` of :func:`validate`."""
    problems = validate(defences)
    if problems:
        raise problems[0]
    return tuple(defences)
