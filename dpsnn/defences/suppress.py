"""Suppress-privacy training (MindArmour): the smallest weights zeroed on a cubic schedule until few remain.

Between ``start_epoch`` and ``end_epoch`` there are ``mask_times`` masking events, at
t₀ + kΔt (k = 1..n, Δt = (end_epoch − start_epoch)/n, t counted in epochs, an event
falling on the optimiser step nearest to it). At each event the target sparsity is
MindArmour's cubic curve s_t = s_end + (s_start − s_end)(1 − (t − t₀)/(nΔt))³, and in
each chosen layer the smallest-magnitude weights are masked until that fraction is zero
(at least ``min_kept`` weights of a layer stay). The masks are ``torch.nn.utils.prune``'s
(an ``l1_unstructured`` step on the weights not yet pruned), so masked weights stay
exactly zero through later optimiser steps; when training ends the masks are made
permanent and the state dict has its usual layout. Weights are kept from the epoch of
the last event on, so the model kept has the final sparsity.

``layers`` names the modules to prune, separated by ``/``: every Linear and Conv weight
under each (``client``, the default; ``model`` for client and server; or dotted names
such as ``client.0/client.3``).

Example::

    model, _ = train_classifier(splits, defences=["suppress:sparse_end=0.9,end_epoch=4"], max_epochs=6)
    Suppress(sparse_end=0.9).measures(model)   # {'sparsity': 0.9, 'sparsity_client.0': 0.9, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dpsnn.defences.base import Defence, check_non_negative, format_number, register_defence
from dpsnn.errors import ConfigError

__all__ = ["PRUNABLE", "Suppress", "cubic_sparsity", "pruned_layers", "sparsity"]

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def cubic_sparsity(t: float, t0: float, span: float, s_start: float, s_end: float) -> float:
    """MindArmour's sparsity at time ``t``: s_end + (s_start − s_end)(1 − (t − t₀)/span)³, clamped to [t₀, t₀+span]."""
    if span <= 0:
        return s_end if t >= t0 else s_start
    progress = min(max((t - t0) / span, 0.0), 1.0)
    return s_end + (s_start - s_end) * (1.0 - progress) ** 3


def pruned_layers(root: nn.Module, layers: str) -> dict[str, nn.Module]:
    """The Linear and Conv modules under each ``/``-separated name of ``root`` (``client``, ``model``, ``client.0``).

    :class:`ConfigError` names a layer the model does not have.
    """
    modules = dict(root.named_modules())
    found: dict[str, nn.Module] = {}
    for name in filter(None, (part.strip() for part in layers.split("/"))):
        prefix = "" if name == "model" else name
        if prefix not in modules:
            known = ", ".join(n for n in modules if n and n.count(".") <= 1)
            raise ConfigError(f"suppress: the model has no layer '{name}' (it has {known})")
        for sub, module in modules[prefix].named_modules():
            if isinstance(module, PRUNABLE):
                found[".".join(filter(None, (prefix, sub)))] = module
    if not found:
        raise ConfigError(f"suppress: no Linear or Conv layer under '{layers}'")
    return found


def _weight(module: nn.Module) -> Tensor:
    return module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight


def sparsity(module: nn.Module) -> float:
    """The fraction of ``module``'s weight that is exactly zero (its mask applied, if it is being pruned)."""
    weight = _weight(module)
    return float((weight == 0).sum()) / weight.numel()


@register_defence("suppress")
@dataclass(frozen=True)
class Suppress(Defence):
    """MindArmour's suppress-privacy training: ``sparse_end`` of the chosen layers' weights zeroed by the end."""

    sparse_end: float = 0.0
    sparse_start: float = 0.0
    start_epoch: int = 0
    end_epoch: int = 1
    mask_times: int = 10
    min_kept: int = 1
    layers: str = "client"

    strength = "sparse_end"
    excludes = ("dp",)

    def __post_init__(self) -> None:
        end = check_non_negative(self.sparse_end, "suppress sparse_end")
        start = check_non_negative(self.sparse_start, "suppress sparse_start")
        if not end < 1:
            raise ConfigError(f"suppress sparse_end must lie in [0, 1), got {self.sparse_end!r}")
        if end != 0 and not end > start:
            raise ConfigError(f"suppress sparse_end ({end:g}) must be above sparse_start ({start:g})")
        object.__setattr__(self, "sparse_end", end)
        object.__setattr__(self, "sparse_start", start)
        for name in ("start_epoch", "end_epoch", "min_kept"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"suppress {name} must be a non-negative whole number, got {value!r}")
        if self.start_epoch > self.end_epoch:
            raise ConfigError(
                f"suppress start_epoch ({self.start_epoch}) must not be after end_epoch ({self.end_epoch})"
            )
        if isinstance(self.mask_times, bool) or not isinstance(self.mask_times, int) or self.mask_times < 1:
            raise ConfigError(f"suppress mask_times must be a whole number ≥ 1, got {self.mask_times!r}")
        if not self.layers.strip() or any(c in self.layers for c in ",+=()"):
            raise ConfigError(f"suppress layers must be module names separated by '/', got {self.layers!r}")

    def check_parts(self, parts: Mapping[str, nn.Module]) -> None:
        if not self.is_identity():
            pruned_layers(nn.ModuleDict(dict(parts)), self.layers)

    def callbacks(self) -> list[Any]:
        if self.is_identity():
            return []
        from dpsnn.callbacks import SuppressSchedule

        return [SuppressSchedule(self)]

    def measures(self, model: nn.Module) -> dict[str, float]:
        layers = pruned_layers(model, self.layers)
        zeros = sum(float((_weight(m) == 0).sum()) for m in layers.values())
        total = sum(_weight(m).numel() for m in layers.values())
        return {
            "sparsity": zeros / total,
            **{f"sparsity_{name.replace('.', '_')}": sparsity(m) for name, m in layers.items()},
        }

    def key(self) -> str:
        extras = [f"s{format_number(self.sparse_start)}"] if self.sparse_start else []
        extras.append(f"e{self.start_epoch}-{self.end_epoch}x{self.mask_times}")
        if self.layers != "client":
            extras.append("".join(c for c in self.layers if c.isalnum()))
        return "-".join([f"{format_number(self.sparse_end)}suppress", *extras])

    def label(self) -> str:
        where = "" if self.layers == "client" else f", {self.layers}"
        return f"suppress {self.sparse_end:g}{where}"
