"""The remote backend's pieces in one process: headers, control messages, specs, link, runner."""
import pickle
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from edgesplit.backends.remote.link import LinkSpec, ShapedLink
from edgesplit.backends.remote.protocol import (HEADER_BYTES, MAX_PAYLOAD_BYTES, Command, Header, Kind,
                                                Op, Reply, pack_state, unpack_state)
from edgesplit.backends.remote.runner import StageRunner
from edgesplit.backends.remote.spec import StageSpec


def test_header_roundtrip_and_bounds():
    h = Header(Kind.BACKWARD, 3, 4, 12345, training=False)
    t = h.to_tensor()
    assert t.numel() * t.element_size() == HEADER_BYTES
    assert Header.from_tensor(t) == h
    with pytest.raises(ValueError, match="unknown message kind"):
        Header.from_tensor(torch.tensor([99, 0, 1, 0]))
    for bad in ([1, 4, 4, 0], [1, -1, 4, 0], [1, 0, 1, MAX_PAYLOAD_BYTES + 1], [1, 0, 1, -5]):
        with pytest.raises(ValueError, match="corrupt header"):
            Header.from_tensor(torch.tensor(bad))


def test_control_messages_are_json_with_blobs():
    command = Command(Op.STATS, epoch=3, replies=[Reply(stage=1, side={"parameters": 5}, meter=None)])
    got, blobs = Command.unpack(command.pack([b"abc", b""]))
    assert got == command and blobs == [b"abc", b""]
    payload = command.pack()
    pickled = torch.frombuffer(bytearray(pickle.dumps(command)), dtype=torch.uint8)
    for broken in (payload[:-1], payload[4:], pickled):
        with pytest.raises(ValueError, match="malformed control message"):
            Command.unpack(broken)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_state_blobs_load_data_only(tmp_path, monkeypatch):
    state = {"units": {1: {"w": torch.ones(2)}}, "rng": {"edge": {"cpu": torch.get_rng_state()}}}
    assert torch.equal(unpack_state(pack_state(state))["units"][1]["w"], torch.ones(2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        unpack_state(pack_state({"x": _Exploit()}))  # torch.save pickles it; loading refuses
    assert not (tmp_path / "PWNED").exists()


def test_stage_spec_roundtrips_as_json():
    spec = StageSpec(stage=1, stages=2, units=[3, 4], num_classes=10, device="cpu",
                     cfg={"seed": 0, "model": {"width": 0.5}})
    assert StageSpec.from_json(spec.to_json()) == spec and spec.rank == 2 and spec.last
    with pytest.raises(ValueError, match="malformed stage spec"):
        StageSpec.from_json('{"stage": 1}')


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
