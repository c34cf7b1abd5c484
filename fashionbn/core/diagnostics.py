"""What the normalisation does to layer inputs, gradients and the loss landscape,
measured on a fixed probe batch at step 0 and every `every_steps` training steps.

Per hidden layer l = 1, 2, ... (from the input; a layer is a Linear or Conv and what
follows it up to the next one, found in any model by its modules, hidden_layers):
- act_in_p15, act_in_p50, act_in_p85: percentiles (linear interpolation) over the probe
  batch of the input to layer l's activation function, for unit 0 (Ioffe & Szegedy
  2015, Figure 1(b, c): "a typical unit");
- act_in_mean, act_in_std: the average over the layer's units of each unit's mean and of
  each unit's standard deviation (population, as BatchNorm computes it) over the batch
  (a conv layer's units are its channels, over the batch and all positions: per_unit);
- grad_norm, weight_norm: Frobenius norms of the loss gradient of layer l's Linear
  weight and of that weight;
- ics_l2, ics_cos (layers 2, 3, ...; Santurkar et al. 2018, Definition 2.1): ||G - G'||
  and cos(G, G'), G the gradient of layer l's weight, G' the same after only layers
  1..l-1 took a plain SGD step of the run's learning rate on the probe batch.
For the whole model (layer "all"), with g the probe-batch gradient of all parameters
theta and theta_k = theta - c_k * lr * g for every step size c_k (Santurkar et al.):
- loss_range: max - min of the loss over theta and every theta_k;
- grad_change: max_k ||grad L(theta_k) - g|| ("gradient predictiveness");
- beta_smoothness: max_k ||grad L(theta_k) - g|| / ||theta_k - theta||.

The loss is the mean cross-entropy over the probe batch, computed as training sees it:
in training mode, BatchNorm normalising with the probe batch's own statistics. Measuring
is read-only towards training: the probe's forward pass is functional (parameters are
never written; moved copies are new tensors), BatchNorm gets no running statistics to
update, gradients come from torch.autograd.grad (no .grad is touched), and nothing draws
random numbers. A test proves metrics.csv is identical with diagnostics on and off, and
that the probe's loss equals the model's own forward pass.
"""

import logging
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fashionbn.config import ConfigError
from fashionbn.config.settings import DiagnosticsSettings
from fashionbn.core.model import ACTIVATIONS, WEIGHT_LAYERS

log = logging.getLogger(__name__)

PROBE_SEED = 0  # the probe batch is the same for every run, model and seed
POINTS = 50  # every_steps=null: this many measurements after step 0
QUANTILES = (0.15, 0.5, 0.85)


def probe_indices(num_samples: int, probe_size: int) -> torch.Tensor:
    """The training-set indices of the probe batch: fixed by PROBE_SEED alone."""
    if probe_size > num_samples:
        raise ConfigError(
            f"diagnostics.probe_size={probe_size} but the train set has {num_samples} "
            "samples"
        )
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randperm(num_samples, generator=generator)[:probe_size].sort().values


def hidden_layers(model: nn.Module, x: Optional[torch.Tensor] = None) -> list[dict]:
    """Per hidden layer: its modules, its weight layer (a Linear or Conv, under
    "linear") and its activation module. The model's leaf modules in the order its
    forward pass calls them (call_order on `x`; without `x`, the order they were
    made, which is the call order of a Sequential); a layer starts at each weight
    layer and holds what runs after it up to the next one. A layer whose activation
    is not a module of its own (torch.relu in forward, one module shared by several
    layers) has no activation to measure: it is left out (unmeasured_layers)."""
    if x is None:
        return _layers([m for m in model.modules() if _own_leaf(m)], set())
    return _layers(*call_order(model, x))


def _layers(leaves: list[nn.Module], shared: set) -> list[dict]:
    """hidden_layers from the leaves in order and the ids of shared ones."""
    layers: list[dict] = []
    for module in leaves:
        if isinstance(module, WEIGHT_LAYERS):
            layers.append({"linear": module, "modules": [module]})
        elif layers:
            layers[-1]["modules"].append(module)
            is_activation = isinstance(module, tuple(ACTIVATIONS.values()))
            if is_activation and id(module) not in shared:
                layers[-1].setdefault("activation", module)
    return [layer for layer in layers if "activation" in layer]  # not the output


def _own_leaf(module: nn.Module) -> bool:
    """A module without children, or one with parameters of its own."""
    return not list(module.children()) or bool(list(module.parameters(recurse=False)))


@torch.no_grad()
def call_order(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], set]:
    """(the leaf modules in the order a forward pass on `x` first calls them, the ids
    of those it calls more than once). In evaluation mode, on no gradient: nothing
    of the model changes (BatchNorm's running statistics are not updated), the
    random streams are forked (a model that draws is measured without drawing from
    the run's), and its mode is put back."""
    order: list[nn.Module] = []
    calls: dict[int, int] = {}

    def seen(module, inputs):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if calls[id(module)] == 1:
            order.append(module)

    hooks = [m.register_forward_pre_hook(seen) for m in model.modules() if _own_leaf(m)]
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # a draw here is none of its
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return order, {key for key, count in calls.items() if count > 1}


