"""What the planner measures on a host: each unit's forward and backward time, output shape, parameter
and activation bytes; each codec's times and payload bytes at each boundary tensor (a Profile)."""
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

import torch
from torch import Tensor, nn

from edgesplit.assemble import RunParts
from edgesplit.boundary.meter import CommMeter
from edgesplit.plan.calibration import Calibration
from edgesplit.run import memory

# A boundary tensor: 'front@K' / 'back@K' is the output of unit K crossing that boundary.
T = TypeVar("T")


@dataclass(frozen=True)
class UnitProfile:
    """One unit at one micro-batch: seconds per forward and backward (medians), the per-sample output
    shape, its parameters' bytes, its output's and the activations autograd saves for its backward,
    and the peak memory one forward and backward adds (workspaces, gradients and saved tensors as the
    device's allocator or the CPU's RSS sees them; 0 in profiles from before it was measured)."""
    forward_s: float
    backward_s: float
    out_shape: Tuple[int, ...]
    param_bytes: int
    out_bytes: int
    saved_bytes: int
    train_peak_bytes: int = 0


@dataclass(frozen=True)
class CodecProfile:
    """One boundary tensor's crossings under one compressor, per micro-batch: payload bytes as the
    meter counts them, and the median seconds of each end's encode and decode."""
    forward_bytes: int
    backward_bytes: int
    forward_encode_s: float
    forward_decode_s: float
    backward_encode_s: float
    backward_decode_s: float


@dataclass
class Profile:
    """A host's measurements under `key` (the cache's): units in order, the input's bytes per
    micro-batch, codecs[compressor name][boundary tensor name], and the backend's calibration by
    schedule (calibration.schedule_key)."""
    key: Dict[str, Any]
    units: List[UnitProfile]
    input_bytes: int
    codecs: Dict[str, Dict[str, CodecProfile]] = field(default_factory=dict)
    calibrations: Dict[str, Calibration] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "units": [asdict(u) for u in self.units], "input_bytes": self.input_bytes,
                "codecs": {c: {t: asdict(p) for t, p in by.items()} for c, by in self.codecs.items()},
                "calibrations": {k: c.to_dict() for k, c in self.calibrations.items()}}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Profile":
        """Inverse of to_dict (KeyError/TypeError/ValueError on a malformed one)."""
        units = [UnitProfile(float(u["forward_s"]), float(u["backward_s"]),
                             tuple(int(d) for d in u["out_shape"]), int(u["param_bytes"]),
                             int(u["out_bytes"]), int(u["saved_bytes"]), int(u.get("train_peak_bytes", 0)))
                 for u in data["units"]]
        codecs = {str(c): {str(t): CodecProfile(**{k: type(v)(p[k]) for k, v in _CODEC_ZERO.items()})
                           for t, p in by.items()} for c, by in data["codecs"].items()}
        calibrations = {str(k): Calibration.from_dict(c) for k, c in data.get("calibrations", {}).items()}
        return Profile(dict(data["key"]), units, int(data["input_bytes"]), codecs, calibrations)


_CODEC_ZERO = asdict(CodecProfile(0, 0, 0.0, 0.0, 0.0, 0.0))


def tensor_name(boundary: str, unit: int) -> str:
    return f"{boundary}@{unit}"


def two_phase(first: Callable[[], T], second: Callable[[T], Any], repeats: int,
              warmup: int) -> Tuple[float, float]:
    """The median wall seconds of `first()` and of `second` on what it returned, over `repeats`
    pairs after `warmup` untimed ones (a forward then its backward, an encode then its decode)."""
    times: Tuple[List[float], List[float]] = ([], [])
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        out = first()
        t1 = time.perf_counter()
        second(out)
        if r >= warmup:
            times[0].append(t1 - t0)
            times[1].append(time.perf_counter() - t1)
    return statistics.median(times[0]), statistics.median(times[1])


