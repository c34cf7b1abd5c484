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
the network that is evaluated. For the MLP it costs one forward pass over the training
samples; any other model (a CNN's BatchNorm2d, BatchNorms inside a user's modules) is
measured with hooks on its own forward pass, one pass per BatchNorm layer.

Measuring never changes training: the running statistics are swapped for the
evaluation and put back bit for bit, nothing else of the model is written, and no
random number is drawn (tests/test_precise_bn.py).
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
    model: nn.Module, images: torch.Tensor, chunk: int = 1000
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer, in order: the mean and unbiased variance over `images`
    of its input, computed in evaluation mode with every earlier BatchNorm layer
    normalising with the statistics found for it. An MLP (a Sequential from Flatten,
    its BatchNorms among its layers) in one pass over the samples, exactly; any
    other model through hooks (_by_hooks)."""
    layers = batch_norm_layers(model)
    flat = isinstance(model, nn.Sequential) and isinstance(model[0], nn.Flatten)
    if not (flat and all(any(m is layer for m in model) for layer in layers)):
        return _by_hooks(model, layers, images, chunk)
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


class _Captured(Exception):
    """Raised by a hook once a layer's input is counted: the rest of the pass is
    not needed."""


def _by_hooks(
    model: nn.Module, layers: list[_BatchNorm], images: torch.Tensor, chunk: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """population_statistics for any module structure: for each BatchNorm layer in
    turn, the model's own forward pass in evaluation mode over chunks of `images`
    (the earlier layers normalising with what was found for them), its input summed
    per channel in float64 by a forward pre-hook that then stops the pass. Leaves
    the model's mode, running statistics and parameters as they were."""
    found: list[tuple[torch.Tensor, torch.Tensor]] = []
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            sums: list[torch.Tensor] = []

            def count(module, inputs):
                x = inputs[0].double()
                x = x.movedim(1, -1).reshape(-1, x.shape[1])  # (samples, channels)
                sums.append(torch.stack([x.sum(0), (x * x).sum(0),
                                         torch.full_like(x[0], len(x))]))  # fmt: skip
                raise _Captured

            handle = layer.register_forward_pre_hook(count)
            try:
                with using_statistics(model, found), torch.no_grad():
                    for start in range(0, len(images), chunk):
                        try:
                            model(images[start : start + chunk])
                        except _Captured:
                            pass
            finally:
                handle.remove()
            total, squares, n = torch.stack(sums).sum(0)
            mean = total / n
            var = (squares - n * mean * mean) / (n - 1)
            dtype = layer.running_mean.dtype
            found.append((mean.to(dtype), var.clamp_min(0).to(dtype)))
    finally:
        model.train(was_training)
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
    model: nn.Module,
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
