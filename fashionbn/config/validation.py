"""Values of the right type that cannot work (Hydra's schemas catch wrong types and
unknown keys): refused before anything is trained or written, one line naming the key.
"""

import math
import os
from typing import Any, Optional

from omegaconf import OmegaConf

from fashionbn.config import (
    ConfigError,
    DataConfig,
    Norm,
    flatten,
    is_plugin,
    not_applicable,
    option_value,
)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_config(cfg, resolved: Optional[dict] = None) -> None:
    """Raise ConfigError (one line naming the key) for any value that cannot work.
    `resolved`: cfg as OmegaConf.to_container(resolve=True, enum_to_str=True)
    (made here when not given)."""
    if resolved is None:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if problem := missing_problem(resolved):
        raise ConfigError(problem)
    values = Values(resolved)  # the same values, read at a dict's cost
    problems = [*_run_problems(values), *_model_problems(values.model)]
    problems += [*_optim_problems(values.optim), *_data_problems(values.data)]
    problems += _diagnostics_problems(values.diagnostics)
    # a key that cannot change what the run computes is not held against it (every
    # problem starts with the key it is about: "model.bn_momentum=2.0: ...")
    ignored = tuple(f"{key}=" for key in not_applicable(flatten(resolved)))
    problems = [p for p in problems if not p.startswith(ignored)]
    if problems:
        raise ConfigError(problems[0])


class Values(dict):
    """A resolved config's plain values (a dict), its keys also read as attributes
    (values.model.hidden), as the checks read a config."""

    def __getattr__(self, key: str):
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return Values(value) if type(value) is dict else value


def missing_problem(values: Any, path: str = "") -> Optional[str]:
    """The first value of a resolved config left missing ('???', OmegaConf's
    missing value; no config group leaves one), as a problem naming its key; None
    where every value is given."""
    if isinstance(values, dict):
        items = [(f"{path}{key}", value) for key, value in values.items()]
    elif isinstance(values, list):
        items = [(f"{path[:-1]}[{i}]", value) for i, value in enumerate(values)]
    else:
        return None
    for where, value in items:
        if isinstance(value, str) and value == "???":
            return missing_line(where)
        if problem := missing_problem(value, f"{where}."):
            return problem
    return None


def missing_line(key: str) -> str:
    """The problem of a value left missing ('???'), naming its key."""
    return f"{key}=???: give it a value"


def _run_problems(cfg) -> list[str]:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs={cfg.epochs}: must be >= 1")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size}: must be >= 1")
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"seed={cfg.seed}: must be in 0..{2**32 - 1}")
    cores = available_cores()
    if cfg.threads is not None and not 1 <= cfg.threads <= cores:
        problems.append(
            f"threads={cfg.threads}: must be in 1..{cores} (this machine's cores) or "
            "null; more threads than cores only slows training down"
        )
    if not cfg.divergence_loss > 0:
        problems.append(f"divergence_loss={cfg.divergence_loss}: must be > 0")
    return problems


def hidden_widths_problem(hidden: list[int]) -> Optional[str]:
    """Why these hidden widths cannot make a model, or None."""
    if not hidden or any(width <= 0 for width in hidden):
        return (
            f"model.hidden={hidden}: give one or more positive layer widths, "
            "e.g. model.hidden=[64,32]"
        )
    return None


def norm_problem(norm) -> Optional[str]:
    """Why model.norm is neither a built-in normalisation nor a plug-in mapping, or
    None. (Whether a plug-in can be made is core.model.checked_model's to find.)"""
    built_in = [n.value for n in Norm]
    if is_plugin(norm):
        target = norm["_target_"]
        if isinstance(target, str) and target.strip():
            return None
        return (
            f"model.norm._target_={target!r}: give a class or function by its "
            "dotted name, e.g. torch.nn.GroupNorm"
        )
    if isinstance(norm, str) and norm in built_in:
        return None
    return (
        f"model.norm={norm}: not a built-in normalisation ({', '.join(built_in)}); "
        "another one is a plug-in: model=groupnorm, model=rmsnorm, or a mapping with "
        "a _target_ (docs/extending.md)"
    )


