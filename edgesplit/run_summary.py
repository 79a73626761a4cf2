"""TEMP stub until the contracts branch lands."""
from dataclasses import dataclass


@dataclass
class SideStats:
    parameters: int
    peak_memory_bytes: int
    compute_s_per_batch: float
    processes: int = 1
