"""dist's progress lines: who a process waits for, every few seconds, with the time waited and the
limit; a cloud role's heartbeat while it works."""
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Callable, Optional, Type, Union

log = logging.getLogger("edgesplit.dist")
EVERY_S = 5.0  # seconds between two `waiting for ...` lines
HEARTBEAT_S = 60.0  # the most seconds between two lines of a working cloud role (Heartbeat)


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


class Heartbeat:
    """A cloud role's pulse (`say`): a line every `every_steps` training steps, or at the first step
    `every_s` seconds after the line before: the steps done, the epoch and the pace since then."""

    def __init__(self, who: str, every_steps: int, every_s: float = HEARTBEAT_S) -> None:
        self.who, self.every_steps, self.every_s = who, max(1, every_steps), every_s
        self.steps = self._steps_then = 0
        self._then = time.monotonic()

    def step(self, epoch: int) -> None:
        """A training step ended in `epoch` (0-based)."""
        self.steps += 1
        now, since = time.monotonic(), self.steps - self._steps_then
        if since >= self.every_steps or now - self._then >= self.every_s:
            say(f"{self.who}: {self.steps} training steps done (epoch {epoch + 1}), "
                f"{(now - self._then) / since:.3f} s/step over the last {since}")
            self._then, self._steps_then = now, self.steps
