"""Sessions do not trust each other: a handshake or message recorded in one session (same secret)
is refused at the first message of another, by a new cloud and by a new edge; each side checks the
other's handshake tag and per-message HMAC."""
import json
import threading
from collections import defaultdict, deque
from datetime import timedelta
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist

from edgesplit.backends.remote import auth, launch, transport
from edgesplit.backends.remote.protocol import Header, Kind, tags
from edgesplit.backends.remote.seal import Sealer
from edgesplit.errors import PeerError
from tests.dist_helpers import SECRET

P = auth.PREFIX


def _store() -> Tuple[dist.TCPStore, int]:
    listener = auth.listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    return dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=20),
                         wait_for_workers=False, master_listen_fd=listener.detach()), port


def _client(port: int) -> dist.TCPStore:
    """A store client: the clouds, and an eavesdropper who knows no secret."""
    return dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=20))


def _session(world_size: int = 2) -> Tuple[bytes, List[bytes], Dict[str, bytes]]:
    """A genuine session: (the edge's key, each cloud's key, what a secretless store client reads)."""
    store, port = _store()
    clouds: Dict[int, bytes] = {}

    def cloud(want: int) -> None:
        clouds[want] = auth.join_session(_client(port), SECRET, want, "127.0.0.1", port, 20)[1]
    threads = [threading.Thread(target=cloud, args=(r,)) for r in range(1, world_size)]
    for t in threads:
        t.start()
    edge_key = auth.Gate(store, SECRET, world_size, log=lambda line: None).wait(20)
    for t in threads:
        t.join(20)
    spy = _client(port)
    names = [f"{P}{k}/1" for k in ("hello", "challenge", "proof", "stage")] + [auth.SESSION]
    return edge_key, [clouds[r] for r in range(1, world_size)], {n: spy.get(n) for n in names}


