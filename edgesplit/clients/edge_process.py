"""A client's edge process in a many-edge dist run (edgesplit.clients.dist): its training shard
and labels, its edge parts (front and back), optimizer and codec state. It trains a batch when the
cloud (logical rank 0) says so, against the cloud, and answers the cloud's other commands; only
activations, gradients, step results and (for averaging) its edge parts' weights leave it."""
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from datetime import timedelta

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from edgesplit.assemble import RunSpec
from edgesplit.assemble.wire import from_data, to_data
from edgesplit.backends.base import StepResult
from edgesplit.backends.remote.edge import RemoteBackend
from edgesplit.backends.remote.launch import World, threads_per_rank
from edgesplit.backends.remote.link import LinkSpec
from edgesplit.backends.remote.protocol import (Command, Header, Kind, Op, Reply, loads_bounded,
                                                pack_state, unpack_state)
from edgesplit.backends.remote.transport import Transport, rank_name
from edgesplit.boundary.meter import CommMeter
from edgesplit.clients.data import ClientStream, holdout_loader
from edgesplit.clients.spec import ClientsRun, ClientsSpec
from edgesplit.data.datasets import build_datasets
from edgesplit.errors import PeerError
from edgesplit.model.partition import split_units
from edgesplit.run import checkpoint

CLOUD = 0  # the cloud's logical rank in a many-edge run; client k is rank k + 1
# An edge waits for the cloud's next command while the cloud serves the other clients (their
# turns, the validation on client 0, every held-out set): so long, but bounded. A lost cloud ends
# it at once: the cloud's death takes the zygote, whose death signal takes the edge.
IDLE_S = 3600.0


def preload() -> None:
    """In the zygote, before it forks the first edge: what every edge would import on its own
    (sklearn, seconds: the digits set's loader), imported once."""
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        pass


@dataclass(frozen=True)
class EdgeSpec:
    """What client `client`'s edge process is told over its link (data only, JSON, no secret): the
    run, the clients' keys, the `data` keys it builds its training set from, and the digest of its
    shard (ClientsRun.shard), which it derives itself from the seeded partition."""
    client: int
    count: int
    run: RunSpec
    clients: ClientsSpec
    data: Dict[str, Any]
    shard: str

    def to_json(self) -> str:
        return json.dumps(to_data(self))

    @staticmethod
    def from_json(text: str) -> "EdgeSpec":
        try:
            return from_data(EdgeSpec, json.loads(text))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"malformed edge spec: {type(e).__name__}: {e}") from None


def client_groups(world: World) -> Dict[int, Any]:
    """One process group per client's link (made by every rank in the same order, of torch ranks:
    under torchrun they are not the logical ones); this rank's: the cloud's all, an edge's its own."""
    timeout = timedelta(seconds=world.timeout_s)
    groups = {k: dist.new_group([world.global_ranks[CLOUD], world.global_ranks[k]], timeout=timeout)
              for k in range(1, world.size)}
    return groups if world.rank == CLOUD else {CLOUD: groups[world.rank]}


def transport_of(world: World, spec: Optional[RunSpec], groups: Dict[int, Any]) -> Transport:
    """A many-edge run's transport: ranks 1..K are edges, the emulated link (spec's; none before an
    edge has its spec) between each and the cloud."""
    b = spec.pipeline.dist if spec else None
    link = LinkSpec.of_mbps(b.up_mbps, b.down_mbps, b.latency_ms) if b else LinkSpec()
    return Transport(world.rank, world.global_ranks, world.timeout_s, world.sealer, link, world.diagnose,
                     edges=range(1, world.size), names=lambda rank: rank_name(rank, world.size, True),
                     groups=groups)


