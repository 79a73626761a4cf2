"""Config composition, schema errors at compose time, range checks with one-line messages."""
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import pytest
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from edgesplit.config import CONF_DIR, compose_config
from edgesplit.validate import validate, validate_partition
from edgesplit.errors import ConfigError
from edgesplit.run.job_config import job_config
from tests.conftest import ROOT


def test_defaults_are_the_seeds_first_study() -> None:
    cfg = compose_config([])
    assert cfg.model._target_ == "edgesplit.model.mobilenetv2.mobilenetv2_units" and cfg.model.width == 1.0
    assert cfg.model.num_classes is None  # the dataset's
    assert cfg.data.name == "cifar10" and cfg.data._target_ == "edgesplit.data.cifar.cifar10"
    assert cfg.data.batch_size == 1024 and cfg.data.augment and cfg.data.download and cfg.data.root == "data"
    assert (cfg.partition.front, cfg.partition.back) == (1, 1)
    assert cfg.compressor.name == "prune" and cfg.compressor.ratio == 0.1
    assert cfg.compressor.activation.ratio == 0.1  # follows compressor.ratio
    s = cfg.schedule
    assert (s.lr, s.epochs, s.warmup_epochs, s.momentum, s.weight_decay) == (0.4, 200, 20, 0.9, 1e-4)
    assert cfg.pipeline_backend.name == "gpipe" and cfg.pipeline_backend.chunks == 4
    assert cfg.pipeline_backend.deferred_batch_norm is False
    assert cfg.pipeline_backend._target_ == "edgesplit.backends.gpipe.GPipeBackend"
    assert (cfg.seed, cfg.resume, cfg.hparam_keys) == (0, False, [])
    assert "experiment_name" not in cfg
    validate(cfg)
    validate_partition(cfg.partition, 20)


@pytest.mark.parametrize("option, target, batch_size", [
    ("cifar10", "edgesplit.data.cifar.cifar10", 1024),
    ("digits", "edgesplit.data.datasets.digits", 128),
    ("synthetic", "edgesplit.data.datasets.synthetic", 256),
])
def test_data_options_are_targets_with_their_own_defaults(option: str, target: str, batch_size: int) -> None:
    d = compose_config([f"data={option}"]).data
    assert (d.name, d._target_, d.batch_size) == (option, target, batch_size)
    assert d.train_size is None and d.val_size is None  # the whole split
    assert ("root" in d) == (option == "cifar10")  # only CIFAR-10 has files, a download and augmentation


@pytest.mark.parametrize("option, target, chunks", [
    ("naive", "edgesplit.backends.naive.NaiveBackend", 1),
    ("gpipe", "edgesplit.backends.gpipe.GPipeBackend", 4),
    ("dist", "edgesplit.backends.remote.RemoteBackend", 4),
])
def test_backend_options_are_targets_and_keep_their_name(option: str, target: str, chunks: int) -> None:
    b = compose_config([f"pipeline_backend={option}"]).pipeline_backend
    assert (b.name, b._target_, b.chunks, b.checkpoint) == (option, target, chunks, "except_last")
    assert ("order" in b) == (option == "dist")


@pytest.mark.parametrize("value, mode", [("true", "true"), ("false", "false"), ("force", "force"),
                                         ("True", "true")])
def test_resume_takes_false_true_and_force(value: str, mode: str) -> None:
    from edgesplit.validate import resume_mode
    cfg = compose_config([f"resume={value}"])
    validate(cfg)
    assert resume_mode(cfg) == mode


def test_extra_keys_of_a_model_still_reach_its_target() -> None:
    validate(compose_config(["+model.depth=3", "data=digits", "+data.flavour=x"]))