def _model_problems(model) -> list[str]:
    problems = []
    if problem := norm_problem(model.norm):
        problems.append(problem)
    if problem := hidden_widths_problem(list(model.hidden)):
        problems.append(problem)
    if model.get("args") and not model.get("_target_"):
        problems.append(
            f"model.args={dict(model.args)}: arguments of a model._target_, but the "
            "model is the built-in MLP (model._target_ is null)"
        )
    if not (_finite(model.norm_eps) and model.norm_eps > 0):
        problems.append(
            f"model.norm_eps={model.norm_eps}: must be > 0 (it keeps the "
            "normalisation from dividing by zero); torch's default is 1e-05"
        )
    if not (_finite(model.init_std) and model.init_std > 0):
        problems.append(f"model.init_std={model.init_std}: must be a finite number > 0")
    if not (_finite(model.bn_momentum) and 0 <= model.bn_momentum <= 1):
        problems.append(
            f"model.bn_momentum={model.bn_momentum}: must be in [0, 1] (the weight of "
            "each new batch in the running statistics); torch's default is 0.1"
        )
    return problems


def _optim_problems(optim) -> list[str]:
    problems = []
    if not (_finite(optim.lr) and optim.lr > 0):
        problems.append(
            f"optim.lr={optim.lr}: the learning rate must be a finite number > 0"
        )
    if not (_finite(optim.weight_decay) and optim.weight_decay >= 0):
        problems.append(
            f"optim.weight_decay={optim.weight_decay}: must be a finite number >= 0"
        )
    if "momentum" in optim:
        if not (_finite(optim.momentum) and 0 <= optim.momentum < 1):
            problems.append(f"optim.momentum={optim.momentum}: must be in [0, 1)")
        elif optim.nesterov and optim.momentum == 0:
            problems.append("optim.nesterov=true needs optim.momentum > 0")
    if "betas" in optim:
        betas = list(optim.betas)
        if len(betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in betas):
            problems.append(
                f"optim.betas={betas}: give two values in [0, 1), e.g. [0.9,0.999]"
            )
    if "eps" in optim and not (_finite(optim.eps) and optim.eps > 0):
        problems.append(f"optim.eps={optim.eps}: must be a finite number > 0")
    return problems


def _data_problems(data) -> list[str]:
    problems = []
    for key in ("train_size", "test_size"):
        size = data[key]
        if size is not None and size < 1:
            problems.append(
                f"data.{key}={size}: must be >= 1, or null for the whole split"
            )
    if data.val_size < 0:
        problems.append(
            f"data.val_size={data.val_size}: must be >= 0 (0: no validation split)"
        )
    if not 0 <= data.split_seed < 2**63:
        problems.append(f"data.split_seed={data.split_seed}: must be in 0..2**63-1")
    if data.eval_batch_size < 1:
        problems.append(f"data.eval_batch_size={data.eval_batch_size}: must be >= 1")
    if data.get("args") and not data.get("_target_"):
        problems.append(
            f"data.args={dict(data.args)}: arguments of a data._target_, but the "
            "data is FashionMNIST's or MNIST's files (data._target_ is null)"
        )
    name = option_value(data.name)
    if data.get("_target_"):
        return problems  # a plug-in: name, root and system_dir are not used
    if name != "fashion_mnist" and data.system_dir == DataConfig.system_dir:
        problems.append(
            f"data.name={name} with data.system_dir={data.system_dir}, which holds "
            f"FashionMNIST's files: use data={name} (no system dir), or point "
            f"data.system_dir at a dir with {name}'s four .gz files"
        )
    return problems


def _diagnostics_problems(diagnostics) -> list[str]:
    problems = []
    every = diagnostics.every_steps
    if every is not None and every < 1:
        problems.append(
            f"diagnostics.every_steps={every}: must be >= 1, or null for a 50th of "
            "the run's steps"
        )
    if diagnostics.probe_size < 2:
        problems.append(
            f"diagnostics.probe_size={diagnostics.probe_size}: must be >= 2 (a spread "
            "over one sample is undefined)"
        )
    sizes = list(diagnostics.step_sizes)
    if not sizes or not all(_finite(s) and s > 0 for s in sizes):
        problems.append(
            f"diagnostics.step_sizes={sizes}: give one or more multiples of the "
            "learning rate > 0, e.g. [0.5,1,2,4]"
        )
    return problems
