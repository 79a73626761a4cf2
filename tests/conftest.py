"""Shared fixtures: compose the real Hydra config with overrides, tiny sizes for CPU tests."""
from pathlib import Path
from typing import Callable, List

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.codecs import fused
from edgesplit.config import compose_config
from tests.sweeps import e2e_sweep  # noqa: F401 (a session fixture of the sweep tests)

ROOT = Path(__file__).resolve().parents[1]
# Small enough for seconds per run on 2 cores, large enough to train.
TINY = ["data=digits", "data.train_size=256", "data.val_size=128", "data.batch_size=64",
        "model.width=0.125", "compressor=quantize", "schedule.epochs=2", "schedule.warmup_epochs=1",
        "schedule.lr=0.05", "threads=1"]

# The 5-unit test model (tests/custom_model.py) for tests of the run's plumbing (resume, logs,
# figures, faults): a fraction of MobileNetV2's time; TINY alone keeps MobileNetV2 (width 0.125).
TEST_MODEL = ["model._target_=tests.custom_model.units", "model.width=0.5"]


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """make_cfg(*overrides): the real config with the tiny sizes, then the overrides."""
    def make(*overrides: str) -> DictConfig:
        return compose_config(TINY + list(overrides))
    return make


@pytest.fixture(autouse=True)
def _pinned_threads() -> None:
    # Float reduction order depends on the thread count: equality tests need it fixed.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _eager_fused_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # The device-path tests on CPU tensors run the fused kernels op by op: compiling each bits,
    # dtype and rounding they cover would take minutes. Tests marked `compiled` (and every
    # `cuda` one) run them compiled, as a GPU does.
    if request.node.get_closest_marker("compiled") is None \
            and request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(fused, "COMPILE", False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """mypy starts as soon as its test is known to run (tests/test_static.py says why)."""
    from tests import test_static
    if any(item.nodeid.endswith(test_static.MYPY) for item in session.items):
        session.config.add_cleanup(test_static.start_mypy().kill)  # a session stopped early (-x)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: where torch sees none they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                   "`python -m pytest -m cuda` runs them on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
