"""build_model(model_cfg) -> the MLP: any widths, activation, normalisation, init.

The normalisation is a built-in (none, batchnorm, layernorm) or a plug-in: any
nn.Module made from a layer's width by a Hydra `_target_` config (conf/model/
groupnorm.yaml; docs/extending.md), e.g. {_target_: torch.nn.GroupNorm, num_groups: 4}.
The width is passed as the parameter named num_features, num_channels or
normalized_shape when the target has one (torch's norms), else as the first argument.
"""

import inspect
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fashionbn.config import ConfigError, is_plugin, option_value
from fashionbn.config.validation import hidden_widths_problem

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# the parameter that takes a layer's width, in torch's normalisation layers
WIDTH_PARAMETERS = ("num_features", "num_channels", "normalized_shape")


def build_model(
    model_cfg, in_features: int = 28 * 28, num_classes: int = 10
) -> nn.Sequential:
    """Flatten -> [Linear -> (norm) -> activation -> (norm)] per hidden width ->
    Linear. `in_features` and `num_classes` are facts of the dataset, not config keys.

    The modules are created in the same order for every option, so a seed gives the
    same initial weights with or without a normalisation layer (a plug-in that draws
    random numbers when it is made moves the later layers' draws)."""
    hidden = list(model_cfg.hidden)
    if problem := hidden_widths_problem(hidden):
        raise ConfigError(problem)
    norm = option_value(model_cfg.norm)
    placement = option_value(model_cfg.norm_placement)
    activation = ACTIVATIONS[option_value(model_cfg.activation)]
    make_norm = norm_factory(norm, model_cfg)

    layers: list[nn.Module] = [nn.Flatten()]  # (B, 28, 28) -> (B, 784)
    for width in hidden:
        layers.append(nn.Linear(in_features, width))  # (B, in) -> (B, width)
        norm_layer = make_norm(width)
        if placement == "before":
            layers += [*norm_layer, activation()]
        else:
            layers += [activation(), *norm_layer]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))  # (B, 10) logits
    model = nn.Sequential(*layers)
    if option_value(model_cfg.init) == "normal":
        for module in model:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=model_cfg.init_std)
                nn.init.zeros_(module.bias)
    return model


def norm_factory(norm, model_cfg) -> Callable[[int], list[nn.Module]]:
    """A layer's width -> its normalisation modules ([] for none)."""
    if norm == "batchnorm":
        eps, momentum = model_cfg.norm_eps, model_cfg.bn_momentum
        return lambda width: [nn.BatchNorm1d(width, eps=eps, momentum=momentum)]
    if norm == "layernorm":
        return lambda width: [nn.LayerNorm(width, eps=model_cfg.norm_eps)]
    if is_plugin(norm):
        make = plugin_factory(norm)
        return lambda width: [make(width)]
    if norm == "none":
        return lambda width: []
    raise ConfigError(f"model.norm={norm!r:.80}: not a normalisation fashionbn knows")


def plugin_factory(spec) -> Callable[[int], nn.Module]:
    """A plug-in's config ({_target_: ..., its arguments}) -> width -> module, with
    any failure as one ConfigError line naming the target."""
    spec = OmegaConf.create(spec) if not OmegaConf.is_config(spec) else spec
    target = spec["_target_"]
    try:
        partial = instantiate(spec, _partial_=True)
    except Exception as err:  # noqa: BLE001 - hydra wraps import and argument errors
        raise ConfigError(f"model.norm._target_={target}: {_first_line(err)}") from err
    keyword = _width_parameter(partial.func, partial.keywords, target)

    def make(width: int) -> nn.Module:
        try:
            module = partial(**{keyword: width}) if keyword else partial(width)
        except Exception as err:  # noqa: BLE001 - the plug-in's own error, one line
            raise ConfigError(
                f"model.norm._target_={target} for a layer of {width} units: "
                f"{_first_line(err)}"
            ) from err
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model.norm._target_={target} made a {type(module).__name__}, not a "
                "torch.nn.Module"
            )
        return module

    return make


def _width_parameter(func, given: dict, target: str) -> str:
    """The name under which `func` takes a layer's width ('' = first argument):
    one of WIDTH_PARAMETERS, else its first parameter, which must be one without
    a default (a width, not an option such as LazyBatchNorm1d's eps)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return ""
    for name in WIDTH_PARAMETERS:
        if name in parameters and name not in given:
            return name
    first = next(iter(parameters.values()), None)
    takes_width = first is not None and (
        first.kind is first.VAR_POSITIONAL
        or (first.default is first.empty and first.name not in given
            and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD))
    )  # fmt: skip
    if not takes_width:
        raise ConfigError(
            f"model.norm._target_={target} takes no layer width: its first parameter "
            f"({first.name if first else 'none'}) has a default or is given; a "
            f"plug-in takes the width as {', '.join(WIDTH_PARAMETERS)} or as its "
            "first parameter"
        )
    return ""


def _first_line(err: BaseException) -> str:
    """An error as one short line (without Hydra's HYDRA_FULL_ERROR advice)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(", set env var HYDRA_FULL_ERROR")[0][:300]


def checked_model(
    model_cfg, in_features: int = 28 * 28, num_classes: int = 10
) -> nn.Module:
    """build_model and one forward and backward pass of a tiny fixed batch in
    training mode: what a run meets at its first step (a plug-in that cannot be
    made, returns another shape or fails on a batch), found as one ConfigError line
    before anything is trained or written. Draws no random number from the
    process's stream (forked) and touches no run's model."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_cfg, in_features, num_classes)
        x = torch.linspace(-1.0, 1.0, 4 * in_features).view(4, in_features)
        try:
            logits = model(x)
            if tuple(logits.shape) != (4, num_classes):
                raise ValueError(f"logits of shape {tuple(logits.shape)}")
            logits.sum().backward()
        except Exception as err:  # noqa: BLE001 - a plug-in's error, as one line
            target = (
                model_cfg.norm["_target_"] if is_plugin(model_cfg.norm) else "the model"
            )
            raise ConfigError(
                f"model.norm: {target} fails on a batch of 4: {_first_line(err)}"
            ) from err
    return model


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any layer normalises over the batch (it cannot train on one sample)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
