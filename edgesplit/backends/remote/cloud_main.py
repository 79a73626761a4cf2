"""Entry points of a cloud process: a child the edge started on this machine, or a host's
`pipeline_backend.role=cloud`."""
import json
import os
import sys
from typing import Any, Optional

import torch
import torch.distributed as dist

from edgesplit.assemble import pipeline_of
from edgesplit.backends.remote import auth, launch
from edgesplit.backends.remote.cloud import CloudStage
from edgesplit.backends.remote.link import LinkSpec
from edgesplit.backends.remote.progress import Heartbeat, say
from edgesplit.backends.remote.protocol import Kind, loads_bounded
from edgesplit.backends.remote.spec import StageSpec
from edgesplit.backends.remote.transport import EDGE, Transport, rank_name


def _serve(world: launch.World, spec: StageSpec, heartbeat: Optional[Heartbeat] = None) -> None:
    dist = spec.run.pipeline.dist
    link = LinkSpec.of_mbps(dist.up_mbps, dist.down_mbps, dist.latency_ms) if dist else LinkSpec()
    transport = Transport(world.rank, world.global_ranks, world.timeout_s, world.sealer, link,
                          world.diagnose)
    try:
        CloudStage(spec, transport, heartbeat).serve()
    finally:
        transport.close()


def child_main(rank: int, world_size: int, host: str, port: int, secret_and_spec: str,
               timeout_s: float, threads: int, entry: str = "cloud") -> None:
    """A cloud rank that the edge started on this machine (forked by its zygote: zygote.py), or
    (`entry` 'edge') a client's edge that a many-edge run's cloud started (edgesplit.clients.dist)."""
    launch.die_with_parent()
    torch.set_num_threads(threads)
    world = None
    try:
        given = json.loads(secret_and_spec)
        if entry == "edge":
            from edgesplit.clients.edge_process import serve_client  # the cloud stage's imports stay lean
            world = launch.connect_local(rank, world_size, host, port, given["secret"], timeout_s)
            serve_client(world)  # its spec comes over its link
        else:
            spec = StageSpec.from_json(given["spec"])
            world = launch.connect_local(rank, world_size, host, port, given["secret"], timeout_s)
            _serve(world, spec)
    except BaseException as e:
        launch.fail(world, rank, e, rank_name(rank, world_size, True) if entry == "edge" else "")
        # no clean-up: tearing down the group waits on a peer that may be frozen or gone
        sys.stderr.flush()
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()
    # done: the interpreter's own teardown (torch's modules) would keep the edge's close() waiting
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_cloud(cfg: Any) -> None:
    """The cloud role on its own host (pipeline_backend.role=cloud): join the edge, take its
    stage spec (the edge's config), serve until it stops. Raises PeerError when the edge is lost.
    It writes no results and deletes nothing: the dir Hydra gave it keeps Hydra's own files (its
    config and log), which may be the edge's dir when both start in the same second on one host."""
    b = pipeline_of(cfg.pipeline_backend).dist
    assert b is not None  # train.py calls it for pipeline_backend=dist only
    stages = int(cfg.partition.cloud_stages)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(launch.threads_per_rank(ranks_here, cfg.get("threads")))  # until the edge's
    secret = auth.resolve_secret(b.secret, local=False, secret_file=b.secret_file)
    world = None
    try:
        if launch.under_torchrun():
            edge = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} (torchrun)"
            world = launch.start_torchrun("cloud", stages, secret, b.timeout_s)
        else:
            edge = f"{b.master_addr}:{b.master_port}"
            world = launch.start_by_role("cloud", stages, b.master_addr, b.master_port,
                                         secret, b.timeout_s)
        t = Transport(world.rank, world.global_ranks, world.timeout_s, world.sealer, LinkSpec(),
                      world.diagnose)
        _, payload = t.recv(EDGE, Kind.CONTROL)
        t.close()
        with t.decoding(EDGE, "stage spec"):
            text = payload.numpy().tobytes()
            loads_bounded(text, "stage spec")  # its depth checked before from_json parses it
            spec = StageSpec.from_json(text.decode())
        who = f"cloud stage {spec.rank} of {spec.stages}"
        # the edge's resolved config, threads included: another thread count sums floats in another order
        threads = launch.threads_per_rank(ranks_here, spec.run.threads)
        torch.set_num_threads(threads)
        say(f"admitted by the edge at {edge} as {who} (units {spec.units[0]}-{spec.units[-1]}); "
            f"{threads} torch thread(s) (the edge's threads={spec.run.threads})")
        heartbeat = Heartbeat(who, int(cfg.log_every))
        _serve(world, spec, heartbeat)
        say(f"{who}: the edge ended the run after {heartbeat.steps} training steps: exiting")
    except BaseException as e:
        if world is not None:
            world.report_error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
