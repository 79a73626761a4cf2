"""Which samples each client holds (edgesplit.clients.partition), on constructed labels."""
import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from edgesplit.clients import partition as partition_module
from edgesplit.clients.partition import holdout, labels_of, partition
from edgesplit.errors import ConfigError

LABELS = np.repeat(np.arange(10), 60)[np.random.default_rng(0).permutation(600)]  # 10 classes x 60


def _label_skew(parts: list) -> float:
    """Mean over clients of the share of its samples in its most frequent label (1/10 = balanced)."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("how", ["iid", "dirichlet", "shards"])
def test_a_partition_is_disjoint_covering_and_a_function_of_the_seed(how: str) -> None:
    parts = partition(LABELS, how, 4, seed=3, alpha=0.5, min_samples=20, shards_per_client=2)
    joined = np.concatenate(parts)
    assert len(parts) == 4 and len(joined) == len(set(joined.tolist())) == len(LABELS)
    assert all((np.diff(p) > 0).all() for p in parts)  # sorted
    again = partition(LABELS, how, 4, seed=3, alpha=0.5, min_samples=20, shards_per_client=2)
    other = partition(LABELS, how, 4, seed=4, alpha=0.5, min_samples=20, shards_per_client=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    if how == "iid":
        assert sorted(len(p) for p in parts) == [150] * 4
    if how == "shards":  # two label-sorted shards of 75: at most 2 + 2 straddled labels
        assert all(len(p) == 150 and len(np.unique(LABELS[p])) <= 4 for p in parts)


def test_one_client_holds_every_sample_in_order() -> None:
    for how in ("iid", "dirichlet", "shards"):
        (only,) = partition(LABELS, how, 1, seed=5, alpha=0.3, min_samples=1, shards_per_client=2)
        assert np.array_equal(only, np.arange(600))


def test_dirichlet_skew_grows_as_alpha_falls_and_the_minimum_size_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    skew = [np.mean([_label_skew(partition(LABELS, "dirichlet", 8, seed=s, alpha=a, min_samples=10))
                     for s in range(3)]) for a in (100.0, 1.0, 0.1)]
    assert skew[0] < 0.2 < skew[1] < skew[2], skew
    small = partition(LABELS, "dirichlet", 8, seed=0, alpha=0.1, min_samples=40)
    assert min(len(p) for p in small) >= 40
    with pytest.raises(ConfigError, match="clients.min_samples=100 x clients.count=8"):
        partition(LABELS, "dirichlet", 8, seed=0, alpha=0.1, min_samples=100)
    monkeypatch.setattr(partition_module, "DIRICHLET_TRIES", 20)
    with pytest.raises(ConfigError, match="no draw in 20"):
        partition(LABELS, "dirichlet", 8, seed=0, alpha=0.01, min_samples=74)


def test_holdout_is_a_seeded_share_and_labels_are_read_through_wrappers() -> None:
    indices = np.arange(100, 200)
    train, held = holdout(indices, 0.2, seed=1, client=2)
    assert len(held) == 20 and sorted(np.concatenate([train, held]).tolist()) == indices.tolist()
    assert np.array_equal(held, holdout(indices, 0.2, seed=1, client=2)[1])
    assert not np.array_equal(held, holdout(indices, 0.2, seed=1, client=3)[1])
    assert len(holdout(indices, 0.0, seed=1, client=2)[1]) == 0
    ds = Subset(TensorDataset(torch.zeros(600, 1), torch.as_tensor(LABELS)), range(10, 20))
    assert np.array_equal(labels_of(ds), LABELS[10:20])
