"""Edge side of the zygote (zygote.py): one per edge process, started at its first local dist run
and kept for the next (a sweep's jobs, a test session); each local cloud rank it forks is handled
as a subprocess.Popen is (pid, poll, wait, kill)."""
import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from edgesplit.errors import PeerError

LENGTH_BYTES = 8  # zygote.LENGTH, "!Q" (not imported: zygote.py imports torch and the cloud's code)


class LocalRank:
    """A cloud rank the zygote forks; its pid and then its exit code arrive on its status pipe."""

    def __init__(self, status_fd: int, zygote: subprocess.Popen) -> None:
        self._status, self._zygote, self._unread = status_fd, zygote, b""
        self._pid: Optional[int] = None
        self.returncode: Optional[int] = None

    @property
    def pid(self) -> int:
        """The rank's, or the zygote's until it forked the rank (the process to name or stop)."""
        return self._zygote.pid if self._pid is None else self._pid

    def poll(self) -> Optional[int]:
        return self._read(0.0)

    def _read(self, wait_s: float) -> Optional[int]:
        deadline = time.monotonic() + wait_s
        while self.returncode is None:
            if not select.select([self._status], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(self._status, 64)
            if not chunk:  # the zygote died: before the fork with its own status, after it the rank with it
                self._done(self._zygote_status() if self._pid is None else None)
                break
            *lines, self._unread = (self._unread + chunk).split(b"\n")
            for line in lines:
                if self._pid is None:
                    self._pid = int(line)
                else:
                    self._done(int(line))
        return self.returncode

    def _zygote_status(self) -> Optional[int]:
        try:
            return self._zygote.wait(timeout=1.0)  # its pipe closes just before it can be reaped
        except subprocess.TimeoutExpired:
            return None

    def _done(self, code: Optional[int]) -> None:
        # no status at all: the zygote's parent-death signal took the rank
        self.returncode = -signal.SIGKILL if code is None else code
        os.close(self._status)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"cloud rank (pid {self.pid})", timeout)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # the zygote itself if it has not forked the rank yet
            except ProcessLookupError:
                pass  # exited since: the zygote reports it


class Zygote:
    """The zygote process and this process's end of its socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.path = list(sys.path)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgesplit.backends.remote",
                                          str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, env=_child_env())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def usable(self) -> bool:
        return self.proc.poll() is None and self.path == sys.path

    def fork(self, argv: List[str], given: str, limit_s: float, entry: str = "cloud") -> LocalRank:
        """Ask for a rank running cloud_main.child_main on `argv` and `given` (its secret and spec):
        the zygote forks it once its imports are done (the caller waits for the rank to connect).
        `entry`: 'cloud' (a cloud stage) or 'edge' (a client's edge: edgesplit.clients.dist)."""
        request = json.dumps({"argv": argv, "given": given, "entry": entry, "env": _child_env(),
                              "cwd": os.getcwd()}).encode()
        status_r, status_w = os.pipe()
        sent = _console() + [status_w]
        try:
            self.sock.settimeout(limit_s)  # a request larger than the socket's buffer waits for the imports
            socket.send_fds(self.sock, [len(request).to_bytes(LENGTH_BYTES, "big")], sent)
            self.sock.sendall(request)
        except OSError as e:
            os.close(status_r)
            how = "did not take the request" if isinstance(e, TimeoutError) else f"is gone ({e})"
            raise PeerError(f"cloud rank {argv[0]} could not be started within {limit_s:g} s: the zygote "
                            f"that forks the local cloud ranks (pid {self.proc.pid}) {how}") from None
        finally:
            for fd in sent:
                os.close(fd)
        return LocalRank(status_r, self.proc)

    def close(self) -> None:
        """Close its socket: the zygote exits (a rank it still has dies with it)."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _child_env() -> Dict[str, str]:
    """This process's environment now, and its sys.path for the imports."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _console() -> List[int]:
    """This process's stdout and stderr as they are now (a rank writes where a child would): new
    descriptors, for the caller to close."""
    fds = []
    for fd in (1, 2):
        try:
            fds.append(os.dup(fd))
        except OSError:  # closed here: the rank's goes nowhere
            fds.append(os.open(os.devnull, os.O_WRONLY))
    return fds


_zygote: Optional[Zygote] = None
_lock = threading.Lock()


def start_rank(argv: List[str], given: str, limit_s: float, entry: str = "cloud") -> LocalRank:
    """A local cloud rank from this process's zygote (started first, or again when it died or
    sys.path changed)."""
    global _zygote
    with _lock:
        if _zygote is not None and not _zygote.usable():
            close_zygote()
        if _zygote is None:
            _zygote = Zygote()
        try:
            return _zygote.fork(argv, given, limit_s, entry)
        except PeerError:
            close_zygote()
            raise


@atexit.register
def close_zygote() -> None:
    """End this process's zygote (the next local rank starts a new one)."""
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None
