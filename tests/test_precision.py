"""precision=bf16|fp16 and channels_last in one process (naive, gpipe): autocast inside each
partition, fp16's loss scaler skipping overflowed steps, bytes at the dtype's size."""
import json
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.run import checkpoint, trainer
from edgesplit.backends import Backend
from edgesplit.boundary.boundary import Boundary
from edgesplit.codecs import Identity, Quantize, TopK, TopKQuantize
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs
from edgesplit.errors import ConfigError, TrainingDiverged
from edgesplit.run.precision import Precision
from edgesplit.validate import validate
from tests.conftest import TEST_MODEL
from tests.precision_units import PROBES
from tests.test_backends import backend_and_batch, train_losses
from tests.trained_run import Interrupt, interrupt_after_first_epoch

SPLIT = ["partition.front=2", "partition.back=2"]
# fp16 on the 5-unit test model, 16 samples a batch (CPU's fp16 convolutions are slow): a loss scale
# of 2**22 overflows the first gradients, and the scaler settles after a few halvings.
FP16 = [*TEST_MODEL, *SPLIT, "data.batch_size=16", "pipeline_backend=gpipe", "pipeline_backend.chunks=2",
        "precision=fp16"]
FORCED = 22


def _backend(cfg: DictConfig, meter: CommMeter) -> Tuple[Backend, Tuple[torch.Tensor, ...]]:
    """The backend of cfg and the first training batch (as train_losses builds them)."""
    backend, _, batch = backend_and_batch(cfg, meter)
    return backend, batch


def _steps(cfg: DictConfig, n: int) -> Dict[str, List]:
    """n train steps on one batch: losses, skipped flags, whether any weight changed, scales."""
    backend, (x, y, ids) = _backend(cfg, CommMeter())
    out: Dict[str, List] = {"losses": [], "skipped": [], "changed": [], "scale": []}
    try:
        backend.start_epoch(0)
        backend.train(True)
        for _ in range(n):
            before = [p.detach().clone() for p in backend.optimization.named.values()]  # type: ignore
            r = backend.train_step(x, y, ids)
            after = list(backend.optimization.named.values())  # type: ignore
            out["losses"].append(r.loss_sum / r.count)
            out["skipped"].append(r.skipped)
            out["changed"].append(any(not torch.equal(a, b) for a, b in zip(after, before)))
            out["scale"].append(backend.optimization.scaling.value)  # type: ignore
    finally:
        backend.close()
    return out


@pytest.mark.parametrize("name", ["naive", "gpipe"])
def test_bf16_trains_and_counts_raw_bytes_at_two_bytes(make_cfg: Callable, name: str) -> None:
    common = [*SPLIT, f"pipeline_backend={name}", "compressor=none", "model.width=1",
              "model._target_=tests.dist_helpers.tiny_units"]
    fp32, m32 = train_losses(make_cfg(*common), steps=5)
    bf16, m16 = train_losses(make_cfg(*common, "precision=bf16"), steps=5)
    assert all(b < a for a, b in zip(bf16, bf16[1:])), bf16  # falls at every step
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)  # autocast ran, close to fp32
    s32, s16 = m32.summary(), m16.summary()
    assert (s32.activation_dtype, s32.gradient_dtype) == ("float32", "float32")
    assert (s16.activation_dtype, s16.gradient_dtype) == ("bfloat16", "bfloat16")
    for d in ("up", "down"):
        raw16, raw32 = getattr(s16, f"raw_{d}_bytes_per_batch"), getattr(s32, f"raw_{d}_bytes_per_batch")
        assert raw16 * 2 == raw32 and getattr(s16, f"raw_fp32_{d}_bytes_per_batch") == raw32
        assert getattr(s32, f"raw_fp32_{d}_bytes_per_batch") == raw32
        # compressor=none sends the bf16 values themselves: the raw bytes and a header
        assert 0 < getattr(s16, f"{d}_bytes_per_batch") - raw16 < 2 * 128
    assert s16.compression_ratio < 1 < s16.fp32_compression_ratio  # the header; 2x of fp32
    assert s16.fp32_compression_ratio == pytest.approx(2 * s16.compression_ratio)


