"""Model invariants that must not drift: layer order, parameter counts, output shape."""

import pytest
import torch
from torch import nn

from fashionbn.model import build_model, count_parameters
from tests.conftest import compose_config


def layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model]


def test_baseline_is_the_original_architecture() -> None:
    model = build_model(compose_config(["model=baseline"]).model)
    assert layer_types(model) == [
        nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    shapes = [
        (m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)
    ]
    assert shapes == [(784, 64), (64, 32), (32, 10)]
    # 784*64+64 + 64*32+32 + 32*10+10
    assert count_parameters(model) == 52_650


def test_batchnorm_puts_bn_before_each_relu() -> None:
    model = build_model(compose_config(["model=batchnorm"]).model)
    assert layer_types(model) == [
        nn.Flatten,
        nn.Linear, nn.BatchNorm1d, nn.ReLU,
        nn.Linear, nn.BatchNorm1d, nn.ReLU,
        nn.Linear,
    ]  # fmt: skip
    assert [m.num_features for m in model if isinstance(m, nn.BatchNorm1d)] == [64, 32]
    # baseline + 2*(64+32) BN weights and biases; running stats are buffers
    assert count_parameters(model) == 52_842


def test_batchnorm_after_relu_placement() -> None:
    model = build_model(compose_config(["model=batchnorm_after"]).model)
    assert layer_types(model)[1:4] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert count_parameters(model) == 52_842


def test_bn_hyperparameters_are_overridable() -> None:
    cfg = compose_config(
        ["model=batchnorm", "model.bn_momentum=0.3", "model.bn_eps=0.01"]
    )
    bn = [m for m in build_model(cfg.model) if isinstance(m, nn.BatchNorm1d)]
    assert {(m.momentum, m.eps) for m in bn} == {(0.3, 0.01)}


@pytest.mark.parametrize("model_name", ["baseline", "batchnorm", "batchnorm_after"])
@pytest.mark.parametrize("hidden", [[64, 32], [128, 64, 32], [16]])
def test_any_depth_gives_logits_for_ten_classes(
    model_name: str, hidden: list[int]
) -> None:
    cfg = compose_config([f"model={model_name}", f"model.hidden={hidden}"])
    model = build_model(cfg.model)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden, 10]
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("hidden", ["[]", "[64,0]", "[-3]"])
def test_bad_hidden_sizes_are_refused(hidden: str) -> None:
    cfg = compose_config([f"model.hidden={hidden}"])
    with pytest.raises(ValueError, match="model.hidden"):
        build_model(cfg.model)