class ClientEdge(RemoteBackend):
    """The edge side of RemoteBackend (its units, boundaries, order of steps) for one client,
    facing the one cloud at rank 0; the shard's batches come from its own stream."""

    def __init__(self, spec: EdgeSpec, transport: Transport) -> None:  # noqa: no super(): no launch
        run = spec.run
        units, front, back = run.units()
        split = split_units(units, front, back, 1, run.facts.input_shape)
        # the cloud's units are built (one model builder) and let go: only the edge parts stay here
        self.meter, self.spec = CommMeter(), spec
        self.order = run.pipeline.dist.order if run.pipeline.dist else "gpipe"
        self.stages, self.chunks, self.timeout_s = 1, run.pipeline.chunks, transport.timeout_s
        self._build_side(run, split, torch.device("cpu"), run.pipeline.dist.edge_slowdown
                         if run.pipeline.dist else 1.0)
        self._attach(transport, CLOUD, CLOUD)
        self.healthy = True
        # the training set, of which this client keeps its own samples (ClientStream, holdout_loader):
        # it derives them from the seeded partition, as the cloud does, and checks it holds the same
        self.train_set = build_datasets(OmegaConf.create(spec.data)).train
        k, plan = spec.client, ClientsRun.of(spec.clients, self.train_set)
        if plan.shard(k) != spec.shard:
            raise PeerError(f"client {k}: its shard of the partition ({len(plan.train[k])} training, "
                            f"{len(plan.held_out[k])} held-out samples) is not the cloud's: this host's data "
                            f"set differs from the cloud's (the same `data` keys, other files?)")
        self.train_ids, self.held_ids = plan.train[k], plan.held_out[k]
        self.stream: Optional[ClientStream] = None

    def start_epoch(self, epoch: int) -> None:
        self.optimization.start_epoch(epoch)
        for b in self.boundaries:
            b.start_epoch(epoch)
        self.compute_s, self.steps = 0.0, 0
        self.meter.reset()
        torch.manual_seed(self.spec.run.seed + epoch)  # as the trainer seeds the epoch in one process
        self.stream = ClientStream(self.train_set, self.train_ids, self.spec.clients, self.spec.client, epoch)

    def held_out(self) -> Optional[StepResult]:
        total = None
        self.train(False)
        with torch.no_grad():
            for x, y in holdout_loader(self.train_set, self.held_ids, self.spec.clients) or []:
                step = self.eval_step(x, y)
                total = step if total is None else total + step
        return total

    def edge_state(self) -> bytes:
        """This client's edge parts' state (weights and BatchNorm statistics): nothing else."""
        return pack_state({"units": {i: u.state_dict() for i, u in self._units.items()}})

    def control(self, command: Command, blobs: List[bytes]) -> Tuple[Reply, List[bytes]]:
        """Carry out the cloud's command; returns this edge's reply and the blobs it sends."""
        reply, out = Reply(stage=self.spec.client + 1), []
        op = command.op
        if op == Op.EPOCH:
            self.start_epoch(command.epoch)
        elif op == Op.STEP:
            assert self.stream is not None, "a step before the epoch started"
            self.train(True)
            x, y, ids = self.stream.next()
            reply.result = vars(self.train_step(x, y, ids))
        elif op == Op.EVAL:
            with self.t.decoding(CLOUD, "evaluation batch"):
                batch = unpack_state(blobs[0])
            self.train(False)
            reply.result = vars(self.eval_step(batch["x"], batch["y"]))
        elif op == Op.HELD_OUT:
            held = self.held_out()
            reply.result = None if held is None else vars(held)
        elif op == Op.WEIGHTS:
            out = [self.edge_state()]
        elif op in (Op.AVERAGED, Op.LOAD):
            with self.t.decoding(CLOUD, "edge state"):
                state = unpack_state(blobs[0])
            if op == Op.AVERAGED:
                for i, u in self._units.items():
                    u.load_state_dict(state["units"][i])
            else:
                checkpoint.load_part(state, checkpoint.EDGE_PROCESS, self._units, self.optimization,
                                     self.boundaries)
        elif op == Op.SAVE:
            out = [pack_state(checkpoint.part(checkpoint.EDGE_PROCESS, self._units, self.optimization,
                                              self.boundaries))]
        elif op == Op.STATS:
            reply.side, reply.meter = self.edge_stats().to_dict(), self.meter.state()
            reply.result = {"compute_s": self.compute_s}
        return reply, out

    def serve(self) -> None:
        """Until the cloud says stop; a lost cloud raises PeerError."""
        while True:
            # a gloo wait that times out closes the pair: the idle wait cannot be cut in short ones
            idle_s = max(IDLE_S, self.timeout_s * (self.spec.count + 1))
            _, payload = self.t.recv(CLOUD, Kind.CONTROL, wait_s=idle_s)
            with self.t.decoding(CLOUD, "control message"):
                command, blobs = Command.unpack(payload)
            reply, out = self.control(command, blobs)
            command.replies.append(reply)
            self.t.wait_sent([self.t.send(CLOUD, Header(Kind.REPLY), command.pack(out))], CLOUD)
            if command.op == Op.STOP:
                return

    def close(self) -> None:
        self.t.close()


def serve_client(world: World, ranks_here: int = 0) -> None:
    """A client's edge process once the cloud admitted it (a local child: cloud_main.child_main; an
    edge host: hosts.py): its spec comes first over its link, then the cloud's commands. `ranks_here`
    (an edge host): this host's ranks, which share its cores at the cloud's `threads`."""
    groups = client_groups(world)
    bare = transport_of(world, None, groups)
    _, payload = bare.recv(CLOUD, Kind.CONTROL)
    bare.close()
    with bare.decoding(CLOUD, "edge spec"):
        text = payload.numpy().tobytes()
        loads_bounded(text, "edge spec")  # its depth checked before from_json parses it
        spec = EdgeSpec.from_json(text.decode())
        if (spec.client, spec.count) != (world.rank - 1, world.size - 1):
            raise ValueError(f"it is client {spec.client} of {spec.count}, this rank is {world.rank} of "
                             f"{world.size}")
    if ranks_here:  # the cloud's threads: another count sums floats in another order
        torch.set_num_threads(threads_per_rank(ranks_here, spec.run.threads))
    edge = ClientEdge(spec, transport_of(world, spec.run, groups))
    try:
        edge.serve()
    finally:
        edge.close()
