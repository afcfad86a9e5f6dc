"""DP-SGD with Opacus, on the client part of a split network or on the whole model, with a privacy monitor.

What is protected. With ``part="client"`` (the default) the data holder's weights are
trained by DP-SGD: each example's gradient with respect to the client's parameters is
clipped to ``max_grad_norm`` and Gaussian noise of ``noise_multiplier × max_grad_norm``
is added to their sum, on Poisson-sampled batches. The client's weights, and anything
computed from them alone, are then (ε, δ)-DP with respect to the client's training
examples. What is *not* protected: the server part is trained on the wire tensors and
labels with the plain optimiser (its updates are ordinary Adam steps on what it
receives), and every tensor that crosses the wire is a deterministic function of one
private example. DP-SGD bounds what the *weights* say about the training set; it does
not hide an example from a server that sees that example's intermediate. With
``part="model"`` both parts are trained by DP-SGD, as an unsplit model would be.

Opacus does the per-sample gradients (``grad_sample_mode="hooks"``, in its non-wrapping
mode so that the client keeps its own state-dict layout), the Poisson sampling (its
``UniformWithReplacementSampler``), the clipping and noise (``DPOptimizer``, or
``AdaClipDPOptimizer`` for adaptive clipping) and the accounting (``rdp`` or ``prv``).
Written here: the split optimiser (DP-SGD on one part, the plain optimiser on the
other), MindArmour's three noise-decay schedules (σ set at the start of each epoch, t
counting epochs; the accountant records every step's σ, so ε is exact for the schedule.
MindArmour moves σ every step; with a new σ each step Opacus's RDP accountant spends
about 0.2 s per distinct σ, a minute and a half per epoch here), and the search for
the σ₀ of a decaying schedule that meets a target ε (Opacus's search assumes a constant σ).

Example::

    from dpsnn.training import train_classifier

    model, _ = train_classifier(splits, defences=["dp:epsilon=4"], max_epochs=5)
    model.hparams["privacy"]["epsilons"]   # ε after every epoch, all steps counted
    DPSGD(epsilon=4).measures(model)        # {'epsilon': 3.98, 'delta': 1e-05, ...}
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dpsnn.defences.base import Defence, check_non_negative, register_defence
from dpsnn.errors import ConfigError

__all__ = [
    "ACCOUNTANTS",
    "CLIPPING",
    "DECAYS",
    "DPSGD",
    "PrivateTraining",
    "SplitPrivateOptimizer",
    "default_delta",
    "epsilon_of",
    "make_private",
    "noise_at",
    "noise_for_epsilon",
]

ACCOUNTANTS = ("rdp", "prv")
CLIPPING = ("flat", "adaptive")
#: MindArmour's schedules for σ at step t: constant, Time σ₀/(1+rt), Step σ₀(1−r)^t, Exp σ₀e^(−rt).
DECAYS = ("constant", "time", "step", "exp")
PARTS = ("client", "model")
#: ``ghost``: Opacus's ghost clipping (per-sample gradient norms without per-sample gradients, then a
#: second, reweighted backward pass); ``hooks``: per-sample gradients materialised by Opacus's hooks.
GRAD_SAMPLE_MODES = ("ghost", "hooks")


def noise_at(decay: str, sigma0: float, rate: float, step: int) -> float:
    """σ at time ``step`` (from 0; DP-SGD counts it in epochs) of the schedule ``decay``."""
    if decay == "constant" or rate == 0:
        return sigma0
    if decay == "time":
        return sigma0 / (1 + rate * step)
    if decay == "step":
        return sigma0 * (1 - rate) ** step
    if decay == "exp":
        return sigma0 * math.exp(-rate * step)
    raise ConfigError(f"unknown noise decay {decay!r}; choose from {', '.join(DECAYS)}")


def default_delta(n: int | None) -> float:
    """δ for ``n`` training examples: 1/n rounded down to a power of ten, or 1e-5 when n is unknown."""
    if not n:
        return 1e-5
    return 10.0 ** math.floor(math.log10(1.0 / n))


def _accountant(kind: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(kind)


def _history(
    decay: str, sigma0: float, rate: float, sample_rate: float, steps: int, steps_per_epoch: int
) -> list[tuple[float, float, int]]:
    """The accountant's history of ``steps`` steps of the schedule (σ set per epoch), equal neighbours merged."""
    history: list[tuple[float, float, int]] = []
    for step in range(steps):
        sigma = noise_at(decay, sigma0, rate, step // steps_per_epoch)
        if history and history[-1][0] == sigma:
            history[-1] = (sigma, sample_rate, history[-1][2] + 1)
        else:
            history.append((sigma, sample_rate, 1))
    return history


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of an Opacus history ``[(σ, q, steps), ...]``, by Opacus's ``accountant``."""
    if not history:
        return 0.0
    counter = _accountant(accountant)
    counter.history = list(history)
    return float(counter.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=256)  # a pure function of its arguments; models trained alike ask for the same σ
def noise_for_epsilon(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    decay: str = "constant",
    rate: float = 0.0,
    steps_per_epoch: int = 1,
) -> float:
    """σ₀ whose schedule spends ``epsilon`` at ``delta`` in ``steps`` steps.

    A constant σ is Opacus's own search; a decaying one is found by bisection over σ₀
    with the accountant fed the whole schedule (to 1% of ε).
    """
    from opacus.accountants.utils import get_noise_multiplier

    if decay == "constant" or rate == 0:
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    low, high = 0.0, 10.0
    while epsilon_of(_history(decay, high, rate, sample_rate, steps, steps_per_epoch), delta, accountant) > epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ConfigError(f"no noise multiplier reaches ε = {epsilon:g} with this schedule")
    while True:
        middle = (low + high) / 2
        spent = epsilon_of(_history(decay, middle, rate, sample_rate, steps, steps_per_epoch), delta, accountant)
        if spent > epsilon:
            low = middle
        else:
            high = middle
            if spent > 0.99 * epsilon:
                return high


class SplitPrivateOptimizer(torch.optim.Optimizer):
    """DP-SGD (a ``DPOptimizer``) on one part of a model, the plain optimiser on the rest, stepped together."""

    def __init__(self, private: Any, public: torch.optim.Optimizer | None) -> None:
        # Deliberately no Optimizer.__init__: the param groups and state are those of the two optimisers.
        self.private, self.public = private, public
        self.defaults = private.defaults
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}
        self._optimizer_load_state_dict_pre_hooks: dict = {}
        self._optimizer_load_state_dict_post_hooks: dict = {}
        self._optimizer_state_dict_pre_hooks: dict = {}
        self._optimizer_state_dict_post_hooks: dict = {}
        self._zero_grad_profile_name = "Optimizer.zero_grad#SplitPrivateOptimizer.zero_grad"

    def _both(self) -> list[Any]:
        return [self.private] + ([self.public] if self.public is not None else [])

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return [group for optimizer in self._both() for group in optimizer.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        raise AttributeError("SplitPrivateOptimizer's param groups are those of its two optimisers")

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {key: value for optimizer in self._both() for key, value in optimizer.state.items()}

    @state.setter
    def state(self, value: dict) -> None:
        raise AttributeError("SplitPrivateOptimizer's state is that of its two optimisers")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self._both():
            optimizer.zero_grad(set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.private.step()
        if self.public is not None:
            self.public.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"private": self.private.state_dict(), "public": self.public.state_dict() if self.public else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.private.load_state_dict(state_dict["private"])
        if self.public is not None:
            self.public.load_state_dict(state_dict["public"])

    def __repr__(self) -> str:
        return f"SplitPrivateOptimizer(private={self.private!r}, public={self.public!r})"


@dataclass
class PrivateTraining:
    """One DP-SGD fit: Opacus's optimiser, hooks and accountant, and what the monitor records."""

    spec: DPSGD
    optimizer: Any  # the DPOptimizer of the private part
    hooks: Any
    accountant: Any
    delta: float
    sample_rate: float
    steps_per_epoch: int
    noise_multiplier: float  # σ₀
    steps: int = 0
    epsilons: list[float] | None = None
    adaptive: dict[str, float] | None = None  # adaptive clipping's settings, in ghost mode

    @property
    def ghost(self) -> bool:
        return self.spec.grad_sample == "ghost"

    def backward(self, per_sample_loss: torch.Tensor) -> None:
        """Ghost clipping's two passes (Opacus's recipe), the second one into the private part only.

        Pass 1 backpropagates the mean loss: every parameter gets its ordinary gradient and
        Opacus's hooks record each example's gradient norm for the private part. Pass 2
        backpropagates Σ cᵢ·lossᵢ (cᵢ = min(1, C/‖gᵢ‖)) into the private part alone, so its
        gradient is the clipped sum DP-SGD noises; the public part keeps pass 1's gradient.
        """
        from opacus.utils.adaptive_clipping.adaptive_clipping_utils import DPTensorFastGradientAdaptiveClipping

        with warnings.catch_warnings():  # the hooks on a first layer whose input needs no gradient: expected
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            per_sample_loss.mean().backward(retain_graph=True)
        self.optimizer.zero_grad()
        norms = self.hooks.get_norm_sample()
        if self.adaptive is not None:
            updater = DPTensorFastGradientAdaptiveClipping(
                self.hooks,
                self.optimizer,
                per_sample_loss,
                "mean",
                initial_noise_multiplier=float(self.optimizer.noise_multiplier),
                **self.adaptive,
            )
            bound, adjusted = updater._update_clip_and_noise(norms)
            self.hooks.max_grad_norm = self.optimizer.max_grad_norm = bound
            self.optimizer._adjusted_noise_multiplier = adjusted
        coefficients = (self.optimizer.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        self.hooks.disable_hooks()
        try:
            torch.autograd.backward((coefficients.detach() * per_sample_loss).sum(), inputs=self.optimizer.params)
        finally:
            self.hooks.enable_hooks()

    def after_step(self) -> None:
        """Count the step and set σ for the next one (the accountant has recorded this one's)."""
        self.steps += 1
        self.optimizer.noise_multiplier = noise_at(
            self.spec.decay, self.noise_multiplier, self.spec.decay_rate, self.steps // self.steps_per_epoch
        )

    def epsilon(self) -> float:
        """ε spent so far at the run's δ, every step counted."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.accountant.history else 0.0

    def record(self) -> dict[str, Any]:
        """Plain data for the checkpoint and the results."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": self.spec.accountant,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "final_noise_multiplier": float(self.accountant.history[-1][0])
            if self.accountant.history
            else self.noise_multiplier,
            "max_grad_norm": float(self.optimizer.max_grad_norm),
            "epsilons": list(self.epsilons or []),
            "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history],
            "part": self.spec.part,
        }

    def close(self) -> None:
        """Remove Opacus's hooks from the module (its weights and layout are untouched)."""
        if self.hooks is not None:
            self.hooks.cleanup()
            self.hooks = None
            for parameter in self.optimizer.params:  # Opacus's gradient-sized buffers
                parameter.summed_grad = None


def _batch_size(loader: Any) -> int:
    sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
    size = getattr(loader, "batch_size", None) or getattr(sampler, "batch_size", None)
    if not size:
        raise ConfigError("DP-SGD needs a DataLoader with a batch size (or a BatchSampler) to set the sampling rate")
    return int(size)


def poisson_loader(loader: DataLoader, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``loader``'s dataset drawn by Opacus's Poisson sampler, at rate batch size / N.

    Each example joins each batch independently; an epoch is N / batch size batches.
    Batches are drawn by indexing the dataset with a list (one tensor operation for a
    ``TensorDataset``).
    """
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    dataset = loader.dataset
    sample_rate = _batch_size(loader) / len(dataset)
    sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=sample_rate, generator=generator)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def _check_private(module: nn.Module, prefix: str = "") -> None:
    """:class:`ConfigError` naming the first layer Opacus cannot make private (``prefix.name``), and the fix.

    Opacus's own validators judge each trainable layer (its check that the module is in
    training mode is left out: that is a state, not a layer, and :func:`make_private` asks for it).
    """
    from opacus.validators import ModuleValidator

    for name, layer in module.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(layer))
        trainable = any(p.requires_grad for p in layer.parameters(recurse=False))
        errors = validator(layer) if validator is not None and trainable else []
        if not errors:
            continue
        reason = str(errors[0]).strip().splitlines()[0].split(". ")[0].rstrip(".")
        fix = (
            "replace it with GroupNorm (e.g. opacus.validators.ModuleValidator.fix(module))"
            if "BatchNorm" in reason
            else "replace it with a layer Opacus supports"
        )
        full = ".".join(filter(None, (prefix, name)))
        where = f"layer '{full}' ({type(layer).__name__})" if full else f"the model ({type(layer).__name__})"
        raise ConfigError(f"DP-SGD cannot make {where} private: {reason}; {fix}")


def make_private(
    spec: DPSGD, part: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int | None = None
) -> tuple[torch.optim.Optimizer, DataLoader, PrivateTraining]:
    """Train ``part``'s parameters by DP-SGD and the rest of ``optimizer``'s by ``optimizer``'s own rule.

    Works for any module: the client of a split network, both parts, or an unsplit model
    (pass the whole model and its optimiser). Returns the optimiser and the Poisson loader
    to train with, and the :class:`PrivateTraining` that accounts for them (also reachable
    as ``optimizer.privacy``).
    """
    from opacus import PrivacyEngine

    if not part.training:
        raise ConfigError(
            "DP-SGD trains the part it protects in training mode (Opacus records per-sample gradients only there): "
            "call model.train() before fitting"
        )
    _check_private(part)
    private_params = {id(p) for p in part.parameters() if p.requires_grad}
    every = [p for group in optimizer.param_groups for p in group["params"]]
    if not private_params or not private_params <= {id(p) for p in every}:
        raise ConfigError("DP-SGD: the optimiser does not train the parameters of the part it protects")
    rest = [p for p in every if id(p) not in private_params]
    mine = [p for p in every if id(p) in private_params]
    kind = type(optimizer)
    private_optimizer = kind(mine, **optimizer.defaults)
    public = kind(rest, **optimizer.defaults) if rest else None

    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    batches = poisson_loader(loader, generator)
    sample_rate = 1 / len(batches)
    steps = None if not epochs else epochs * len(batches)
    delta = spec.delta if spec.delta is not None else default_delta(len(loader.dataset))
    if spec.epsilon != math.inf:
        if steps is None:
            raise ConfigError("DP-SGD with a target ε needs the number of epochs it will train for")
        sigma0 = noise_for_epsilon(
            spec.epsilon, delta, sample_rate, steps, spec.accountant, spec.decay, spec.decay_rate, len(batches)
        )
    else:
        sigma0 = spec.noise_multiplier
    adaptive = {}
    if spec.clipping == "adaptive":
        expected = max(1, round(len(loader.dataset) * sample_rate))
        adaptive = {
            "target_unclipped_quantile": spec.target_quantile,
            "clipbound_learning_rate": spec.clip_learning_rate,
            "max_clipbound": 100.0 * spec.max_grad_norm,
            "min_clipbound": 1e-3 * spec.max_grad_norm,
            # Andrew et al.'s suggestion: the count's noise at a twentieth of the expected batch.
            "unclipped_num_std": max(expected / 20, 0.51 * sigma0 + 1e-6),
        }
    engine = PrivacyEngine(accountant=spec.accountant)
    ghost = spec.grad_sample == "ghost"
    made = engine.make_private(
        module=part,
        optimizer=private_optimizer,
        data_loader=batches,
        noise_multiplier=sigma0,
        max_grad_norm=spec.max_grad_norm,
        poisson_sampling=False,  # ``batches`` is already Opacus's Poisson sampler
        # Ghost mode clips flat; adaptive clipping then moves C between its two passes (PrivateTraining.backward).
        clipping="flat" if ghost else spec.clipping,
        grad_sample_mode=spec.grad_sample,
        wrap_model=False,
        **({} if ghost else adaptive),
    )
    hooks, dp_optimizer = made[0], made[1]
    ghost_adaptive = None
    if ghost and spec.clipping == "adaptive":
        ghost_adaptive = {key: value for key, value in adaptive.items() if key != "unclipped_num_std"}
    privacy = PrivateTraining(
        spec,
        dp_optimizer,
        hooks,
        engine.accountant,
        delta,
        sample_rate,
        len(batches),
        sigma0,
        epsilons=[],
        adaptive=ghost_adaptive,
    )
    account = dp_optimizer.step_hook

    def step_hook(optim: Any) -> None:
        account(optim)  # the accountant records this step's σ
        privacy.after_step()

    dp_optimizer.step_hook = step_hook
    wrapped = SplitPrivateOptimizer(dp_optimizer, public)
    wrapped.privacy = privacy
    return wrapped, batches, privacy


def privacy_of(trainer: Any) -> PrivateTraining | None:
    """The :class:`PrivateTraining` of the trainer's optimiser, if it trains by DP-SGD."""
    for optimizer in trainer.optimizers:
        privacy = getattr(optimizer, "privacy", None)
        if privacy is not None:
            return privacy
    return None


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ConfigError(f"DP-SGD {what} must be one of {', '.join(choices)}, got {value!r}")
    return value


@register_defence("dp")
@dataclass(frozen=True)
class DPSGD(Defence):
    """DP-SGD on the client part (``part=client``) or the whole model (``part=model``), by Opacus.

    Give a target ``epsilon`` (σ is chosen for the planned epochs) or a
    ``noise_multiplier`` σ₀ (ε is reported). ``delta`` defaults to 1/N rounded down to a
    power of ten. ``decay`` (``time``, ``step``, ``exp``) with ``decay_rate`` r per epoch is
    MindArmour's adaptive noise; ``clipping=adaptive`` makes the clipping norm follow the
    ``target_quantile`` of unclipped gradients (Andrew et al.), its cost accounted.
    ``grad_sample`` is ``ghost`` (Opacus's ghost clipping: no per-sample gradients are
    materialised) or ``hooks`` (per-sample gradients; slower, the same clipped sum).
    ``allow_coupling`` trains beside a loss that couples samples (NoPeek): then the result
    is not DP, and says so.
    """

    epsilon: float = math.inf
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: str = "rdp"
    decay: str = "constant"
    decay_rate: float = 0.0
    clipping: str = "flat"
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    part: str = "client"
    grad_sample: str = "ghost"
    allow_coupling: bool = False

    strength = "epsilon"
    off_value = math.inf
    per_sample = True
    excludes = ("suppress",)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        epsilon = float(self.epsilon)
        if math.isnan(epsilon) or epsilon <= 0:
            raise ConfigError(f"DP-SGD epsilon must be > 0 (inf for no target), got {self.epsilon!r}")
        set_(self, "epsilon", epsilon)
        set_(self, "noise_multiplier", check_non_negative(self.noise_multiplier, "DP-SGD noise_multiplier"))
        if epsilon != math.inf and self.noise_multiplier > 0:
            raise ConfigError("DP-SGD takes a target epsilon or a noise_multiplier, not both")
        norm = check_non_negative(self.max_grad_norm, "DP-SGD max_grad_norm")
        if norm == 0:
            raise ConfigError(f"DP-SGD max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        set_(self, "max_grad_norm", norm)
        if self.delta is not None:
            delta = check_non_negative(self.delta, "DP-SGD delta")
            if not 0 < delta < 1:
                raise ConfigError(f"DP-SGD delta must lie in (0, 1), got {self.delta!r}")
            set_(self, "delta", delta)
        _choice(self.accountant, ACCOUNTANTS, "accountant")
        _choice(self.decay, DECAYS, "decay")
        _choice(self.clipping, CLIPPING, "clipping")
        _choice(self.part, PARTS, "part")
        _choice(self.grad_sample, GRAD_SAMPLE_MODES, "grad_sample")
        rate = check_non_negative(self.decay_rate, "DP-SGD decay_rate (a negative rate would grow σ)")
        if self.decay == "step" and rate >= 1:
            raise ConfigError(f"DP-SGD step decay needs decay_rate < 1 (σ₀(1−r)^t turns ≤ 0), got {rate:g}")
        set_(self, "decay_rate", rate)
        quantile = check_non_negative(self.target_quantile, "DP-SGD target_quantile")
        if not 0 < quantile < 1:
            raise ConfigError(f"DP-SGD target_quantile must lie in (0, 1), got {self.target_quantile!r}")
        set_(self, "target_quantile", quantile)
        set_(self, "clip_learning_rate", check_non_negative(self.clip_learning_rate, "DP-SGD clip_learning_rate"))

    def is_identity(self) -> bool:
        return self.epsilon == math.inf and self.noise_multiplier == 0

    def tolerates_coupling(self) -> bool:
        return self.allow_coupling

    def wrapped_part(self) -> str:
        return self.part

    def check_parts(self, parts: Mapping[str, nn.Module]) -> None:
        if self.is_identity():
            return
        if self.part == "client":
            _check_private(parts["client"], "client")
        else:
            for name in ("client", "server"):
                _check_private(parts[name], name)

    def wrap(self, part: nn.Module, optimizer: Any, loader: Any, epochs: int | None = None) -> tuple[Any, Any]:
        if self.is_identity():
            return optimizer, loader
        wrapped, batches, _ = make_private(self, part, optimizer, loader, epochs)
        return wrapped, batches

    def callbacks(self) -> list[Any]:
        if self.is_identity():
            return []
        from dpsnn.callbacks import PrivacyMonitor

        return [PrivacyMonitor()]

    def measures(self, model: nn.Module) -> dict[str, float]:
        record = dict(getattr(model, "hparams", {}).get("privacy") or {})
        if not record:
            return {}
        coupled = any(d.couples_samples and not d.is_identity() for d in getattr(model, "defences", ()))
        return {
            "epsilon": float(record["epsilon"]),
            "delta": float(record["delta"]),
            "noise_multiplier": float(record["noise_multiplier"]),
            "max_grad_norm": float(record["max_grad_norm"]),
            "not_dp": float(coupled),
        }

    def key(self) -> str:
        core = (
            f"dp-eps{_short(self.epsilon)}" if self.epsilon != math.inf else f"dp-sigma{_short(self.noise_multiplier)}"
        )
        extras = [f"C{_short(self.max_grad_norm)}"] if self.max_grad_norm != 1.0 else []
        if self.decay != "constant":
            extras.append(f"{self.decay}{_short(self.decay_rate)}")
        if self.clipping == "adaptive":
            extras.append(f"adaq{_short(self.target_quantile)}")
        if self.part != "client":
            extras.append(self.part)
        if self.delta is not None:
            extras.append(f"d{_short(self.delta)}")
        if self.accountant != "rdp":
            extras.append(self.accountant)
        if self.allow_coupling:
            extras.append("notdp")
        return "-".join([core, *extras])

    def label(self) -> str:
        core = f"DP-SGD ε {self.epsilon:g}" if self.epsilon != math.inf else f"DP-SGD σ {self.noise_multiplier:g}"
        if self.decay != "constant":
            core += f", {self.decay} decay {self.decay_rate:g}"
        if self.clipping == "adaptive":
            core += f", adaptive clip q {self.target_quantile:g}"
        else:
            core += f", C {self.max_grad_norm:g}"
        if self.part != "client":
            core += f", {self.part}"
        return core + (" (not DP)" if self.allow_coupling else "")


def _short(value: float) -> str:
    """A file-name-safe number: ``4``, ``05``, ``1e-05`` as ``1em05``, ``inf``."""
    return f"{value:g}".replace(".", "").replace("-", "m").replace("+", "")