def test_schema_options_are_not_offered_as_choices() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["compressor=bogus"])
    options = str(info.value).split("Available options in 'compressor':")[1].split("Config search")[0].split()
    # the yaml files of conf/compressor and nothing else (no schemas/...)
    assert options == sorted(p.stem for p in (CONF_DIR / "compressor").glob("*.yaml"))
    assert {"none", "prune", "quantize", "quantize4", "delta2", "bottleneck4"} <= set(options)
    for group in ("compressor=schema_quantize", "pipeline_backend=schema_dist", "partition=schema"):
        with pytest.raises(ConfigCompositionException):
            compose_config([group])


def test_simple_keys_drive_the_codec_specs() -> None:
    cfg = compose_config(["compressor=quantize", "compressor.bits=4"])
    assert cfg.compressor.activation.bits == 4 and cfg.compressor.gradient.bits == 4


@pytest.mark.parametrize("overrides, message", [
    (["partition.front=0"], "partition.front=0 is invalid: must be >= 1"),
    (["partition.back=0"], "partition.back=0 is invalid: must be >= 1"),
    (["partition.front=15", "partition.back=5"], "must be < 20 (the model has 20 units"),
    (["partition.cloud_stages=19"], "partition.cloud_stages=19 is invalid: must be in 1..18"),
    (["partition.cloud_stages=0"], "partition.cloud_stages=0 is invalid: must be >= 1"),
    (["compressor.ratio=0"], "compressor.ratio=0.0 is invalid: must be in (0, 1]"),
    (["compressor.ratio=1.5"], "compressor.ratio=1.5 is invalid"),
    (["compressor=quantize", "compressor.bits=17"], "compressor.bits=17 is invalid: must be in 1..16"),
    (["pipeline_backend.chunks=0"], "pipeline_backend.chunks=0 is invalid: must be in 1..data.batch_size"),
    (["pipeline_backend.chunks=2000"], "must be in 1..data.batch_size (1024)"),
    (["pipeline_backend.checkpoint=sometimes"], "allowed: always, except_last, never"),
    (["schedule.lr=-1"], "schedule.lr=-1.0 is invalid: must be finite and > 0"),
    (["schedule.lr=inf"], "schedule.lr=inf is invalid: must be finite and > 0"),
    (["schedule.lr=nan"], "schedule.lr=nan is invalid: must be finite and > 0"),
    (["log_every=0"], "log_every=0 is invalid: must be >= 1"),
    (["model.width=100"], "model.width=100.0 is invalid: must be in (0, 8]"),
    (["pipeline_backend=naive", "pipeline_backend.chunks=3"],
     "pipeline_backend.chunks=3 is invalid: naive runs the whole batch at once: must be 1"),
    (["resume=maybe"], "resume='maybe' is invalid: allowed: false, true, force"),
    (["+foo=1"], "unknown key foo: not in the schema"),
    (["+partion.front=2"], "unknown key partion: not in the schema"),
    (["+partition.frnt=2"], "unknown key partition.frnt: not in the schema"),
    (["pipeline_backend=dist", "+pipeline_backend.link.delay_ms=5"],
     "unknown key pipeline_backend.link.delay_ms: not in the schema"),
    (["schedule.epochs=0"], "schedule.epochs=0 is invalid: must be >= 1"),
    (["data.train_size=0"], "data.train_size=0 is invalid"),
    (["data.batch_size=0"], "data.batch_size=0 is invalid: must be >= 1"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0 is invalid: must be >= 1 or null"),
    (["data.num_workers=-1"], "data.num_workers=-1 is invalid: must be >= 0"),
    (["data=digits", "data.augment=maybe"], "data.augment='maybe' is invalid: allowed: true, false, fixed"),
    (["model.num_classes=0"], "model.num_classes=0 is invalid: must be >= 1 or null"),
    (["hparam_keys=[seed,schedule.nope]"],
     "hparam_keys='schedule.nope' is invalid: not a key of this config"),
    (["pipeline_backend=dist", "pipeline_backend.order=zero-bubble"],
     "pipeline_backend.order='zero-bubble' is invalid: allowed: gpipe, 1f1b"),
    (["pipeline_backend=dist", "pipeline_backend.role=server"], "pipeline_backend.role='server' is invalid"),
    (["pipeline_backend=dist", "pipeline_backend.link.latency_ms=-1"],
     "pipeline_backend.link.latency_ms=-1.0 is invalid: must be >= 0"),
])
def test_range_checks_name_the_key(overrides: list, message: str) -> None:
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
        validate_partition(cfg.partition, 20)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, exc", [
    (["partition.foo=1"], ConfigCompositionException),  # unknown key
    (["schedule.lr=abc"], ConfigCompositionException),  # wrong type
    (["compressor=none", "compressor.bits=4"], ConfigCompositionException),  # none has no bits
    (["compressor=bogus"], ConfigCompositionException),
    (["data=digits", "data.root=x"], ConfigCompositionException),  # digits reads no files
    (["pipeline_backend.schedule=1f1b"], ConfigCompositionException),  # renamed: pipeline_backend.order
    (["experiment_name=x"], ConfigCompositionException),  # removed: nothing read it
])
def test_schema_rejects_unknown_keys_and_types_at_compose_time(overrides: list, exc: type) -> None:
    with pytest.raises((exc, ConfigKeyError, ValidationError)):
        compose_config(overrides)