def _saved_bytes(unit: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors autograd saves in a forward of `unit` (each storage once, parameters not)."""
    params = {p.data_ptr() for p in unit.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unit(x)
    return sum(storages.values())


def _train_peak_bytes(unit: nn.Module, x: Tensor, grad: Tensor) -> int:
    """What one forward and backward of `unit` on `x` adds to the device's peak memory."""
    base = memory.reset_peak(x.device)
    unit(x).backward(grad)
    peak = memory.peak_since_reset(x.device)
    unit.zero_grad(set_to_none=True)
    return max(peak - base, 0)


def profile_units(units: List[nn.Module], x: Tensor, repeats: int,
                  warmup: int) -> Tuple[List[UnitProfile], List[Tensor]]:
    """Each unit's profile on micro-batch `x` (in training mode), and each unit's output."""
    out, outputs = [], []
    for unit in units:
        unit.train()
        x = x.detach().requires_grad_(x.is_floating_point())
        y = unit(x)
        grad = torch.randn_like(y)
        forward_s, backward_s = two_phase(lambda: unit(x), lambda out: out.backward(grad), repeats, warmup)
        params = sum(p.numel() * p.element_size() for p in unit.parameters())
        unit.zero_grad(set_to_none=True)
        out.append(UnitProfile(forward_s, backward_s, tuple(y.shape[1:]), params,
                               y.numel() * y.element_size(),
                               _saved_bytes(unit, x), _train_peak_bytes(unit, x, grad)))
        outputs.append(y.detach())
        x = y
    return out, outputs


def profile_codec(parts: RunParts, boundary: str, x: Tensor, repeats: int, warmup: int) -> CodecProfile:
    """`parts`' compressor at `boundary` on activation `x` and a gradient of its shape: the payload
    bytes the meter counts for one micro-batch in the steady state (after one unmetered crossing: a
    per-sample codec's later visits), then the encode and decode times."""
    spec = parts.spec
    b = spec.boundary(boundary, spec.codecs.build(), CommMeter(), spec.codecs.build())
    b.largest = tuple(x.shape)  # this split's tensor, checked as a peer's payload is
    ids = torch.arange(x.shape[0]) if b.needs_ids else None
    grad = torch.randn_like(x) * float(x.float().std().clamp_min(1e-6))
    meter = CommMeter()
    for b.meter in (None, meter):  # the unmetered crossing first
        payload = b.send("forward", x, None, ids)
        b.receive("forward", payload, None, ids)  # the receiver's per-sample state follows
        support = b.support(payload)
        b.receive("backward", b.send("backward", grad, support, ids), support, ids)
    meter.end_batch()
    crossings = meter.summary().crossings
    b.meter = None  # the timed repeats count nothing
    times: List[float] = []
    for pass_, tensor, sup in (("forward", x, None), ("backward", grad, support)):
        times += two_phase(lambda: b.send(pass_, tensor, sup, ids),
                           lambda sent: b.receive(pass_, sent, sup, ids), repeats, warmup)
    return CodecProfile(int(crossings[boundary, "forward"].bytes_per_batch),
                        int(crossings[boundary, "backward"].bytes_per_batch), *times)


def sample_input(parts: RunParts, rows: int, device: torch.device) -> Tensor:
    """A micro-batch of `rows` inputs: the training set's first samples (noise without a dataset)."""
    shape = parts.spec.facts.input_shape
    if parts.datasets is None:
        return torch.randn(rows, *shape, device=device)
    train = parts.datasets.train
    return torch.stack([train[i % len(train)][0] for i in range(rows)]).to(device)  # type: ignore[arg-type]


def boundary_tensors(num_units: int, fronts: List[int], backs: List[int]) -> Dict[str, int]:
    """The boundary tensors of the candidate space: name -> the unit whose output crosses."""
    out = {tensor_name("front", f - 1): f - 1 for f in fronts}
    out.update({tensor_name("back", num_units - b - 1): num_units - b - 1 for b in backs})
    return out


def measure_codecs(by_compressor: Mapping[str, RunParts], outputs: List[Tensor], tensors: Mapping[str, int],
                   repeats: int, warmup: int, known: Optional[Mapping[str, Mapping[str, CodecProfile]]] = None
                   ) -> Dict[str, Dict[str, CodecProfile]]:
    """Every compressor's profile at every boundary tensor, reusing those in `known`."""
    out: Dict[str, Dict[str, CodecProfile]] = {}
    for name, parts in by_compressor.items():
        have = dict((known or {}).get(name, {}))
        for tensor, unit in tensors.items():
            if tensor not in have:
                have[tensor] = profile_codec(parts, tensor.split("@")[0], outputs[unit], repeats, warmup)
        out[name] = have
    return out
