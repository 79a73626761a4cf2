"""Ctrl-C during training: the run stops at the next step boundary; a second Ctrl-C stops at once."""
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator, Optional

_requested = False


def _on_sigint(signum: int, frame: Optional[FrameType]) -> None:
    # A KeyboardInterrupt raised at an arbitrary point can be lost (inside a finalizer it is only
    # printed), and the run would go on: the first Ctrl-C is a request the loop checks.
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True


def check() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed since the run started."""
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def stop_at_step_boundaries() -> Iterator[None]:
    """Within: Ctrl-C is a request that check() turns into KeyboardInterrupt (main thread only;
    elsewhere Python's default applies)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False
