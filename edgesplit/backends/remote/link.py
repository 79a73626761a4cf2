"""Edge-link emulation in the sender: a token bucket per direction plus a fixed latency."""
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class LinkSpec:
    """Bits per second of each direction (None = unshaped) and one-way latency in seconds."""
    up_bps: Optional[float] = None
    down_bps: Optional[float] = None
    latency_s: float = 0.0

    @staticmethod
    def from_config(link: Any) -> "LinkSpec":
        """From `pipeline_backend.link`: uplink/downlink override bandwidth_mbps."""
        both = link.get("bandwidth_mbps")
        return LinkSpec.of_mbps(link.get("uplink_mbps") or both, link.get("downlink_mbps") or both,
                                float(link.get("latency_ms") or 0.0))

    @staticmethod
    def of_mbps(up_mbps: Optional[float], down_mbps: Optional[float], latency_ms: float) -> "LinkSpec":
        """From Mbit/s per direction (None = unshaped) and the latency in milliseconds."""
        return LinkSpec(up_bps=up_mbps * 1e6 if up_mbps else None,
                        down_bps=down_mbps * 1e6 if down_mbps else None, latency_s=latency_ms / 1000.0)

    def bps(self, direction: str) -> Optional[float]:
        return self.up_bps if direction == "up" else self.down_bps

    def shaped(self, direction: str) -> bool:
        return self.bps(direction) is not None or self.latency_s > 0

    def describe(self) -> Optional[str]:
        """The line the edge says at start: each direction's rate and latency; None when unshaped."""
        if not (self.shaped("up") or self.shaped("down")):
            return None

        def one(direction: str) -> str:
            bps = self.bps(direction)
            rate = f"{bps / 1e6:g} Mbit/s" if bps else "unlimited bandwidth"
            return f"{rate} + {self.latency_s * 1e3:g} ms latency"
        return (f"link emulation on: up (edge -> cloud) {one('up')}; "
                f"down (cloud -> edge) {one('down')}")

    def seconds(self, direction: str, nbytes: int) -> float:
        """Time one message of nbytes takes on an idle link: latency + serialization."""
        bps = self.bps(direction)
        return self.latency_s + (nbytes * 8 / bps if bps else 0.0)


class ShapedLink:
    """One direction of the link. `submit(nbytes, send)` returns at once; a thread calls `send()`
    when the message would have arrived: it enters the link when the link is free (messages queue
    behind each other, a token bucket of one message), takes nbytes*8/bps to serialize and then
    `latency_s` to propagate; messages overlap during propagation as on a real link."""

    def __init__(self, bps: Optional[float], latency_s: float, name: str = "link") -> None:
        self.bps, self.latency_s = bps, latency_s
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._free_at = 0.0  # when the link finishes serializing the messages before
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"edgesplit-{name}", daemon=True)
        self._thread.start()

    def submit(self, nbytes: int, send: Callable[[], Any]) -> "Future[Any]":
        """Schedule `send` at this message's arrival time; the future holds send()'s result."""
        now = time.monotonic()
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + (nbytes * 8 / self.bps if self.bps else 0.0)
            due = self._free_at + self.latency_s
        future: "Future[Any]" = Future()
        self._queue.put((due, send, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            due, send, future = item
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                future.set_result(send())
            except BaseException as e:  # handed to the waiter
                future.set_exception(e)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
