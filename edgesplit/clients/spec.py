"""A multi-client run's typed parts (assembled once from `clients`, edgesplit.assemble): the
options, and which samples each client trains on and holds out."""
import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgesplit.clients.partition import holdout, labels_of, partition
from edgesplit.errors import ConfigError


@dataclass(frozen=True)
class ClientsSpec:
    """The `clients` keys a simulation runs by, and the loader keys each client's batches use."""
    count: int
    partition: str
    alpha: float
    min_samples: int
    shards_per_client: int
    algorithm: str
    rounds_per_epoch: int
    local_steps: Optional[int]
    fraction: float
    holdout: float
    seed: int
    batch_size: int
    eval_batch_size: int
    num_workers: int
    fixed_augment: bool
    min_per_round: int = 1  # dist: a round needs this many of its clients alive
    data: Dict[str, Any] = field(default_factory=dict)  # dist: the `data` keys an edge builds its set from


@dataclass(frozen=True)
class ClientsRun:
    """The spec and each client's training and held-out dataset indices (sorted, disjoint)."""
    spec: ClientsSpec
    train: Tuple[np.ndarray, ...]
    held_out: Tuple[np.ndarray, ...]

    @staticmethod
    def of(spec: ClientsSpec, train_set: Any) -> "ClientsRun":
        """The partition of `train_set` (its labels) by the spec; a client left with fewer
        training samples than a batch is a ConfigError naming the keys to change."""
        parts = partition(labels_of(train_set), spec.partition, spec.count, spec.seed, spec.alpha,
                          spec.min_samples, spec.shards_per_client)
        split = [holdout(p, spec.holdout, spec.seed, k) for k, p in enumerate(parts)]
        for k, (train, _) in enumerate(split):
            if len(train) < spec.batch_size:
                raise ConfigError(f"clients.count={spec.count}: client {k} trains on {len(train)} "
                                  f"samples, fewer than data.batch_size={spec.batch_size} (the last "
                                  f"partial batch is dropped): lower clients.count or data.batch_size, or "
                                  f"raise clients.min_samples (partition={spec.partition})")
        return ClientsRun(spec, tuple(t for t, _ in split), tuple(h for _, h in split))

    def shard(self, client: int) -> str:
        """A digest of client `client`'s training and held-out indices: an edge that derives its
        own shard (edge_process.py) proves it holds the one the cloud planned for."""
        digest = hashlib.sha256()
        for part in (self.train[client], self.held_out[client]):
            digest.update(np.asarray(part, dtype="<i8").tobytes() + b"|")
        return digest.hexdigest()

    def batches(self) -> List[int]:
        """Each client's full batches in one pass over its training samples."""
        return [len(t) // self.spec.batch_size for t in self.train]

    def owner(self, size: int) -> np.ndarray:
        """The client of each dataset index (-1: held out, or nobody's)."""
        out = np.full(size, -1, dtype=np.int64)
        for k, t in enumerate(self.train):
            out[t] = k
        return out
