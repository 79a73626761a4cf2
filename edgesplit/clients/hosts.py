"""Many edges across hosts (pipeline_backend=dist, clients.count=K): the cloud's host runs train.py
(the training loop, the records) with pipeline_backend.role=cloud and hosts the rendezvous (its own
store at master_addr:master_port, or torchrun's); each edge host runs train.py with
pipeline_backend.role=edge pipeline_backend.client=k and serves client k (edge_process.py).

Keys: the cloud holds the run secret ($EDGESPLIT_SECRET); an edge host holds only its own client's
secret ($EDGESPLIT_CLIENT_SECRET: `python -m edgesplit.clients.keys k` on the cloud's host prints it),
never the run secret, from which every client's secret derives: so edge host k cannot claim to be
client j, nor seal client j's messages."""
import json
import os
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from edgesplit.assemble import DistSpec, pipeline_of
from edgesplit.backends.remote import auth, launch
from edgesplit.backends.remote.progress import Waiting, say
from edgesplit.clients.edge_process import CLOUD, serve_client
from edgesplit.errors import ConfigError, PeerError

CLIENT_ENV = "EDGESPLIT_CLIENT_SECRET"


def client_secret_of(b: DistSpec) -> str:
    """An edge host's secret: its client's own (pipeline_backend.secret_file, else
    $EDGESPLIT_CLIENT_SECRET), never the run secret ($EDGESPLIT_SECRET), which derives every client's."""
    if b.secret or b.secret_file:
        return auth.resolve_secret(b.secret, False, b.secret_file)
    secret = os.environ.get(CLIENT_ENV)
    if not secret:
        held = (f"; {auth.ENV} is the run secret, from which every client's derives: keep it on the "
                f"cloud's host") if os.environ.get(auth.ENV) else ""
        raise ConfigError(f"an edge host of many edges needs its own client's secret: set {CLIENT_ENV} to "
                          f"what `python -m edgesplit.clients.keys K` prints on the cloud's host (K: its "
                          f"pipeline_backend.client){held}")
    if len(secret) < auth.MIN_SECRET:
        raise ConfigError(f"{CLIENT_ENV} is too short ({len(secret)} characters): use what "
                          f"`python -m edgesplit.clients.keys K` prints")
    return secret


def _sides(client: int) -> auth.Sides:
    """How an edge host's join names the cloud, itself, and what to do when refused."""
    return auth.Sides("the cloud", f"client {client}", f"{CLIENT_ENV} is not client {client}'s: set it to "
                      f"what `python -m edgesplit.clients.keys {client}` prints on the cloud's host")


