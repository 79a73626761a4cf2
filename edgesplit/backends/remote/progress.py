"""Start-up lines of dist: who a process waits for, every few seconds, with the time waited and the limit."""
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Callable, Optional, Type, Union

log = logging.getLogger("edgesplit.dist")
EVERY_S = 5.0  # seconds between two `waiting for ...` lines


def say(line: str) -> None:
    """One line on the console: through logging where a handler is set up (the edge under Hydra:
    its train.log too), else on stderr (a cloud process the edge started)."""
    if logging.getLogger().handlers or log.handlers:
        log.info(line)
    else:
        print(f"edgesplit: {line}", file=sys.stderr, flush=True)


class Waiting:
    """`with Waiting(what, timeout_s): <a call that blocks>` says every EVERY_S seconds, from a
    thread, `waiting for <what>: 6 s of 60 s` until the call returns or raises. `what` may be a
    function, asked at each line (the ranks still missing)."""

    def __init__(self, what: Union[str, Callable[[], str]], timeout_s: float,
                 every_s: Optional[float] = None) -> None:
        self.what, self.timeout_s = what, timeout_s
        self.every_s = EVERY_S if every_s is None else every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgesplit-waiting", daemon=True)
        self.started = time.monotonic()

    def line(self) -> str:
        what = self.what() if callable(self.what) else self.what
        return f"waiting for {what}: {time.monotonic() - self.started:.0f} s of {self.timeout_s:g} s"

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                say(self.line())
            except Exception:  # a line is not worth a failed start
                pass

    def __enter__(self) -> "Waiting":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
