"""Many edges, one cloud, in one process (naive or gpipe): K clients, each its own pipeline of the
configured backend (its edge parts, its boundaries and codec state, its optimizer), over cloud
parts shared or copied as the algorithm says; the round plan orders the steps, FedAvg ends rounds."""
import copy
from dataclasses import replace
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from hydra.utils import get_class
from torch import Tensor, nn

from edgesplit.assemble import RunParts
from edgesplit.backends.base import Backend, StepResult, named_unit_parameters
from edgesplit.backends.local import LocalBackend
from edgesplit.boundary.meter import CommMeter
from edgesplit.clients.averaging import average_into, state_bytes
from edgesplit.clients.data import RoundBatches, holdout_loader
from edgesplit.clients.figures import ClientTally, epoch_figures
from edgesplit.clients.optimization import JointOptimization
from edgesplit.clients.rounds import Turn, epoch_turns, round_ends
from edgesplit.errors import ConfigError
from edgesplit.logs.summary import SideStats
from edgesplit.run.checkpoint import CheckpointError


class Client:
    """One edge: its pipeline (edge parts + the cloud copy it trains against), the meter its
    boundaries count into, its edge units, its held-out batches and this epoch's tally."""

    def __init__(self, index: int, pipeline: Any, meter: CommMeter, edge: List[nn.Module],
                 held_out: Any) -> None:
        self.index, self.pipeline, self.meter, self.edge = index, pipeline, meter, edge
        self.held_out = held_out
        self.tally = ClientTally()


Units = Dict[int, nn.Module]  # layer units by global index


def copies(parts: RunParts, algorithm: str, count: int) -> Tuple[List[Units], List[Units]]:
    """(each client's edge units, each cloud copy's units) by global index, before any pipeline
    moves or wraps a unit: every copy starts from the seed's; sequential's one edge is shared, and
    only sflv1 has a cloud copy per client."""
    split = parts.split
    base = split.units
    shared_edge = algorithm == "sequential"
    edges = [{i: base[i] if k == 0 or shared_edge else copy.deepcopy(base[i]) for i in split.edge_indices}
             for k in range(count)]
    clouds = [{i: base[i] if j == 0 else copy.deepcopy(base[i]) for i in split.cloud_indices}
              for j in range(count if algorithm == "sflv1" else 1)]
    return edges, clouds


