"""Config composition, schema errors at compose time, range checks with one-line messages."""
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from edgesplit.config import compose_config, validate
from edgesplit.errors import ConfigError
from tests.conftest import ROOT


def test_defaults_are_the_seeds_first_study() -> None:
    cfg = compose_config([])
    assert cfg.model.name == "mobilenetv2" and cfg.model.width == 1.0
    assert cfg.data.name == "cifar10" and cfg.data.batch_size == 1024 and cfg.data.augment
    assert (cfg.partition.front, cfg.partition.back) == (1, 1)
    assert cfg.compressor.name == "prune" and cfg.compressor.ratio == 0.1
    assert cfg.compressor.activation.ratio == 0.1  # follows compressor.ratio
    s = cfg.schedule
    assert (s.lr, s.epochs, s.warmup_epochs, s.momentum, s.weight_decay) == (0.4, 200, 20, 0.9, 1e-4)
    assert cfg.pipeline_backend.name == "gpipe" and cfg.pipeline_backend.chunks == 4
    assert cfg.pipeline_backend.deferred_batch_norm is False
    validate(cfg, 20)


def test_simple_keys_drive_the_codec_specs() -> None:
    cfg = compose_config(["compressor=quantize", "compressor.bits=4"])
    assert cfg.compressor.activation.bits == 4 and cfg.compressor.gradient.bits == 4


@pytest.mark.parametrize("overrides, message", [
    (["partition.front=0"], "partition.front=0 is invalid: must be >= 1"),
    (["partition.back=0"], "partition.back=0 is invalid: must be >= 1"),
    (["partition.front=15", "partition.back=5"], "must be < 20 (the model has 20 units"),
    (["partition.cloud_stages=19"], "partition.cloud_stages=19 is invalid: must be in 1..18"),
    (["compressor.ratio=0"], "compressor.ratio=0.0 is invalid: must be in (0, 1]"),
    (["compressor.ratio=1.5"], "compressor.ratio=1.5 is invalid"),
    (["compressor=quantize", "compressor.bits=17"], "compressor.bits=17 is invalid: must be in 1..16"),
    (["pipeline_backend.chunks=0"], "pipeline_backend.chunks=0 is invalid: must be in 1..data.batch_size"),
    (["pipeline_backend.chunks=2000"], "must be in 1..data.batch_size (1024)"),
    (["pipeline_backend.checkpoint=sometimes"], "allowed: always, except_last, never"),
    (["schedule.lr=-1"], "schedule.lr=-1.0 is invalid: must be > 0"),
    (["schedule.epochs=0"], "schedule.epochs=0 is invalid: must be >= 1"),
    (["data.train_size=0"], "data.train_size=0 is invalid"),
])
def test_range_checks_name_the_key(overrides: list, message: str) -> None:
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg, 20)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, exc", [
    (["partition.foo=1"], ConfigCompositionException),  # unknown key
    (["schedule.lr=abc"], ConfigCompositionException),  # wrong type
    (["compressor=none", "compressor.bits=4"], ConfigCompositionException),  # none has no bits
    (["compressor=bogus"], ConfigCompositionException),
])
def test_schema_rejects_unknown_keys_and_types_at_compose_time(overrides: list, exc: type) -> None:
    with pytest.raises((exc, ConfigKeyError, ValidationError)):
        compose_config(overrides)


def _train(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_value_exits_nonzero_with_one_line(tmp_path) -> None:
    proc = _train("data=digits", "partition.front=0", f"hydra.run.dir={tmp_path}/run", cwd=str(tmp_path))
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "partition.front=0 is invalid: must be >= 1" in out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if "ERROR" in line]) == 1


def test_unknown_key_exits_nonzero_naming_it(tmp_path) -> None:
    proc = _train("partition.foo=1", f"hydra.run.dir={tmp_path}/run", cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "Key 'foo' not in 'PartitionConfig'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_each_boundary_can_have_its_own_codec() -> None:
    from edgesplit.codecs import Identity, Quantize
    from edgesplit.compression import build_codecs
    cfg = compose_config(["compressor=quantize", "compressor.bits=4",
                          "compressor.front={activation: {_target_: edgesplit.codecs.Identity}}"])
    codecs = build_codecs(cfg.compressor)
    assert isinstance(codecs["front"].activation, Identity)
    assert isinstance(codecs["front"].gradient, Quantize) and codecs["front"].gradient.bits == 4
    assert isinstance(codecs["back"].activation, Quantize) and codecs["back"].activation.bits == 4


def test_a_codec_target_that_is_not_a_codec_is_a_config_error() -> None:
    from edgesplit.compression import build_codecs
    cfg = compose_config(["compressor.activation={_target_: collections.OrderedDict}"])
    with pytest.raises(ConfigError, match="compressor.activation: _target_ must build an edgesplit"):
        build_codecs(cfg.compressor)
    cfg = compose_config(["compressor.activation={_target_: edgesplit.codecs.Nope}"])
    with pytest.raises(ConfigError, match="compressor.activation: cannot build the codec"):
        build_codecs(cfg.compressor)