# One train.py case per way a mistake is caught (the ranges' own table is in process, above)
MISTAKES = [
    (["+partion.front=2"], "error: unknown key partion: not in the schema"),
    (["pipeline_backend=naive", "pipeline_backend.chunks=3"],
     "error: pipeline_backend.chunks=3 is invalid: naive runs the whole batch at once"),
    (["experiment=quant_lr"], "error: experiment=quant_lr is a sweep of 9 jobs over compressor, "
                              "schedule.lr: add -m to run it"),
    (["-m", "compressor=glob(nomatch*)"], "error: compressor=glob(nomatch*) matches no option of compressor"),
    (["pipeline_backend=dist", "pipeline_backend.role=cloud", "pipeline_backend.master_port=70000"],
     "error: pipeline_backend.master_port=70000 is invalid: must be in 1..65535"),  # the cloud's own check
]
# train.py's command lines of this module's tests (each ends before training; -m goes first)
COMMANDS = {**{f"mistake{i}": sorted(["data=digits", *args], key=lambda a: a != "-m")
               for i, (args, _) in enumerate(MISTAKES)},
            "bad_value": ["data=digits", "partition.front=0"], "unknown_key": ["partition.frnt=2"],
            "preset_one_job": ["experiment=quant_lr", "compressor=quantize8", "schedule.lr=0.1",
                               "log_every=0"],
            "preset_sweep": ["experiment=quant_lr", "schedule.lr=0.1", "log_every=0"]}


@pytest.fixture(scope="module")
def train_py(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, subprocess.CompletedProcess]:
    """Each of COMMANDS through train.py, 4 processes at a time (each pays torch's and Hydra's
    imports, then stops at its mistake): name -> the process, run in <its dir>, hydra.run.dir <dir>/run."""
    root = tmp_path_factory.mktemp("train_py")

    def one(name: str) -> subprocess.CompletedProcess:
        (root / name).mkdir()
        return subprocess.run([sys.executable, str(ROOT / "train.py"), *COMMANDS[name],
                               f"hydra.run.dir={root / name}/run"], cwd=root / name,
                              capture_output=True, text=True, timeout=300)
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(COMMANDS, pool.map(one, COMMANDS)))


@pytest.mark.slow
def test_bad_value_exits_nonzero_with_one_line(train_py: Dict[str, subprocess.CompletedProcess]) -> None:
    proc = train_py["bad_value"]
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "partition.front=0 is invalid: must be >= 1" in out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if "ERROR" in line]) == 1


