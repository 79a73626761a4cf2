"""Start the ranks: cloud stages as local children, or across hosts under torchrun or by role."""
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from edgesplit.backends.remote import auth, forks
from edgesplit.backends.remote.progress import Waiting
from edgesplit.backends.remote.seal import Sealer
from edgesplit.backends.remote.transport import EDGE, rank_name
from edgesplit.errors import PeerError

ERROR = "edgesplit/error/"
LOCAL_START_S = 60.0  # the least time a local child gets to start and join
# Store calls on an error path: short, as the store's host (the edge) may be frozen or gone.
LAST_WORDS_S = 2.0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def threads_per_rank(ranks_on_host: int, configured: Optional[int] = None) -> int:
    """torch threads for each of `ranks_on_host` processes sharing this host's cores."""
    if configured:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, ranks_on_host))


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so no cloud rank outlives the edge."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class World:
    """This process's place: logical rank (0 = edge), torch.distributed ranks, store, the
    session's message key (auth.session_key), children."""
    rank: int
    global_ranks: List[int]
    store: dist.Store
    timeout_s: float
    key: bytes
    children: List[Any] = field(default_factory=list)  # forks.LocalRank of local cloud ranks
    peer_keys: Dict[int, bytes] = field(default_factory=dict)  # many edges: each client's message key
    clients: bool = False  # many edges: rank 0 is the cloud, the others clients' edges (rank_name)

    def __post_init__(self) -> None:
        self.sealer = Sealer(self.key, self.peer_keys)

    @property
    def size(self) -> int:
        return len(self.global_ranks)

    def report_error(self, message: str) -> None:
        """Leave a one-line reason in the store for the other ranks' messages (best effort)."""
        _bounded(lambda: self.store.set(f"{ERROR}{self.rank}", message[:500]))

    def diagnose(self, peer: int) -> Optional[str]:
        """Why `peer` (or any rank) went away: a dead child's exit status or a rank's message."""
        notes = []
        deadline = time.monotonic() + 1.0
        for rank, proc in enumerate(self.children, start=1):
            while rank == peer and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            code = proc.poll()
            if code:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                notes.append(f"{rank_name(rank, self.size, self.clients)} (pid {proc.pid}) {how}")

        def messages() -> None:
            for rank in range(self.size):
                if rank != self.rank and self.store.check([f"{ERROR}{rank}"]):
                    notes.append(self.store.get(f"{ERROR}{rank}").decode())
        _bounded(messages)
        return "; ".join(notes) or None


def _bounded(call: Callable[[], None]) -> None:
    """Run a store call on an error path for at most LAST_WORDS_S: the store's host may be the
    peer that froze or died, and a store call waits as long as the store's own timeout."""
    def run() -> None:
        try:
            call()
        except Exception:
            pass  # best effort: the store went away with its host
    thread = threading.Thread(target=run, name="edgesplit-last-words", daemon=True)
    thread.start()
    thread.join(LAST_WORDS_S)


def init_group(store: dist.Store, rank: int, world_size: int, timeout_s: float) -> None:
    with Waiting(f"the {world_size} ranks to form the gloo group", timeout_s):
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))


def _store_client(host: str, port: int, timeout_s: float, deadline: float,
                  who: str = "cloud", server: str = "the edge") -> dist.TCPStore:
    """A client of the edge's store once its port accepts a connection, by the deadline: torch's
    own client retries print C++ stack traces at every failed try and overrun its timeout."""
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host, port), timeout=min(max(left, 0.05), 1.0)).close()
            break
        except OSError as e:
            if left <= 0:
                raise PeerError(f"{who} could not reach {server}'s store at {host}:{port} within "
                                f"{timeout_s:g} s: {e.strerror or e}") from None
            time.sleep(min(0.2, left))
    return dist.TCPStore(host, port, None, False, timedelta(seconds=max(left, 1.0)))


def join_store(host: str, port: int, secret: str, want: int, timeout_s: float, who: str = "",
               sides: auth.Sides = auth.Sides()) -> Tuple[dist.TCPStore, int, bytes]:
    """Cloud side (or a client's edge host: `who`, `sides`): reach the edge's (the cloud's) store at
    host:port and be admitted (a line every few seconds), all within timeout_s; returns the store,
    the stage rank and the session's key."""
    deadline = time.monotonic() + timeout_s
    admit = who or (f"cloud rank {want}" if want else "a cloud process")
    with Waiting(f"{sides.server} at {host}:{port} to admit {admit}", timeout_s):
        store = _store_client(host, port, timeout_s, deadline, who or "cloud", sides.server)
        store.set_timeout(timedelta(seconds=timeout_s))  # its later calls: the run's limit
        left = max(deadline - time.monotonic(), 0.05)
        return (store, *auth.join_session(store, secret, want, host, port, left, limit_s=timeout_s,
                                          sides=sides))


