"""Which runs can train as one cohort, and how a model is stacked for it.

cohort_key: runs with equal keys share one program (everything but per-run numbers
and random streams equal). on_fast_path: whether core.batched's hand-written stacked
forward pass computes this model (an allowlist of module types and settings: the
built-in MLP); any other model takes the generic path, generic_forward: the module
itself under torch.vmap over the runs' stacked parameters and buffers
(torch.func.functional_call); StackedLinear is the fast path's linear layer.
unsupported: why a run cannot join a cohort at all, found at set-up
(stacking_problem tries two runs' models stacked), never mid-sweep.
Nothing here trains or touches a run's state.
"""

import copy
import json
import math
from typing import Optional

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, stack_module_state

from fashionbn.config import FashionbnError, flatten, option_value
from fashionbn.config.settings import RunSettings
from fashionbn.core.data import data_facts
from fashionbn.core.model import ACTIVATIONS, build_model, checked_model

# what may differ between the runs of one cohort: per-run numbers and random streams
PER_RUN_KEYS = (
    "seed",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "model.init_std",
)


def cohort_key(identity: dict) -> tuple:
    """Runs with equal keys can share one program: everything but PER_RUN_KEYS
    equal, and momentum / weight decay either used by all or by none."""
    flat = flatten(identity)
    shared = tuple(
        sorted((k, repr(v)) for k, v in flat.items() if k not in PER_RUN_KEYS)
    )
    uses = (bool(flat.get("optim.momentum")), bool(flat.get("optim.weight_decay")))
    return (*shared, ("uses momentum, weight decay", uses))


# the module types the hand-written forward pass (Cohort.forward) computes, exactly
# (a subclass may compute otherwise): any other model takes the generic path
FAST_PATH = (nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.LayerNorm,
             *ACTIVATIONS.values())  # fmt: skip


def on_fast_path(model: nn.Module) -> bool:
    """Whether every layer of `model` is one the hand-written forward pass knows,
    set up as it computes it: BatchNorm1d with affine weights, running statistics
    and a momentum (not a cumulative average), LayerNorm with weight and bias."""
    return isinstance(model, nn.Sequential) and all(
        type(module) in FAST_PATH and _fast_settings(module) for module in model
    )


def _fast_settings(module: nn.Module) -> bool:
    if isinstance(module, nn.BatchNorm1d):
        return bool(
            module.affine and module.track_running_stats and module.momentum is not None
        )
    if isinstance(module, nn.LayerNorm):
        return module.weight is not None and module.bias is not None
    return True


def unsupported(run: RunSettings, memo: Optional[dict] = None) -> Optional[str]:
    """Why a run cannot join a cohort (it then runs through the single-run path),
    or None. A model off the fast path is tried on the generic path here, at
    set-up (stacking_problem), never found wanting mid-sweep; `memo` keeps the
    answer per model and data spec for the other jobs of a sweep."""
    if run.optim.name != "sgd":
        return f"optim={run.optim.name} (the batched path trains SGD only)"
    if run.diagnostics.enabled:
        return "diagnostics=on (the probe measures one model at a time)"
    if option_value(run.model.activation) not in ACTIVATIONS:
        return f"model.activation={run.model.activation}"
    memo = {} if memo is None else memo
    # equal specs are mostly one read-only object (config.settings.read_only): the
    # answer for these very objects (kept with it, so their ids stay theirs)
    of_these = ("unsupported-of", id(run.model), id(run.data))
    same = memo.get(of_these)
    if same is not None and same[0] is run.model and same[1] is run.data:
        return same[2]
    specs = [OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
             for node in (run.model, run.data)]  # fmt: skip
    key = ("unsupported", json.dumps(specs, sort_keys=True, default=repr))
    if key not in memo:  # a sweep's jobs mostly share their model
        memo[key] = model_problem(run)
    memo[of_these] = (run.model, run.data, memo[key])
    return memo[key]


