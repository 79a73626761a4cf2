"""The codecs benchmark runs in-process at the smallest size and prints one row per codec."""
import math
from typing import List

import pytest

from edgesplit.bench import __main__ as dispatch
from edgesplit.bench import codecs as bench

CODECS = ["none", "prune 0.1", "randtopk 0.1/0.1", "quantize 8", "quantize 8 sr", "quantize 8 channel",
          "quantize 8 group", "quantize 8 sr group", "quantize 4", "quantize 4 sr",
          "quantize 4 channel", "quantize 4 group", "quantize 4 sr group", "prune_quantize 0.1/8",
          "prune_quantize 0.1/8 sr group"]
ENTROPY = ["quantize 4 +zlib", "quantize 4 +zstd", "prune 0.1 +zlib", "prune 0.1 +zstd"]
WHERE = ("front=1 (stem)", "front=2", "front=3", "back=1 (head)", "back=2", "back=3")


def table(lines: List[str]) -> List[List[str]]:
    """The cells of a markdown table's rows, without the column names and the rule."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| ")]
    return rows[1:]


def test_bench_codecs_table(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--batch", "8", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == \
        "python -m edgesplit.bench codecs --batch 8 --repeats 1 --threads 1"
    main, entropy = out.split("The entropy stage")
    rows = table(main.splitlines())
    assert len(rows) == 6 * len(CODECS)
    for where in WHERE:
        assert [r[2] for r in rows if r[0] == where] == CODECS
    stem = {r[2]: r for r in rows if r[0] == "front=1 (stem)"}
    n = 2 * 32 * 32 * 32
    assert stem["none"][1] == "2x32x32x32"
    assert int(stem["none"][10]) == 4 * n and int(stem["none"][9]) == 4 * n + 3 + 16
    assert int(stem["quantize 4"][11]) == n // 2 and int(stem["quantize 4"][9]) == n // 2 + 28
    k = -(-n // 10)
    assert int(stem["prune 0.1"][11]) == n // 8 + 4 * k
    assert int(stem["randtopk 0.1/0.1"][9]) == int(stem["prune 0.1"][9])  # the same wire size
    # per-channel: 32 float32 pairs; per group of 512: n / 512 pairs; each beside 6 B of fields
    assert int(stem["quantize 4 channel"][9]) == 19 + 6 + 8 * 32 + n // 2
    assert int(stem["quantize 4 group"][9]) == 19 + 6 + 8 * (n // 512) + n // 2
    assert int(stem["quantize 4 group"][11]) == 8 * (n // 512) + n // 2
    assert int(stem["quantize 8 sr"][9]) == int(stem["quantize 8"][9])
    # each codec beside the one it is held to: plain quantize at its bits, prune at its ratio
    assert (stem["quantize 4 sr group"][13], stem["randtopk 0.1/0.1"][13], stem["none"][13]) == \
        ("quantize 4", "prune 0.1", "")
    a, b = float(stem["quantize 8 channel"][5]), float(stem["quantize 8"][5])  # rounded to 0.01
    assert (a - 0.005) / (b + 0.005) - 0.005 <= float(stem["quantize 8 channel"][14]) \
        <= (a + 0.005) / (b - 0.005) + 0.005
    erows = table(entropy.splitlines())
    assert [r[1] for r in erows] == ENTROPY * 6
    for r in erows:
        inner, size = int(r[6]), int(r[7])
        assert float(r[8]) == pytest.approx(inner / size, abs=0.0006)
        assert float(r[10]) == pytest.approx(8 * size / math.prod(
            int(d) for d in {x[0]: x[1] for x in rows}[r[0]].split("x")), abs=0.0006)
    assert "slowest against its base" in out and "randtopk vs prune" in out


def test_dispatch(capsys: pytest.CaptureFixture) -> None:
    assert "codecs" in dispatch.available()
    assert dispatch.main(["--help"]) == 2
    assert "available: " in capsys.readouterr().err
    assert dispatch.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_cpu_clock(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--batch", "4", "--repeats", "1", "--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = table(out.split("The entropy stage")[0].splitlines())
    assert "(cpu clock)" in out and len(rows) == 6 * len(CODECS)
    with pytest.raises(SystemExit):
        bench.parse(["--device", "cuda", "--clock", "cpu"])
    assert "use it with --device cpu" in capsys.readouterr().err
