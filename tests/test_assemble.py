"""The one assembly of a run: typed parts from a composed config, which stays as it was."""
import json
import re
from pathlib import Path
from typing import Callable, List

import pytest
from omegaconf import OmegaConf

from edgesplit.assemble import RunSpec, assemble
from edgesplit.assemble.wire import from_data, to_data
from edgesplit.errors import ConfigError
from edgesplit.run import trainer
from edgesplit.validate import validate

PACKAGE = Path(__file__).resolve().parents[1] / "edgesplit"
# Where the config may be written to: the schema and its checks (nothing else builds or edits it).
ALLOWED = {PACKAGE / "config.py", PACKAGE / "validate.py"}
# An assignment to a config attribute or item, or an OmegaConf.update of it
WRITES = [re.compile(r"\bcfg(\.[A-Za-z_]\w*)+\s*=[^=]"), re.compile(r"\bcfg\[[^\]]+\]\s*=[^=]"),
          re.compile(r"OmegaConf\.update\(")]


def config_writes(source: str) -> List[str]:
    """The lines of `source` that write into a config."""
    return [line.strip() for line in source.splitlines() if any(w.search(line) for w in WRITES)]


def test_the_parts_hold_what_the_data_decides_and_the_config_stays_as_it_was(make_cfg: Callable) -> None:
    cfg = make_cfg("compressor=bottleneck", "partition.front=2", "partition.back=1")
    before = OmegaConf.to_container(cfg)
    parts = assemble(cfg)
    assert OmegaConf.to_container(cfg) == before and cfg.model.num_classes is None
    spec = parts.spec
    # data=digits: ten classes, 8x8 scans upsampled to 32x32 in 3 channels, cut to TINY's sizes
    assert (spec.facts.num_classes, spec.facts.train_size, spec.facts.val_size) == (10, 256, 128)
    assert spec.facts.input_shape == (3, 32, 32) and spec.model.num_classes == 10
    assert spec.codecs.num_samples == 256  # rows of per-sample codec state
    assert spec.codecs.bottleneck is not None and spec.codecs.bottleneck.ratio == 0.25
    front, back = spec.codecs.bottleneck.shapes
    assert len(front) == 3 and len(back) == 3  # the model's tensors at both boundaries
    assert (parts.split.front, parts.split.back) == (3, 2)  # the encoder ends each sender
    assert (spec.pipeline.name, spec.precision.name, spec.optimizer.target["lr"]) == ("gpipe", "fp32", 0.05)
    assert parts.datasets is not None and len(parts.datasets.train) == 256  # type: ignore[arg-type]


def test_the_run_spec_travels_as_json() -> None:
    from tests.dist_helpers import assembled, config
    spec = assembled(config(stages=2, compressor="bottleneck", secret="not on the wire")).spec
    assert spec.pipeline.dist is not None and spec.pipeline.dist.order == "gpipe"
    again = from_data(RunSpec, json.loads(json.dumps(to_data(spec))))
    assert again == spec
    with pytest.raises(ValueError, match="RunSpec: unknown fields \\['cfg'\\], missing \\['codecs'\\]"):
        from_data(RunSpec, {**{k: v for k, v in to_data(spec).items() if k != "codecs"}, "cfg": {}})


def test_a_training_run_leaves_its_config_as_it_was(make_cfg: Callable, tmp_path: Path) -> None:
    cfg = make_cfg("schedule.epochs=1", "compressor=delta")
    before = OmegaConf.to_container(cfg)
    assert trainer.run(cfg, tmp_path / "run", [])["status"] == "finished"
    assert OmegaConf.to_container(cfg) == before


@pytest.mark.parametrize("override, allowed", [
    ("compressor.rounding=up", "compressor.rounding='up' is invalid: allowed: nearest, stochastic"),
    ("compressor.cache_dtype=int8", "allowed: float16, bfloat16, float32"),
    ("precision=fp8", "precision='fp8' is invalid: allowed: fp32, bf16, fp16"),
    ("compressor.entropy=lz4", "allowed: none, zlib, zstd"),
    ("checkpoint.monitor=val/acc2", "checkpoint.monitor='val/acc2' is invalid: allowed: val/acc1, val/acc5, "
                                    "val/loss, train/acc1, train/loss"),
    ("checkpoint.mode=best", "checkpoint.mode='best' is invalid: allowed: max, min"),
])
def test_each_option_list_is_checked_in_one_line(make_cfg: Callable, override: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("compressor=delta", override))
    assert allowed in str(info.value) and "\n" not in str(info.value)


def test_nothing_in_edgesplit_writes_into_a_config_outside_validation() -> None:
    planted = "    cfg.compressor.num_samples = len(train)\n    ok = cfg.seed == 0\n    cfg['x'] = 1\n"
    assert config_writes(planted) == ["cfg.compressor.num_samples = len(train)", "cfg['x'] = 1"]
    writes = {str(path.relative_to(PACKAGE)): config_writes(path.read_text())
              for path in sorted(PACKAGE.rglob("*.py")) if path not in ALLOWED}
    assert {path: lines for path, lines in writes.items() if lines} == {}