class _Wire:
    """torch.distributed's isend/irecv between logical ranks in this process: queues per tag."""

    def __init__(self) -> None:
        self.queues: Dict[Tuple[int, int, int], deque] = defaultdict(deque)
        self.me = 0

    def isend(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        self.queues[(self.me, peer, tag)].append(tensor.clone())

    def irecv(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        tensor.copy_(self.queues[(peer, self.me, tag)].popleft())


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> _Wire:
    w = _Wire()
    monkeypatch.setattr(transport.dist, "isend", w.isend)
    monkeypatch.setattr(transport.dist, "irecv", w.irecv)
    return w


def _send(wire: _Wire, key: bytes, src: int, dst: int, kind: Kind, payload: torch.Tensor) -> None:
    wire.me = src
    transport.Transport(src, [0, 1], 5.0, Sealer(key)).send(dst, Header(kind), payload)
    wire.me = dst


def _recv(key: bytes, src: int, dst: int, kind: Kind) -> torch.Tensor:
    return transport.Transport(dst, [0, 1], 5.0, Sealer(key)).recv(src, kind)[1]


def test_every_rank_of_a_session_shares_its_key_and_no_two_sessions_do() -> None:
    edge, clouds, _ = _session(world_size=3)
    assert clouds == [edge, edge]
    again, _, _ = _session(world_size=3)
    assert again != edge
    assert auth.derive(SECRET, "message") not in (edge, again)  # no key of the secret alone


def test_a_session_replayed_to_a_new_cloud_is_refused_at_the_first_message(wire: _Wire) -> None:
    """An eavesdropper recorded the handshake from the store and the edge's first message; a fake
    edge that knows no secret replays them to a genuine cloud of a new session."""
    old_key, _, recorded = _session()
    _send(wire, old_key, 0, 1, Kind.CONTROL, torch.arange(40, dtype=torch.uint8))
    store, port = _store()

    def fake_edge() -> None:
        store.wait([f"{P}hello/1"])
        store.set(f"{P}challenge/1", recorded[f"{P}challenge/1"])
        store.wait([f"{P}proof/1"])
        store.set(f"{P}stage/1", recorded[f"{P}stage/1"])
        store.set(auth.SESSION, recorded[auth.SESSION])
    threading.Thread(target=fake_edge, daemon=True).start()
    with pytest.raises(PeerError, match=r"at 127.0.0.1:\d+ did not prove it knows the secret \(its "
                                        r"stage answer's tag is wrong\).*replays another session"):
        launch.connect_local(1, 2, "127.0.0.1", port, SECRET, 20)
    # the edge's messages of the old session fail in any new one: a new cloud's key differs
    _, (new_key,), _ = _session()
    with pytest.raises(PeerError, match="cloud rank 1 .* refused a message from edge rank 0 .*"
                                        "replayed from another session"):
        _recv(new_key, 0, 1, Kind.CONTROL)


def test_a_session_replayed_to_a_new_edge_is_refused_at_the_first_message(wire: _Wire) -> None:
    """A fake cloud replays a recorded hello and proof to a genuine edge of a new session, then the
    cloud's recorded reply."""
    _, (old_key,), recorded = _session()
    _send(wire, old_key, 1, 0, Kind.REPLY, torch.arange(40, dtype=torch.uint8))
    store, port = _store()
    lines: List[str] = []
    gate = auth.Gate(store, SECRET, 2, log=lines.append)
    fake = _client(port)
    assert int(fake.add(f"{P}tickets", 1)) == 1  # the same ticket as in the recording
    fake.set(f"{P}hello/1", recorded[f"{P}hello/1"])
    gate.poll()
    assert fake.get(f"{P}challenge/1") != recorded[f"{P}challenge/1"]  # the edge's nonce is fresh
    fake.set(f"{P}proof/1", recorded[f"{P}proof/1"])
    gate.poll()
    assert fake.get(f"{P}stage/1") == auth.REFUSED.encode() and gate.missing() == [1]
    assert len(lines) == 1 and "it does not know the secret, or it replays another session" in lines[0]
    new_key, _, _ = _session()
    with pytest.raises(PeerError, match="edge rank 0 refused a message from cloud rank 1 .*"
                                        "replayed from another session"):
        _recv(new_key, 1, 0, Kind.REPLY)


def test_the_cloud_checks_the_edges_stage_answer() -> None:
    """A fake edge that knows the nonces but not the secret: its tag on the stage is refused."""
    store, port = _store()
    fake_key = auth.derive("not-the-real-secret-0123", "join")

    def admit_anyone() -> None:  # a fake edge that takes any proof (the store's keys, by hand)
        store.wait([f"{P}hello/1"])
        hello = json.loads(store.get(f"{P}hello/1"))
        challenge = "ab" * (auth.NONCE_HEX // 2)
        store.set(f"{P}challenge/1", challenge)
        store.wait([f"{P}proof/1"])
        tag = auth._mac(fake_key, "edge", 1, challenge, hello["nonce"], 1)
        store.set(f"{P}stage/1", f"1:{tag}")
    threading.Thread(target=admit_anyone, daemon=True).start()
    with pytest.raises(PeerError, match="its stage answer's tag is wrong"):
        auth.join(_client(port), SECRET, 0, "127.0.0.1", port, 20)


Tamper = Callable[[Dict[Tuple[int, int, int], Any], Tuple[int, int], Kind], None]


def _flip_payload(q: Dict[Tuple[int, int, int], Any], pair: Tuple[int, int], kind: Kind) -> None:
    q[(*pair, tags(kind)[1])][0][5] ^= 1


def _flip_header(q: Dict[Tuple[int, int, int], Any], pair: Tuple[int, int], kind: Kind) -> None:
    q[(*pair, tags(kind)[0])][0][8] ^= 1  # the micro-batch index field


@pytest.mark.parametrize("tamper", [_flip_payload, _flip_header, None], ids=["payload", "header", "key"])
@pytest.mark.parametrize("src,dst,kind", [(0, 1, Kind.FORWARD), (1, 0, Kind.BACKWARD)],
                         ids=["cloud-checks-edge", "edge-checks-cloud"])
def test_each_side_checks_the_others_message_hmac(wire: _Wire, tamper: Tamper, src: int, dst: int,
                                                  kind: Kind) -> None:
    key, _, _ = _session()
    payload = torch.arange(40, dtype=torch.uint8)
    _send(wire, key, src, dst, kind, payload)
    assert torch.equal(_recv(key, src, dst, kind), payload)  # the genuine message passes
    _send(wire, key if tamper else b"k" * 32, src, dst, kind, payload)
    if tamper is not None:
        tamper(wire.queues, (src, dst), kind)
    with pytest.raises(PeerError, match="refused a message .* fails the integrity check"):
        transport.Transport(dst, [0, 1], 5.0, Sealer(key)).recv(src, kind)
