"""MobileNetV2 for CIFAR as 20 layer units, as the seed's; models built by `model._target_`."""
from typing import List

import pytest
import torch

from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import build_units, check_num_classes, mobilenetv2_units


def test_twenty_units_and_the_seeds_parameter_count() -> None:
    units = mobilenetv2_units(width=1.0)
    assert len(units) == 20
    assert sum(p.numel() for u in units for p in u.parameters()) == 2_296_922  # 2.30M


def test_unit_output_shapes_stem_and_second_stage_keep_32x32() -> None:
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    for unit in mobilenetv2_units(width=1.0):
        x = unit(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[0] == (32, 32, 32) and shapes[1] == (16, 32, 32) and shapes[3] == (24, 32, 32)
    assert shapes[4] == (32, 16, 16) and shapes[17] == (320, 4, 4) and shapes[18] == (1280, 4, 4)
    assert shapes[19] == (10,)


def test_width_shrinks_every_unit() -> None:
    small = mobilenetv2_units(width=0.25)
    assert len(small) == 20
    assert sum(p.numel() for u in small for p in u.parameters()) < 250_000
    assert small[0](torch.randn(1, 3, 32, 32)).shape == (1, 8, 32, 32)


def test_build_units_passes_the_datasets_num_classes_and_the_model_keys() -> None:
    cfg = compose_config(["model.width=0.25"])
    units = build_units(cfg.model, 7)
    assert len(units) == 20 and units[0].get_submodule("0").out_channels == 8  # width 0.25 of 32
    with torch.no_grad():
        assert units[-1](torch.zeros(1, 320, 4, 4)).shape == (1, 7)
    assert len(build_units(compose_config(["model.width=0.25", "model.num_classes=7"]).model, 7)) == 20


def test_check_num_classes_probes_in_eval_mode_and_restores_the_modes() -> None:
    units = mobilenetv2_units(width=0.125, num_classes=10)
    units[3].eval()  # a unit the user keeps in eval mode stays so
    modes = [m.training for u in units for m in u.modules()]
    check_num_classes(units, 10, (3, 32, 32))
    assert [m.training for u in units for m in u.modules()] == modes
    stem_bn = units[0].get_submodule("1").state_dict()
    assert int(stem_bn["num_batches_tracked"]) == 0  # eval: no BatchNorm statistics update
    with pytest.raises(ConfigError, match=r"outputs shape \(10,\) per sample but the dataset has 100 "):
        check_num_classes(units, 100, (3, 32, 32))


def names(num_classes: int, width: float) -> List[str]:
    """A `model._target_` that returns the units' names instead of the units."""
    return ["stem", "classifier"]


def test_a_target_that_returns_no_modules_is_a_config_error() -> None:
    cfg = compose_config(["model._target_=tests.test_model.names"])
    with pytest.raises(ConfigError, match="model._target_='tests.test_model.names' must return a list of "
                                          "torch.nn.Module layer units, got list"):
        build_units(cfg.model, 10)
