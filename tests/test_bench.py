"""The backends and link benchmarks run at the smallest size and print their tables."""
import json
from typing import Any, Dict, List

import pytest

from edgesplit.bench import backends, link
from edgesplit.boundary.meter import CommMeter


def _rows(out: str) -> list:
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    return rows[1:]


def _in_process(overrides: List[str], warmup: int, steps: int, plain: bool = False) -> Dict[str, Any]:
    """A cell measured here, through JSON as from its own process (test_bench_plain runs those)."""
    return json.loads(json.dumps(backends.measure(overrides, warmup, steps, plain)))


@pytest.mark.slow
def test_bench_backends_prints_a_row_per_backend_with_ratios_to_gpipe(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "run_cell", _in_process)
    args = ["--backends", "naive,gpipe", "--width", "0.125", "--batch", "8", "--chunks", "2",
            "--warmup", "1", "--steps", "1", "--threads", "1", "--compressor", "quantize",
            "--codec-share"]
    assert backends.main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "python -m edgesplit.bench backends " + " ".join(args)
    main_table, share_table = out.split("\n\n")[-2:]
    # the codec's share: each backend again with compressor none, in the same run
    shares = {r[0]: r for r in _rows(share_table)}
    assert set(shares) == {"naive", "gpipe"}
    for r in shares.values():
        t, t0 = float(r[1]), float(r[2])
        assert float(r[3].rstrip("%")) == pytest.approx(100 * (1 - t0 / t), abs=1.0)  # 4 digits
    rows = {r[0]: r for r in _rows(main_table)}
    assert set(rows) == {"naive", "gpipe"}
    assert rows["gpipe"][6] == "1.00x" and rows["gpipe"][7] == "1.00x"
    assert float(rows["naive"][1]) > 0 and int(rows["naive"][8]) > 0
    # naive sends one payload per boundary and pass, gpipe one per micro-batch: more headers
    assert int(rows["gpipe"][8]) > int(rows["naive"][8])


def test_bench_link_bytes_follow_the_codecs(capsys: pytest.CaptureFixture) -> None:
    args = ["--width", "0.125", "--batch", "8", "--chunks", "2", "--fronts", "1,3", "--backs", "1",
            "--codecs", "none,quantize8,quantize4", "--measure", "none", "--link-mbps", "8"]
    assert link.main(args) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(r[0], r[1]) for r in rows] == [(f"{f}x1", c) for f in (1, 3)
                                            for c in ("none", "quantize8", "quantize4")]
    ratio = {(r[0], r[1]): float(r[6].rstrip("x")) for r in rows}
    assert ratio["1x1", "none"] == pytest.approx(1.0, abs=0.01)
    assert ratio["1x1", "quantize8"] == pytest.approx(4.0, rel=0.05)
    assert ratio["1x1", "quantize4"] == pytest.approx(8.0, rel=0.1)
    transfer = {(r[0], r[1]): float(r[7]) for r in rows}
    assert transfer["1x1", "quantize4"] < transfer["1x1", "quantize8"] < transfer["1x1", "none"]


def test_predicted_transfer_is_bytes_over_bandwidth_plus_latency() -> None:
    meter = CommMeter()
    meter.record("front", "forward", 600_000, 2_400_000)  # up: 0.6 MB of payload, 0.4 MB of overhead
    meter.record_overhead("up", 400_000)
    meter.record("back", "forward", 500_000, 2_000_000)  # down: 0.5 MB
    meter.end_batch()
    comm = meter.summary()
    assert link.predict(comm, 0.5, up_mbps=8, down_mbps=4, latency_ms=10) == pytest.approx(0.5 + 1 + 1 + 0.04)
