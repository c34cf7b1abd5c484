"""build_model(model_cfg) -> the MLP: any widths, activation, normalisation, init."""

from torch import nn

from fashionbn.config import ConfigError, option_value
from fashionbn.config.validation import hidden_widths_problem

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def build_model(
    model_cfg, in_features: int = 28 * 28, num_classes: int = 10
) -> nn.Sequential:
    """Flatten -> [Linear -> (norm) -> activation -> (norm)] per hidden width ->
    Linear. `in_features` and `num_classes` are facts of the dataset, not config keys.

    The modules are created in the same order for every option, so a seed gives the
    same initial weights with or without a normalisation layer."""
    hidden = list(model_cfg.hidden)
    if problem := hidden_widths_problem(hidden):
        raise ConfigError(problem)
    norm, placement = (
        option_value(model_cfg.norm),
        option_value(model_cfg.norm_placement),
    )
    activation = ACTIVATIONS[option_value(model_cfg.activation)]

    layers: list[nn.Module] = [nn.Flatten()]  # (B, 28, 28) -> (B, 784)
    for width in hidden:
        layers.append(nn.Linear(in_features, width))  # (B, in) -> (B, width)
        norm_layer = _norm(norm, width, model_cfg)
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


def _norm(norm: str, width: int, model_cfg) -> list[nn.Module]:
    if norm == "batchnorm":
        eps, momentum = model_cfg.norm_eps, model_cfg.bn_momentum
        return [nn.BatchNorm1d(width, eps=eps, momentum=momentum)]
    if norm == "layernorm":
        return [nn.LayerNorm(width, eps=model_cfg.norm_eps)]
    return []


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any layer normalises over the batch (it cannot train on one sample)."""
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
