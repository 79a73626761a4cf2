"""data=imagefolder: generated images in class folders, the split, resizing, errors, training."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from edgesplit.config import compose_config
from edgesplit.data.datasets import Datasets, build_datasets
from edgesplit.errors import DataError
from tests.conftest import ROOT


def _images(root: Path, classes: int = 3, per_class: int = 10, size: int = 20) -> None:
    """per_class PNGs per class folder; class c is bright in channel c, so it can be learnt."""
    rng = np.random.RandomState(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.randint(0, 80, size=(size, size, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(folder / f"{i}.png")


def _data(root: Path, *keys: str) -> Datasets:
    return build_datasets(compose_config(["data=imagefolder", f"data.root={root}", *keys]).data)


def test_class_folders_split_resized_and_normalized(tmp_path: Path) -> None:
    _images(tmp_path)
    ds = _data(tmp_path, "data.image_size=16", "data.augment=false")
    assert (len(ds.train), len(ds.val), ds.num_classes, ds.input_shape) == (24, 6, 3, (3, 16, 16))
    x, y = ds.train[0]
    assert x.shape == (3, 16, 16) and -1 <= float(x.min()) and float(x.max()) <= 1
    assert float(x[y].mean()) > float(x[(y + 1) % 3].mean())  # its class's bright channel
    again = _data(tmp_path, "data.image_size=16", "data.augment=false")
    assert [again.val[i][1] for i in range(6)] == [ds.val[i][1] for i in range(6)]  # fixed split


def test_train_and_val_folders_are_used_as_given(tmp_path: Path) -> None:
    _images(tmp_path / "train", per_class=4)
    _images(tmp_path / "val", per_class=2)
    ds = _data(tmp_path)
    assert (len(ds.train), len(ds.val), ds.num_classes) == (12, 6, 3)
    (tmp_path / "val" / "class_2").rename(tmp_path / "val" / "other")
    with pytest.raises(DataError, match="train/ and val/ hold different class folders"):
        _data(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "holds no usable images"),
    (lambda root: (root / "cats").mkdir(parents=True), "holds no usable images"),
])
def test_a_missing_empty_or_malformed_folder_is_one_line(tmp_path: Path, make: Callable[[Path], object],
                                                         message: str) -> None:
    make(tmp_path / "imgs")
    with pytest.raises(DataError, match=message) as info:
        _data(tmp_path / "imgs")
    assert "\n" not in str(info.value) and "data.root" in str(info.value)


@pytest.mark.slow
def test_an_image_folder_trains_through_train_py_with_adamw(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", per_class=32)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=imagefolder",
                          f"data.root={tmp_path / 'imgs'}", "data.image_size=16", "data.batch_size=16",
                          "model.width=0.125", "optimizer=adamw", "schedule.lr=0.01",
                          "schedule.weight_decay=0.01", "schedule.epochs=5", "schedule.warmup_epochs=1",
                          "compressor=quantize", "pipeline_backend.chunks=2", "threads=1",
                          f"hydra.run.dir={run}"],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_val_acc1"] > 50  # 3 classes
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert any("exp_avg_sq" in s for s in state["optimizer"].values())  # AdamW's state
