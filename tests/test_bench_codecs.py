"""The codecs benchmark runs in-process at the smallest size and prints one row per codec."""
import pytest

from edgesplit.bench import __main__ as dispatch
from edgesplit.bench import codecs as bench

CODECS = ["none", "prune 0.1", "quantize 8", "quantize 4", "prune_quantize 0.1/8"]


def test_bench_codecs_table(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--batch", "8", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == \
        "python -m edgesplit.bench codecs --batch 8 --repeats 1 --threads 1"
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in r] for r in rows[1:]]  # without the column names
    assert len(rows) == 6 * len(CODECS)
    for where in ("front=1 (stem)", "front=2", "front=3", "back=1 (head)", "back=2", "back=3"):
        assert [r[2] for r in rows if r[0] == where] == CODECS
    stem = {r[2]: r for r in rows if r[0] == "front=1 (stem)"}
    n = 2 * 32 * 32 * 32
    assert stem["none"][1] == "2x32x32x32"
    assert int(stem["none"][10]) == 4 * n and int(stem["none"][9]) == 4 * n + 3 + 16
    assert int(stem["quantize 4"][11]) == n // 2 and int(stem["quantize 4"][9]) == n // 2 + 28
    k = -(-n // 10)
    assert int(stem["prune 0.1"][11]) == n // 8 + 4 * k


def test_dispatch(capsys: pytest.CaptureFixture) -> None:
    assert "codecs" in dispatch.available()
    assert dispatch.main(["--help"]) == 2
    assert "available: " in capsys.readouterr().err
    assert dispatch.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
