"""Point-to-point messages (a sealed header, then a uint8 payload) over torch.distributed; link
byte counts."""
import pickle
import time
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from edgesplit.backends.remote.link import LinkSpec, ShapedLink
from edgesplit.backends.remote.progress import say
from edgesplit.backends.remote.protocol import HEADER_BYTES, Header, Kind, tags
from edgesplit.backends.remote.seal import IntegrityError, Sealer
from edgesplit.errors import PeerError
from edgesplit.run.checkpoint import CheckpointError

EDGE = 0  # logical rank of the edge; cloud stage s (0-based) is logical rank s + 1
# What decoding a payload may raise when the payload (authenticated: a peer with the secret sent it)
# is malformed: JSON, state blobs, codec payloads, the fields of replies. Caught only around the
# decoding of what arrived, never around this process's own computation (a state that fits no unit
# of this stage is the peer's, not a checkpoint file's, fault there).
PAYLOAD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError,
                  RecursionError, OverflowError, RuntimeError, MemoryError, pickle.UnpicklingError,
                  CheckpointError)


def rank_name(rank: int, world_size: int, clients: bool = False) -> str:
    """How a rank is named in lines; `clients`: a many-edge run's, where rank 0 is the cloud and
    rank k + 1 client k's edge (edgesplit.clients.dist)."""
    if clients:
        return "the cloud (rank 0)" if rank == 0 else f"client {rank - 1} (edge rank {rank})"
    if rank == EDGE:
        return "edge rank 0"
    return f"cloud rank {rank} (stage {rank} of {world_size - 1})"


def _reason(e: BaseException, timeout_s: float) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Connection closed by peer" in text or "Connection reset" in text or "Broken pipe" in text:
        return "closed the connection (it died or exited)"
    if "Timed out" in text or "timed out" in text:
        return f"sent nothing for {timeout_s:g} s (pipeline_backend.timeout_s)"
    return text.split("] ")[-1][:200]


def _wait(work: Optional[dist.Work], timeout_s: float) -> None:
    if work is not None:  # None only when this rank is not in the group
        work.wait(timedelta(seconds=timeout_s))  # gloo's own default may wait for ever


class SendHandle:
    """A message on its way: `wait()` returns once torch.distributed has sent it."""

    def __init__(self, works: Optional[List[dist.Work]] = None,
                 future: "Optional[Future[List[dist.Work]]]" = None,
                 keep: Tuple[Tensor, ...] = ()) -> None:
        self._works, self._future, self._keep = works, future, keep

    def wait(self, timeout_s: float) -> None:
        # the emulated link may queue a message for a while before it is handed to gloo
        queued = timeout_s + 60
        works = self._works if self._future is None else self._future.result(timeout=queued)
        for w in works or []:
            _wait(w, timeout_s)  # a frozen receiver stops draining its socket: sends block too
        self._keep = ()


