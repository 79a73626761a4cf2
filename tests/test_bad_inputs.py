"""Inputs and files that once ended in a traceback or were taken silently: each is one line through
what train.py runs (validate, then assemble; resume's checks for a checkpoint), or a warning."""
import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
from hydra import initialize_config_dir
from omegaconf import DictConfig

from edgesplit.assemble import assemble
from edgesplit.config import CONF_DIR, compose_config
from edgesplit.errors import UserError
from edgesplit.run import checkpoint, trainer
from edgesplit.run.guard import empty_sweep
from edgesplit.run.resume import load_state
from edgesplit.validate import validate
from tests.conftest import TEST_MODEL
from tests.trained_run import TRAINED, TrainedRun

DIST, B = "pipeline_backend=dist", "pipeline_backend."
SEEDS = "is invalid: must be in 0..9223372036854775807"
LINK = [DIST, f"{B}chunks=2"]  # 32 samples a micro-batch
BAD_INPUTS = [
    ([DIST, f"{B}master_port=70000"], f"{B}master_port=70000 is invalid: must be in 1..65535"),
    ([DIST, f"{B}master_port=-1"], f"{B}master_port=-1 is invalid: must be in 1..65535"),
    ([DIST, f"{B}timeout_s=inf"], f"{B}timeout_s=inf is invalid: must be finite and at most 86400 (a day"),
    ([DIST, f"{B}timeout_s=1e300"], f"{B}timeout_s=1e+300 is invalid: must be finite"),
    ([DIST, f"{B}link.latency_ms=inf"],
     f"{B}link.latency_ms=inf is invalid: must be finite and at most 60000 (a minute)"),
    ([DIST, f"{B}link.latency_ms=5000", f"{B}timeout_s=5"],
     f"{B}link.latency_ms=5000.0 is invalid: must be below {B}timeout_s (5 s)"),
    (["compressor=delta", "compressor.cache_dir=/proc/nonexistent/x"],
     "compressor.cache_dir='/proc/nonexistent/x' is invalid: cannot create or write a file there: "),
    (["seed=99999999999999999999"], f"seed=99999999999999999999 {SEEDS}"),
    (["seed=18446744073709551616"], f"seed=18446744073709551616 {SEEDS}"),
    (["seed=-1"], f"seed=-1 {SEEDS}"),
    (["data.name=imagenet"], "data.name='imagenet' is invalid: must be 'digits', the name of data._target_ "
                             "(edgesplit.data.datasets.digits)"),
    (["threads=4096"], f"threads=4096 is invalid: must be at most {os.cpu_count()}, this machine's CPUs"),
    (["logger=mlflow", "logger.tracking_uri=http://user:pw@127.0.0.1:1"],  # port 1: nothing listens
     "logger.tracking_uri=http://127.0.0.1:1 cannot be reached within 10 s (Connection refused): start the"),
    # the test model's front tensor: 8192 values a sample, 8 bits each (quantize)
    ([*LINK, f"{B}link.bandwidth_mbps=0.001"],
     f"{B}link cannot carry one payload within {B}timeout_s=60: the front boundary's forward payload of "
     f"a micro-batch (32 samples, 262172 bytes) takes 2.1e+03 s up at 0.001 Mbit/s + 0 ms latency; "
     f"raise {B}link.uplink_mbps (or bandwidth_mbps)"),
    ([*LINK, f"{B}link.downlink_mbps=0.01"],
     "the front boundary's backward payload of a micro-batch (32 samples, 262172 bytes) takes 210 s down"),
    ([*LINK, f"{B}link.bandwidth_mbps=0.05", "compressor.warmup_epochs=1"],  # raw values in the warm-up
     "the front boundary's forward payload of a micro-batch (32 samples, 1048595 bytes) takes 168 s up"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[o[-1] for o, _ in BAD_INPUTS])
def test_a_bad_input_is_one_line_naming_the_key(make_cfg: Callable[..., DictConfig], overrides: List[str],
                                                message: str) -> None:
    cfg = make_cfg(*TEST_MODEL, *overrides)
    with pytest.raises(UserError) as info:
        validate(cfg)  # as trainer.run: validate, then assemble
        assemble(cfg)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert "pw" not in str(info.value)


def test_a_link_that_carries_one_payload_in_time_is_taken(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(*TEST_MODEL, *LINK, f"{B}link.bandwidth_mbps=0.05")
    validate(cfg)
    state = torch.get_rng_state()
    assemble(cfg)  # 262172 bytes at 0.05 Mbit/s: 42 s, within 60
    assert torch.equal(torch.get_rng_state(), state)  # the probe draws from its own


def test_a_warm_up_longer_than_the_run_is_said_with_both_numbers(make_cfg: Callable[..., DictConfig],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgesplit.validate"):
        validate(make_cfg("schedule.warmup_epochs=100", "schedule.epochs=5"))
        validate(make_cfg("schedule.warmup_epochs=5", "schedule.epochs=5"))
    assert [r.getMessage() for r in caplog.records] == [
        "schedule.warmup_epochs=100 exceeds schedule.epochs=5: the warm-up never ends (the learning rate "
        "stays below 5/100 of schedule.lr=0.05)"]


def test_a_sweep_that_launches_no_job_is_refused_by_name() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # glob reads the groups
        glob = empty_sweep(["seed=1,2", "compressor=glob(nomatch*)"])
        assert glob is not None and glob.startswith(
            "compressor=glob(nomatch*) matches no option of compressor (its options: bottleneck, ")
        assert glob.endswith("randtopk): the sweep would launch no job")
        assert empty_sweep(["schedule.lr=range(1,1)"]) == \
            "schedule.lr=range(1,1) sweeps no value: the sweep would launch no job"
        assert empty_sweep(["compressor=glob(quant*)", "schedule.lr=range(1,3)", "seed=4"]) is None


def _damaged(state: Dict[str, Any], damage: str) -> Any:
    if damage == "no epoch":
        return {k: v for k, v in state.items() if k != "epoch"}
    if damage == "a bare tensor":
        return torch.zeros(3)
    if damage == "epoch as a string":
        return {**state, "epoch": "2"}
    if damage == "format 2":
        return {**state, "format": 2}
    if damage == "a unit's tensor as a list":
        return {**state, "units": {**state["units"], 1: {**state["units"][1], "0.weight": [0.0]}}}
    if damage == "a momentum of another shape":
        momentum = {"momentum_buffer": torch.zeros(2, 2)}
        return {**state, "optimizer": {**state["optimizer"], "units.0.0.weight": momentum}}
    assert damage == "another model.width"
    return state  # the run's config changes instead


DAMAGED = {  # damage -> what resume=true and resume=force say (after the file's path)
    "no epoch": " is not an edgesplit checkpoint: it has no `epoch` (its keys: units, optimizer, ",
    "a bare tensor": " is not an edgesplit checkpoint: it holds a Tensor, not a dict",
    "epoch as a string": " is not an edgesplit checkpoint: its `epoch` is a str, not int",
    "format 2": " is checkpoint format 2; this edgesplit reads format 1",
    "a unit's tensor as a list": " is not an edgesplit checkpoint: unit 1 `0.weight` is a list, not a tensor",
    "a momentum of another shape": " does not fit the model: the optimizer's `momentum_buffer` of "
                                   "`units.0.0.weight` has shape [2, 2], the model [8, 3, 3, 3]: ",
    "another model.width": " does not fit the model: unit 0 `0.weight` has shape [8, 3, 3, 3], the model "
                           "[4, 3, 3, 3]: model.width 0.5 in the checkpoint, 0.25 now",
}


FITS = ("a momentum of another shape", "another model.width")


@pytest.fixture(scope="module")
def saved(trained_run: TrainedRun) -> Dict[str, Any]:
    """The shared trained run's checkpoint, to damage (each test copies what it changes)."""
    return checkpoint.load(trained_run.straight / checkpoint.NAME)


@functools.lru_cache(maxsize=None)
def _resumed_config(*overrides: str) -> DictConfig:
    return compose_config([*TRAINED, *overrides])  # nothing writes into a config: one per mode


@pytest.mark.parametrize("mode", ["true", "force"])
@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_what_is_wrong(
        saved: Dict[str, Any], tmp_path: Path, damage: str, mode: str) -> None:
    path = tmp_path / checkpoint.NAME
    torch.save(_damaged(saved, damage), path)
    before = path.read_bytes()
    width = ["model.width=0.25"] if damage == "another model.width" else []
    cfg = _resumed_config(*width, f"resume={mode}")
    with pytest.raises(UserError) as info:
        if damage in FITS:  # the trainer's check against the model built from the config
            trainer.run(cfg, tmp_path, [])
        else:  # the file's own layout: resume's load, as trainer.run calls it first
            load_state(cfg, tmp_path)
    message = str(info.value)
    if damage == "another model.width" and mode == "true":  # the config check comes first
        assert "resume=true with a config that differs from the checkpoint's" in message
        assert "model.width 0.5 -> 0.25" in message
    else:
        assert message.startswith(str(path)) and DAMAGED[damage] in message, message
    assert "\n" not in message and path.read_bytes() == before