@pytest.mark.slow
def test_unknown_key_exits_nonzero_naming_it(train_py: Dict[str, subprocess.CompletedProcess]) -> None:
    """Before Hydra: its message (several lines, advising +partition.frnt=2) never shows; nothing is
    written."""
    proc = train_py["unknown_key"]
    assert proc.returncode == 1
    assert proc.stderr.endswith("[edgesplit][ERROR] - error: partition.frnt is not a key of the config: "
                                "did you mean partition.front?\n"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not Path(proc.args[-1].split("=", 1)[1]).exists()


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(MISTAKES)), ids=[message for _, message in MISTAKES])
def test_user_mistakes_are_one_line_and_exit_1(train_py: Dict[str, subprocess.CompletedProcess],
                                               i: int) -> None:
    proc, message = train_py[f"mistake{i}"], MISTAKES[i][1]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert message in out and "Traceback" not in out
    assert [line for line in out.splitlines() if "ERROR" in line] == [
        line for line in out.splitlines() if message in line]
    run_dir = Path(proc.args[-1].split("=", 1)[1])
    assert not run_dir.exists()  # refused before Hydra writes .hydra/ and train.log (run/guard.py)


@pytest.mark.slow
def test_a_sweep_preset_with_each_swept_key_given_is_one_job(
        train_py: Dict[str, subprocess.CompletedProcess]) -> None:
    out = train_py["preset_one_job"].stdout + train_py["preset_one_job"].stderr
    assert train_py["preset_one_job"].returncode == 1 and "add -m" not in out  # it went on, to the next check
    assert "error: log_every=0 is invalid" in out
    out = train_py["preset_sweep"].stdout + train_py["preset_sweep"].stderr
    assert "error: experiment=quant_lr is a sweep of 3 jobs over compressor: add -m" in out


@pytest.mark.parametrize("mode, overrides, chunks, note", [
    # a preset's micro-batches: naive ignores them, saying so (`experiment=smoke pipeline_backend=naive`)
    (RunMode.RUN, ["experiment=smoke", "pipeline_backend=naive"], 1, "chunks=2 from the preset or config"),
    # a sweep's shared overrides (README's shrunk backends study: $S holds pipeline_backend.chunks=2)
    (RunMode.MULTIRUN, ["pipeline_backend=naive", "pipeline_backend.chunks=2"], 1,
     "chunks=2 from the sweep's shared overrides"),
    (RunMode.RUN, ["pipeline_backend=gpipe", "pipeline_backend.chunks=2"], 2, None),  # gpipe keeps them
    (RunMode.RUN, ["pipeline_backend=naive", "pipeline_backend.chunks=4"], None,  # typed: refused
     "pipeline_backend.chunks=4 is invalid: naive runs the whole batch at once"),
])
def test_naive_ignores_the_chunks_of_a_preset_or_sweep_and_refuses_typed_ones(
        mode: RunMode, overrides: list, chunks: Optional[int], note: Optional[str]) -> None:
    hydra_cfg = OmegaConf.create({"mode": mode, "overrides": {"task": overrides},
                                  "sweeper": {"params": None}, "runtime": {"choices": {}}})
    cfg = compose_config(["data.batch_size=64", *overrides])
    if chunks is None:
        with pytest.raises(ConfigError, match=re.escape(str(note))):
            job_config(cfg, hydra_cfg)
        return
    checked, said = job_config(cfg, hydra_cfg)
    assert checked.pipeline_backend.chunks == chunks and cfg.pipeline_backend.chunks == 2  # a new config
    assert said == (None if note is None else
                    f"pipeline_backend=naive runs the whole batch at once: pipeline_backend.{note} is "
                    f"ignored (chunks 1)")


@pytest.mark.parametrize("overrides, refused", [
    (["schedule.epochs=5", "schedule.warmup_epochs=100"], True),  # typed: the user asked for it
    (["schedule.epochs=5"], False),  # the default 20: validate's warning (test_bad_inputs)
    (["schedule.epochs=5", "schedule.warmup_epochs=5"], False),
])
def test_a_typed_warm_up_longer_than_the_run_is_refused(overrides: list, refused: bool) -> None:
    hydra_cfg = OmegaConf.create({"mode": RunMode.RUN, "overrides": {"task": overrides},
                                  "sweeper": {"params": None}, "runtime": {"choices": {}}})
    cfg = compose_config(overrides)
    if not refused:
        job_config(cfg, hydra_cfg)
        return
    with pytest.raises(ConfigError, match=re.escape(
            "schedule.warmup_epochs=100 is invalid: must be at most schedule.epochs=5, or the learning "
            "rate never reaches schedule.lr")):
        job_config(cfg, hydra_cfg)


