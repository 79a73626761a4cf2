"""The typed parts of a run, built once from a validated config (build.py). RunSpec is data only:
a cloud stage process gets it as JSON (wire.py) and builds its side from it, without the dataset."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from edgesplit.boundary.boundary import Boundary
from edgesplit.clients.spec import ClientsRun
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs, build_codecs
from edgesplit.data.datasets import Datasets
from edgesplit.model.bottleneck import Bottleneck, boundary_channels, with_bottlenecks
from edgesplit.model.mobilenetv2 import build_units
from edgesplit.model.partition import Split
from edgesplit.privacy.schema import PrivacyConfig
from edgesplit.options import CheckpointMode, Order, Role
from edgesplit.privacy.defenses import Defenses
from edgesplit.run.lr_schedule import Optimization, OptimizerSpec
from edgesplit.run.precision import Precision


@dataclass(frozen=True)
class DataFacts:
    """What the run takes from its dataset: classes, training and validation set sizes, and the
    per-sample input shape."""
    num_classes: int
    train_size: int
    val_size: int
    input_shape: Tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """How every process builds the layer units: the resolved `model` config (its `_target_` and
    keys) called with the dataset's classes after seeding torch with `seed`, and the partition."""
    target: Dict[str, Any]
    num_classes: int
    seed: int
    front: int
    back: int
    cloud_stages: int

    def base_units(self) -> List[nn.Module]:
        """The model's own units, initialised from the seed (the same on every host)."""
        torch.manual_seed(self.seed)
        return build_units(self.target, self.num_classes)


@dataclass(frozen=True)
class CodecParts:
    """What builds each boundary's codecs: the resolved `compressor` config (its codecs' `_target_`
    specs), the training set's size (rows of per-sample codec state; None without a dataset) and
    the learned bottleneck (None without one)."""
    compressor: Dict[str, Any]
    num_samples: Optional[int]
    bottleneck: Optional[Bottleneck]

    @property
    def eval_compressed(self) -> bool:
        return bool(self.compressor["eval_compressed"])

    def build(self) -> Dict[str, BoundaryCodecs]:
        """New codec objects of the 'front' and 'back' boundaries (per-sample state is each end's)."""
        return build_codecs(self.compressor, self.num_samples)


@dataclass(frozen=True)
class DistSpec:
    """The dist backend's keys: the emulated link (Mbit/s per direction, None = unshaped; latency),
    the longest silence tolerated, the micro-batch order, this process's role and rendezvous, and
    the shared secret (None: $EDGESPLIT_SECRET or, for a local run, a new one)."""
    up_mbps: Optional[float]
    down_mbps: Optional[float]
    latency_ms: float
    timeout_s: float
    order: Order
    role: Optional[Role]
    master_addr: str
    master_port: int
    secret: Optional[str] = None
    secret_file: Optional[str] = None  # a file holding the secret (pipeline_backend.secret_file)
    edge_slowdown: float = 1.0  # the edge's compute padded to this multiple (an emulated slower edge)


@dataclass(frozen=True)
class PipelineSpec:
    """The backend: its class (`_target_`) and label, micro-batches, devices ('auto' or one per
    partition: edge, cloud stage(s), edge), torchgpipe's checkpoint mode and deferred BatchNorm,
    and the dist keys (None for the in-process backends)."""
    target: str
    name: str
    chunks: int
    devices: Union[str, Tuple[Union[int, str], ...]]
    checkpoint: CheckpointMode
    deferred_batch_norm: bool
    dist: Optional[DistSpec] = None


@dataclass(frozen=True)
class Crossings:
    """The tensors that cross the edge link: one sample's shape at 'front' and 'back' (behind a
    bottleneck's encoder: its channels) and the most samples of a micro-batch. dist's receivers
    refuse a payload that declares more (Boundary.largest) before decoding or decompressing it."""
    front: Tuple[int, ...]
    back: Tuple[int, ...]
    rows: int

    def largest(self, boundary: str) -> Tuple[int, ...]:
        """The shape of the largest tensor that crosses `boundary`."""
        return (self.rows, *(self.front if boundary == "front" else self.back))


@dataclass(frozen=True)
class RunSpec:
    """Everything a process of the run builds its side from, data only (JSON across hosts)."""
    seed: int
    threads: Optional[int]  # torch threads (None: torch's default)
    facts: DataFacts
    model: ModelSpec
    codecs: CodecParts
    precision: Precision
    pipeline: PipelineSpec
    optimizer: OptimizerSpec
    crossings: Optional[Crossings] = None  # None: received payloads are bounded by the caps alone
    defenses: Defenses = Defenses()  # `privacy`'s defenses, the edge's to apply (none by default)

    def units(self, base: Optional[List[nn.Module]] = None) -> Tuple[List[nn.Module], int, int]:
        """(units, front, back): the model's units (`base`, or built afresh) with the bottleneck's
        encoder and decoder at each boundary, and the partition counted with them."""
        base = self.model.base_units() if base is None else base
        return with_bottlenecks(base, self.model.front, self.model.back, self.codecs.bottleneck)

    def boundary(self, name: str, codecs: Mapping[str, BoundaryCodecs], meter: CommMeter,
                 receiver: Optional[Mapping[str, BoundaryCodecs]] = None) -> Boundary:
        """The edge link's boundary `name` ('front' or 'back') with the run's codec settings and
        precision; `receiver`: the receiving end's codecs where both ends are in this process."""
        b = Boundary(name, codecs[name], meter, self.codecs.eval_compressed, self.seed,
                     receiver[name] if receiver is not None else None,
                     boundary_channels(self.codecs.bottleneck, name))
        b.loss_scaled, b.channels_last = self.precision.scaled, self.precision.channels_last
        if name == "back":  # the gradient the edge sends back: only the edge ever encodes it
            b.defense = self.defenses.gradient()
        if self.pipeline.dist is not None and self.crossings is not None:  # a peer's payloads
            b.largest = self.crossings.largest(name)
        return b

    def optimization(self, named: Mapping[str, nn.Parameter], device: torch.device) -> Optimization:
        """One process's optimizer and schedule over `named`, with its loss scaler on `device`."""
        return self.optimizer(named, self.precision.scaling(device))


@dataclass(frozen=True)
class RunParts:
    """A run assembled: its spec, the split units, the datasets (None where the facts were given),
    what the edge measures of the cloud's view (`privacy`; the cloud's processes never need it) and,
    for a multi-client run (edgesplit.clients), who holds which samples."""
    spec: RunSpec
    split: Split
    datasets: Optional[Datasets] = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    clients: Optional[ClientsRun] = None
