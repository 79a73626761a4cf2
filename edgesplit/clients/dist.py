"""Many edges, one cloud, across processes (pipeline_backend=dist, clients.count=K): this process is
the cloud and runs the training loop; K edge processes (edge_process.py), forked by the zygote or on
their own hosts (hosts.py), each admitted with its own client's secret, hold their shards, labels
and edge parts. The cloud serves them in the round plan's order (rounds.py, as in one process) and
averages their edge parts (weights only, data-only messages); a client lost past
pipeline_backend.timeout_s is dropped."""
import logging
from dataclasses import replace
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from edgesplit.assemble import RunParts, RunSpec
from edgesplit.backends.base import StepResult, named_unit_parameters
from edgesplit.backends.partitions import resolve_devices
from edgesplit.backends.remote import auth, launch
from edgesplit.backends.remote.cloud import CloudStage
from edgesplit.backends.remote.protocol import Command, Header, Kind, Op
from edgesplit.backends.remote.spec import StageSpec
from edgesplit.boundary.meter import CommMeter
from edgesplit.clients.averaging import mean_state
from edgesplit.clients.backend import Client, ClientsBackend, copies
from edgesplit.clients import hosts
from edgesplit.clients.edge_process import EdgeSpec, client_groups, transport_of
from edgesplit.clients.remote_client import RemoteClient, Turns
from edgesplit.clients.rounds import Turn
from edgesplit.errors import PeerError
from edgesplit.run import checkpoint

log = logging.getLogger(__name__)
NO_STEP = StepResult(0.0, 0, 0, 0)  # a dropped client's turn: no step ran (the trainer skips it)