def serve_store(host: str, port: int, timeout_s: float, server: str = "the edge") -> dist.TCPStore:
    """The edge's store, listening on host:port only: torch's own server would listen on every
    interface, so it gets a socket bound here (and owns its descriptor from then on)."""
    listener = auth.listening_socket(host, port, server)
    port = listener.getsockname()[1]
    fd = listener.detach()
    try:
        return dist.TCPStore(host, port, None, True, timedelta(seconds=timeout_s),
                             wait_for_workers=False, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def start_local(stages: int, specs: List[str], secret: str, timeout_s: float,
                threads: int, entry: str = "cloud") -> World:
    """Edge side of a one-machine run: a store on a free loopback port, one child per stage
    forked by this process's zygote (forks.py), the secret and its StageSpec as JSON through the
    zygote's socket, where other users cannot read them as they can argv. `entry` 'edge' (a
    many-edge run's cloud: edgesplit.clients.dist): the children are the clients' edges, each
    given its own client's secret (auth.client_secret) and its own message key (their specs are
    empty: each edge's comes over its link)."""
    world_size = stages + 1
    per_client = entry == "edge"
    store = serve_store("127.0.0.1", 0, timeout_s)
    children: List[Any] = []
    try:
        for s in range(stages):
            argv = [str(s + 1), str(world_size), "127.0.0.1", str(store.port), str(timeout_s), str(threads)]
            given = json.dumps({"secret": auth.client_secret(secret, s) if per_client else secret,
                                "spec": specs[s]})
            # the first waits for the zygote's imports (python, torch): under load that takes a while
            children.append(forks.start_rank(argv, given, max(timeout_s, LOCAL_START_S), entry))

        def check(missing: List[int]) -> None:
            for rank, proc in enumerate(children, start=1):
                if rank in missing and proc.poll() is not None:
                    raise PeerError(f"{rank_name(rank, world_size, per_client)} (pid {proc.pid}) exited with "
                                    f"status {proc.returncode} before connecting to the edge")
        gate = auth.Gate(store, secret, world_size, per_rank=per_client)
        key = gate.wait(max(timeout_s, LOCAL_START_S), check, where=f"127.0.0.1:{store.port}")
        init_group(store, EDGE, world_size, timeout_s)
    except BaseException:
        stop_children(children, grace_s=0)
        raise
    return World(EDGE, list(range(world_size)), store, timeout_s, key, children,
                 gate.keys if per_client else {}, per_client)


def connect_local(rank: int, world_size: int, host: str, port: int, secret: str,
                  timeout_s: float) -> World:
    """Cloud side of start_local()."""
    store, got, key = join_store(host, port, secret, rank, timeout_s)
    if got != rank:
        raise PeerError(f"the edge gave stage {got} to cloud rank {rank}")
    init_group(store, rank, world_size, timeout_s)
    return World(rank, list(range(world_size)), store, timeout_s, key)


def start_by_role(role: str, stages: int, host: str, port: int, secret: str,
                  timeout_s: float) -> World:
    """Multi-host without torchrun: the edge hosts a store at host:port; each cloud process
    proves the secret and gets the next free stage number from the edge."""
    world_size = stages + 1
    try:
        if role == "edge":
            store = serve_store(host, port, timeout_s)
            key = auth.Gate(store, secret, world_size).wait(timeout_s, where=f"{host}:{port}")
            rank = EDGE
        else:
            store, rank, key = join_store(host, port, secret, 0, timeout_s)
    except (RuntimeError, dist.DistError) as e:
        raise PeerError(f"{role} could not reach the edge's store at {host}:{port} within "
                        f"{timeout_s:g} s: {str(e).splitlines()[0][:200]}") from None
    init_group(store, rank, world_size, timeout_s)
    return World(rank, list(range(world_size)), store, timeout_s, key)


def start_torchrun(role: str, stages: int, secret: str, timeout_s: float) -> World:
    """Under torchrun: ranks come from the rendezvous; the logical order comes from the roles
    (exactly one edge), not from the rendezvous order. Each cloud rank then proves the secret
    before the edge sends it anything."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    with Waiting(f"the other torchrun ranks at {where} (world size {os.environ.get('WORLD_SIZE', '?')})",
                 timeout_s):
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=timeout_s))
    # the roles as a tensor (the object collectives would unpickle what peers send)
    is_edge = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(is_edge, torch.tensor([int(role == "edge")]))
    roles = ["edge" if int(flag) else "cloud" for flag in is_edge]
    edges = [r for r, x in enumerate(roles) if x == "edge"]
    if len(edges) != 1 or len(roles) != stages + 1:
        raise PeerError(f"torchrun started roles {roles}: need exactly one edge and "
                        f"partition.cloud_stages={stages} cloud processes")
    order = edges + [r for r, x in enumerate(roles) if x != "edge"]
    me = order.index(dist.get_rank())
    store = dist.distributed_c10d._get_default_store()
    if me == EDGE:
        key = auth.Gate(store, secret, len(order)).wait(timeout_s, where=f"{where} (torchrun's store)")
    else:
        addr = os.environ.get("MASTER_ADDR", "?"), int(os.environ.get("MASTER_PORT", "0"))
        with Waiting(f"the edge to admit cloud rank {me} (torchrun's store at {where})", timeout_s):
            _, key = auth.join_session(store, secret, me, addr[0], addr[1], timeout_s)
    return World(me, order, store, timeout_s, key)


def stop_children(children: List[Any], grace_s: float) -> None:
    """Join the children for up to grace_s, then kill and reap the rest."""
    deadline = time.monotonic() + grace_s
    for proc in children:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def fail(world: Optional[World], rank: int, e: BaseException, who: str = "") -> None:
    """A cloud rank's (or a client's edge's: `who`) last words: one line on stderr and in the
    store, then a non-zero exit."""
    who = who or f"cloud rank {rank}"
    line = str(e)
    if not line.startswith(("cloud rank", "edge rank", "client ")):
        line = f"{who} failed: {type(e).__name__}: {e}"
    print(f"edgesplit: {line.splitlines()[0]}", file=sys.stderr, flush=True)
    if world is not None:
        world.report_error(line.splitlines()[0])
