"""Counts the bytes that cross the edge link, per boundary and pass, and how much the codecs distort."""
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

from torch import Tensor

BOUNDARIES = ("front", "back")  # front: edge-front -> cloud; back: cloud -> edge-back
# Direction of each (boundary, pass) on the link: up = edge -> cloud, down = cloud -> edge.
DIRECTION = {
    ("front", "forward"): "up",
    ("back", "backward"): "up",
    ("back", "forward"): "down",
    ("front", "backward"): "down",
}
DIRECTIONS = ("up", "down")


@dataclass
class CrossingFigures:
    """One boundary x pass per batch: payload and raw bytes (at the dtype that crossed), and the
    codec's mean distortion."""
    bytes_per_batch: float
    raw_bytes_per_batch: float
    rel_error: Optional[float] = None  # None: not measured
    sparsity: Optional[float] = None
    bits_per_element: Optional[float] = None  # payload bits per tensor element
    bits_per_element_before_entropy: Optional[float] = None  # before the lossless stage (if any)


@dataclass
class CommFigures:
    """summary.json's `comm`: payload bytes (headers of the codecs included, transport excluded) per
    batch each way, raw sizes, the four boundary x pass crossings, and the transport's overhead.

    Raw bytes are the tensors' own: numel x the size of their dtype (2 bytes under bf16/fp16), so
    `compression_ratio` is what the codec saves over sending the tensor as it is. The `raw_fp32_*`
    figures and `fp32_compression_ratio` count every element of the model's tensor at the boundary
    at 4 bytes: comparable across precisions and methods (equal to the raw ones in an fp32 run,
    except behind a bottleneck's encoder: there they count the tensor before it, the raw ones the
    encoder's smaller output). `activation_dtype`/`gradient_dtype`
    name the dtypes that crossed (several joined by '+'; None before anything crossed): the run
    summary records them beside `comm`, whose figures are all numbers."""
    up_bytes_per_batch: float
    down_bytes_per_batch: float
    raw_up_bytes_per_batch: float
    raw_down_bytes_per_batch: float
    compression_ratio: float  # raw / payload bytes, both ways together
    crossings: Dict[Tuple[str, str], CrossingFigures] = field(default_factory=dict)  # (boundary, pass)
    # what a transport sends beside the payloads (dist's message headers); 0 in one process
    overhead_up_bytes_per_batch: float = 0.0
    overhead_down_bytes_per_batch: float = 0.0
    raw_fp32_up_bytes_per_batch: Optional[float] = None  # None: as raw (summaries before them)
    raw_fp32_down_bytes_per_batch: Optional[float] = None
    fp32_compression_ratio: Optional[float] = None  # raw fp32 / payload bytes
    activation_dtype: Optional[str] = None
    gradient_dtype: Optional[str] = None

    @property
    def raw_fp32_bytes_per_batch(self) -> float:
        """Raw bytes up and down together at 4 bytes a value."""
        return (_or(self.raw_fp32_up_bytes_per_batch, self.raw_up_bytes_per_batch)
                + _or(self.raw_fp32_down_bytes_per_batch, self.raw_down_bytes_per_batch))

    @property
    def fp32_ratio(self) -> float:
        """Raw fp32-equivalent bytes / payload bytes: the ratio reports compare across precisions."""
        return _or(self.fp32_compression_ratio, self.compression_ratio)

    def to_dict(self) -> Dict[str, float]:
        """The JSON keys: `<boundary>_<pass>_...` for each crossing; quality only where measured."""
        out = {"up_bytes_per_batch": self.up_bytes_per_batch,
               "raw_up_bytes_per_batch": self.raw_up_bytes_per_batch,
               "down_bytes_per_batch": self.down_bytes_per_batch,
               "raw_down_bytes_per_batch": self.raw_down_bytes_per_batch}
        for (boundary, pass_), crossing in self.crossings.items():
            key = f"{boundary}_{pass_}"
            out[f"{key}_bytes_per_batch"] = crossing.bytes_per_batch
            out[f"raw_{key}_bytes_per_batch"] = crossing.raw_bytes_per_batch
            if crossing.rel_error is not None:
                out[f"{key}_rel_error"] = crossing.rel_error
            if crossing.sparsity is not None:
                out[f"{key}_sparsity"] = crossing.sparsity
            if crossing.bits_per_element is not None:
                out[f"{key}_bits_per_element"] = crossing.bits_per_element
            if crossing.bits_per_element_before_entropy is not None:
                out[f"{key}_bits_per_element_before_entropy"] = crossing.bits_per_element_before_entropy
        out["compression_ratio"] = self.compression_ratio
        out["overhead_up_bytes_per_batch"] = self.overhead_up_bytes_per_batch
        out["overhead_down_bytes_per_batch"] = self.overhead_down_bytes_per_batch
        out["raw_fp32_up_bytes_per_batch"] = _or(self.raw_fp32_up_bytes_per_batch,
                                                 self.raw_up_bytes_per_batch)
        out["raw_fp32_down_bytes_per_batch"] = _or(self.raw_fp32_down_bytes_per_batch,
                                                   self.raw_down_bytes_per_batch)
        out["fp32_compression_ratio"] = self.fp32_ratio
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CommFigures":
        """Inverse of to_dict; KeyError names a missing key (summaries before the overhead keys read 0,
        before the fp32 keys as their raw ones); the dtypes are the run summary's."""
        crossings = {}
        for boundary, pass_ in DIRECTION:
            key = f"{boundary}_{pass_}"
            optional = [data.get(f"{key}_{name}") for name in (
                "rel_error", "sparsity", "bits_per_element", "bits_per_element_before_entropy")]
            crossings[boundary, pass_] = CrossingFigures(
                float(data[f"{key}_bytes_per_batch"]), float(data[f"raw_{key}_bytes_per_batch"]),
                *(None if v is None else float(v) for v in optional))

        def number(key: str) -> Optional[float]:
            return None if data.get(key) is None else float(data[key])

        return cls(
            up_bytes_per_batch=float(data["up_bytes_per_batch"]),
            down_bytes_per_batch=float(data["down_bytes_per_batch"]),
            raw_up_bytes_per_batch=float(data["raw_up_bytes_per_batch"]),
            raw_down_bytes_per_batch=float(data["raw_down_bytes_per_batch"]),
            compression_ratio=float(data["compression_ratio"]),
            crossings=crossings,
            overhead_up_bytes_per_batch=float(data.get("overhead_up_bytes_per_batch", 0.0)),
            overhead_down_bytes_per_batch=float(data.get("overhead_down_bytes_per_batch", 0.0)),
            raw_fp32_up_bytes_per_batch=number("raw_fp32_up_bytes_per_batch"),
            raw_fp32_down_bytes_per_batch=number("raw_fp32_down_bytes_per_batch"),
            fp32_compression_ratio=number("fp32_compression_ratio"),
        )


