"""Delta (AQ-SGD) and error feedback: per-sample state, equal on both ends, exact bytes, eval."""
import pytest
import torch

from edgesplit.codecs import Crossing, Delta, ErrorFeedback, Quantize, TopK
from edgesplit.codecs.bitpack import packed_size
from edgesplit.codecs.header import DELTA_FIELDS, common_size, QUANT_FIELDS
from edgesplit.codecs.sample_cache import CacheSpec, SampleCache
from edgesplit.errors import ConfigError
from edgesplit.codecs.uniform import zero_grid

SPEC = CacheSpec(num_samples=20, dtype="float32")


def _quant_payload(rows: int, row_numel: int, ndim: int, bits: int) -> int:
    return common_size(ndim) + QUANT_FIELDS.size + packed_size(rows * row_numel, bits)


def _visit(sender: Delta, receiver: Delta, x: torch.Tensor, ids: torch.Tensor,
           key: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    crossing = Crossing(ids, key, update=True)
    payload = sender.encode(x, crossing=crossing)
    mirrored = sender.decode(payload, crossing=crossing)  # what Boundary.send does (mirrors)
    return payload, mirrored, receiver.decode(payload, crossing=crossing)


def test_first_visit_then_deltas_keep_both_references_equal_and_bytes_exact() -> None:
    torch.manual_seed(0)
    sender, receiver = Delta(bits=2, first_bits=8, cache=SPEC), Delta(bits=2, first_bits=8, cache=SPEC)
    base = torch.randn(20, 3, 4, 4)
    ids = torch.tensor([3, 7, 11, 19])
    x = base[ids]
    payload, mirrored, got = _visit(sender, receiver, x, ids)
    # all rows are first visits: one 8-bit part, an empty 2-bit part
    assert payload.numel() == (common_size(4) + DELTA_FIELDS.size + _quant_payload(4, 48, 4, 8)
                               + _quant_payload(0, 48, 4, 2))
    assert torch.equal(mirrored, got)
    scale8 = float(x.max() - x.min()) / 255
    assert (got - x).abs().max() <= scale8 / 2 + 1e-5
    # the second visit moves a little: its 2-bit delta is far finer than 2 bits of x would be
    x2 = x + 0.01 * torch.randn_like(x)
    x2[:, 0] = got[:, 0]  # channel 0 does not change: its rows must come back exactly
    payload, mirrored, got2 = _visit(sender, receiver, x2, ids, key=2)
    assert payload.numel() == (common_size(4) + DELTA_FIELDS.size + _quant_payload(0, 48, 4, 8)
                               + _quant_payload(4, 48, 4, 2))
    assert torch.equal(mirrored, got2)
    change = x2 - got
    _, grid = zero_grid(change.min(), (change.max() - change.min()) / 3, 2)
    assert (got2 - x2).abs().max() <= float(grid) / 2 + 1e-5
    assert torch.equal(got2[:, 0], x2[:, 0])  # 0 is on the grid of the changes
    assert torch.equal(sender.cache.rows, receiver.cache.rows)
    assert sender.cache.seen.nonzero().flatten().tolist() == ids.tolist()


def test_a_mixed_micro_batch_sends_first_visits_and_deltas_by_the_shared_seen_flags() -> None:
    sender, receiver = Delta(bits=4, first_bits=None, cache=SPEC), Delta(bits=4, first_bits=None, cache=SPEC)
    x = torch.randn(20, 6)
    _visit(sender, receiver, x[:3], torch.arange(3))
    ids = torch.tensor([1, 5, 2, 9])  # 1 and 2 seen, 5 and 9 new (raw: first_bits None)
    _, _, got = _visit(sender, receiver, x[ids], ids, key=2)
    assert torch.equal(got[[1, 3]], x[[5, 9]])  # raw first visits
    assert torch.equal(sender.cache.rows, receiver.cache.rows)
    assert sender.cache.seen.sum() == 5


def test_evaluation_sends_the_first_visit_form_and_leaves_the_cache_alone() -> None:
    codec = Delta(bits=1, first_bits=8, cache=SPEC)
    x = torch.randn(5, 6)
    payload = codec.encode(x)  # no crossing: evaluation, samples without a reference
    assert torch.equal(payload, Quantize(8).encode(x))
    assert torch.equal(codec.decode(payload), Quantize(8).decode(payload))
    assert codec.cache.rows is None and not codec.cache.seen.any()
    raw = Delta(bits=1, first_bits=None, cache=SPEC)
    assert torch.equal(raw.decode(raw.encode(x)), x)


def test_a_corrupt_delta_payload_or_wrong_ids_is_a_value_error() -> None:
    sender, receiver = Delta(cache=SPEC), Delta(cache=SPEC)
    x, ids = torch.randn(4, 6), torch.arange(4)
    payload, _, _ = _visit(sender, receiver, x, ids)
    with pytest.raises(ValueError, match="sample ids for a tensor of 4 rows"):
        Delta(cache=SPEC).decode(payload, crossing=Crossing(torch.arange(3), 0, True))
    with pytest.raises(ValueError, match="out of range"):
        Delta(cache=SPEC).decode(payload, crossing=Crossing(torch.arange(4) + 18, 0, True))
    with pytest.raises(ValueError, match="header declares"):
        Delta(cache=SPEC).decode(payload[:-1], crossing=Crossing(ids, 0, True))
    with pytest.raises(ValueError, match="needs the micro-batch's sample ids"):
        Delta(cache=SPEC).decode(payload)


def test_delta_state_round_trips_through_state_dict() -> None:
    a, b = Delta(cache=SPEC), Delta(cache=SPEC)
    _visit(a, b, torch.randn(4, 6), torch.arange(4))
    c = Delta(cache=SPEC)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.cache.rows, a.cache.rows) and torch.equal(c.cache.seen, a.cache.seen)
    assert c.state_bytes() == 20 * 6 * 4


