"""A small CNN, shipped as a model plug-in (conf/model/cnn*.yaml: model._target_):
does BatchNorm help a CNN on the same data? Two conv blocks (by default 16 and 32
channels), each Conv2d(3x3, same padding) -> [norm] -> activation -> [norm] ->
MaxPool2d(2), then Flatten -> Linear to the classes. The normalisation of each block
is model.norm made for feature maps (`batchnorm`: BatchNorm2d; a plug-in such as
GroupNorm with the block's channels as its width). It is an ordinary model factory:
what fashionbn passes it is what it passes any user's (core/model.py build_model).
"""

import math
from collections.abc import Callable

from torch import nn

from fashionbn.config import ConfigError


def small_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int],
    norm: Callable[..., list[nn.Module]],
    norm_placement: str,
    activation: type[nn.Module],
    kernel_size: int = 3,
) -> nn.Sequential:
    """input_shape (H, W) or (C, H, W) -> logits (B, num_classes); `hidden`: the
    channels of each conv block; `norm(width, dims=2)`: a block's norm modules."""
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"the CNN takes samples of shape (H, W) or (C, H, W), not "
            f"{tuple(input_shape)}"
        )
    if min(input_shape[-2:]) < 2 ** len(hidden):
        raise ConfigError(
            f"{len(hidden)} conv blocks (model.hidden={list(hidden)}) halve "
            f"{input_shape[-2]}x{input_shape[-1]} samples to nothing: at most "
            f"{int(math.log2(min(input_shape[-2:])))} blocks fit"
        )
    layers: list[nn.Module] = []
    if len(input_shape) == 2:  # (B, H, W) -> (B, 1, H, W)
        layers.append(nn.Unflatten(1, (1, input_shape[0])))
        input_shape = (1, *input_shape)
    channels, height, width = input_shape
    for out in hidden:
        layers.append(nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2))
        block = norm(out, dims=2)
        if norm_placement == "before":
            layers += [*block, activation()]
        else:
            layers += [activation(), *block]
        layers.append(nn.MaxPool2d(2))
        channels, height, width = out, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(channels * math.prod((height, width)),
                                       num_classes)]  # fmt: skip
    return nn.Sequential(*layers)
