"""Start the ranks: cloud stages as local children, or across hosts under torchrun or by role."""
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from edgesplit.backends.remote.transport import EDGE, rank_name
from edgesplit.errors import PeerError

JOINED = "edgesplit/joined/"
ERROR = "edgesplit/error/"
STAGE_COUNTER = "edgesplit/next_stage"
LOCAL_START_S = 60.0  # the least time a local child gets to start and join


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
    """This process's place: logical rank (0 = edge), torch.distributed ranks, store, children."""
    rank: int
    global_ranks: List[int]
    store: dist.Store
    timeout_s: float
    children: List[Any] = field(default_factory=list)  # subprocess.Popen of local cloud ranks

    @property
    def size(self) -> int:
        return len(self.global_ranks)

    def report_error(self, message: str) -> None:
        """Leave a one-line reason in the store for the other ranks' messages (best effort)."""
        try:
            self.store.set(f"{ERROR}{self.rank}", message[:500])
        except Exception:
            pass

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
                notes.append(f"{rank_name(rank, self.size)} (pid {proc.pid}) {how}")
        for rank in range(self.size):
            if rank == self.rank:
                continue
            try:
                if self.store.check([f"{ERROR}{rank}"]):
                    notes.append(self.store.get(f"{ERROR}{rank}").decode())
            except Exception:
                break  # the store went away with its host
        return "; ".join(notes) or None


def _wait_joined(store: dist.Store, world_size: int, timeout_s: float,
                 children: List[Any]) -> None:
    """Wait for every cloud rank's 'joined' key; name the missing ranks on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [r for r in range(1, world_size) if not store.check([f"{JOINED}{r}"])]
        if not missing:
            return
        for rank, proc in enumerate(children, start=1):
            if rank in missing and proc.poll() is not None:
                raise PeerError(f"{rank_name(rank, world_size)} (pid {proc.pid}) exited with "
                                f"status {proc.returncode} before connecting to the edge")
        if time.monotonic() > deadline:
            names = ", ".join(rank_name(r, world_size) for r in missing)
            raise PeerError(f"{names} did not connect to the edge within {timeout_s:g} s "
                            f"(pipeline_backend.timeout_s)")
        time.sleep(0.05)


def init_group(store: dist.Store, rank: int, world_size: int, timeout_s: float) -> None:
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def start_local(stages: int, specs: List[str], timeout_s: float, threads: int) -> World:
    """Edge side of a one-machine run: a store on a free loopback port, one child per stage
    (`python -m edgesplit.backends.remote`, its StageSpec as JSON on stdin, this process's
    sys.path)."""
    world_size = stages + 1
    store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    children: List[Any] = []
    world = World(EDGE, list(range(world_size)), store, timeout_s, children)
    try:
        for s in range(stages):
            argv = [sys.executable, "-m", "edgesplit.backends.remote", str(s + 1), str(world_size),
                    "127.0.0.1", str(store.port), str(timeout_s), str(threads)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)
            children.append(proc)
            try:
                assert proc.stdin is not None
                proc.stdin.write(specs[s].encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at start: _wait_joined names it
        # children start python and torch first: under load that alone can take a while
        _wait_joined(store, world_size, max(timeout_s, LOCAL_START_S), children)
        init_group(store, EDGE, world_size, timeout_s)
    except BaseException:
        stop_children(children, grace_s=0)
        raise
    return world


def connect_local(rank: int, world_size: int, host: str, port: int, timeout_s: float) -> World:
    """Cloud side of start_local()."""
    store = dist.TCPStore(host, port, None, False, timedelta(seconds=timeout_s))
    store.set(f"{JOINED}{rank}", str(os.getpid()))
    init_group(store, rank, world_size, timeout_s)
    return World(rank, list(range(world_size)), store, timeout_s)


def start_by_role(role: str, stages: int, host: str, port: int, timeout_s: float) -> World:
    """Multi-host without torchrun: the edge hosts a store at host:port; each cloud process takes
    the next stage number from it."""
    world_size = stages + 1
    t = timedelta(seconds=timeout_s)
    try:
        if role == "edge":
            store = dist.TCPStore(host, port, None, True, t, wait_for_workers=False)
            rank = EDGE
        else:
            store = dist.TCPStore(host, port, None, False, t)
            rank = int(store.add(STAGE_COUNTER, 1))
            if rank >= world_size:
                raise PeerError(f"a cloud process joined as stage {rank} but "
                                f"partition.cloud_stages={stages}")
            store.set(f"{JOINED}{rank}", str(os.getpid()))
    except (RuntimeError, dist.DistError) as e:
        if isinstance(e, PeerError):
            raise
        raise PeerError(f"{role} could not reach the edge's store at {host}:{port} within "
                        f"{timeout_s:g} s: {str(e).splitlines()[0][:200]}") from None
    if rank == EDGE:
        _wait_joined(store, world_size, timeout_s, [])
    init_group(store, rank, world_size, timeout_s)
    return World(rank, list(range(world_size)), store, timeout_s)


def start_torchrun(role: str, stages: int, timeout_s: float) -> World:
    """Under torchrun: ranks come from the rendezvous; the logical order comes from the roles
    (exactly one edge), not from the rendezvous order."""
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
    me = dist.get_rank()
    store = dist.distributed_c10d._get_default_store()
    return World(order.index(me), order, store, timeout_s)


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


def fail(world: Optional[World], rank: int, e: BaseException) -> None:
    """A cloud rank's last words: one line on stderr and in the store, then a non-zero exit."""
    who = f"cloud rank {rank}"
    line = str(e)
    if not line.startswith(("cloud rank", "edge rank")):
        line = f"{who} failed: {type(e).__name__}: {e}"
    print(f"edgesplit: {line.splitlines()[0]}", file=sys.stderr, flush=True)
    if world is not None:
        world.report_error(line.splitlines()[0])
