"""The `clients` config group's schema: how many edges, how their data is split, how they train."""
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class ClientsConfig:
    """`clients=single` (count 1) is one edge, the behaviour before this group existed."""
    name: str = "single"
    count: int = 1
    partition: str = "iid"  # ClientPartition: iid | dirichlet | shards
    alpha: float = 0.5  # partition=dirichlet: the concentration over labels (small = skewed)
    min_samples: int = 10  # partition=dirichlet: a client below this is redrawn (seeded)
    shards_per_client: int = 2  # partition=shards: label-sorted shards each client gets
    algorithm: str = "sequential"  # ClientAlgorithm: sequential | sflv1 | sflv2
    rounds_per_epoch: int = 1  # averaging rounds per epoch (sflv1, sflv2)
    local_steps: Optional[int] = None  # steps per client per round; null = its share of the epoch
    fraction: float = 1.0  # share of the clients sampled per round (seeded)
    min_per_round: int = 1  # dist: a round completes with at least this many clients alive
    holdout: float = 0.0  # share of each client's samples held out to measure it (not trained on)


def simulated(clients: Any) -> bool:
    """Whether the run simulates many edges (edgesplit.clients.backend): more than one client, or
    any option other than `single` (so one client can run through the same machinery)."""
    return bool(clients.count > 1 or clients.name != "single")


def serving_role(cfg: Any) -> Optional[str]:
    """The role of a dist process that serves another's run and writes no results: 'cloud' (a cloud
    host of one edge) or 'edge' (a client's edge host of many edges); None: this process trains."""
    b = cfg.pipeline_backend
    role = b.get("role") if b.name == "dist" else None
    if role is None:
        return None
    many = simulated(cfg.clients)
    return role if (role == "cloud") != many else None
