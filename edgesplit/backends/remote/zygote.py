"""The zygote: a process that imports torch and the cloud's code once and forks each local cloud
rank from there (`python -m edgesplit.backends.remote FD`, started by the edge: forks.py), so a
rank starts in a fork, not in seconds of imports. It never runs a torch op (no CUDA, no thread
pools), so a fork of it is as clean as a new interpreter; it dies with the edge, its ranks with it."""
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import traceback
from typing import Any, Dict, List, Optional, Tuple

import torch._dynamo  # noqa: F401 (a rank's first optimizer imports it: over a second, paid once here)

from edgesplit.backends.remote import launch
from edgesplit.backends.remote.cloud_main import child_main
import edgesplit.clients.edge_process  # noqa: F401 (a many-edge run's edges: imported once, here)

LENGTH = struct.Struct("!Q")  # a request: its JSON's length, then the JSON
# with a request: the edge's stdout and stderr (now, not at the zygote's start), and the rank's
# status pipe, where the zygote writes the rank's pid, then its exit code (lines)
FDS = 3


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _request(sock: socket.socket) -> Optional[Tuple[dict, List[int]]]:
    """The next request and its fds, or None when the edge closed its end (or went away)."""
    try:
        head, fds, _, _ = socket.recv_fds(sock, LENGTH.size, FDS)
        if not head:
            return None
        head += _read_exactly(sock, LENGTH.size - len(head))
        return json.loads(_read_exactly(sock, LENGTH.unpack(head)[0])), fds
    except (EOFError, ConnectionError):
        return None


def _reap(status: Dict[int, int]) -> None:
    """Each exited rank's exit code (negative: the signal, as subprocess's) on its status pipe."""
    while True:
        try:
            pid, how = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, f"{os.waitstatus_to_exitcode(how)}\n".encode())
            except OSError:
                pass  # the edge is gone
            os.close(fd)


def _name_process(name: str) -> None:
    """Linux: what ps and top show for the process (its command line stays the zygote's)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except OSError:
        pass


def _become_rank(request: dict, fds: List[int], unused: List[int], sigint: Any) -> None:
    """In the forked child: the edge's console, cwd and environment now, then the rank's life."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, sigint)
        for fd in unused + [fds[2]]:
            os.close(fd)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd in (null, fds[0], fds[1]):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        rank, world, host, port, timeout_s, threads = request["argv"]
        _name_process(f"cloud-rank-{rank}")
        child_main(int(rank), int(world), host, int(port), request["given"], float(timeout_s), int(threads),
                   request.get("entry", "cloud"))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(1)  # child_main exits on its own: here only if the set-up failed


def serve(fd: int) -> None:
    """Fork a rank per request on the socket `fd` until the edge closes it or dies."""
    launch.die_with_parent()
    inherited = signal.getsignal(signal.SIGINT)  # the ranks get what a new interpreter would
    sigint = inherited if isinstance(inherited, signal.Handlers) else signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the edge and the ranks
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below through wake_w
    status: Dict[int, int] = {}  # rank's pid -> its status pipe
    with socket.socket(fileno=fd) as sock:
        while True:
            ready = select.select([sock.fileno(), wake_r], [], [])[0]  # idle until the edge asks or exits
            if wake_r in ready:
                os.read(wake_r, 4096)
                _reap(status)
            if sock.fileno() not in ready:
                continue
            got = _request(sock)
            if got is None:
                return
            request, fds = got
            if request.get("entry") == "edge":
                edgesplit.clients.edge_process.preload()  # once, before the first client's fork
            pid = os.fork()
            if pid == 0:
                _become_rank(request, fds, [sock.fileno(), wake_r, wake_w, *status.values()], sigint)
            os.close(fds[0])
            os.close(fds[1])
            status[pid] = fds[2]
            try:
                os.write(fds[2], f"{pid}\n".encode())
            except OSError:
                pass  # the edge is gone
