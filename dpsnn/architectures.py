"""Named split architectures: each builds ``(client, server)`` for an image shape and a class count.

=================  ====================================================================
name               the split
=================  ====================================================================
``reference``      the 2021 paper's network: two 3×3 convolutions, max-pool, a linear map
                   to a 500-vector and tanh on the client; 500→128→classes on the server
``cifar-cnn``      a CIFAR-size CNN: the client's two convolutions send a 64-channel
                   feature map at half resolution; the server has two more blocks
``resnet18:K``     torchvision's ResNet-18 adapted to 32×32 images (3×3 stem, stride 1, no
                   max-pool), cut after stage K (1, 2 or 3): the client sends its feature map
``mlp:W``          a perceptron of MICO's Purchase-100 shape: the client maps the flattened
                   image to a W-vector with tanh (W = 128 by default); the server is one
                   linear layer. Cheap to train many of, as membership inference needs
=================  ====================================================================

Nothing here assumes an image size: the intermediate's shape is read off the client
(:func:`intermediate_shape`). A user's own pair of modules needs no registration:
``SplitNN(client=my_client, server=my_server, input_shape=...)``. Adding an architecture
is one function decorated with :func:`register_architecture`. Example::

    from dpsnn.architectures import build_split, intermediate_shape

    client, server = build_split("resnet18:2", input_shape=(3, 32, 32), num_classes=10)
    intermediate_shape(client, (3, 32, 32))     # (128, 16, 16)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dpsnn.errors import ConfigError

Shape = tuple[int, ...]
Builder = Callable[[Shape, int, "str | None"], tuple[nn.Module, nn.Module]]
INTERMEDIATE_SIZE = 500  # the reference network's intermediate vector


@dataclass(frozen=True)
class ArchitectureInfo:
    """A registered split: its builder, the image shapes it accepts and what its option means."""

    name: str
    build: Builder
    description: str
    option: str | None = None  # what ``name:OPTION`` sets, e.g. "the stage after which to cut (1-3)"
    options: tuple[str, ...] = ()  # the accepted options
    default: str | None = None  # the option when none is given
    min_size: int = 1  # the smallest image side it works on


ARCHITECTURES: dict[str, ArchitectureInfo] = {}


def register_architecture(
    name: str,
    description: str,
    option: str | None = None,
    options: tuple[str, ...] = (),
    default: str | None = None,
    min_size: int = 1,
) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(input_shape, num_classes, option) -> (client, server)`` as ``name``."""

    def register(build: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise ValueError(f"an architecture named {name!r} is already registered")
        ARCHITECTURES[name] = ArchitectureInfo(name, build, description, option, options, default, min_size)
        return build

    return register


def parse_architecture(spec: str) -> tuple[ArchitectureInfo, str | None]:
    """``'resnet18:2'`` into its registry entry and option; :class:`ConfigError` when unknown."""
    name, _, option = str(spec).partition(":")
    info = ARCHITECTURES.get(name)
    if info is None:
        raise ConfigError(f"unknown architecture '{spec}'; choose from {', '.join(architecture_names())}")
    if option and not info.options:
        raise ConfigError(f"architecture '{name}' takes no option, got '{spec}'")
    option = option or info.default
    if info.options and option not in info.options:
        raise ConfigError(f"architecture '{spec}': {info.option} must be one of {', '.join(info.options)}")
    return info, option


def architecture_names() -> list[str]:
    """Every name ``--architecture`` accepts (``resnet18:1`` ... for options)."""
    names = []
    for info in ARCHITECTURES.values():
        names += [f"{info.name}:{o}" for o in info.options] if info.options else [info.name]
    return names


def canonical_architecture(spec: str) -> str:
    """The full name of ``spec``: ``resnet18`` becomes ``resnet18:2`` (its default cut)."""
    info, option = parse_architecture(spec)
    return f"{info.name}:{option}" if option else info.name


def check_input_shape(input_shape: Shape) -> Shape:
    """``input_shape`` as a ``(channels, height, width)`` tuple of positive ints, or :class:`ConfigError`."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"an image shape is (channels, height, width) of positive sizes, got {tuple(input_shape)}")
    return shape


def build_split(spec: str, input_shape: Shape, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """``(client, server)`` of the registered architecture ``spec`` for these images and classes."""
    info, option = parse_architecture(spec)
    shape = check_input_shape(input_shape)
    if min(shape[1:]) < info.min_size:
        raise ConfigError(
            f"architecture '{spec}' needs images of at least {info.min_size}×{info.min_size} pixels, got "
            f"{shape[0]}×{shape[1]}×{shape[2]}"
        )
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    return info.build(shape, num_classes, option)


@torch.no_grad()
def intermediate_shape(client: nn.Module, input_shape: Shape) -> Shape:
    """The shape of one sample of the client's output for images of ``input_shape`` (batch left out)."""
    was_training = client.training
    client.eval()  # batch norm in eval mode leaves its running statistics alone
    try:
        parameter = next(client.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        out = client(torch.zeros((2, *input_shape), device=device, dtype=dtype))
    except RuntimeError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"the client cannot take images of shape {tuple(input_shape)}: {first}") from None
    finally:
        client.train(was_training)
    return tuple(out.shape[1:])


# -- the registered splits ----------------------------------------------------------------


class ClientNet(nn.Sequential):
    """The reference client: two convolutions, max-pool, a linear map to 500, tanh.

    For 1×28×28 images its layers are exactly the 2021 reference's (and today's
    checkpoints load into it); other shapes change only the first convolution's input
    channels and the linear map's input size.
    """

    def __init__(self, intermediate_size: int = INTERMEDIATE_SIZE, input_shape: Shape = (1, 28, 28)) -> None:
        channels, height, width = input_shape
        super().__init__(
            nn.Conv2d(channels, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), intermediate_size),
            nn.Tanh(),
        )