class DistClientsBackend(ClientsBackend):
    """ClientsBackend's plan, tallies and figures, with each client's pipeline an edge process."""

    def _build(self, parts: RunParts) -> None:
        spec, split, run = self.spec, parts.split, parts.spec
        b = run.pipeline.dist
        assert b is not None and len(split.cloud_bounds) == 2  # validated: dist, one cloud stage
        self.current = 0  # the round of the turn being run (named when a client is dropped)
        self.stale = False  # sequential: the clients other than the holder hold an older edge
        edges, clouds = copies(parts, spec.algorithm, spec.count)
        self.edge_indices = list(split.edge_indices)
        self.world = self._launch(parts, spec.count)
        self.t = transport_of(self.world, run, client_groups(self.world))
        device = resolve_devices(run.pipeline.devices, 3)[1]
        stage_spec = StageSpec(0, 1, list(split.cloud_range(0)), str(device), run)
        opts = [run.optimization(named_unit_parameters(c), device) for c in clouds]
        try:
            self._send_specs(run)
            for k in range(spec.count):
                j = k if spec.algorithm == "sflv1" else 0
                meter = CommMeter()
                stage = CloudStage(stage_spec, self.t, edge=k + 1, units=clouds[j], optimization=opts[j],
                                   meter=meter)
                client = RemoteClient(k, self.t, stage, meter)
                self.clients.append(Client(k, client, meter, [edges[k][i] for i in self.edge_indices], None))
                # every edge starts from this process's initialisation, as the cloud's start from the edge's
                start = {i: checkpoint.unit_state(edges[k][i]) for i in self.edge_indices}
                client.load_state_dict({"units": start, "optimizer": {}}, self.edge_indices, cloud=False)
        except BaseException:
            self.close()
            raise
        self.clouds = [list(c.values()) for c in clouds]

    def _launch(self, parts: RunParts, count: int) -> launch.World:
        """K edge processes forked here (role null), or K edge hosts that join (role=cloud, torchrun)."""
        run, b = parts.spec, parts.spec.pipeline.dist
        assert b is not None
        if b.role is not None or launch.under_torchrun():
            return hosts.start_cloud(b, count, run.threads)
        secret = auth.resolve_secret(b.secret, True, b.secret_file)
        threads = launch.threads_per_rank(count + 1, run.threads)
        torch.set_num_threads(threads)
        # each edge gets its spec over its link (_send_specs), as an edge host does
        return launch.start_local(count, [""] * count, secret, b.timeout_s, threads, entry="edge")

    def _send_specs(self, run: RunSpec) -> None:
        """Each edge's spec, over its link: the run without the secret (an edge holds its client's
        own), the clients' and `data` keys, and its shard's digest (it derives the shard itself)."""
        b = run.pipeline.dist
        assert b is not None
        run = replace(run, pipeline=replace(run.pipeline, dist=replace(b, secret=None, secret_file=None)))
        for k in range(self.spec.count):
            spec = EdgeSpec(k, self.spec.count, run, self.spec, dict(self.spec.data), self.run.shard(k))
            text = torch.frombuffer(bytearray(spec.to_json().encode()), dtype=torch.uint8)
            self.t.wait_sent([self.t.send(k + 1, Header(Kind.CONTROL), text)], k + 1)

    # -- the steps, the drops ------------------------------------------------------------------
    def batches(self, epoch: int) -> Any:
        return Turns(len(self.turns), self.train_set)

    def _check_batch(self, turn: Turn, ids: Tensor) -> None:
        """The batch is the edge's own: the trainer's token carries none."""

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        cloud_opts = {id(o): o for o in (c.pipeline.stage.optimization for c in self.clients)}
        for opt in cloud_opts.values():  # once each: a cloud part's schedule
            opt.start_epoch(epoch)

    def _drop(self, client: int, e: BaseException) -> None:
        line = (f"client {client} dropped from round {self.current + 1} of epoch {self.epoch + 1}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        log.warning(line)
        self.dropped[client] = line
        if client < len(self.world.children):  # an edge host's ends when the cloud's run closes its link
            self.world.children[client].kill()

    def _guarded(self, client: int, call: Any, *args: Any) -> Any:
        """call(*args) with client `client`; a lost client is dropped (None)."""
        if client in self.dropped:
            return None
        try:
            return call(*args)
        except PeerError as e:
            self._drop(client, e)
            return None

    def _run_turn(self, turn: Turn, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        self.current = turn.round
        self.stale = self.spec.algorithm == "sequential"
        result = self._guarded(turn.client, super()._run_turn, turn, x, y, ids)
        return NO_STEP if result is None else result

    def _pass_edge(self, holder: int, client: int) -> None:
        state = self._guarded(holder, self.clients[holder].pipeline.weights)
        if state is not None:
            self.clients[client].pipeline.load_edge(state)

    def _end_round(self) -> None:
        turn = self.turns[self.position - 1]
        sampled = {t.client for t in self.turns if t.round == turn.round}
        alive = sampled - set(self.dropped)
        if len(alive) < self.spec.min_per_round:
            raise PeerError(f"round {turn.round + 1} of epoch {self.epoch + 1} ends with {len(alive)} of "
                            f"its {len(sampled)} clients alive (clients {sorted(self.dropped)} dropped), "
                            f"fewer than clients.min_per_round={self.spec.min_per_round}")
        super()._end_round()

    def _average(self, weights: List[float]) -> None:
        """The edges that trained send their edge parts' state; their mean goes to every edge alive."""
        held = {c.index: self._guarded(c.index, c.pipeline.weights)
                for c, w in zip(self.clients, weights) if w > 0}
        kept = [(held[k], weights[k]) for k in held if held[k] is not None]
        mean = mean_state([[s[i] for i in self.edge_indices] for s, _ in kept], [w for _, w in kept])
        if mean is not None:
            units = dict(zip(self.edge_indices, mean))
            for c in self.alive():
                self._guarded(c.index, c.pipeline.load_edge, units)
        if self.spec.algorithm == "sflv1":
            super()._average([w if k in held and held[k] is not None else 0.0 for k, w in enumerate(weights)])

    # -- what the trainer asks ------------------------------------------------------------------
    def _sync(self) -> None:
        """sequential: before a measurement or a checkpoint every client gets the edge the holder
        trained last, as in one process, where they share it (a copy to measure: not counted)."""
        if self.stale:
            state = self._guarded(self.holder, self.clients[self.holder].pipeline.weights)
            for c in self.alive():
                if state is not None and c.index != self.holder:
                    self._guarded(c.index, c.pipeline.load_edge, state)
            self.stale = False

    @torch.no_grad()
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        """The averaged model on the first client alive."""
        self._sync()
        return self.alive()[0].pipeline.eval_step(x, y)

    def held_out_results(self) -> List[Optional[StepResult]]:
        self._sync()
        return [self._guarded(c.index, c.pipeline.held_out) for c in self.clients]

    def header(self) -> Dict[str, Any]:
        return {**super().header(), "processes": "edges", "dropped": sorted(self.dropped.values())}

    def state_dict(self) -> Dict[str, Any]:
        self._sync()
        first = self.alive()[0]
        slots = {c.index: {k: v for k, v in c.pipeline.state_dict().items() if k != "units"}
                 for c in self.alive()}
        return {**first.pipeline.state_dict(),
                "clients": {"round": self.rounds_done, "holder": self.holder, "slots": slots}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        slots = (state.get("clients") or {}).get("slots") or {}
        for c in self.clients:
            c.pipeline.load_state_dict({**slots.get(c.index, state), "units": state["units"]},
                                       self.edge_indices)
        mine = state.get("clients") or {}
        self.rounds_done, self.holder = int(mine.get("round", 0)), int(mine.get("holder", 0))

    def close(self) -> None:
        """Stop the edges alive (politely), reap every one, free the group."""
        for c in self.alive():
            try:
                c.pipeline.serve(Command(Op.STOP))
            except Exception:
                self.dropped[c.index] = f"client {c.index} did not stop when told"
        world = getattr(self, "world", None)
        if world is not None:
            launch.stop_children(world.children, grace_s=5.0)
        if hasattr(self, "t"):
            self.t.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def build_clients(parts: RunParts, meter: CommMeter) -> ClientsBackend:
    """A multi-client run's backend: its edges in this process, or (dist) in their own processes."""
    return (DistClientsBackend if parts.spec.pipeline.dist is not None else ClientsBackend)(parts, meter)
