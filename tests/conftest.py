"""Shared fixtures: compose the real Hydra config with overrides, tiny sizes for CPU tests."""
from pathlib import Path
from typing import Callable, List

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.codecs import fused
from edgesplit.config import compose_config
from tests.sizes import TEST_MODEL, TINY
from tests.sweeps import e2e_sweep  # noqa: F401 (a session fixture of the sweep tests)
from tests.trained_run import trained_run  # noqa: F401 (the shared trained run, a session fixture)

__all__ = ["ROOT", "TEST_MODEL", "TINY"]  # conftest's names the tests import

ROOT = Path(__file__).resolve().parents[1]


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
    """The two long single-process checks start as soon as their tests are known to run, and
    overlap the other tests on the second core: mypy (tests/test_static.py) and the smoke preset
    (tests/test_trainer.py); a session stopped early (-x) kills them."""
    from tests import test_static, test_trainer
    for nodeid, start in ((test_static.MYPY, test_static.start_mypy),
                          (test_trainer.SMOKE, test_trainer.start_smoke)):
        if any(item.nodeid.endswith(nodeid) for item in session.items):
            session.config.add_cleanup(start().kill)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: where torch sees none they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                   "`python -m pytest -m cuda` runs them on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