def model_problem(run: RunSettings) -> Optional[str]:
    """Why a run's model cannot be stacked (unsupported), or None."""
    try:
        facts = data_facts(run.data)
        model = checked_model(run.model, *facts)
    except FashionbnError:
        return None  # the job fails with this error where it is checked
    if on_fast_path(model):
        return None
    with torch.random.fork_rng(devices=[]):  # two runs' models, as seeds make them
        torch.manual_seed(0)
        first = build_model(run.model, *facts)
        torch.manual_seed(1)
        second = build_model(run.model, *facts)
    return stacking_problem([first, second], facts[0])


def footprint(run: RunSettings) -> tuple[int, int]:
    """(parameters, values one sample's forward pass produces) of a run's model:
    what a cohort's memory rule counts per run. Built aside (forked random stream)
    and run on one input of zeros in evaluation mode."""
    input_shape, num_classes = data_facts(run.data)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(run.model, input_shape, num_classes).eval()
        sizes: list[int] = []
        hooks = [
            m.register_forward_hook(lambda m, i, out: sizes.append(out.numel()))
            for m in model.modules()
            if not list(m.children())
        ]
        model(torch.zeros(1, *input_shape))
        for hook in hooks:
            hook.remove()
    weights = sum(p.numel() for p in model.parameters())
    return weights, math.prod(input_shape) + sum(sizes)


def stacking_problem(
    models: list[nn.Module], input_shape: tuple[int, ...] = (28, 28)
) -> Optional[str]:
    """Why these models (one architecture, built for two runs) cannot train on the
    generic path (vmap over their stacked parameters and buffers), or None: stacked,
    they take one forward and backward pass of a tiny fixed batch, whose logits must
    equal each model's own. That finds a module vmap cannot run, and one whose
    forward reads state other than its parameters and buffers (a plain tensor
    attribute, an alias), which stacked would be the first run's for every run.
    Works on copies and forks the random stream: nothing of a run is touched."""
    with torch.random.fork_rng(devices=[]):
        copies = [copy.deepcopy(model) for model in models]
        first = copies[0]
        shape = (len(copies), 4, *input_shape)
        x = torch.linspace(-1.0, 1.0, math.prod(shape)).view(shape)
        alone = [c(x[k]).detach() for k, c in enumerate(copy.deepcopy(copies))]
        params, buffers = stack_module_state(copies)
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
        try:
            logits = generic_forward(first, params, buffers, x)
            torch.autograd.grad(logits.sum(), list(params.values()),
                                allow_unused=True)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - whatever vmap cannot do
            text = " ".join(str(err).split())[:200] or type(err).__name__
            return f"its model cannot be stacked for a cohort (vmap: {text})"
        if not all(
            torch.allclose(logits[k], alone[k], rtol=1e-4, atol=1e-5)
            for k in range(len(copies))
        ):
            return "its model computes otherwise when stacked for a cohort"
    return None


def generic_forward(
    template: nn.Module, params: dict, buffers: dict, x: torch.Tensor
) -> torch.Tensor:
    """The template's own forward pass for every run: (K, B, ...) -> (K, B, out),
    with each run's slice of the stacked params and buffers (buffers updated in
    place, as each run's module would update its own)."""

    def one(run_params, run_buffers, run_x):
        return functional_call(template, (run_params, run_buffers), (run_x,))

    return torch.vmap(one)(params, buffers, x)


class StackedLinear(torch.autograd.Function):
    """F.linear per run, (K, B, I) x (K, O, I) -> (K, B, O), with the gradients
    computed in the order torch computes them for one run: autograd's own backward
    of baddbmm would form the weight's gradient as (x^T g)^T, one run's addmm as
    g^T x, and the two round differently."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        return (
            # not for the first layer's input (the images), as autograd skips it
            # for one run: a third of a step's matrix products on the MLP
            torch.bmm(grad, weight) if needs_x else None,  # (K, B, I)
            torch.bmm(grad.transpose(1, 2), x) if needs_weight else None,  # (K, O, I)
            grad.sum(dim=1) if needs_bias else None,  # (K, O)
        )