def test_the_cache_can_live_in_an_on_disk_memmap(tmp_path) -> None:
    spec = CacheSpec(num_samples=20, dtype="float16", folder=str(tmp_path))
    a, b = Delta(cache=spec), Delta(cache=SPEC)
    x = torch.randn(4, 6)
    _visit(a, b, x, torch.arange(4))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].stat().st_size == 20 * 6 * 2
    torch.testing.assert_close(a.cache.rows[:4].float(), b.cache.rows[:4], atol=1e-2, rtol=1e-2)


def test_error_feedback_carries_each_samples_residual_to_its_next_visit() -> None:
    """A known sequence: top-1 of 2 values drops the smaller one; error feedback adds it back
    at the sample's next visit."""
    codec = ErrorFeedback(TopK(0.5), SPEC)
    ids = torch.tensor([4])
    x = torch.tensor([[3.0, 2.0]])
    first = codec.decode(codec.encode(x, crossing=Crossing(ids, 0, True)))
    assert first.tolist() == [[3.0, 0.0]]
    assert codec.cache.rows[4].tolist() == [0.0, 2.0]  # the residual of sample 4
    second = codec.decode(codec.encode(x, crossing=Crossing(ids, 1, True)))
    assert second.tolist() == [[0.0, 4.0]]  # 2 + the carried 2 now beats 3
    assert codec.cache.rows[4].tolist() == [3.0, 0.0]
    other = codec.decode(codec.encode(x, crossing=Crossing(torch.tensor([5]), 2, True)))
    assert other.tolist() == [[3.0, 0.0]]  # sample 5 has no residual yet
    evaluated = codec.decode(codec.encode(x))  # evaluation: no residual read or written
    assert evaluated.tolist() == [[3.0, 0.0]] and codec.cache.rows[5].tolist() == [0.0, 2.0]
    assert x.tolist() == [[3.0, 2.0]]  # the caller's tensor is not written to


def test_naive_keeps_equal_references_at_both_ends_of_each_boundary() -> None:
    from tests.dist_helpers import build, config, data
    cfg = config(chunks=1, stages=1, compressor="delta", threads=1)
    cfg.compressor.bits = 2
    backend = build("naive", cfg, samples=16)  # data(2, batch=8): every sample is visited
    batches = data(2, batch=8)
    for epoch in range(2):
        backend.start_epoch(epoch)
        backend.train(True)
        for x, y, ids in batches[::1 - 2 * epoch]:  # the second epoch in the other order
            backend.train_step(x, y, ids)
    for boundary in backend.boundaries:
        sender, receiver = boundary.codecs.activation, boundary.receiver.activation
        assert sender is not receiver and sender.cache.seen.all()
        assert torch.equal(sender.cache.rows, receiver.cache.rows)


def test_a_checkpoints_cache_of_another_training_set_is_one_line_naming_the_key() -> None:
    saved = SampleCache(CacheSpec(num_samples=64, dtype="float32"), "delta reference").state_dict()
    with pytest.raises(ConfigError, match="delta reference: the checkpoint's cache has 64 rows, this run's "
                                          "training set 20: data.train_size differs"):
        SampleCache(SPEC, "delta reference").load_state_dict(saved)
