"""Precise BatchNorm statistics for evaluation (precise_bn=true).

A BatchNorm layer evaluates with running statistics: an exponential average (momentum
0.1) of the batch statistics of the last few hundred training steps, taken while the
weights moved, and weighting the epoch's last, incomplete batch like any other. At large
learning rates they can be far from the statistics of the network being evaluated.
The standard remedy (fvcore's PreciseBN, torch.optim.swa_utils.update_bn) recomputes
them over the training data before evaluating. Here, layer by layer: each BatchNorm
layer gets the mean and the unbiased variance (what running_var holds) of its input
over all training samples, that input computed with the earlier BatchNorm layers
already normalising with their own recomputed statistics — exactly the statistics of
the network that is evaluated. It costs one forward pass over the training samples.

Measuring never changes training: the running statistics are swapped for the
evaluation and put back bit for bit, nothing else of the model is written, and no
random number is drawn (tests/test_protocol.py: the precise-statistics tests).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer (built-in or a plug-in's torch.nn.BatchNorm*d)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def population_statistics(
    model: nn.Sequential, images: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer, in order: the mean and unbiased variance over `images`
    (N, 28, 28) of its input, computed in evaluation mode with every earlier BatchNorm
    layer normalising with the statistics found for it. One pass over the samples."""
    x = images.flatten(1)  # (N, 784)
    found = []
    for module in model:
        if isinstance(module, _BatchNorm):  # statistics per channel (dim 1)
            dims = 0 if x.dim() == 2 else [0, *range(2, x.dim())]
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=True)  # (C,) each
            found.append((mean, var))
            x = F.batch_norm(x, mean, var, module.weight, module.bias,
                             training=False, eps=module.eps)  # fmt: skip
        elif not isinstance(module, nn.Flatten):
            x = module(x)
    return found


@contextmanager
def using_statistics(
    model: nn.Module, statistics: list[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    """Evaluate with `statistics` in place of the running ones; put the running ones
    back exactly afterwards (also when the evaluation fails)."""
    layers = batch_norm_layers(model)
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    try:
        with torch.no_grad():
            for module, (mean, var) in zip(layers, statistics):
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
        yield
    finally:
        with torch.no_grad():
            for module, (mean, var) in zip(layers, saved):
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)


def precise_evaluation(
    model: nn.Sequential,
    train_images: torch.Tensor,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[float, float]],
) -> dict[str, float]:
    """{<split>_loss_precise, <split>_acc_precise} for every split of `splits`
    (name -> (images, labels)), evaluated with statistics recomputed over
    `train_images`."""
    statistics = population_statistics(model, train_images)
    record = {}
    with using_statistics(model, statistics):
        for name, (images, labels) in splits.items():
            loss, accuracy = evaluate(model, images, labels)
            record[f"{name}_loss_precise"] = loss
            record[f"{name}_acc_precise"] = accuracy
    return record
