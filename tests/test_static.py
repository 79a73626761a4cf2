"""Static checks of the package, part of the test command: flake8, mypy, and no unpickling."""
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_flake8_is_clean() -> None:
    out = _run("flake8", "edgesplit", "tests", "train.py")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean() -> None:
    """setup.cfg holds the settings: untyped defs and unused ignores are errors in edgesplit."""
    out = _run("mypy", "edgesplit", "train.py")
    assert out.returncode == 0, out.stdout + out.stderr


def test_nothing_in_the_package_unpickles() -> None:
    """Bytes from a peer or a file a user was sent are data only (torch.load(weights_only=True))."""
    unsafe = re.compile(r"pickle\.loads?\(|weights_only=False|all_gather_object|recv_object_list"
                        r"|broadcast_object_list")
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "edgesplit").rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    loads = [f"{path.relative_to(ROOT)}" for path in sorted((ROOT / "edgesplit").rglob("*.py"))
             if "torch.load(" in path.read_text() and "weights_only=True" not in path.read_text()]
    assert not hits and not loads, hits + loads
