"""Bring your own model and dataset: tests/custom_model.py plugged in by `_target_`, trained by train.py."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

from edgesplit.codecs import Quantize
from edgesplit.config import compose_config
from edgesplit.data.datasets import build_datasets
from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import build_units, check_num_classes
from edgesplit.model.partition import split_units
from tests import custom_model
from tests.conftest import ROOT

MODEL = "model._target_=tests.custom_model.units"
# on an option without files (digits, synthetic): on cifar10 its root, download, augment would be passed too
BLOBS = "data._target_=tests.custom_model.blobs"


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _boundary_shapes(width: float, micro_batch: int, front: int, back: int) -> Tuple[Tuple[int, ...], ...]:
    """The activations crossing the front and back boundaries for one micro-batch of digits."""
    units = custom_model.units(num_classes=10, width=width)
    x, shapes = torch.zeros(micro_batch, 3, 32, 32), {}
    with torch.no_grad():
        for i, unit in enumerate(units):
            x = unit.eval()(x)
            shapes[i + 1] = tuple(x.shape)
    return shapes[front], shapes[len(units) - back]


@pytest.mark.slow
def test_own_model_trains_through_train_py_with_the_bytes_its_split_sends(tmp_path: Path) -> None:
    batch, chunks, width = 32, 2, 0.5
    proc = _train(tmp_path, MODEL, f"model.width={width}", "data=digits", "data.train_size=256",
                  "data.val_size=128", f"data.batch_size={batch}", "schedule.epochs=2",
                  "schedule.warmup_epochs=1", "schedule.lr=0.05", "threads=1", "pipeline_backend=gpipe",
                  f"pipeline_backend.chunks={chunks}", "compressor=quantize", "partition.front=2",
                  "partition.back=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert summary["val_acc1"] > 50  # chance is 10%; it reaches 76.6% in these 16 steps (1 thread)
    assert "edge units [0, 1, 4], cloud stages [[2, 3]]" in proc.stderr + proc.stdout

    # every micro-batch crosses each boundary once per pass, quantized to 8 bits both ways
    front_shape, back_shape = _boundary_shapes(width, batch // chunks, front=2, back=1)
    assert front_shape == (16, 16, 16, 16) and back_shape == (16, 256)
    codec = Quantize(8)
    sent: Dict[str, int] = {}
    for boundary, shape in (("front", front_shape), ("back", back_shape)):
        payload = codec.encode(torch.randn(shape)).numel()
        for pass_ in ("forward", "backward"):
            sent[f"{boundary}_{pass_}"] = chunks * payload
            raw = summary["comm"][f"raw_{boundary}_{pass_}_bytes_per_batch"]
            assert raw == chunks * 4 * torch.Size(shape).numel()  # fp32
    comm = summary["comm"]
    for key, value in sent.items():
        assert comm[f"{key}_bytes_per_batch"] == value, key
    assert comm["up_bytes_per_batch"] == sent["front_forward"] + sent["back_backward"]
    assert comm["down_bytes_per_batch"] == sent["back_forward"] + sent["front_backward"]


def test_own_model_and_dataset_build_by_target() -> None:
    cfg = compose_config([MODEL, "data=synthetic", BLOBS, "data.train_size=40", "data.val_size=20",
                          "model.width=0.25"])
    datasets = build_datasets(cfg.data)
    assert (len(datasets.train), len(datasets.val)) == (40, 20)  # type: ignore[arg-type]
    assert (datasets.num_classes, datasets.input_shape) == (4, (3, 16, 16))
    units = build_units(cfg.model, datasets.num_classes)
    assert len(units) == 5 and units[0].get_submodule("0").out_channels == 4  # width 0.25 of 16 channels
    check_num_classes(units, datasets.num_classes, datasets.input_shape)
    x = torch.stack([datasets.train[i][0] for i in range(3)])
    for unit in units:
        x = unit(x)
    assert x.shape == (3, 4)
    split = split_units(units, 1, 1, cloud_stages=2, input_shape=datasets.input_shape)
    assert [list(split.cloud_range(s)) for s in range(2)] == [[1], [2, 3]]


def test_num_classes_that_disagree_with_the_dataset_are_one_line_naming_both() -> None:
    cfg = compose_config([MODEL, "data=synthetic", BLOBS, "model.num_classes=10"])
    with pytest.raises(ConfigError) as info:
        build_units(cfg.model, build_datasets(cfg.data).num_classes)
    msg = str(info.value)
    assert "model.num_classes=10 differs from the dataset's 4 classes" in msg and "\n" not in msg
    agreeing = compose_config([MODEL, "data=synthetic", BLOBS, "model.num_classes=4"])
    assert len(build_units(agreeing.model, 4)) == 5

    # a model that outputs another number of classes than the dataset has, whatever it was asked for
    with pytest.raises(ConfigError) as info:
        check_num_classes(custom_model.units(num_classes=10), 4, custom_model.BLOBS_SHAPE)
    msg = str(info.value)
    assert "outputs shape (10,) per sample but the dataset has 4 classes" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"shape \(1, 16, 16\) does not pass through the units"):
        check_num_classes(custom_model.units(num_classes=4), 4, (1, 16, 16))


@pytest.mark.slow
def test_num_classes_mismatch_ends_train_py_with_one_line(tmp_path: Path) -> None:
    proc = _train(tmp_path, "data=digits", "model.num_classes=5", "model.width=0.125")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "model.num_classes=5 differs from the dataset's 10 classes" in errors[0]


def test_cloud_stages_are_balanced_on_the_datasets_input_shape() -> None:
    # one-channel 8x8 input: the MobileNet-sized 3x32x32 probe would not even pass the first unit
    units = [nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
             nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 64)), nn.Linear(64, 4)]
    split = split_units(units, 1, 1, cloud_stages=2, input_shape=(1, 8, 8))
    assert [list(split.cloud_range(s)) for s in range(2)] == [[1, 2], [3]]  # 36864 + 36864 | 32768 MACs
