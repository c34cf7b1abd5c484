"""build_model(model_cfg) -> the MLP, with or without BatchNorm."""

from torch import nn

from fashionbn.config import ConfigError


def build_model(
    model_cfg, in_features: int = 28 * 28, num_classes: int = 10
) -> nn.Sequential:
    """Flatten -> [Linear -> (BN) -> ReLU -> (BN)] per hidden width -> Linear.

    `in_features` and `num_classes` are facts of the dataset, not config keys."""
    hidden = list(model_cfg.hidden)
    if not hidden or any(width <= 0 for width in hidden):
        raise ConfigError(
            f"model.hidden={hidden}: give one or more positive layer widths, "
            "e.g. model.hidden=[64,32]"
        )
    placement = str(getattr(model_cfg.bn_placement, "value", model_cfg.bn_placement))
    if placement not in ("before", "after"):
        raise ConfigError(f"model.bn_placement={placement}: use before or after")

    layers: list[nn.Module] = [nn.Flatten()]  # (B, 28, 28) -> (B, 784)
    for width in hidden:
        layers.append(nn.Linear(in_features, width))  # (B, in) -> (B, width)
        norm = (
            [
                nn.BatchNorm1d(
                    width, eps=model_cfg.bn_eps, momentum=model_cfg.bn_momentum
                )
            ]
            if model_cfg.batch_norm
            else []
        )
        if placement == "before":
            layers += [*norm, nn.ReLU()]
        else:
            layers += [nn.ReLU(), *norm]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))  # (B, 10) logits
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
