"""Link emulation: a slow link costs what its bytes and latency predict; compression shrinks it; a real
start says the link and whom the edge waits for."""
import logging
import re
import statistics
import time

import pytest

from edgesplit.backends.remote import forks, launch, progress
from edgesplit.backends.remote.protocol import HEADER_BYTES
from edgesplit.boundary.meter import CommMeter
from tests.dist_helpers import build, config, data, dist_process_count

pytestmark = pytest.mark.slow


def step_times(codec: str, steps: int = 4, **link):
    """Median seconds per train step, payload figures per step, and the bytes (payloads and
    headers) the edge handed to or took from torch.distributed per step each way."""
    cfg = config(chunks=2, stages=1, compressor=codec, link=link)
    meter = CommMeter()
    backend = build("dist", cfg, meter)
    try:
        backend.start_epoch(0)
        backend.train(True)
        x, y, ids = data(1, batch=16)[0]
        backend.train_step(x, y, ids)  # warm-up
        meter.reset()
        backend.start_epoch(0)  # the cloud's figures afresh too
        before = dict(backend.t.link_bytes)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            backend.train_step(x, y, ids)
            times.append(time.perf_counter() - t0)
        after = dict(backend.t.link_bytes)
        backend.side_stats()  # the cloud's counts of what it sent join the meter
        comm = meter.summary().to_dict()
    finally:
        backend.close()
    handed = {d: (after[d] - before[d]) / steps for d in after}
    return statistics.median(times), comm, handed


# up 2 Mbit/s (the up bytes set the time), down all but free; 1 ms latency: a line says all three
ASYMMETRIC = {"uplink_mbps": 2.0, "downlink_mbps": 1000.0, "latency_ms": 1}


def test_slow_link_costs_its_bytes_and_compression_shrinks_it(caplog, monkeypatch):
    """A slow uplink costs what its bytes predict and 8-bit codes about a quarter of that; the
    payloads (counted by each sender) plus the headers are what crossed. A real start says the
    link and, every few seconds, whom the edge waits for (a local rank gets at least
    launch.LOCAL_START_S to start: here a new zygote's imports, a second or more)."""
    fast, comm, _ = step_times("none")
    monkeypatch.setattr(progress, "EVERY_S", 0.2)
    forks.close_zygote()
    with caplog.at_level(logging.INFO):
        slow, _, _ = step_times("none", **ASYMMETRIC)
    predicted = comm["up_bytes_per_batch"] * 8 / 2e6
    assert predicted > 0.2  # the payload is sized for the link
    assert slow > 2 * fast
    assert slow > 0.8 * predicted
    assert slow < 3 * predicted + fast + 0.5
    assert ("link emulation on: up (edge -> cloud) 2 Mbit/s + 1 ms latency; "
            "down (cloud -> edge) 1000 Mbit/s + 1 ms latency") in caplog.messages
    waits = [m.groups() for m in (re.fullmatch(r"waiting for (.+): \d+ s of ([\d.]+) s", r)
                                  for r in caplog.messages) if m]
    assert waits and waits[0][0].startswith("cloud rank 1 (stage 1 of 1) at 127.0.0.1:")
    assert waits[0][1] == f"{launch.LOCAL_START_S:g}"
    small, comm, handed = step_times("quantize", **ASYMMETRIC)
    assert small < 0.6 * slow  # 8-bit codes: about a quarter of the bytes
    for d in ("up", "down"):
        assert comm[f"{d}_bytes_per_batch"] + comm[f"overhead_{d}_bytes_per_batch"] == handed[d]
        assert comm[f"overhead_{d}_bytes_per_batch"] == 2 * 2 * HEADER_BYTES  # 2 micro-batches x 2 passes


def test_latency_delays_every_crossing():
    lat, _, _ = step_times("quantize", latency_ms=50)
    assert lat > 4 * 0.05  # four crossings in sequence per step: front/back, forward/backward


def teardown_module():
    assert dist_process_count() == 0
