"""Cutting the unit list into edge-front | cloud stage(s) | edge-back."""
import pytest

from edgesplit.model.mobilenetv2 import mobilenetv2_units
from edgesplit.model.partition import split_units, unit_costs


def test_front_and_back_count_units_from_each_end() -> None:
    split = split_units(mobilenetv2_units(0.25), front=3, back=2)
    assert len(split.edge_front) == 3 and len(split.edge_back) == 2
    assert split.edge_indices == [0, 1, 2, 18, 19]
    assert [list(split.cloud_range(0))] == [list(range(3, 18))]


def test_cloud_stages_cover_the_cloud_in_order_and_balance_compute() -> None:
    units = mobilenetv2_units(1.0)
    split = split_units(units, front=1, back=1, cloud_stages=3)
    ranges = [list(split.cloud_range(s)) for s in range(3)]
    assert sum(ranges, []) == list(range(1, 19))
    assert all(ranges)
    costs = unit_costs(units)
    work = [sum(costs[i] for i in r) for r in ranges]
    assert max(work) < 0.45 * sum(work)  # a third each, within one unit
    assert all(u.training for unit in units for u in unit.modules())  # the probe left train mode


def test_unit_costs_are_the_multiply_accumulates_of_one_sample() -> None:
    costs = unit_costs(mobilenetv2_units(1.0))
    assert costs[0] == 32 * 32 * 32 * 27  # stem: 3x3x3 conv to 32 channels at 32x32
    assert costs[19] == 1280 * 10  # classifier
    assert 85e6 < sum(costs) < 100e6  # MobileNetV2 for CIFAR: ~91M MACs per image


def test_every_stage_gets_a_unit_when_stages_equal_units() -> None:
    split = split_units(mobilenetv2_units(0.25), front=9, back=9, cloud_stages=2)
    assert [list(split.cloud_range(s)) for s in range(2)] == [[9], [10]]


def test_no_cloud_unit_is_an_error() -> None:
    with pytest.raises(ValueError, match="leave no cloud unit"):
        split_units(mobilenetv2_units(0.25), front=10, back=10)
