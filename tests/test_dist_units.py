"""The dist backend's pieces in one process: headers, raw wire form, link shaper, stage runner."""
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from edgesplit.backends.dist.link import LinkSpec, ShapedLink
from edgesplit.backends.dist.protocol import (HEADER_BYTES, Header, Kind, pack_object,
                                              pack_tensor, unpack_object, unpack_tensor)
from edgesplit.backends.dist.stage import StageRunner


def test_header_roundtrip():
    h = Header(Kind.BACKWARD, 3, 4, 12345, training=False)
    t = h.to_tensor()
    assert t.numel() * t.element_size() == HEADER_BYTES
    assert Header.from_tensor(t) == h
    with pytest.raises(ValueError, match="unknown message kind"):
        Header.from_tensor(torch.tensor([99, 0, 0, 0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pack_tensor_roundtrip(dtype):
    x = torch.randn(2, 3, 5).to(dtype)[:, ::2]  # non-contiguous too
    p = pack_tensor(x)
    assert p.dtype == torch.uint8 and p.dim() == 1
    assert torch.equal(unpack_tensor(p), x)
    msg = {"op": "stop", "replies": []}
    assert unpack_object(pack_object(msg)) == msg


def test_link_spec_from_config():
    cfg = OmegaConf.create({"bandwidth_mbps": 10, "uplink_mbps": None, "downlink_mbps": 100,
                            "latency_ms": 20})
    spec = LinkSpec.from_config(cfg)
    assert spec.up_bps == 10e6 and spec.down_bps == 100e6 and spec.latency_s == 0.02
    assert spec.seconds("up", 125_000) == pytest.approx(0.12)
    off = OmegaConf.create({"bandwidth_mbps": None, "latency_ms": 0})
    assert not LinkSpec.from_config(off).shaped("up")


def test_shaped_link_queues_messages_and_overlaps_latency():
    link = ShapedLink(bps=8e6, latency_s=0.05)  # 1 MB/s
    try:
        t0 = time.monotonic()
        arrivals = []
        futures = [link.submit(50_000, lambda: arrivals.append(time.monotonic() - t0))
                   for _ in range(3)]
        for f in futures:
            f.result(timeout=5)
        # each message: 50 ms on the wire behind the one before, then 50 ms latency (overlapped)
        for i, t in enumerate(arrivals):
            assert t == pytest.approx(0.05 * (i + 1) + 0.05, abs=0.03)
        f = link.submit(1, lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            f.result(timeout=5)
    finally:
        link.close()


@pytest.mark.parametrize("mode", ["always", "except_last", "never"])
def test_stage_runner_checkpointing_keeps_gradients(mode):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    ref = [p.clone() for p in module.parameters()]
    x = torch.randn(4, 3, 6, 6)
    grads = {}
    for m in (mode, "never"):
        for p, r in zip(module.parameters(), ref):
            p.data.copy_(r)
            p.grad = None
        runner = StageRunner(module, m, chunks=2)
        assert runner.checkpointed(0) == (m != "never")
        for i, xi in enumerate(x.chunk(2)):
            runner(xi, i).square().sum().backward()
        grads[m] = [p.grad.clone() for p in module.parameters()]
    for a, b in zip(grads[mode], grads["never"]):
        assert torch.allclose(a, b, atol=1e-6)