def test_gpipe_enters_autocast_inside_each_partition_and_its_recomputation(make_cfg: Callable) -> None:
    PROBES.clear()
    cfg = make_cfg("model._target_=tests.precision_units.probe_units", "model.width=1", *SPLIT,
                   "pipeline_backend=gpipe", "pipeline_backend.chunks=2",
                   "pipeline_backend.checkpoint=always", "precision=bf16")
    losses, _ = train_losses(cfg, steps=2, built=PROBES.clear)  # the training's forwards only
    assert losses[-1] < losses[0]
    forwards = [p for p in PROBES if not p["recomputing"]]
    recomputed = [p for p in PROBES if p["recomputing"]]
    # 2 steps x 2 micro-batches, each forward on torchgpipe's worker thread and recomputed in backward
    assert len(forwards) == 4 and len(recomputed) == 4, PROBES
    assert not any(p["main_thread"] for p in forwards)
    assert all(p["autocast"] and p["dtype"] == torch.bfloat16 for p in PROBES), PROBES


def test_fp16_skips_overflowed_steps_then_trains_as_with_a_fitting_scale(make_cfg: Callable) -> None:
    forced = _steps(make_cfg(*FP16, f"loss_scale={2 ** FORCED}"), 10)  # gradients overflow fp16
    k = sum(forced["skipped"])
    assert 2 <= k <= 6 and forced["skipped"] == [1] * k + [0] * (10 - k), forced["skipped"]
    assert forced["changed"] == [False] * k + [True] * (10 - k)  # a skipped step changes no weight
    assert forced["scale"] == [2 ** FORCED / 2 ** min(i + 1, k) for i in range(10)]  # backs off per skip
    assert forced["losses"][:k + 1] == [forced["losses"][0]] * (k + 1)
    # then the steps of a run that starts at the scale the skips settled on
    normal = _steps(make_cfg(*FP16, f"loss_scale={2 ** (FORCED - k)}"), 4)
    assert normal["skipped"] == [0] * 4 and all(normal["changed"])
    assert forced["losses"][k:k + 4] == pytest.approx(normal["losses"], rel=1e-3)


