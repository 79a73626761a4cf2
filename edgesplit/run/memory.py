"""Peak memory of one job, also when a Hydra sweep runs its jobs one after another in one process.

On a GPU: torch.cuda's peak allocation, reset when a job starts. On the CPU: the process's
resident set size (RSS), approximately: a job starts with gc.collect() and glibc's malloc_trim(0)
(handing the previous job's freed memory back), then a thread samples the RSS every SAMPLE_S
seconds; where the process-wide peak (getrusage's ru_maxrss) rose during the job, that exact
figure is the job's. A peak shorter than SAMPLE_S that stays below an earlier job's may be missed.
A process that runs no job (a dist cloud stage) reports its whole life's ru_maxrss."""
import ctypes
import gc
import resource
import threading
from typing import Optional

import psutil
import torch

SAMPLE_S = 0.05


def rss_bytes() -> int:
    """This process's resident set size now."""
    return int(psutil.Process().memory_info().rss)


def max_rss_bytes() -> int:
    """The process's peak RSS over its whole life (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc; elsewhere a no-op)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class JobMemory:
    """The peak RSS from start() on, sampled by a daemon thread until stop()."""

    def __init__(self) -> None:
        release_freed_memory()
        self._max_rss_at_start = max_rss_bytes()
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="edgesplit-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, rss_bytes())

    def peak_bytes(self) -> int:
        self.peak = max(self.peak, rss_bytes())
        max_rss = max_rss_bytes()
        # the process's all-time peak rose during this job: then it is this job's, exactly
        return max(self.peak, max_rss) if max_rss > self._max_rss_at_start else self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


_job: Optional[JobMemory] = None


def start_job() -> None:
    """A job starts: CPU sampling from now, and torch.cuda's peak statistics reset."""
    global _job
    stop_job()
    _job = JobMemory()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def stop_job() -> None:
    global _job
    if _job is not None:
        _job.stop()
        _job = None


def _status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def reset_peak(device: torch.device) -> int:
    """Start an exact peak measurement on `device`; returns the baseline (bytes in use now). CPU:
    freed heap handed back, then Linux's peak RSS (VmHWM) reset through /proc/self/clear_refs; CUDA:
    torch's peak statistics."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: the peak below is the process's whole life's
    return rss_bytes()


def peak_since_reset(device: torch.device) -> int:
    """The peak bytes in use on `device` since reset_peak (CPU: VmHWM, else the lifetime ru_maxrss)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else max_rss_bytes()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this job on `device`: CUDA allocations on a GPU, else the RSS (see above)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _job.peak_bytes() if _job is not None else max_rss_bytes()
