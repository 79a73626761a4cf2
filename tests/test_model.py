"""MobileNetV2 for CIFAR as 20 layer units, as the seed's."""
import torch

from edgesplit.model import mobilenetv2_units


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
