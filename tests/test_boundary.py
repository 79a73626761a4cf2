"""The boundary object: what the sender counts and measures, replay under recomputation, raw links."""
import pytest
import torch
from torchgpipe.checkpoint import enable_checkpointing, enable_recomputing

from edgesplit.boundary.boundary import Boundary
from edgesplit.backends.gpipe_recompute import ReplayingBoundaryLayer
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.codecs import Entropy, Identity, Quantize, TopK
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs


def boundary(name: str = "front", reuses_support: bool = True, **kw: bool) -> Boundary:
    return Boundary(name, BoundaryCodecs(TopK(0.25), Quantize(8), reuses_support), CommMeter(), **kw)


def test_the_sender_counts_payload_bytes_and_measures_the_first_crossing_of_a_step() -> None:
    b = boundary()
    b.new_step()
    x = torch.randn(4, 10)
    payloads = [b.send("forward", x) for _ in range(3)]
    assert b.meter.bytes["front", "forward"] == sum(p.numel() for p in payloads)
    assert b.meter.raw_bytes["front", "forward"] == 3 * 40 * 4
    assert b.meter.samples["front", "forward"] == 0  # the measure is read when the batch ends
    b.meter.end_batch()
    assert b.meter.samples["front", "forward"] == 1  # measured once per step
    b.receive("forward", payloads[0])  # the receiver counts nothing
    assert b.meter.bytes["front", "forward"] == sum(p.numel() for p in payloads)
    error = b.meter.error_sum["front", "forward"]
    kept = b.receive("forward", payloads[0])
    assert error == pytest.approx(float((x - kept).norm() / x.norm()), rel=1e-6)


def test_the_gradient_travels_at_the_forward_support_unless_switched_off() -> None:
    x, g = torch.randn(100), torch.randn(100)
    for reuses, kept in ((True, 25), (False, 100)):
        b = boundary(reuses_support=reuses)
        support = b.support(b.send("forward", x))
        grad = b.receive("backward", b.send("backward", g, support), support)
        assert int((grad != 0).sum()) == kept


def test_eval_is_raw_when_eval_compressed_is_off_and_never_counted() -> None:
    b = boundary(eval_compressed=False)
    b.training = False
    x = torch.randn(3, 5)
    assert torch.equal(b.receive("forward", b.send("forward", x)), x)  # raw values travel
    assert not b.meter.bytes and b.support(b.send("forward", x)) is None
    layer = BoundaryLayer(b).eval()
    assert layer(x) is x
    on = boundary()
    BoundaryLayer(on).eval()(x)
    assert not on.meter.bytes  # eval traffic is not training traffic


def test_recomputation_replays_the_first_payload_and_counts_once() -> None:
    b = boundary()
    layer = ReplayingBoundaryLayer(b)
    b.new_step()
    x = torch.randn(6, 6)
    with enable_checkpointing():
        first = layer.cross_forward(x)
    with enable_recomputing():
        again = layer.cross_forward(x)
    assert again is first and b.meter.bytes["front", "forward"] == first[0].numel()
    with enable_checkpointing():
        layer.cross_forward(x)  # a step that never ran its backward
    b.new_step()
    with enable_checkpointing():
        layer.cross_forward(torch.randn(6, 6))
    assert len(layer._first_pass) == 1  # the failed step's first pass went


def test_a_raw_link_between_cloud_stages_counts_nothing() -> None:
    b = Boundary.raw("stage1")
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    assert torch.equal(b.receive("forward", b.send("forward", x)), x)
    b.add_overhead("forward", 32)  # no meter: nothing to count


@pytest.mark.parametrize("name,pass_,direction", [("front", "forward", "up"), ("back", "backward", "up"),
                                                  ("back", "forward", "down"), ("front", "backward", "down")])
def test_overhead_goes_to_the_direction_of_the_crossing(name: str, pass_: str, direction: str) -> None:
    b = Boundary(name, BoundaryCodecs(Identity(), Identity(), False), CommMeter())
    b.add_overhead(pass_, 32)
    b.meter.end_batch()
    figures = b.meter.summary()
    assert getattr(figures, f"overhead_{direction}_bytes_per_batch") == 32
    assert figures.up_bytes_per_batch == figures.down_bytes_per_batch == 0


def test_bits_per_element_are_counted_before_and_after_an_entropy_stage() -> None:
    codec = Entropy(Quantize(4), "zstd")
    b = Boundary("front", BoundaryCodecs(codec, Identity(), False), CommMeter())
    b.new_step()
    x = torch.zeros(64, 256)
    x[:, :8] = torch.randn(64, 8)  # mostly one code: zstd shrinks it
    payload = b.send("forward", x)
    b.meter.end_batch()
    figures = b.meter.summary().to_dict()
    keys = ("bits_per_element_before_entropy", "bits_per_element")
    before, after = (figures[f"front_forward_{k}"] for k in keys)
    assert before == pytest.approx(4.0, abs=0.01)  # 4-bit codes and a small header
    assert after == 8 * payload.numel() / x.numel() and after < before / 4