def unmeasured_layers(model: nn.Module, x: torch.Tensor) -> int:
    """How many weight layers (not the last) have no activation module of their
    own to measure."""
    leaves, shared = call_order(model, x)  # one pass for both counts
    weights = sum(isinstance(m, WEIGHT_LAYERS) for m in leaves)
    return max(0, weights - 1 - len(_layers(leaves, shared)))


def per_unit(z: torch.Tensor) -> torch.Tensor:
    """An activation's input as (samples, units): (B, width) as it is; feature maps
    (B, C, ...) as (B * positions, C), each channel one unit measured over the batch
    and its positions (as BatchNorm2d normalises it)."""
    return z if z.dim() == 2 else z.movedim(1, -1).reshape(-1, z.shape[1])


class Probe:
    """Loss, gradients and activation inputs of `model` on one batch, at any
    parameters, without writing to the model.

    The model's own forward pass at other parameters (torch.func.functional_call),
    vmapped over the points it is measured at. BatchNorm runs in training mode (batch
    statistics) and updates copies of its running statistics, one per point, never
    the model's.
    """

    def __init__(self, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor):
        self.model, self.x, self.y = model, x, y
        self.params = dict(model.named_parameters())
        self.names = list(self.params)
        self.name_of = {id(p): name for name, p in self.params.items()}
        self.layers = hidden_layers(model, x)
        self.buffers = dict(model.named_buffers())

    def _loss_at(self, params: dict, buffers: dict) -> torch.Tensor:
        logits = functional_call(self.model, (params, buffers), (self.x,))
        return F.cross_entropy(logits, self.y)

    def loss(self, params: dict, record: Optional[list] = None) -> torch.Tensor:
        """Mean cross-entropy at `params`; appends each activation's input to record
        (a hook on each activation module while the pass runs)."""
        hooks = []
        if record is not None:
            hooks = [
                layer["activation"].register_forward_pre_hook(
                    lambda module, inputs: record.append(inputs[0].detach())
                )
                for layer in self.layers
            ]
        try:
            copies = {n: b.clone() for n, b in self.buffers.items()}
            return self._loss_at(params, copies)
        finally:
            for hook in hooks:
                hook.remove()

    def stacked(self, points: list[dict], grad: dict) -> tuple[torch.Tensor, dict]:
        """Losses (K,) and gradients (name -> (K, *shape)) at K points at once: point
        k moves each parameter n it names by -points[k][n] * grad[n]."""
        k = len(points)
        params = {}
        for n, p in self.params.items():
            steps = [point.get(n, 0.0) for point in points]
            steps = torch.tensor(steps, device=p.device).view(k, *[1] * p.dim())
            params[n] = p.detach() - steps * grad[n]  # (K, *shape)
        copies = {  # each point its own running statistics to update
            n: b.unsqueeze(0).repeat(k, *[1] * b.dim()) for n, b in self.buffers.items()
        }
        grads, losses = vmap(grad_and_value(self._loss_at))(params, copies)
        return losses.detach(), grads

    def grads(self, loss: torch.Tensor, params: dict, names: list[str]) -> dict:
        values = torch.autograd.grad(loss, [params[n] for n in names])
        return dict(zip(names, values))

    def layer_names(self, layer: dict) -> list[str]:
        return [
            self.name_of[id(p)]
            for m in layer["modules"]
            for p in m.parameters(recurse=False)
        ]


def measure(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    step_sizes: list[float],
    ics: bool,
) -> list[tuple[str, str, float]]:
    """Every quantity (see the module's docstring) as (layer, quantity, value)."""
    was_training = model.training
    model.train()  # as training sees it: batch statistics
    try:
        with torch.enable_grad():
            return _measure(Probe(model, x, y), lr, step_sizes, ics)
    finally:
        model.train(was_training)


