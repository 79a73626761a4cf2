"""On a GPU (marker `cuda`, skipped without one): codec bytes, a gpipe step and peak memory."""
import json
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import pytest
import torch
from torch import Tensor

from tests.codec_reference import ref_encode
from edgesplit.run import trainer
from edgesplit.backends.partitions import resolve_devices
from edgesplit.boundary.boundary import Boundary
from edgesplit.codecs import Codec, Quantize, TopK, TopKQuantize
from edgesplit.codecs.build import BoundaryCodecs
from edgesplit.boundary.meter import CommMeter
from edgesplit.model.mobilenetv2 import build_units
from tests.test_backends import train_losses
from tests.test_codec_paths import codecs, inputs, ref_kind, wire
from tests.test_fused import CROSSINGS

pytestmark = pytest.mark.cuda

CUDA3 = "pipeline_backend.devices=[cuda:0,cuda:0,cuda:0]"
CPU3 = "pipeline_backend.devices=[cpu,cpu,cpu]"
GPU_CLOUD = "pipeline_backend.devices=[cpu,cuda:0,cpu]"


@pytest.fixture(autouse=True)
def _exact_cuda_math() -> Iterator[None]:
    """No TF32 convolutions, no autotuning: the GPU computes in fp32 as the CPU does (up to the
    reduction order). torch's matmuls use no TF32 by default."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        yield


def roundtrip(c: Codec, x: Tensor, device: str, support: Optional[Tensor] = None) \
        -> Tuple[bytes, Tensor, Optional[Tensor]]:
    """(payload bytes, decode, support_of) of x encoded and decoded on `device`, back on the CPU."""
    x = x.to(device)
    s = None if support is None else support.to(device)
    p = c.encode(x, support=s)
    assert p.device == x.device  # a payload lives on the input's device
    y, mask = c.decode(p, support=s), c.support_of(p)
    assert y.device == x.device
    return wire(p.cpu()), y.cpu(), None if mask is None else mask.cpu()


def assert_same_decode(gpu: Tensor, cpu: Tensor, x: Tensor, what: str) -> None:
    """Decodes equal up to one rounding of the output dtype: the fused kernels may compute
    offset + code * scale as one fused multiply-add where the CPU rounds twice."""
    assert gpu.dtype == cpu.dtype, what
    eps = torch.finfo(cpu.dtype).eps
    scale = float(x.float().abs().max()) if x.numel() else 0.0
    torch.testing.assert_close(gpu.float(), cpu.float(), rtol=eps, atol=eps * scale, msg=what)


@pytest.mark.parametrize("name", list(inputs()))
def test_codec_payloads_on_cuda_are_the_cpu_bytes(name: str) -> None:
    x = inputs()[name]
    for c in codecs():
        gpu, cpu = roundtrip(c, x, "cuda"), roundtrip(c, x, "cpu")
        assert gpu[0] == cpu[0], f"{c!r} on {name}"
        kind, kwargs = ref_kind(c)
        assert gpu[0] == ref_encode(kind, x, **kwargs), f"{c!r} on {name}"
        assert_same_decode(gpu[1], cpu[1], x, f"{c!r} on {name}")
        assert (gpu[2] is None and cpu[2] is None) or torch.equal(gpu[2], cpu[2]), f"{c!r} on {name}"


def test_codec_payloads_on_cuda_with_support_and_large_tensors() -> None:
    g = torch.Generator().manual_seed(11)
    relu = torch.randn(64, 32, 16, 16, generator=g).relu()  # > select.SMALL: the sampled path
    support = torch.rand(relu.shape, generator=g) > 0.5
    for c in (Quantize(8), Quantize(16), Quantize(3), TopK(0.1), TopK(0.001),
              TopKQuantize(0.1, 8), TopKQuantize(0.05, 12)):
        for s in (None, support):
            gpu, cpu = roundtrip(c, relu, "cuda", s), roundtrip(c, relu, "cpu", s)
            assert gpu[0] == cpu[0], repr(c)
            assert_same_decode(gpu[1], cpu[1], relu, repr(c))
        # a payload made on one side decodes to the same tensor on the other
        p = c.encode(relu)
        assert torch.equal(c.decode(p.cuda()).cpu(), c.decode(p))


@pytest.mark.parametrize("activation,gradient", CROSSINGS, ids=lambda c: repr(c))
def test_fused_crossings_on_cuda_wait_for_nothing(activation: Codec, gradient: Codec) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 32, 16, 16, generator=g).relu().cuda()
    grad = torch.randn(x.shape, generator=g).cuda()
    b = Boundary("front", BoundaryCodecs(activation, gradient, reuses_support=True), CommMeter())

    def step() -> None:
        b.new_step()  # measured too: the step's first crossings
        payload, _ = b.exchange("forward", x)
        b.exchange("backward", grad, b.support(payload))
    step()  # compiles the kernels and caches the headers on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait for the device raises
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    b.check_finite()  # the one read a step: finite
    b.meter.end_batch()
    assert b.meter.samples["front", "forward"] == 1


@pytest.mark.parametrize("compressor", ["quantize", "prune"])
def test_gpipe_step_on_cuda_gives_the_cpu_losses(make_cfg: Callable, compressor: str) -> None:
    common = ["pipeline_backend=gpipe", "pipeline_backend.chunks=2", "partition.front=2",
              "partition.back=2", f"compressor={compressor}"]
    gpu, gpu_meter = train_losses(make_cfg(*common, CUDA3), steps=3)
    cpu, cpu_meter = train_losses(make_cfg(*common, CPU3), steps=3)
    assert gpu[-1] < gpu[0]
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-4)  # before any update: reduction order only
    assert gpu == pytest.approx(cpu, rel=2e-3)
    assert sizes(gpu_meter) == sizes(cpu_meter)  # payload sizes do not depend on the device


def sizes(meter: CommMeter) -> Dict[str, float]:
    return {k: v for k, v in meter.summary().to_dict().items() if k.endswith("bytes_per_batch")}


def test_dist_with_a_gpu_cloud_stage_gives_the_cpu_losses(make_cfg: Callable) -> None:
    # the edge on the CPU (gloo link), the cloud stage on the GPU: payloads go through host memory
    common = ["pipeline_backend=dist", "pipeline_backend.chunks=2", "pipeline_backend.timeout_s=30",
              "partition.front=2", "partition.back=2", "compressor=prune"]
    gpu, gpu_meter = train_losses(make_cfg(*common, GPU_CLOUD), steps=3)
    cpu, cpu_meter = train_losses(make_cfg(*common, CPU3), steps=3)
    assert gpu == pytest.approx(cpu, rel=2e-3)
    assert sizes(gpu_meter) == sizes(cpu_meter)


def test_auto_devices_put_the_edge_on_gpu_0() -> None:
    devices = resolve_devices("auto", 4)
    assert devices[0] == devices[-1] == torch.device("cuda", 0)
    assert all(d.type == "cuda" and d.index < torch.cuda.device_count() for d in devices)


def test_peak_memory_comes_from_torch_cuda(make_cfg: Callable, tmp_path: Path) -> None:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = make_cfg("pipeline_backend=gpipe", "pipeline_backend.chunks=2", CUDA3, "schedule.epochs=1")
    trainer.run(cfg, tmp_path, [])
    summary = json.loads((tmp_path / "summary.json").read_text())
    peak = summary["peak_memory_bytes"]
    params = sum(p.numel() * 4 for unit in build_units(cfg.model, 10) for p in unit.parameters())
    # torch.cuda's figure (the CPU's would be the process's resident set, hundreds of MB)
    assert 0 < params < peak <= torch.cuda.max_memory_allocated(torch.device("cuda", 0))
    assert summary["status"] == "finished" and summary["backend"] == "gpipe"


def test_each_run_in_one_process_reports_its_own_cuda_peak(make_cfg: Callable, tmp_path: Path) -> None:
    """As the jobs of a sweep: the wide run first, then the narrow one, whose figure is its own."""
    runs = {}
    for width in ("1", "0.125"):
        cfg = make_cfg("pipeline_backend=gpipe", "pipeline_backend.chunks=2", CUDA3, "schedule.epochs=1",
                       f"model.width={width}")
        runs[width] = trainer.run(cfg, tmp_path / width, [])["peak_memory_bytes"]
    assert 0 < runs["0.125"] < runs["1"]