class ClientsBackend(Backend):
    """The Backend the trainer drives for a multi-client run (edgesplit.clients.spec.simulated).

    Who holds what (docs/clients.md): `sequential` one edge copy handed from client to client and
    one cloud; `sflv1` an edge and a cloud copy per client, both averaged each round; `sflv2` an
    edge per client, averaged each round, and one cloud. Every client has its own boundaries (codec
    state: delta references, error-feedback residuals) and its own optimizer of its edge parts;
    a cloud copy has one optimizer. `batches(epoch)` gives the trainer the epoch's batches in the
    plan's order; train_step steps the client the plan names and averages where a round ends."""

    def __init__(self, parts: RunParts, meter: CommMeter) -> None:
        assert parts.clients is not None and parts.datasets is not None  # assembled for clients
        self.run, self.meter, self.train_set = parts.clients, meter, parts.datasets.train
        self.spec = parts.clients.spec
        self.name = parts.spec.pipeline.name
        self.dropped: Dict[int, str] = {}  # dist: a client lost, and the line that said so
        self.clients: List[Client] = []
        self.clouds: List[List[nn.Module]] = []
        self._build(parts)
        self.edge_bytes = state_bytes(self.clients[0].edge)  # what one client sends to be averaged
        self.owner = torch.as_tensor(self.run.owner(len(self.train_set)))  # type: ignore[arg-type]
        self.turns: List[Turn] = []
        self.ends: Set[int] = set()
        self.position, self.rounds_done, self.holder, self.epoch = 0, 0, 0, 0
        self._merged = False

    def _build(self, parts: RunParts) -> None:
        """Every client's pipeline in this process (self.clients) and the cloud copies (self.clouds)."""
        spec = self.spec
        cls = get_class(parts.spec.pipeline.target)
        if not (isinstance(cls, type) and issubclass(cls, LocalBackend)):
            raise ConfigError(f"clients.count={spec.count} needs pipeline_backend=naive, gpipe or dist")
        split = parts.split
        edges, clouds = copies(parts, spec.algorithm, spec.count)
        base = split.units
        cloud_opts: List[Any] = [None] * len(clouds)
        for k in range(spec.count):
            j = k if spec.algorithm == "sflv1" else 0
            units = {**edges[k], **clouds[j]}
            client_meter = CommMeter()
            pipeline = cls(replace(parts, split=replace(split, units=[units[i] for i in range(len(base))])),
                           client_meter)
            if cloud_opts[j] is None:
                cloud_opts[j] = parts.spec.optimization(named_unit_parameters(clouds[j]), pipeline.devices[0])
            own = parts.spec.optimization(named_unit_parameters(edges[k]), pipeline.devices[0])
            # the pipeline's one optimizer over every unit gives way to the pair (its own + the cloud's)
            pipeline.optimization = JointOptimization(own, cloud_opts[j])
            self.clients.append(Client(k, pipeline, client_meter, [edges[k][i] for i in split.edge_indices],
                                       holdout_loader(self.train_set, self.run.held_out[k], self.spec)))
        self.clouds = [list(c.values()) for c in clouds]

    def alive(self) -> List[Client]:
        """The clients not dropped (dist: a client lost past pipeline_backend.timeout_s)."""
        return [c for c in self.clients if c.index not in self.dropped]

    # -- the plan and its steps ----------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        s = self.spec
        self.epoch = epoch
        self.turns = epoch_turns(s.algorithm, self.run.batches(), s.rounds_per_epoch, s.local_steps,
                                 s.fraction, s.seed, epoch)
        self.ends, self.position, self._merged = set(round_ends(self.turns)), 0, False
        for c in self.alive():
            c.pipeline.start_epoch(epoch)
            c.meter.reset()
            c.tally = ClientTally()

    def batches(self, epoch: int) -> RoundBatches:
        """The trainer's loader of `epoch` (after start_epoch): each turn's batch from its client."""
        return RoundBatches(self.train_set, self.run.train, self.spec, epoch, self.turns)

    def train_step(self, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        turn = self.turns[self.position]
        self._check_batch(turn, ids)
        result = self._run_turn(turn, x, y, ids)
        self.position += 1
        if self.position - 1 in self.ends:
            self._end_round()
        return result

    def _check_batch(self, turn: Turn, ids: Tensor) -> None:
        if int(self.owner[int(ids[0])]) != turn.client:
            raise RuntimeError(f"step {self.position}: a batch of sample {int(ids[0])}, which client "
                               f"{turn.client} does not hold: batches and plan out of step")

    def _run_turn(self, turn: Turn, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        client = self.clients[turn.client]
        self._hand_over(turn.client)
        result = client.pipeline.train_step(x, y, ids)
        self.meter.end_batch()
        client.tally.step(result)
        return result

    def _hand_over(self, client: int) -> None:
        """sequential: the edge weights go from the client that last trained to the next."""
        if self.spec.algorithm == "sequential" and client != self.holder:
            self._pass_edge(self.holder, client)
            self.clients[self.holder].tally.averaging_up += self.edge_bytes
            self.clients[client].tally.averaging_down += self.edge_bytes
            self.holder = client

    def _pass_edge(self, holder: int, client: int) -> None:
        """In one process the clients hold the one edge already (dist sends it)."""

    def _average(self, weights: List[float]) -> None:
        """FedAvg of the edge parts into every client (sflv1: of the cloud copies too)."""
        average_into([c.edge for c in self.clients], weights, [c.edge for c in self.clients])
        if self.spec.algorithm == "sflv1":
            average_into(self.clouds, weights, self.clouds)

    def _end_round(self) -> None:
        """sflv1/sflv2: FedAvg of the edge parts weighted by the round's samples, sent up by those
        that trained and back down to every client; sflv1 also averages its cloud copies (in the
        cloud: no link traffic)."""
        self.rounds_done += 1
        if self.spec.algorithm == "sequential":
            return
        weights = [0.0 if c.index in self.dropped else float(c.tally.round_samples) for c in self.clients]
        self._average(weights)
        for c, w in zip(self.clients, weights):
            c.tally.averaging_up += self.edge_bytes if w > 0 else 0
            c.tally.averaging_down += 0 if c.index in self.dropped else self.edge_bytes
            c.tally.round_samples = 0

    # -- evaluation, figures -------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        """The averaged model (every client holds it once a round ends): client 0's pipeline."""
        return self.clients[0].pipeline.eval_step(x, y)

    def train(self, mode: bool = True) -> None:
        for c in self.clients:
            c.pipeline.train(mode)

    @property
    def lr(self) -> float:
        return self.clients[0].pipeline.lr

    def local_units(self) -> Dict[int, nn.Module]:
        return self.clients[0].pipeline.local_units()

    @torch.no_grad()
    def held_out_results(self) -> List[Optional[StepResult]]:
        """Each client's model on its own held-out samples (None: it holds none out)."""
        self.train(False)
        out: List[Optional[StepResult]] = []
        for c in self.clients:
            total = None
            for x, y in c.held_out or []:
                step = c.pipeline.eval_step(x, y)
                total = step if total is None else total + step
            out.append(total)
        return out

    def header(self) -> Dict[str, Any]:
        s = self.spec
        return {"count": s.count, "algorithm": s.algorithm, "partition": s.partition,
                "alpha": s.alpha if s.partition == "dirichlet" else None, "fraction": s.fraction,
                "rounds_per_epoch": s.rounds_per_epoch, "local_steps": s.local_steps,
                "rounds": self.rounds_done,
                "train_samples": [len(t) for t in self.run.train],
                "held_out_samples": [len(h) for h in self.run.held_out]}

    def epoch_figures(self, epoch: int) -> Dict[str, float]:
        """This epoch's figures by tag, per client (`client<k>/...`) and in total (`clients/...`)."""
        compute_s = [sum(c.pipeline.clock.seconds.values()) for c in self.clients]
        return epoch_figures(epoch, [c.tally for c in self.clients], [c.meter for c in self.clients],
                             self.held_out_results(), compute_s, self.spec.rounds_per_epoch)

    def side_stats(self) -> Dict[str, SideStats]:
        """Client 0's shares of the model; compute per step over every client's steps; codec state
        summed over the clients. Every client's link figures merge into the run's meter (once)."""
        stats = [c.pipeline.side_stats() for c in self.alive()]
        steps = [c.pipeline.steps for c in self.alive()]
        if not self._merged:
            for c in self.clients:
                self.meter.merge(c.meter.state())
            self._merged = True
        if len(stats) == 1:
            return stats[0]
        return {side: replace(stats[0][side],
                              peak_memory_bytes=max(s[side].peak_memory_bytes for s in stats),
                              compute_s_per_batch=sum(s[side].compute_s_per_batch * n
                                                      for s, n in zip(stats, steps)) / max(sum(steps), 1),
                              codec_state_bytes=sum(s[side].codec_state_bytes for s in stats))
                for side in stats[0]}

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Client 0's checkpoint (its units: the averaged model, which every client holds at an
        epoch's end), and under `clients` each client's optimizer, schedule, RNG and codec state,
        the rounds run and who holds the edge (sequential)."""
        slots = {c.index: {k: v for k, v in c.pipeline.state_dict().items() if k != "units"}
                 for c in self.clients}
        return {**self.clients[0].pipeline.state_dict(),
                "clients": {"round": self.rounds_done, "holder": self.holder, "slots": slots}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """A multi-client checkpoint; one without client slots (a single edge's) starts every
        client from its units and optimizer."""
        mine = state.get("clients") or {}
        slots = mine.get("slots") or {}
        if slots and set(slots) != {c.index for c in self.clients}:
            raise CheckpointError(f"the checkpoint holds clients {sorted(slots)}, this run has "
                                  f"clients.count={self.spec.count}")
        for c in self.clients:
            c.pipeline.load_state_dict({**slots.get(c.index, state), "units": state["units"]})
        self.rounds_done, self.holder = int(mine.get("round", 0)), int(mine.get("holder", 0))

    def close(self) -> None:
        for c in self.clients:
            c.pipeline.close()
