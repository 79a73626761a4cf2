"""ResNet-18 for CIFAR as layer units: the unit list, shapes, parameter count, width."""
import torch

from edgesplit.config import compose_config
from edgesplit.model.mobilenetv2 import build_units
from edgesplit.model.resnet import resnet18_units


def test_ten_units_and_the_standard_parameter_count() -> None:
    units = resnet18_units()
    assert len(units) == 10
    assert sum(p.numel() for u in units for p in u.parameters()) == 11_173_962  # CIFAR ResNet-18


def test_unit_outputs_stem_keeps_32x32_and_each_stage_halves() -> None:
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    with torch.no_grad():
        for unit in resnet18_units(width=0.25, num_classes=7):
            x = unit.eval()(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 32, 32), (16, 32, 32), (16, 32, 32), (32, 16, 16), (32, 16, 16),
                      (64, 8, 8), (64, 8, 8), (128, 4, 4), (128, 4, 4), (7,)]


def test_model_resnet18_option_takes_width_and_the_datasets_classes() -> None:
    units = build_units(compose_config(["model=resnet18", "model.width=0.5"]).model, 100)
    assert len(units) == 10 and units[-1][-1].out_features == 100 and units[0][0].out_channels == 32