def _torchrun(role: str, count: int, client: Optional[int], secret: str, timeout_s: float) -> launch.World:
    """Under torchrun: the ranks come from the rendezvous, their logical order from the roles (one
    cloud, then client 0..K-1's edges); then each edge proves its client's secret to the cloud."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    with Waiting(f"the other torchrun ranks at {where} (world size {os.environ.get('WORLD_SIZE', '?')})",
                 timeout_s):
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=timeout_s))
    # (is the cloud, client index) of every rank, as a tensor (the object collectives would unpickle)
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(every, torch.tensor([int(role == "cloud"), -1 if client is None else client]))
    clouds = [r for r, t in enumerate(every) if int(t[0])]
    edges = sorted((int(t[1]), r) for r, t in enumerate(every) if not int(t[0]))
    if len(clouds) != 1 or [k for k, _ in edges] != list(range(count)):
        raise PeerError(f"torchrun started {len(clouds)} cloud rank(s) and edges of clients "
                        f"{[k for k, _ in edges]}: clients.count={count} needs one "
                        f"pipeline_backend.role=cloud and one pipeline_backend.role=edge per "
                        f"pipeline_backend.client 0..{count - 1}")
    order = clouds + [r for _, r in edges]
    me = order.index(dist.get_rank())
    store = dist.distributed_c10d._get_default_store()
    if me == CLOUD:
        gate = auth.Gate(store, secret, len(order), per_rank=True)
        key = gate.wait(timeout_s, where=f"{where} (torchrun's store)")
        return launch.World(me, order, store, timeout_s, key, [], gate.keys, True)
    host, port = os.environ.get("MASTER_ADDR", "?"), int(os.environ.get("MASTER_PORT", "0"))
    with Waiting(f"the cloud to admit client {me - 1} (torchrun's store at {where})", timeout_s):
        _, key = auth.join_session(store, secret, me, host, port, timeout_s, sides=_sides(me - 1))
    return launch.World(me, order, store, timeout_s, key, clients=True)


def start_cloud(b: DistSpec, count: int, threads: Optional[int]) -> launch.World:
    """The cloud of K edge hosts: admit each edge as its own client (its rank proves that client's
    secret), in its own store at master_addr:master_port or in torchrun's."""
    secret = auth.resolve_secret(b.secret, False, b.secret_file)
    torch.set_num_threads(launch.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), threads))
    if launch.under_torchrun():
        if b.role != "cloud":
            raise ConfigError(f"clients.count={count} under torchrun: every rank names its role, "
                              f"pipeline_backend.role=cloud (the one that trains) or "
                              f"pipeline_backend.role=edge pipeline_backend.client=k (one per client)")
        return _torchrun("cloud", count, None, secret, b.timeout_s)
    if b.role != "cloud":
        raise ConfigError(f"pipeline_backend.role={b.role} trains no many-edge run: the cloud's host runs "
                          f"pipeline_backend.role=cloud")
    where, size = f"{b.master_addr}:{b.master_port}", count + 1
    store = launch.serve_store(b.master_addr, b.master_port, b.timeout_s, server="the cloud")
    gate = auth.Gate(store, secret, size, per_rank=True)
    key = gate.wait(b.timeout_s, where=where)
    try:
        launch.init_group(store, CLOUD, size, b.timeout_s)
    except (RuntimeError, dist.DistError) as e:  # an admitted edge host left before the group formed
        raise PeerError(f"the cloud's {count} edge hosts did not form the group at {where} within "
                        f"{b.timeout_s:g} s: {str(e).splitlines()[0][:200]}") from None
    return launch.World(CLOUD, list(range(size)), store, b.timeout_s, key, [], gate.keys, True)


def _join(b: DistSpec, count: int, client: int, secret: str) -> launch.World:
    """Client `client`'s edge host joins the cloud at master_addr:master_port."""
    host, port = b.master_addr, b.master_port
    try:
        store, rank, key = launch.join_store(host, port, secret, client + 1, b.timeout_s, f"client {client}",
                                             _sides(client))
        pairs = json.loads(store.get(auth.SESSION).decode().rpartition("|")[0])  # join_session checked it
    except (RuntimeError, dist.DistError) as e:  # the cloud's store went away while this host waited
        raise PeerError(f"client {client} lost the cloud's store at {host}:{port} before the run started: "
                        f"{str(e).splitlines()[0][:200]}") from None
    if len(pairs) != count:
        raise PeerError(f"the cloud at {host}:{port} runs {len(pairs)} clients, this host's clients.count="
                        f"{count}: give every host the cloud's clients.count")
    launch.init_group(store, rank, count + 1, b.timeout_s)
    return launch.World(rank, list(range(count + 1)), store, b.timeout_s, key, clients=True)


def run_edge_host(cfg: DictConfig) -> None:
    """train.py on an edge host of many edges (role=edge, pipeline_backend.client=k): join the cloud as
    client k, take its spec (the cloud's config), serve until the cloud stops it; writes no results."""
    b = pipeline_of(cfg.pipeline_backend).dist
    assert b is not None  # train.py calls it for pipeline_backend=dist only
    client, count = int(cfg.pipeline_backend.client), int(cfg.clients.count)
    secret = client_secret_of(b)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(launch.threads_per_rank(ranks_here, cfg.get("threads")))  # until the cloud's
    world = None
    try:
        world = (_torchrun("edge", count, client, secret, b.timeout_s) if launch.under_torchrun()
                 else _join(b, count, client, secret))
        say(f"client {client}: admitted by the cloud as edge rank {world.rank} of {count} clients")
        serve_client(world, ranks_here)
        say(f"client {client}: the cloud ended the run: exiting")
    except BaseException as e:
        if world is not None:
            world.report_error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
