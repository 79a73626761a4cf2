"""privacy.label_leak / input_leak in a run: the figures land in summary.json (per epoch and the
best), metrics.csv and a grid PNG; the range checks name the key (test_privacy_backends: the
attacks change no training figure, in any backend)."""
import csv
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from edgesplit.boundary.boundary import Boundary
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.privacy.checks import validate_measurement
from edgesplit.privacy.inversion import GRID_NAME
from edgesplit.privacy.probe import InputLeak
from edgesplit.privacy.schema import PrivacyConfig
from edgesplit.run import trainer
from tests.sizes import TEST_MODEL, TINY

FIGURES = ["label_auc_norm", "label_auc_cosine", "input_dcor", "inversion_psnr", "inversion_ssim"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A tiny two-epoch run with every attack on (a few decoder steps)."""
    run_dir = tmp_path_factory.mktemp("probed")
    cfg = compose_config([*TINY, *TEST_MODEL, "pipeline_backend=naive", "pipeline_backend.chunks=1",
                          "data.train_size=128", "privacy.label_leak=true", "privacy.input_leak=true",
                          "privacy.batches=1", "privacy.decoder_steps=5", "privacy.scored=32"])
    return {"dir": run_dir, "summary": trainer.run(cfg, run_dir, [])}


@pytest.mark.slow  # a tiny run's seconds
def test_the_figures_are_recorded(probed: Dict[str, Any]) -> None:
    privacy, history = probed["summary"]["privacy"], probed["summary"]["history"]
    assert set(privacy) == {*FIGURES, *(f"{n}_best" for n in FIGURES), "seconds"}
    for name in FIGURES:
        per_epoch = [h["privacy"][name] for h in history]
        assert privacy[name] == per_epoch[-1] and privacy[f"{name}_best"] == max(per_epoch), name
    assert 0.5 <= privacy["label_auc_norm"] <= 1 and 0.5 <= privacy["label_auc_cosine"] <= 1
    assert 0 <= privacy["input_dcor"] <= 1 and privacy["seconds"] > 0
    assert probed["summary"]["train_loss"] == history[-1]["train_loss"]
    with open(probed["dir"] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["privacy/input_dcor"]) for r in rows] == [h["privacy"]["input_dcor"] for h in history]
    assert (probed["dir"] / GRID_NAME).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("key, value, allowed", [
    ("batches", 0, "must be >= 1"), ("aux_fraction", 1.0, "must be in \\(0, 1\\)"),
    ("aux_fraction", 0.0, "must be in \\(0, 1\\)"), ("scored", 3, "must be >= 4"),
    ("decoder_steps", 0, "must be >= 1"),
])
def test_measurement_keys_out_of_range_name_the_key(key: str, value: Any, allowed: str) -> None:
    p = OmegaConf.structured(PrivacyConfig(**{key: value}))
    with pytest.raises(ConfigError, match=f"^privacy.{key}={value!r} is invalid: {allowed}"):
        validate_measurement(p)
    validate_measurement(OmegaConf.structured(PrivacyConfig()))


def test_too_few_images_left_to_score(tmp_path: Path) -> None:
    val = TensorDataset(torch.zeros(8, 1, 4, 4), torch.zeros(8))
    with pytest.raises(ConfigError, match=r"^privacy.aux_fraction=0.75 leaves 2 of the 8 validation "
                                          r"images to score \(see data.val_size\): 4 are needed$"):
        InputLeak([], Boundary.raw("front"), val, PrivacyConfig(aux_fraction=0.75), 0, tmp_path)