class ServerNet(nn.Sequential):
    """The reference server: 500 to 128, ReLU, 128 to the class logits."""

    def __init__(self, num_classes: int = 10, intermediate_size: int = INTERMEDIATE_SIZE) -> None:
        super().__init__(
            nn.Linear(intermediate_size, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )


@register_architecture("reference", "the 2021 paper's network; a 500-vector crosses the wire", min_size=6)
def reference(input_shape: Shape, num_classes: int, option: str | None) -> tuple[nn.Module, nn.Module]:
    return ClientNet(input_shape=input_shape), ServerNet(num_classes)


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]


@register_architecture("cifar-cnn", "a CIFAR-size CNN; a 64×H/2×W/2 feature map crosses the wire", min_size=4)
def cifar_cnn(input_shape: Shape, num_classes: int, option: str | None) -> tuple[nn.Module, nn.Module]:
    client = nn.Sequential(*_conv_block(input_shape[0], 32), *_conv_block(32, 64), nn.MaxPool2d(2))
    server = nn.Sequential(
        *_conv_block(64, 128),
        nn.MaxPool2d(2),
        *_conv_block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )
    return client, server


@register_architecture(
    "resnet18",
    "torchvision's ResNet-18 for 32×32 images, cut after a stage; its feature map crosses the wire",
    option="the stage after which the client hands over",
    options=("1", "2", "3"),
    default="2",
    min_size=8,
)
def resnet18(input_shape: Shape, num_classes: int, option: str | None) -> tuple[nn.Module, nn.Module]:
    from torchvision.models import resnet18 as torchvision_resnet18

    net = torchvision_resnet18(weights=None, num_classes=num_classes)
    # The usual adaptation to small images: a 3×3 stride-1 stem and no max-pool.
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    cut = int(option or 2)
    client = nn.Sequential(net.conv1, net.bn1, net.relu, *stages[:cut])
    server = nn.Sequential(*stages[cut:], net.avgpool, nn.Flatten(), net.fc)
    return client, server


MLP_WIDTHS = ("64", "128", "256", "512")


@register_architecture(
    "mlp",
    "a perceptron (MICO's Purchase-100 shape); a tanh W-vector crosses the wire",
    option="the width W of the hidden layer",
    options=MLP_WIDTHS,
    default="128",
)
def mlp(input_shape: Shape, num_classes: int, option: str | None) -> tuple[nn.Module, nn.Module]:
    width = int(option or 128)
    inputs = input_shape[0] * input_shape[1] * input_shape[2]
    client = nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.Tanh())
    return client, nn.Linear(width, num_classes)