def _measure(probe: Probe, lr: float, step_sizes: list[float], ics: bool) -> list:
    inputs: list[torch.Tensor] = []
    loss = probe.loss(probe.params, record=inputs)
    grad = probe.grads(loss, probe.params, probe.names)
    # every moved point in one stacked pass: theta itself (the reference its moved
    # neighbours are compared with, computed the same way), theta - c * lr * g for each
    # step size, and for each layer l >= 2 theta with layers 1..l-1 moved by -lr * g
    points = [{}] + [{n: size * lr for n in probe.names} for size in step_sizes]
    ics_layers = list(range(2, len(probe.layers) + 1)) if ics else []
    for number in ics_layers:
        earlier = [n for layer in probe.layers[: number - 1]
                   for n in probe.layer_names(layer)]  # fmt: skip
        points.append({n: lr for n in earlier})
    losses, grads = probe.stacked(points, grad)  # (K,), name -> (K, *shape)
    rows = []
    for number, (layer, z) in enumerate(zip(probe.layers, inputs), start=1):
        z = per_unit(z.float())  # (samples, units)
        quantiles = torch.quantile(z[:, 0], torch.tensor(QUANTILES, device=z.device))
        weight = probe.name_of[id(layer["linear"].weight)]
        values = {
            "act_in_p15": quantiles[0], "act_in_p50": quantiles[1],
            "act_in_p85": quantiles[2], "act_in_mean": z.mean(dim=0).mean(),
            "act_in_std": z.std(dim=0, unbiased=False).mean(),
            "grad_norm": grad[weight].norm(),
            "weight_norm": layer["linear"].weight.detach().norm(),
        }  # fmt: skip
        if number in ics_layers:
            k = 1 + len(step_sizes) + ics_layers.index(number)
            before, after = grads[weight][0].flatten(), grads[weight][k].flatten()
            values["ics_l2"] = (before - after).norm()
            values["ics_cos"] = F.cosine_similarity(before, after, dim=0, eps=1e-30)
        numbers = torch.stack(list(values.values())).tolist()  # one sync per layer
        rows += [(str(number), q, v) for q, v in zip(values, numbers)]
    rows += [("all", q, v) for q, v in _landscape(probe, losses, grads, lr, step_sizes)]
    return rows


def _landscape(
    probe: Probe, losses: torch.Tensor, grads: dict, lr: float, step_sizes: list[float]
) -> list[tuple[str, float]]:
    """Loss range, gradient change and effective beta-smoothness along -g, from the
    stacked pass: index 0 is theta, 1..len(step_sizes) the moved points."""
    k = 1 + len(step_sizes)
    # (k, P); reshape, not flatten(1): a parameter may be a scalar (a plug-in's)
    flat = torch.cat([grads[n][:k].reshape(k, -1) for n in probe.names], dim=1)
    changes = (flat[1:] - flat[0]).norm(dim=1)  # (len(step_sizes),)
    return landscape_values(
        losses[:k].tolist(), changes.tolist(), step_sizes, lr, flat[0].norm().item()
    )


def landscape_values(
    losses: list[float],
    changes: list[float],
    step_sizes: list[float],
    lr: float,
    g_norm: float,
) -> list[tuple[str, float]]:
    """loss_range (max − min of `losses`), grad_change (max of `changes`) and
    beta_smoothness (max of change / (c * lr * |g|)). numpy's max/min, not Python's:
    a NaN point makes the quantity NaN wherever it is (Python's max and min keep or
    drop a NaN depending on its position)."""
    losses_, changes_ = np.asarray(losses, float), np.asarray(changes, float)
    distances = np.asarray(step_sizes, float) * lr * g_norm
    betas = changes_ / distances if g_norm > 0 else np.full_like(changes_, math.nan)
    return [
        ("loss_range", float(np.max(losses_) - np.min(losses_))),
        ("grad_change", float(np.max(changes_))),
        ("beta_smoothness", float(np.max(betas))),
    ]


class Diagnostics:
    """The probe the training loop calls after every step (on_step); keeps the
    measured rows and the step count, both part of the checkpoint."""

    def __init__(
        self,
        settings: DiagnosticsSettings,
        model: nn.Sequential,
        lr: float,
        probe_x: torch.Tensor,
        probe_y: torch.Tensor,
        steps_per_epoch: int,
        epochs: int,
        state: Optional[dict] = None,
    ):
        self.model, self.lr, self.x, self.y = model, lr, probe_x, probe_y
        self.step_sizes = [float(s) for s in settings.step_sizes]
        self.ics = bool(settings.ics)
        self.steps_per_epoch = steps_per_epoch
        self.every = settings.every_steps or max(1, steps_per_epoch * epochs // POINTS)
        self.step = state["step"] if state else 0
        self.rows: list[dict] = list(state["rows"]) if state else []
        if missing := unmeasured_layers(model, probe_x):
            log.warning(
                "diagnostics: %d hidden layer(s) of this model have no activation "
                "module of their own (torch.relu in forward, or one module shared "
                "by several layers): their layer-input quantities are not measured, "
                "the landscape is",
                missing,
            )

    def start(self) -> None:
        """Measure step 0 (before any update) unless that is done already."""
        if self.step == 0 and not self.rows:
            self.record()

    def on_step(self) -> None:
        self.step += 1
        if self.step % self.every == 0:
            self.record()

    def record(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        for layer, quantity, value in measure(
            self.model, self.x, self.y, self.lr, self.step_sizes, self.ics
        ):
            self.rows.append(dict(step=self.step, epoch=epoch, layer=layer,
                                  quantity=quantity, value=value))  # fmt: skip

    def state(self) -> dict:
        return {"step": self.step, "rows": list(self.rows)}
