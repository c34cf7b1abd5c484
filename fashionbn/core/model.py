"""build_model(model_cfg, input_shape, num_classes) -> the run's network, the one
definition every path trains (one run, a batched cohort, diagnostics, load_model).

The model is the built-in MLP (model._target_ null: any widths, activation,
normalisation, init), or a plug-in: model._target_ names a factory called as
f(input_shape=..., num_classes=..., hidden=..., norm=..., norm_placement=...,
activation=..., **model.args) that returns an nn.Module (conf/model/cnn.yaml:
fashionbn.core.cnn.small_cnn; docs/extending.md). The input shape and the number of
classes are the data's (core.data.data_facts), never config keys.

The normalisation is a built-in (none, batchnorm, layernorm) or a plug-in: any
nn.Module made from a layer's width by a Hydra `_target_` config (conf/model/
groupnorm.yaml), e.g. {_target_: torch.nn.GroupNorm, num_groups: 4}. The width is
passed as the parameter named num_features, num_channels or normalized_shape when
the target has one (torch's norms), else as the first argument. A model asks for a
layer's norm as norm(width, dims): dims=2 for feature maps (batchnorm: BatchNorm2d).
"""

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fashionbn.config import ConfigError, is_plugin, option_value
from fashionbn.config.validation import hidden_widths_problem

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# the parameter that takes a layer's width, in torch's normalisation layers
WIDTH_PARAMETERS = ("num_features", "num_channels", "normalized_shape")


def build_model(
    model_cfg, input_shape: Sequence[int] = (28, 28), num_classes: int = 10
) -> nn.Module:
    """The built-in MLP, or model._target_'s network; then init=normal, if asked,
    on every Linear and Conv layer's weight (biases 0)."""
    hidden = list(model_cfg.hidden)
    if problem := hidden_widths_problem(hidden):
        raise ConfigError(problem)
    norm = option_value(model_cfg.norm)
    placement = option_value(model_cfg.norm_placement)
    activation = ACTIVATIONS[option_value(model_cfg.activation)]
    make_norm = norm_factory(norm, model_cfg)
    target = model_cfg.get("_target_")
    if target:
        model = plugin_model(model_cfg, tuple(input_shape), num_classes, make_norm)
    else:
        model = mlp(math.prod(input_shape), num_classes, hidden, make_norm, placement,
                    activation)  # fmt: skip
    if option_value(model_cfg.init) == "normal":
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS):
                nn.init.normal_(module.weight, mean=0.0, std=model_cfg.init_std)
                if module.bias is not None:  # a user's layer may have none
                    nn.init.zeros_(module.bias)
    return model


# the layers whose weights init=normal draws and diagnostics measure
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def mlp(
    in_features: int,
    num_classes: int,
    hidden: list[int],
    make_norm: Callable[..., list[nn.Module]],
    placement: str,
    activation: type[nn.Module],
) -> nn.Sequential:
    """Flatten -> [Linear -> (norm) -> activation -> (norm)] per hidden width ->
    Linear. The modules are created in the same order for every option, so a seed
    gives the same initial weights with or without a normalisation layer (a plug-in
    that draws random numbers when it is made moves the later layers' draws)."""
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
    return nn.Sequential(*layers)


def plugin_model(
    model_cfg, input_shape: tuple, num_classes: int, make_norm
) -> nn.Module:
    """model._target_'s network, with any failure as one ConfigError line."""
    target = model_cfg["_target_"]
    args = model_cfg.get("args") or {}
    args = OmegaConf.to_container(args) if OmegaConf.is_config(args) else dict(args)
    try:
        factory = get_object(target)
    except Exception as err:  # noqa: BLE001 - hydra wraps import errors
        raise ConfigError(f"model._target_={target}: {_first_line(err)}") from err
    try:
        model = factory(
            input_shape=input_shape, num_classes=num_classes,
            hidden=list(model_cfg.hidden), norm=make_norm,
            norm_placement=option_value(model_cfg.norm_placement),
            activation=ACTIVATIONS[option_value(model_cfg.activation)], **args,
        )  # fmt: skip
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the factory's own error, one line
        raise ConfigError(f"model._target_={target}: {_first_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model._target_={target} made a {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    return model


def norm_factory(norm, model_cfg) -> Callable[..., list[nn.Module]]:
    """(a layer's width, dims) -> its normalisation modules ([] for none); dims=2
    for a conv layer's feature maps (B, C, H, W)."""
    eps, momentum = model_cfg.norm_eps, model_cfg.bn_momentum
    if norm == "batchnorm":
        batch_norms = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
        return lambda width, dims=1: [
            batch_norms[dims](width, eps=eps, momentum=momentum)
        ]
    if norm == "layernorm":

        def layer_norm(width: int, dims: int = 1) -> list[nn.Module]:
            if dims != 1:
                raise ConfigError(
                    "model.norm=layernorm normalises each sample over a layer's "
                    "units, not a feature map's channels: for a conv model use a "
                    "plug-in, e.g. model.norm={_target_: torch.nn.GroupNorm, "
                    "num_groups: 1}"
                )
            return [nn.LayerNorm(width, eps=eps)]

        return layer_norm
    if is_plugin(norm):
        make = plugin_factory(norm)
        return lambda width, dims=1: [make(width)]
    if norm == "none":
        return lambda width, dims=1: []
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
    model_cfg, input_shape: Sequence[int] = (28, 28), num_classes: int = 10
) -> nn.Module:
    """build_model and one forward and backward pass of a tiny fixed batch in
    training mode: what a run meets at its first step (a plug-in that cannot be
    made, returns another shape or fails on a batch), found as one ConfigError line
    before anything is trained or written. Draws no random number from the
    process's stream (forked) and touches no run's model."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_cfg, input_shape, num_classes)
        shape = (4, *input_shape)
        x = torch.linspace(-1.0, 1.0, math.prod(shape)).view(shape)
        try:
            logits = model(x)
            if tuple(logits.shape) != (4, num_classes):
                raise ValueError(
                    f"logits of shape {tuple(logits.shape)}, not (4, {num_classes}) "
                    f"for 4 samples of {num_classes} classes"
                )
            logits.sum().backward()
        except Exception as err:  # noqa: BLE001 - a plug-in's error, as one line
            raise ConfigError(
                f"{plugin_name(model_cfg)} fails on a batch of 4: {_first_line(err)}"
            ) from err
    return model


def plugin_name(model_cfg) -> str:
    """What a set-up error names: the model's or the norm's plug-in."""
    if model_cfg.get("_target_"):
        return f"model._target_={model_cfg['_target_']}"
    if is_plugin(model_cfg.norm):
        return f"model.norm: {model_cfg.norm['_target_']}"
    return "model.norm: the model"


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any layer normalises over the batch (it cannot train on one sample)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
