"""The remote backend's pieces in one process: headers, control messages, specs, link, runner,
the secret's handshake and the message seals."""
import pickle
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from edgesplit.backends.remote import auth, protocol, transport
from edgesplit.backends.remote.link import LinkSpec, ShapedLink
from edgesplit.backends.remote.protocol import (HEADER_BYTES, HEADER_FIELDS, MAX_PAYLOAD_BYTES, Command,
                                                Header, Kind, Op, Reply, pack_state, unpack_state)
from edgesplit.backends.remote.runner import StageRunner
from edgesplit.backends.remote.seal import TAG_BYTES, Sealer
from edgesplit.backends.remote.spec import StageSpec
from edgesplit.codecs.quantize import Quantize
from edgesplit.errors import ConfigError, PeerError
from tests.dist_helpers import SECRET


def test_header_roundtrip_and_bounds():
    h = Header(Kind.BACKWARD, 3, 4, 12345, training=False)
    t = h.to_tensor()
    assert t.numel() * t.element_size() + 2 * TAG_BYTES == HEADER_BYTES == 64
    assert HEADER_FIELDS * 8 == t.numel() * t.element_size()
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
    with pytest.raises(protocol.StateError, match="UnpicklingError"):
        unpack_state(pack_state({"x": _Exploit()}))  # torch.save pickles it; loading refuses
    assert not (tmp_path / "PWNED").exists()


def test_stage_spec_roundtrips_as_json():
    from tests.dist_helpers import assembled, config
    run = assembled(config(stages=2, compressor="bottleneck")).spec
    spec = StageSpec(stage=1, stages=2, units=[3, 4], device="cpu", run=run)
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
        assert runner.recomputes(0) == (m != "never")
        for i, xi in enumerate(x.chunk(2)):
            runner(xi, i).square().sum().backward()
        grads[m] = [p.grad.clone() for p in module.parameters()]
    for a, b in zip(grads[mode], grads["never"]):
        assert torch.allclose(a, b, atol=1e-6)


class _Wire:
    """torch.distributed's isend/irecv between logical ranks in this process: queues per tag."""

    def __init__(self):
        self.queues = defaultdict(deque)
        self.me = 0

    def isend(self, tensor, peer, tag):
        self.queues[(self.me, peer, tag)].append(tensor.clone())

    def irecv(self, tensor, peer, tag):
        tensor.copy_(self.queues[(peer, self.me, tag)].popleft())


@pytest.fixture
def wire(monkeypatch):
    w = _Wire()
    monkeypatch.setattr(transport.dist, "isend", w.isend)
    monkeypatch.setattr(transport.dist, "irecv", w.irecv)
    return w


def _pair(edge_secret=SECRET, cloud_secret=SECRET):
    edge = transport.Transport(0, [0, 1], 5.0, Sealer(auth.derive(edge_secret, "message")))
    cloud = transport.Transport(1, [0, 1], 5.0, Sealer(auth.derive(cloud_secret, "message")))
    return edge, cloud


def _send(wire, t, dst, payload):
    wire.me = t.rank
    t.send(dst, Header(Kind.FORWARD, 0, 1), payload)
    wire.me = dst


def test_sealed_messages_arrive_and_forgeries_are_refused(wire, monkeypatch):
    codec = Quantize(8)
    decoded = []
    monkeypatch.setattr(Quantize, "decode", lambda self, p, s=None: decoded.append(p))
    x = torch.randn(4, 6)
    edge, cloud = _pair()
    _send(wire, edge, 1, codec.encode(x))
    header, payload = cloud.recv(0, Kind.FORWARD, 0)
    assert header.nbytes == payload.numel() and torch.equal(payload, codec.encode(x))

    def refused(tamper, receiver=cloud, match="refused a message from edge rank 0"):
        _send(wire, edge, 1, codec.encode(x))
        tamper(wire.queues)
        with pytest.raises(PeerError, match=match):
            receiver.recv(0, Kind.FORWARD, 0)
        wire.queues.clear()

    def flip_payload(q):
        q[(0, 1, 2)][0][9] ^= 1  # a code byte of the payload

    def flip_header(q):
        q[(0, 1, 1)][0][1] ^= 1  # the micro-batch index field

    refused(flip_payload, match="its payload fails the integrity check")
    edge, cloud = _pair()  # a failed check leaves a stream unusable: fresh ones per case
    refused(flip_header, match="its header fails the integrity check")
    edge, cloud = _pair(cloud_secret="another-secret-0123456789")
    refused(lambda q: None)
    edge, cloud = _pair()
    _send(wire, edge, 1, codec.encode(x))
    replay = [t.clone() for t in wire.queues[(0, 1, 1)]] + [t.clone() for t in wire.queues[(0, 1, 2)]]
    cloud.recv(0, Kind.FORWARD, 0)
    wire.queues[(0, 1, 1)].append(replay[0])
    wire.queues[(0, 1, 2)].append(replay[1])
    with pytest.raises(PeerError, match="header fails the integrity check"):
        cloud.recv(0, Kind.FORWARD, 0)  # the same message again: its sequence number is old
    assert decoded == []  # nothing that failed reached a decoder


def _store(port=0):
    listener = auth.listening_socket("127.0.0.1", port)
    port = listener.getsockname()[1]
    return dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=10),
                         wait_for_workers=False, master_listen_fd=listener.detach()), port


def test_a_wrong_secret_gets_no_stage_and_the_real_peer_still_joins():
    store, port = _store()
    lines, results = [], {}
    gate = auth.Gate(store, SECRET, world_size=2, log=lines.append)

    def cloud(name, secret):
        client = dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=10))
        try:
            results[name] = auth.join(client, secret, 0, "127.0.0.1", port, 10)
        except PeerError as e:
            results[name] = str(e)

    intruder = threading.Thread(target=cloud, args=("intruder", "wrong-secret-0123456789"))
    intruder.start()
    while "intruder" not in results:
        gate.poll()
        time.sleep(0.01)
    assert "refused this cloud process" in results["intruder"]
    assert gate.missing() == [1]  # the stage is still free
    assert len(lines) == 1 and "refused cloud process 127.0.0.1 pid" in lines[0], lines
    real = threading.Thread(target=cloud, args=("real", SECRET))
    real.start()
    gate.wait(10)
    real.join(10)
    intruder.join(10)
    assert results["real"] == 1


def test_secret_sources(monkeypatch):
    monkeypatch.delenv(auth.ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{auth.ENV}.*pipeline_backend.secret"):
        auth.resolve_secret(None, local=False)
    assert len(auth.resolve_secret(None, local=True)) == 64
    assert auth.resolve_secret(None, local=True) != auth.resolve_secret(None, local=True)
    monkeypatch.setenv(auth.ENV, SECRET)
    assert auth.resolve_secret(None, local=False) == SECRET
    assert auth.resolve_secret("x" * 20, local=False) == "x" * 20
    with pytest.raises(ConfigError, match="pipeline_backend.secret is too short"):
        auth.resolve_secret("short", local=False)


def test_the_store_listens_on_its_address_only():
    import psutil
    store, port = _store()
    bound = {c.laddr.ip for c in psutil.net_connections("tcp")
             if c.status == "LISTEN" and c.laddr.port == port}
    assert bound == {"127.0.0.1"}
