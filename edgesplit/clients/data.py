"""Each client's batches: its own shuffled training samples (passes over them as the round plan
asks), and its held-out samples for measuring it."""
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torch.utils.data.dataloader import default_collate

from edgesplit.clients.rounds import Turn
from edgesplit.clients.spec import ClientsSpec
from edgesplit.data.datasets import EpochSeeded, build_loader
from edgesplit.data.seeding import epoch_seed

PASS_STRIDE = 1_000_003  # a client's p-th pass in an epoch shuffles as "epoch + p x PASS_STRIDE"
CLIENT_SEED_STRIDE = 7_919  # client k's loader seed: seed + k x stride (client 0's is the run's)


def client_seed(seed: int, client: int) -> int:
    return seed + client * CLIENT_SEED_STRIDE


class ClientStream:
    """One client's training batches (x, y, dataset indices) in an epoch: shuffled passes over its
    samples, each a function of (seed, client, epoch, pass); a pass ends at its last full batch."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, spec: ClientsSpec, client: int,
                 epoch: int) -> None:
        self.dataset, self.indices, self.spec = dataset, [int(i) for i in indices], spec
        self.seed, self.epoch = client_seed(spec.seed, client), epoch
        self._passes = 0
        self._batches: Optional[Iterator[Any]] = None

    def _pass(self) -> Iterator[Any]:
        s = self.spec
        loader = build_loader(self.dataset, s.batch_size, train=True, seed=self.seed,
                              epoch=self.epoch + self._passes * PASS_STRIDE, num_workers=s.num_workers,
                              fixed_augment=s.fixed_augment, indices=self.indices)
        self._passes += 1
        return iter(loader)

    def next(self) -> Tuple[Tensor, Tensor, Tensor]:
        if self._batches is None:
            self._batches = self._pass()
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = self._pass()
            return next(self._batches)


class RoundBatches:
    """The trainer's loader of a multi-client epoch: each turn's batch from its client's stream,
    in the round plan's order (the backend steps the client the same plan names)."""

    def __init__(self, dataset: Dataset, train: Sequence[np.ndarray], spec: ClientsSpec, epoch: int,
                 turns: Sequence[Turn]) -> None:
        self.dataset, self.turns = dataset, list(turns)
        self.streams = [ClientStream(dataset, t, spec, k, epoch) for k, t in enumerate(train)]

    def __len__(self) -> int:
        return len(self.turns)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        for turn in self.turns:
            yield self.streams[turn.client].next()


def _inputs_and_labels(batch: Sequence[Any]) -> Any:
    """A batch of (x, y): what the validation loop reads (the training set also yields an index)."""
    return default_collate([sample[:2] for sample in batch])


def holdout_loader(dataset: Dataset, indices: np.ndarray, spec: ClientsSpec) -> Any:
    """A client's held-out samples in order, (x, y) batches; None without any. An augmenting
    training set draws each sample's augmentation from the seed (EpochSeeded): the same every epoch,
    and the run's random stream untouched."""
    if len(indices) == 0:
        return None
    held = EpochSeeded(Subset(dataset, [int(i) for i in indices]), epoch_seed(spec.seed, 0))
    return build_loader(held, spec.eval_batch_size, train=False,
                        seed=spec.seed, epoch=0, num_workers=spec.num_workers,
                        collate_fn=_inputs_and_labels)