class Transport:
    """Messages between logical ranks (0 = edge, s+1 = cloud stage s). `global_ranks[r]` is the
    torch.distributed rank of logical rank r. Messages from/to the edge cross the edge link: they
    are shaped by `link` in the sender and counted in `link_bytes` ('up' = edge -> cloud). Every
    message is sealed by `sealer` and checked before its payload is allocated or handed on. Many
    edges (edgesplit.clients.dist): `edges` are their logical ranks, `names` names every rank."""

    def __init__(self, rank: int, global_ranks: List[int], timeout_s: float, sealer: Sealer,
                 link: LinkSpec = LinkSpec(),
                 diagnose: Optional[Callable[[int], Optional[str]]] = None,
                 edges: Collection[int] = (EDGE,), names: Optional[Callable[[int], str]] = None,
                 groups: Optional[Dict[int, Any]] = None) -> None:
        self.rank, self.global_ranks, self.timeout_s = rank, global_ranks, timeout_s
        self.edges, self._names = frozenset(edges), names
        # a process group per peer (many edges): gloo ends every pair of a group when one wait in
        # it times out, and a stalled client must not end the others' links
        self.groups = groups or {}
        self.sealer = sealer
        self.world_size = len(global_ranks)
        self.link = link
        self.diagnose = diagnose
        self.link_bytes: Dict[str, int] = {"up": 0, "down": 0}
        self.wait_s = 0.0  # time spent blocked in recv/wait
        self._shapers: Dict[str, ShapedLink] = {}
        if rank == EDGE and link.describe():
            say(str(link.describe()))
        if rank in self.edges and link.shaped("up"):
            self._shapers["up"] = ShapedLink(link.up_bps, link.latency_s, "uplink")
        if rank not in self.edges and link.shaped("down"):
            self._shapers["down"] = ShapedLink(link.down_bps, link.latency_s, "downlink")

    def _group(self, peer: int) -> Dict[str, Any]:
        """The process group of the link to `peer` as a keyword (none: the default group)."""
        return {"group": self.groups[peer]} if peer in self.groups else {}

    def direction(self, src: int, dst: int) -> Optional[str]:
        """'up', 'down' or None (between cloud stages)."""
        if src in self.edges and dst not in self.edges:
            return "up"
        if dst in self.edges and src not in self.edges:
            return "down"
        return None

    def name(self, rank: int) -> str:
        return self._names(rank) if self._names else rank_name(rank, self.world_size)

    def peer_error(self, peer: int, what: str, e: BaseException) -> PeerError:
        detail = self.diagnose(peer) if self.diagnose else None
        msg = (f"{self.name(self.rank)} lost {self.name(peer)} while {what}: "
               f"{_reason(e, self.timeout_s)}")
        return PeerError(msg + (f"; {detail}" if detail else ""))

    @contextmanager
    def decoding(self, peer: int, what: str) -> Iterator[None]:
        """A payload of `peer` that fails to decode ends this process as any peer failure does:
        one PeerError naming the peer and what was wrong."""
        try:
            yield
        except PAYLOAD_ERRORS as e:
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise PeerError(f"{self.name(self.rank)} got a malformed {what} from {self.name(peer)}: "
                            f"{reason}") from None

    def send(self, dst: int, header: Header, payload: Tensor) -> SendHandle:
        """Send header + payload without blocking; payload is a 1-D uint8 tensor."""
        payload = payload.detach()
        direction = self.direction(self.rank, dst)
        if direction is not None and payload.device.type != "cpu":
            payload = payload.cpu()  # gloo on the edge link: a GPU stage goes through host memory
        payload = payload.contiguous()
        fields = Header(header.kind, header.index, header.count, payload.numel(),
                        header.training).to_tensor()
        peer = self.global_ranks[dst]
        head_tag, payload_tag = tags(header.kind)
        head = self.sealer.seal(self.rank, dst, head_tag, fields, payload.cpu())

        def go() -> List[dist.Work]:
            works = [dist.isend(head, peer, tag=head_tag, **self._group(dst))]
            if payload.numel():
                works.append(dist.isend(payload, peer, tag=payload_tag, **self._group(dst)))
            return [w for w in works if w is not None]  # None only when this rank is not in the group

        nbytes = HEADER_BYTES + payload.numel()
        if direction is not None:
            self.link_bytes[direction] += nbytes
        shaper = self._shapers.get(direction) if direction is not None else None
        try:
            if shaper is not None:
                return SendHandle(future=shaper.submit(nbytes, go), keep=(head, payload))
            return SendHandle(works=go(), keep=(head, payload))
        except RuntimeError as e:
            raise self.peer_error(dst, f"sending {header.kind.name}", e) from None

    def wait_sent(self, handles: List[SendHandle], dst: int) -> None:
        t0 = time.perf_counter()
        try:
            for h in handles:
                h.wait(self.timeout_s)
        except Exception as e:
            raise self.peer_error(dst, "sending", e) from None
        finally:
            handles.clear()
            self.wait_s += time.perf_counter() - t0

    def recv(self, src: int, expect: Optional[Kind] = None, index: Optional[int] = None,
             device: Optional[torch.device] = None, wait_s: Optional[float] = None) -> Tuple[Header, Tensor]:
        """Block until the next message from `src` on the stream of `expect` (gradients or the
        rest: see protocol.tags), for at most `wait_s` (default: timeout_s); check its kind and
        micro-batch index."""
        t0 = time.perf_counter()
        limit_s = self.timeout_s if wait_s is None else wait_s
        head_tag, payload_tag = tags(expect)
        peer = self.global_ranks[src]
        head = torch.empty(HEADER_BYTES, dtype=torch.uint8)
        what = f"waiting for {expect.name if expect else 'a message'}"
        try:
            _wait(dist.irecv(head, peer, tag=head_tag, **self._group(src)), limit_s)
            # checked before the declared size is allocated, and the payload before it is decoded
            fields, mac, context = self.sealer.open(src, self.rank, head_tag, head)
            header = Header.from_tensor(fields)
            payload = torch.empty(header.nbytes, dtype=torch.uint8)
            if header.nbytes:
                _wait(dist.irecv(payload, peer, tag=payload_tag, **self._group(src)), self.timeout_s)
            self.sealer.check(payload, mac, context)
        except IntegrityError as e:
            raise PeerError(f"{self.name(self.rank)} refused a message from {self.name(src)} while "
                            f"{what}: {e}: not sealed with this session's key (forged, modified "
                            f"on the way, or replayed from another session)") from None
        except RuntimeError as e:
            raise self.peer_error(src, what, e) from None
        finally:
            self.wait_s += time.perf_counter() - t0
        direction = self.direction(src, self.rank)
        if direction is not None:
            self.link_bytes[direction] += HEADER_BYTES + header.nbytes
        if ((expect is not None and header.kind != expect)
                or (index is not None and header.index != index)):
            raise PeerError(f"{self.name(self.rank)} got {header.kind.name} #{header.index} from "
                            f"{self.name(src)} while {what} #{index}: the ranks run different "
                            f"protocols or configs")
        if device is not None and device.type != "cpu":
            payload = payload.to(device, non_blocking=True)
        return header, payload

    def close(self) -> None:
        for shaper in self._shapers.values():
            shaper.close()
        self._shapers.clear()