def test_fp16_run_goes_on_through_skipped_steps_and_resumes_with_its_scale(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = [*FP16, f"loss_scale={2 ** FORCED}", "channels_last=true", "data.train_size=64", "data.val_size=32"]
    whole = trainer.run(make_cfg(*cfg), tmp_path / "whole", [])
    assert whole["status"] == "finished" and whole["precision"] == "fp16"
    assert (whole["activation_dtype"], whole["gradient_dtype"]) == ("float16", "float16")
    skipped = [h["skipped_steps"] for h in whole["history"]]
    assert skipped[0] >= 1 and all(h["data_s"] >= 0 for h in whole["history"])
    state = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")
    assert state["grad_scaler"]["edge"]["scale"] == 2 ** FORCED / 2 ** sum(skipped)
    with monkeypatch.context() as m:
        interrupt_after_first_epoch(m)
        with pytest.raises(Interrupt):
            trainer.run(make_cfg(*cfg), tmp_path / "resumed", [])
    resumed = trainer.run(make_cfg(*cfg, "resume=true"), tmp_path / "resumed", [])
    assert [h["skipped_steps"] for h in resumed["history"]] == skipped
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    again = checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")
    assert again["grad_scaler"] == state["grad_scaler"]
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == "finished"


def test_a_non_finite_gradient_under_loss_scaling_crosses_as_zeros_and_flags_the_step() -> None:
    grad = torch.randn(2, 3, 4, 4).half()
    grad[0, 1, 2, 3], grad[1, 0, 0, 0] = float("inf"), float("nan")
    for codec in (Quantize(8), TopKQuantize(0.5, 8), Identity()):
        b = Boundary("back", BoundaryCodecs(codec, codec, reuses_support=False), CommMeter())
        b.new_step()
        if not isinstance(codec, Identity):  # raw values carry inf; the codecs refuse them
            with pytest.raises(TrainingDiverged, match="boundary back: the backward tensor"):
                b.send("backward", grad)
        b.loss_scaled = True
        b.new_step()
        out = b.receive("backward", b.send("backward", grad))
        zeroed = torch.where(torch.isfinite(grad), grad, torch.zeros((), dtype=grad.dtype))
        assert torch.isfinite(out).all() and torch.equal(out, codec.decode(codec.encode(zeroed)))
        assert [bool(f) for f in b.overflows()] == [True]
        b.new_step()  # a new step starts unflagged; a finite gradient raises no flag
        b.send("backward", torch.ones(2, 3, 4, 4).half())
        assert [bool(f) for f in b.overflows()] == [False]


@pytest.mark.parametrize("name", ["naive", "gpipe"])
def test_channels_last_gives_the_losses_and_payload_bytes_of_contiguous(
        make_cfg: Callable, name: str) -> None:
    # a well-conditioned model: CPU BatchNorm sums in another order in channels_last, and a narrow
    # MobileNetV2 at initialisation amplifies that to percents after a step (see README)
    common = [*SPLIT, f"pipeline_backend={name}", "compressor=prune_quantize", "model.width=1",
              "model._target_=tests.dist_helpers.tiny_units"]
    plain, m_plain = train_losses(make_cfg(*common))
    nhwc, m_nhwc = train_losses(make_cfg(*common, "channels_last=true"))
    assert nhwc != plain and nhwc == pytest.approx(plain, rel=2e-4)
    assert dict(m_nhwc.bytes) == dict(m_plain.bytes) and dict(m_nhwc.raw_bytes) == dict(m_plain.raw_bytes)
    backend, (x, _, _) = _backend(make_cfg(*common, "channels_last=true"), CommMeter())
    units = backend.split.units  # type: ignore
    convs = [m.weight for u in units for m in u.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert backend.precision.input(x).is_contiguous(memory_format=torch.channels_last)  # type: ignore


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_payloads_of_a_channels_last_tensor_are_the_contiguous_bytes(dtype: torch.dtype) -> None:
    x = torch.randn(4, 6, 5, 5).relu().to(dtype)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    for codec in (Identity(), Quantize(8), Quantize(3), TopK(0.1), TopKQuantize(0.2, 4)):
        assert torch.equal(codec.encode(nhwc), codec.encode(x)), repr(codec)


@pytest.mark.parametrize("override, named", [
    ("precision=fp8", "precision='fp8' is invalid: allowed: fp32, bf16, fp16"),
    ("loss_scale=0", "loss_scale=0.0 is invalid"),
    ("data.device=tpu", "data.device='tpu' is invalid: allowed: cpu, cpu_resident, cuda, cuda:N"),
])
def test_bad_precision_and_data_device_values_name_the_key_and_what_is_allowed(
        make_cfg: Callable, override: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(override))
    assert named in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is")
def test_data_device_cuda_without_a_gpu_says_so(make_cfg: Callable) -> None:
    with pytest.raises(ConfigError, match="data.device='cuda' is invalid: no such CUDA GPU"):
        validate(make_cfg("data.device=cuda"))


def test_the_meter_keeps_dtype_sized_and_fp32_bytes_through_a_merge() -> None:
    edge, cloud = CommMeter(), CommMeter()
    edge.record("front", "forward", 100, 2000, fp32_bytes=4000, dtype="bfloat16")  # 1000 bf16 values
    cloud.record("back", "forward", 50, 1000, fp32_bytes=2000, dtype="bfloat16")
    cloud.record("front", "backward", 25, 1000, fp32_bytes=2000, dtype="float32")  # the cloud's gradient, say
    cloud.record("front", "backward", 0, 0, fp32_bytes=0, dtype="bfloat16")  # a second dtype there
    state = cloud.state()
    edge.merge(state)
    old = {**state, "crossings": [{k: v for k, v in c.items() if k not in ("fp32_bytes", "dtypes")}
                                  for c in state["crossings"]]}
    edge.merge(old)  # a meter state without the new keys (an older cloud) counts raw as fp32
    edge.end_batch()
    s = edge.summary()
    assert (s.raw_up_bytes_per_batch, s.raw_fp32_up_bytes_per_batch) == (2000, 4000)
    assert (s.raw_down_bytes_per_batch, s.raw_fp32_down_bytes_per_batch) == (4000, 6000)
    assert (s.activation_dtype, s.gradient_dtype) == ("bfloat16", "bfloat16+float32")
    assert s.compression_ratio == pytest.approx(6000 / 250) and s.fp32_ratio == pytest.approx(10000 / 250)
    assert s.to_dict()["fp32_compression_ratio"] == s.fp32_ratio and s.raw_fp32_bytes_per_batch == 10000


def test_bf16_on_a_gpu_without_it_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="precision=bf16: the GPU cuda:0 has no bfloat16 support.*"
                                          "allowed here: fp32, fp16"):
        Precision("bf16").partition(torch.nn.Linear(2, 2), torch.device("cuda", 0))
    Precision("bf16").partition(torch.nn.Linear(2, 2), torch.device("cpu"))  # the CPU has it
