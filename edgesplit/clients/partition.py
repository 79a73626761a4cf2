"""Which training samples each client holds: iid, Dirichlet over labels, label shards; and each
client's held-out share. Pure functions of the labels and the seed (no torch, no process)."""
from typing import Any, List, Sequence, Tuple

import numpy as np

from edgesplit.errors import ConfigError

DIRICHLET_TRIES = 1000  # draws before a minimum size is declared out of reach
_STREAM = 0xC11E  # the partition's own random stream of the run's seed (the model's is another)


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & (2**64 - 1), _STREAM, *words]))


def iid(size: int, count: int, seed: int) -> List[np.ndarray]:
    """A seeded shuffle cut into `count` near-equal parts, each sorted (one client: every sample)."""
    order = _rng(seed).permutation(size)
    return [np.sort(part) for part in np.array_split(order, count)]


def dirichlet(labels: np.ndarray, count: int, alpha: float, min_samples: int, seed: int) -> List[np.ndarray]:
    """Each class's samples shared out by proportions drawn from Dirichlet(alpha) over the clients
    (FedML's `hetero`, Flower's DirichletPartitioner); a draw that leaves a client below
    `min_samples` is redrawn from the same seeded stream, so the result is a function of the seed."""
    if count * min_samples > len(labels):
        raise ConfigError(f"clients.min_samples={min_samples} x clients.count={count} exceeds the "
                          f"{len(labels)} training samples: lower either, or raise data.train_size")
    rng = _rng(seed)
    for _ in range(DIRICHLET_TRIES):
        parts: List[List[np.ndarray]] = [[] for _ in range(count)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(count, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_samples:
            return out
    raise ConfigError(f"clients.partition=dirichlet: no draw in {DIRICHLET_TRIES} gave every one of "
                      f"clients.count={count} clients clients.min_samples={min_samples} samples at "
                      f"clients.alpha={alpha}: raise clients.alpha, or lower clients.min_samples or "
                      f"clients.count")


def shards(labels: np.ndarray, count: int, per_client: int, seed: int) -> List[np.ndarray]:
    """The samples sorted by label cut into count x per_client shards, dealt out at random
    (McMahan et al.'s pathological non-IID split): each client sees few labels."""
    total = count * per_client
    if total > len(labels):
        raise ConfigError(f"clients.shards_per_client={per_client} x clients.count={count} = {total} "
                          f"shards exceed the {len(labels)} training samples: lower either")
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, total)
    dealt = _rng(seed).permutation(total)
    return [np.sort(np.concatenate([pieces[s] for s in dealt[c * per_client:(c + 1) * per_client]]))
            for c in range(count)]


def partition(labels: np.ndarray, how: str, count: int, seed: int, alpha: float = 0.5,
              min_samples: int = 1, shards_per_client: int = 2) -> List[np.ndarray]:
    """Each client's dataset indices (sorted, disjoint, covering every sample) by `how`
    (clients.partition: iid | dirichlet | shards)."""
    if how == "iid":
        return iid(len(labels), count, seed)
    if how == "dirichlet":
        return dirichlet(labels, count, alpha, min_samples, seed)
    if how == "shards":
        return shards(labels, count, shards_per_client, seed)
    raise ValueError(f"unknown partition {how!r}")


def holdout(indices: np.ndarray, share: float, seed: int, client: int) -> Tuple[np.ndarray, np.ndarray]:
    """(what the client trains on, what it holds out to measure itself): a seeded `share` of its
    samples, both sorted."""
    n = int(round(share * len(indices)))
    if n == 0:
        return indices, indices[:0]
    order = _rng(seed, 1, client).permutation(len(indices))
    return np.sort(indices[order[n:]]), np.sort(indices[order[:n]])


def labels_of(dataset: Any) -> np.ndarray:
    """Every training label of `dataset` in index order, read without decoding the inputs where
    the dataset's type says where they are (a Subset, TensorDataset, `targets`), else sample by sample."""
    inner = getattr(dataset, "dataset", None)
    if inner is not None and hasattr(dataset, "indices"):  # torch Subset
        return labels_of(inner)[np.asarray(dataset.indices)]
    tensors: Sequence[Any] = getattr(dataset, "tensors", ())
    if len(tensors) >= 2:  # TensorDataset(x, y)
        return np.asarray(tensors[1])
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    if inner is not None and len(inner) == len(dataset):  # a per-sample wrapper (a crop)
        return labels_of(inner)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
