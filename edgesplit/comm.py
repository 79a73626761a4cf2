"""Counts the bytes that cross the edge link, per boundary and pass, and how much the codecs distort."""
import threading
from collections import defaultdict
from typing import Any, Dict, Tuple

BOUNDARIES = ("front", "back")  # front: edge-front -> cloud; back: cloud -> edge-back
PASSES = ("forward", "backward")
# Direction of each (boundary, pass) on the link: up = edge -> cloud, down = cloud -> edge.
DIRECTION = {
    ("front", "forward"): "up",
    ("back", "backward"): "up",
    ("back", "forward"): "down",
    ("front", "backward"): "down",
}


class CommMeter:
    """Accumulates payload and raw (fp32) bytes and codec quality over the batches since reset()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.raw_bytes: Dict[Tuple[str, str], int] = defaultdict(int)
            self.error_sum: Dict[Tuple[str, str], float] = defaultdict(float)
            self.sparsity_sum: Dict[Tuple[str, str], float] = defaultdict(float)
            self.samples: Dict[Tuple[str, str], int] = defaultdict(int)
            self.overhead: Dict[str, int] = defaultdict(int)
            self.batches = 0

    def record_overhead(self, direction: str, nbytes: int) -> None:
        with self._lock:
            self.overhead[direction] += int(nbytes)

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return {"pairs": [[b, p, self.bytes[b, p], self.raw_bytes[b, p], self.error_sum[b, p],
                               self.sparsity_sum[b, p], self.samples[b, p]] for (b, p) in DIRECTION],
                    "overhead": dict(self.overhead)}

    def merge(self, state: Dict[str, Any]) -> None:
        with self._lock:
            for b, p, nbytes, raw, err, sparsity, samples in state["pairs"]:
                self.bytes[b, p] += nbytes
                self.raw_bytes[b, p] += raw
                self.error_sum[b, p] += err
                self.sparsity_sum[b, p] += sparsity
                self.samples[b, p] += samples
            for d, n in state["overhead"].items():
                self.overhead[d] += n

    def record(self, boundary: str, pass_: str, payload_bytes: int, raw_bytes: int) -> None:
        """One message on the link: `payload_bytes` sent, `raw_bytes` had it been plain fp32."""
        with self._lock:
            self.bytes[boundary, pass_] += int(payload_bytes)
            self.raw_bytes[boundary, pass_] += int(raw_bytes)

    def record_quality(self, boundary: str, pass_: str, rel_error: float, sparsity: float) -> None:
        with self._lock:
            self.error_sum[boundary, pass_] += rel_error
            self.sparsity_sum[boundary, pass_] += sparsity
            self.samples[boundary, pass_] += 1

    def end_batch(self) -> None:
        with self._lock:
            self.batches += 1

    def summary(self) -> Dict[str, float]:
        """Per-batch means: up/down totals, the four underlying counts, raw sizes and quality."""
        with self._lock:
            n = max(self.batches, 1)
            out: Dict[str, float] = {}
            for direction in ("up", "down"):
                keys = [k for k, d in DIRECTION.items() if d == direction]
                out[f"{direction}_bytes_per_batch"] = sum(self.bytes[k] for k in keys) / n
                out[f"raw_{direction}_bytes_per_batch"] = sum(self.raw_bytes[k] for k in keys) / n
                out[f"overhead_{direction}_bytes_per_batch"] = self.overhead[direction] / n
            for (boundary, pass_) in DIRECTION:
                key = f"{boundary}_{pass_}"
                out[f"{key}_bytes_per_batch"] = self.bytes[boundary, pass_] / n
                out[f"raw_{key}_bytes_per_batch"] = self.raw_bytes[boundary, pass_] / n
                if self.samples[boundary, pass_]:
                    m = self.samples[boundary, pass_]
                    out[f"{key}_rel_error"] = self.error_sum[boundary, pass_] / m
                    out[f"{key}_sparsity"] = self.sparsity_sum[boundary, pass_] / m
            raw = out["raw_up_bytes_per_batch"] + out["raw_down_bytes_per_batch"]
            sent = out["up_bytes_per_batch"] + out["down_bytes_per_batch"]
            out["compression_ratio"] = raw / sent if sent else 1.0
            return out
