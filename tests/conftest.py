"""Shared fixtures: compose the real Hydra config with overrides, tiny sizes for CPU tests."""
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

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


# The longest single tests (a minute of one core each) start first, so no worker ends alone on one.
_FIRST = ("test_static.py::test_mypy_is_clean", "test_trainer.py::test_smoke_experiment")


@pytest.hookimpl(wrapper=True)  # a wrapper: before xdist's own hook turns the groups into scopes
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> Iterator[None]:
    """Groups for `--dist loadgroup`, longest work first (setup.cfg runs the suite on every core:
    `--no-loadscope-reorder` keeps this order); `cuda` tests skipped without a GPU, saying why."""
    _group_and_order(items)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                       "`python -m pytest -m cuda` runs them on a GPU machine")
        for item in items:
            if item.get_closest_marker("cuda") is not None:
                item.add_marker(skip)
    return (yield)


def _group_and_order(items: List[pytest.Item]) -> None:
    cost: Dict[str, float] = {}
    group_of: Dict[int, str] = {}
    for item in items:
        shared = _shared_fixture(item)
        group = shared or item.nodeid
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))
        first = any(name in item.nodeid for name in _FIRST)
        slow = item.get_closest_marker("slow") is not None
        cost[group] = cost.get(group, 0.0) + (1000.0 if first else 5.0 if slow else 0.2)
        group_of[id(item)] = group
    items.sort(key=lambda item: -cost[group_of[id(item)]])  # stable: a group's own order holds


def _shared_fixture(item: pytest.Item) -> Optional[str]:
    """The suite's first module- or session-scoped fixture the test uses: the tests sharing one run
    on one xdist worker, so it is set up once (a trained run, a sweep, a warm dist pair)."""
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        ours = defs[-1].func.__module__.startswith("tests")
        if ours and defs[-1].scope == "session":
            return name
        if ours and defs[-1].scope == "module":
            return f"{item.nodeid.split('::')[0]}:{name}"  # one colon: junit splits names at ::
    return None