def _or(value: Optional[float], default: float) -> float:
    return default if value is None else value


class CommMeter:
    """Accumulates payload, raw and fp32-equivalent bytes, the dtypes that crossed, transport
    overhead and codec quality over the batches since reset(). Thread-safe: torchgpipe runs
    partitions on worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.raw_bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.fp32_bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.dtypes: Dict[Tuple[str, str], Set[str]] = defaultdict(set)
            self.error_sum: Dict[Tuple[str, str], float] = defaultdict(float)
            self.sparsity_sum: Dict[Tuple[str, str], float] = defaultdict(float)
            self.samples: Dict[Tuple[str, str], int] = defaultdict(int)
            self.coded_bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.elements: Dict[Tuple[str, str], int] = defaultdict(int)
            self.overhead_bytes: Dict[str, int] = defaultdict(int)
            self.batches = 0
            # quality figures still on a device: read at the batch's end (no sync per crossing)
            self._pending: List[Tuple[Tuple[str, str], Union[float, Tensor], Union[float, Tensor]]] = []

    def record(self, boundary: str, pass_: str, payload_bytes: int, raw_bytes: int,
               coded_bytes: Optional[int] = None, elements: int = 0,
               fp32_bytes: Optional[int] = None, dtype: Optional[str] = None) -> None:
        """One payload on the link: `payload_bytes` sent, `raw_bytes` had the tensor (of `dtype`)
        been sent as it is, `coded_bytes` before an entropy stage, for a tensor of `elements`
        values, `fp32_bytes` had it been fp32 (default: raw_bytes)."""
        with self._lock:
            self.bytes[boundary, pass_] += int(payload_bytes)
            self.raw_bytes[boundary, pass_] += int(raw_bytes)
            self.coded_bytes[boundary, pass_] += int(payload_bytes if coded_bytes is None else coded_bytes)
            self.elements[boundary, pass_] += int(elements)
            self.fp32_bytes[boundary, pass_] += int(raw_bytes if fp32_bytes is None else fp32_bytes)
            if dtype is not None:
                self.dtypes[boundary, pass_].add(dtype)

    def record_quality(self, boundary: str, pass_: str, rel_error: Union[float, Tensor],
                       sparsity: Union[float, Tensor]) -> None:
        """One measured crossing; the figures (numbers, or 0-d tensors on any device) are read
        when the batch ends."""
        with self._lock:
            self._pending.append(((boundary, pass_), rel_error, sparsity))

    def _settle(self) -> None:
        """Add the pending quality figures (the lock held): one wait for the devices."""
        for key, rel_error, sparsity in self._pending:
            self.error_sum[key] += float(rel_error)
            self.sparsity_sum[key] += float(sparsity)
            self.samples[key] += 1
        self._pending = []

    def record_overhead(self, direction: str, nbytes: int) -> None:
        """Transport bytes beside the payloads (message headers, ...) sent `direction` ('up' or 'down')."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
        with self._lock:
            self.overhead_bytes[direction] += int(nbytes)

    def end_batch(self) -> None:
        with self._lock:
            self._settle()
            self.batches += 1

    def state(self) -> Dict[str, Any]:
        """The sums (not the batch count) as JSON-able data, for merge() into another process's meter."""
        with self._lock:
            self._settle()
            return {
                "crossings": [{"boundary": b, "pass": p, "bytes": self.bytes[b, p],
                               "raw_bytes": self.raw_bytes[b, p], "fp32_bytes": self.fp32_bytes[b, p],
                               "dtypes": sorted(self.dtypes[b, p]), "error_sum": self.error_sum[b, p],
                               "sparsity_sum": self.sparsity_sum[b, p], "samples": self.samples[b, p],
                               "coded_bytes": self.coded_bytes[b, p], "elements": self.elements[b, p]}
                              for b, p in DIRECTION],
                "overhead_bytes": {d: self.overhead_bytes[d] for d in DIRECTIONS},
            }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Add another meter's state(): each process counts what it sends; the edge merges the rest.
        The batch count stays this meter's (every process sees the same batches)."""
        with self._lock:
            for crossing in state["crossings"]:
                key = (crossing["boundary"], crossing["pass"])
                if key not in DIRECTION:
                    raise ValueError(f"unknown boundary/pass {key} in a meter state")
                self.bytes[key] += int(crossing["bytes"])
                self.raw_bytes[key] += int(crossing["raw_bytes"])
                self.fp32_bytes[key] += int(crossing.get("fp32_bytes", crossing["raw_bytes"]))
                self.dtypes[key].update(str(d) for d in crossing.get("dtypes", []))
                self.error_sum[key] += float(crossing["error_sum"])
                self.sparsity_sum[key] += float(crossing["sparsity_sum"])
                self.samples[key] += int(crossing["samples"])
                self.coded_bytes[key] += int(crossing.get("coded_bytes", crossing["bytes"]))
                self.elements[key] += int(crossing.get("elements", 0))
            for direction, nbytes in state["overhead_bytes"].items():
                if direction not in DIRECTIONS:
                    raise ValueError(f"unknown direction {direction!r} in a meter state")
                self.overhead_bytes[direction] += int(nbytes)

    def summary(self) -> CommFigures:
        """Per-batch means: up/down totals, the four crossings, raw sizes, quality and overhead."""
        with self._lock:
            self._settle()
            n = max(self.batches, 1)
            crossings = {}
            for key in DIRECTION:
                m, e = self.samples[key], self.elements[key]
                crossings[key] = CrossingFigures(
                    self.bytes[key] / n, self.raw_bytes[key] / n,
                    self.error_sum[key] / m if m else None, self.sparsity_sum[key] / m if m else None,
                    8 * self.bytes[key] / e if e else None, 8 * self.coded_bytes[key] / e if e else None)
            sent = {d: sum(self.bytes[k] for k, kd in DIRECTION.items() if kd == d) / n for d in DIRECTIONS}
            raw = {d: sum(self.raw_bytes[k] for k, kd in DIRECTION.items() if kd == d) / n
                   for d in DIRECTIONS}
            fp32 = {d: sum(self.fp32_bytes[k] for k, kd in DIRECTION.items() if kd == d) / n
                    for d in DIRECTIONS}
            total_sent = sent["up"] + sent["down"]

            def dtypes(pass_: str) -> Optional[str]:
                names = sorted(set().union(*(self.dtypes[b, pass_] for b in BOUNDARIES)))
                return "+".join(names) or None

            return CommFigures(
                up_bytes_per_batch=sent["up"], down_bytes_per_batch=sent["down"],
                raw_up_bytes_per_batch=raw["up"], raw_down_bytes_per_batch=raw["down"],
                compression_ratio=(raw["up"] + raw["down"]) / total_sent if total_sent else 1.0,
                crossings=crossings,
                overhead_up_bytes_per_batch=self.overhead_bytes["up"] / n,
                overhead_down_bytes_per_batch=self.overhead_bytes["down"] / n,
                raw_fp32_up_bytes_per_batch=fp32["up"], raw_fp32_down_bytes_per_batch=fp32["down"],
                fp32_compression_ratio=(fp32["up"] + fp32["down"]) / total_sent if total_sent else 1.0,
                activation_dtype=dtypes("forward"), gradient_dtype=dtypes("backward"),
            )
