"""Batched inference without gradients: the one helper every evaluation goes through.

Example::

    from dpsnn.inference import batched, predict

    seen = batched(target.encode, test_images, module=target)   # what the server sees, on the CPU
    labels = predict(validator, reconstructions)                # class predictions
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

BATCH_SIZE = 512


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def batched(
    fn: Callable[[Tensor], Tensor], inputs: Tensor, module: nn.Module | None = None, batch_size: int = BATCH_SIZE
) -> Tensor:
    """``fn`` applied to ``inputs`` batch by batch, in eval mode, on ``module``'s device; the result on the CPU.

    ``module`` (default: ``fn`` itself) is put in eval mode and gives the device. An
    empty input still goes through ``fn`` once, so the result has the right shape.
    """
    module = module if module is not None else fn
    module.eval()
    device = device_of(module)
    if len(inputs) == 0:
        return fn(inputs.to(device)).cpu()
    return torch.cat([fn(chunk.to(device)).cpu() for chunk in inputs.split(batch_size)])


def predict(model: nn.Module, images: Tensor, batch_size: int = BATCH_SIZE) -> Tensor:
    """Class predictions of ``model`` for ``images``."""
    return batched(model, images, batch_size=batch_size).argmax(dim=1)
