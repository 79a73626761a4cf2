"""The fused device kernels: bitpack's layout, the host path's bytes compiled, no host reads."""
from typing import Callable, Iterator, Tuple

import pytest
import torch
from torch import Tensor

import edgesplit.codecs.base as base
from edgesplit.boundary.boundary import Boundary
from edgesplit.codecs import Codec, Crossing, Identity, Quantize, TopK, TopKQuantize
from edgesplit.codecs import fused
from edgesplit.errors import TrainingDiverged
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs
from tests.codec_reference import ref_pack
from tests.test_backends import ready_backend


@pytest.fixture
def device_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CPU tensors take the device path, where the fused kernels run."""
    monkeypatch.setattr(base, "HOST_PATH", False)
    yield


def both_paths(c: Codec, x: Tensor, crossing: Crossing, monkeypatch: pytest.MonkeyPatch
               ) -> Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]:
    """((payload, decode) on the host path, the same on the device path, which must be fused)."""
    host = c.encode(x, crossing=crossing)
    with monkeypatch.context() as m:
        m.setattr(base, "HOST_PATH", False)
        payload = c.encode(x, crossing=crossing)
        assert fused.made_by(payload, c.settings) is not None, f"{c!r} took no fused path"
        return (host, c.decode(host)), (payload, c.decode(payload))


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_lays_codes_out_as_bitpack_and_unpack_inverts_it(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 9, 100, 1001):
        codes = torch.randint(0, 2 ** bits, (n,), generator=g)
        packed = fused.pack(codes, bits)
        assert packed.numpy().tobytes() == ref_pack(codes.numpy(), bits), (bits, n)
        assert torch.equal(fused.unpack(packed, bits, n), codes), (bits, n)


@pytest.mark.slow
@pytest.mark.compiled
def test_compiled_kernels_give_the_host_paths_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    inputs = {"relu fp32 4-D": torch.randn(4, 8, 9, 9, generator=g).relu(),  # ties at 0
              "tied": torch.randint(-3, 4, (40, 60), generator=g).float(),  # top-k ties
              "bf16 strided": torch.randn(20, 33, generator=g).bfloat16().t(),
              "tiny": torch.randn(5, generator=g)}
    codecs = [Quantize(8), Quantize(3), Quantize(4, rounding="stochastic"), TopK(0.1),
              TopK(0.01), TopKQuantize(0.1, 4)]
    crossing = Crossing(key=77)
    for c in codecs:
        for name, x in inputs.items():
            (host, host_out), (payload, out) = both_paths(c, x, crossing, monkeypatch)
            assert torch.equal(payload, host), f"{c!r} on {name}"
            # a fused multiply-add may round the decode once where the host rounds twice
            assert out.dtype == host_out.dtype
            torch.testing.assert_close(out.float(), host_out.float(), rtol=1e-6, atol=1e-6,
                                       msg=f"{c!r} on {name}")


CROSSINGS = [(Quantize(8), Quantize(8)), (Quantize(2), Quantize(8)), (TopK(0.1), Identity()),
             (TopKQuantize(0.05, 4), Quantize(8)), (Identity(), Identity())]


@pytest.mark.parametrize("activation,gradient", CROSSINGS, ids=lambda c: repr(c))
def test_a_training_crossing_on_the_device_path_reads_nothing_on_the_host(
        activation: Codec, gradient: Codec) -> None:
    # Tensors on the meta device have no values: reading one on the host (.item(), .tolist(),
    # bool(), .cpu()), as a GPU would wait for, raises.
    meter = CommMeter()
    b = Boundary("front", BoundaryCodecs(activation, gradient, reuses_support=True), meter)
    b.new_step()  # the step's first crossings are measured: decoded and compared on the device
    for _ in range(2):
        x = torch.empty(4, 8, 9, 9, device="meta")
        payload, out = b.exchange("forward", x)
        assert out.shape == x.shape and out.device.type == "meta"
        grad, grad_in = torch.empty_like(x), None
        _, grad_in = b.exchange("backward", grad, b.support(payload))
        assert grad_in.shape == x.shape
    # what the meta device catches: the unfused device path reads scales on the host
    with pytest.raises((RuntimeError, NotImplementedError)):
        Quantize(8, scale="group").encode(torch.empty(64, device="meta"))


def test_a_non_finite_tensor_is_reported_once_a_step(device_path: None) -> None:
    b = Boundary("back", BoundaryCodecs(Quantize(4), Quantize(8), reuses_support=False), CommMeter())
    b.new_step()
    x = torch.randn(3, 40)
    b.exchange("forward", x)
    b.check_finite()  # finite: nothing to report
    x[1, 7] = float("nan")
    b.exchange("forward", x)  # no host read here
    with pytest.raises(TrainingDiverged, match="boundary back: the forward tensor .* NaN or inf"):
        b.check_finite()
    b.check_finite()  # reported once
    with pytest.raises(TrainingDiverged, match="backward"):  # send: before the payload goes out
        b.send("backward", torch.full((5,), float("inf")))


def test_a_nan_stops_the_step_before_any_weight_changes(make_cfg: Callable,
                                                        device_path: None) -> None:
    backend, units, (x, y, ids) = ready_backend(make_cfg("pipeline_backend=gpipe",
                                                         "compressor=quantize"))
    before = [p.detach().clone() for u in units for p in u.parameters()]
    x[0, 0, 0, 0] = float("nan")
    try:
        with pytest.raises(TrainingDiverged, match="boundary front: the forward tensor"):
            backend.train_step(x, y, ids)
    finally:
        backend.close()
    after = [p.detach() for u in units for p in u.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