def test_each_boundary_can_have_its_own_codec() -> None:
    from edgesplit.codecs import Identity, Quantize
    from edgesplit.codecs.build import build_codecs
    cfg = compose_config(["compressor=quantize", "compressor.bits=4",
                          "compressor.front={activation: {_target_: edgesplit.codecs.Identity}}"])
    codecs = build_codecs(cfg.compressor)
    assert isinstance(codecs["front"].activation, Identity)
    assert isinstance(codecs["front"].gradient, Quantize) and codecs["front"].gradient.bits == 4
    assert isinstance(codecs["back"].activation, Quantize) and codecs["back"].activation.bits == 4


def test_a_codec_target_that_is_not_a_codec_is_a_config_error() -> None:
    from edgesplit.codecs.build import build_codecs
    cfg = compose_config(["compressor.activation={_target_: collections.OrderedDict}"])
    with pytest.raises(ConfigError, match="compressor.activation: _target_ must build an edgesplit"):
        build_codecs(cfg.compressor)
    cfg = compose_config(["compressor.activation={_target_: edgesplit.codecs.Nope}"])
    with pytest.raises(ConfigError, match="compressor.activation: cannot build the codec"):
        build_codecs(cfg.compressor)


def test_hparam_keys_add_to_the_hparams_view() -> None:
    from edgesplit.logs.logbook import hparam_values
    cfg = compose_config(["hparam_keys=[schedule.momentum,data.num_workers]"])
    validate(cfg)
    values = hparam_values(cfg, ["compressor=prune"])
    assert values["schedule.momentum"] == 0.9 and values["data.num_workers"] == 2
    assert values["compressor"] == "prune" and values["schedule.lr"] == 0.4
    assert "schedule.momentum" not in hparam_values(compose_config([]), [])


def test_a_model_or_data_target_that_cannot_be_built_is_one_line_naming_the_key() -> None:
    from edgesplit.data.datasets import build_datasets
    from edgesplit.model.mobilenetv2 import build_units
    cases = [
        (lambda: build_units(compose_config(["model._target_=edgesplit.model.mobilenetv2.nope"]).model, 10),
         "model._target_='edgesplit.model.mobilenetv2.nope' cannot be built: "),
        (lambda: build_units(compose_config(["+model.depth=3"]).model, 10),
         "unexpected keyword argument 'depth'"),
        (lambda: build_units(compose_config(["model._target_=collections.OrderedDict"]).model, 10),
         "model._target_='collections.OrderedDict' must return a list of torch.nn.Module layer units"),
        (lambda: build_datasets(compose_config(["data=digits", "data._target_=nopkg.data"]).data),
         "data._target_='nopkg.data' cannot be built: "),
        (lambda: build_datasets(compose_config(["data=digits",
                                                "data._target_=edgesplit.data.datasets.first_n"]).data),
         "data._target_='edgesplit.data.datasets.first_n' cannot be built: "),
        (lambda: build_datasets(compose_config(["data=digits", "data._target_=builtins.dict"]).data),
         "data._target_='builtins.dict' must return edgesplit.data.datasets.Datasets, got dict"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError) as info:
            build()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_a_data_error_of_the_target_passes_through(tmp_path) -> None:
    from edgesplit.data.datasets import build_datasets
    from edgesplit.errors import DataError
    cfg = compose_config([f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError, match=f"CIFAR-10 not found under {tmp_path} \\(data.root\\)"):
        build_datasets(cfg.data)
