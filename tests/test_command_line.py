"""train.py's overrides checked before Hydra composes them: a misspelled key or option is one line
naming the closest valid names, a group given twice is refused, and good command lines pass."""
import pytest

from edgesplit.config import CONF_DIR, register_configs
from edgesplit.errors import ConfigError
from edgesplit.run.command_line import check_argv, check_overrides


@pytest.mark.parametrize("overrides, message", [
    (["partition.frnt=2"], "partition.frnt is not a key of the config: did you mean partition.front?"),
    (["partition.xyzzy=1"], "the keys of partition are: front, back, cloud_stages"),
    (["compressor=quantize", "compressor.btis=3", "hydra.run.dir=x"], "did you mean compressor.bits?"),
    (["model=mobilenet"], "model=mobilenet is not an option of model: did you mean mobilenetv2?"),
    (["compressor=quantise"], "compressor=quantise is not an option of compressor: did you mean quantize "),
    (["-m", "compressor=none,quantise", "hydra/launcher=joblib"], "compressor=quantise is not an option"),
    (["experiment=smoke", "experiment=quant_lr"],
     "experiment is given 2 times (experiment=smoke experiment=quant_lr): give it once"),
])
def test_a_mistake_is_one_line_with_the_closest_names(overrides: list, message: str) -> None:
    register_configs()
    with pytest.raises(ConfigError) as caught:
        check_argv(overrides, CONF_DIR)
    assert message in str(caught.value) and "\n" not in str(caught.value) and "+" not in str(caught.value)


@pytest.mark.parametrize("overrides", [
    [], ["+partition.frnt=2"],  # added keys are edgesplit's own check (unknown key ...: not in the schema)
    ["schedule.lr=abc"],  # a wrong type: Hydra's message
    ["-m", "experiment=compression", "schedule.lr=0.4,0.2", "hydra/launcher=joblib",
     "hydra.launcher.n_jobs=2"],
    ["compressor=quantize2_sr_group", "compressor.activation.rounding=nearest", "seed=range(0,3)"],
    ["--cfg", "job", "partition.front=2", "compressor=null"], ["-m", "compressor=glob(quantize4*)"],
    ["-m", "compressor=glob(nomatch*)", "partition.front=2"],  # the run guard names an empty glob
])
def test_good_command_lines_and_other_mistakes_pass(overrides: list) -> None:
    register_configs()
    check_argv(overrides, CONF_DIR)


def test_an_override_syntax_error_is_left_to_hydra() -> None:
    register_configs()
    check_overrides(["partition.front=[1"], CONF_DIR)
