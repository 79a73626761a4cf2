"""The shared secret: where it comes from, and the challenge-response that admits a cloud process.

A cloud process takes a ticket from the edge's store and says hello; the edge answers with a
random challenge; the cloud answers HMAC(secret, challenge); only then does the edge give it a
stage number, itself tagged with the secret, so the cloud knows the edge is real too. A wrong
answer is refused with a log line and takes no stage: the edge keeps waiting for the real one."""
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.distributed as dist

from edgesplit.backends.remote.progress import Waiting
from edgesplit.backends.remote.transport import rank_name
from edgesplit.errors import ConfigError, PeerError

ENV = "EDGESPLIT_SECRET"
MIN_SECRET = 16  # characters: `openssl rand -hex 32` gives 64
PREFIX = "edgesplit/auth/"
REFUSED = "refused"


def resolve_secret(configured: Optional[str], local: bool) -> str:
    """`pipeline_backend.secret`, else $EDGESPLIT_SECRET, else (local runs only) a fresh one."""
    secret = configured or os.environ.get(ENV)
    if secret:
        if len(secret) < MIN_SECRET:
            where = "pipeline_backend.secret" if configured else ENV
            raise ConfigError(f"{where} is too short ({len(secret)} characters): use at least "
                              f"{MIN_SECRET}, e.g. the output of `openssl rand -hex 32`")
        return secret
    if local:
        return secrets.token_hex(32)
    raise ConfigError(f"dist across hosts needs a shared secret: set the environment variable "
                      f"{ENV} (preferred: it stays out of .hydra/) or pipeline_backend.secret, "
                      f"the same on the edge and every cloud host")


def derive(secret: str, purpose: str) -> bytes:
    """A key for one purpose ('join' or 'message'), so no tag of one can pass as the other."""
    return hmac.new(secret.encode(), f"edgesplit {purpose} v1".encode(), hashlib.sha256).digest()


def _mac(key: bytes, *parts: object) -> str:
    return hmac.new(key, "|".join(str(p) for p in parts).encode(), hashlib.sha256).hexdigest()


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port only (not every interface), for the store to listen on."""
    try:
        return socket.create_server((host, port), backlog=128)
    except OSError as e:
        raise PeerError(f"the edge cannot listen on {host}:{port} "
                        f"(pipeline_backend.master_addr/master_port): {e}") from None


def _own_address(host: str, port: int) -> str:
    """The address this host reaches host:port from (what the edge's log names)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


def join(store: dist.Store, secret: str, want: int, host: str, port: int,
         timeout_s: float) -> int:
    """Cloud side: prove the secret to the edge behind `store`; returns the stage rank it gives
    (`want`, or any free one when want is 0)."""
    key = derive(secret, "join")
    ticket = int(store.add(f"{PREFIX}tickets", 1))
    hello = {"want": want, "pid": os.getpid(), "address": _own_address(host, port)}
    store.set(f"{PREFIX}hello/{ticket}", json.dumps(hello))
    wait = timedelta(seconds=timeout_s)
    store.wait([f"{PREFIX}challenge/{ticket}"], wait)
    challenge = store.get(f"{PREFIX}challenge/{ticket}").decode()
    store.set(f"{PREFIX}proof/{ticket}", _mac(key, "cloud", ticket, challenge))
    store.wait([f"{PREFIX}stage/{ticket}"], wait)
    answer = store.get(f"{PREFIX}stage/{ticket}").decode()
    if answer == REFUSED:
        raise PeerError(f"the edge at {host}:{port} refused this cloud process: its secret differs "
                        f"(set the same {ENV} or pipeline_backend.secret on every host)")
    rank, _, tag = answer.partition(":")
    if not (rank.isdigit() and hmac.compare_digest(tag, _mac(key, "edge", ticket, challenge, rank))):
        raise PeerError(f"the process at {host}:{port} did not prove it knows the secret: "
                        f"it is not the edge of this run")
    return int(rank)


class Gate:
    """Edge side: admits cloud processes that prove the secret, one stage number each."""

    def __init__(self, store: dist.Store, secret: str, world_size: int,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                 flush=True)) -> None:
        self.store, self.key, self.world_size, self.log = store, derive(secret, "join"), world_size, log
        self.seen = 0  # tickets handled so far
        self.pending: Dict[int, Tuple[str, Dict[str, Any]]] = {}  # ticket -> challenge, hello
        self.admitted: Dict[int, int] = {}  # stage rank -> ticket

    def missing(self) -> List[int]:
        return [r for r in range(1, self.world_size) if r not in self.admitted]

    def poll(self) -> None:
        """Challenge new hellos, judge new proofs."""
        tickets = int(self.store.add(f"{PREFIX}tickets", 0))
        for ticket in range(self.seen + 1, tickets + 1):
            if not self.store.check([f"{PREFIX}hello/{ticket}"]):
                break  # it took its ticket and has not said hello yet
            self.seen = ticket
            challenge = secrets.token_hex(16)
            self.pending[ticket] = (challenge, _hello(self.store.get(f"{PREFIX}hello/{ticket}")))
            self.store.set(f"{PREFIX}challenge/{ticket}", challenge)
        for ticket, (challenge, hello) in list(self.pending.items()):
            if not self.store.check([f"{PREFIX}proof/{ticket}"]):
                continue
            del self.pending[ticket]
            proof = self.store.get(f"{PREFIX}proof/{ticket}").decode(errors="replace")
            rank = self._stage_for(hello)
            who = f"cloud process {hello.get('address', '?')} pid {hello.get('pid', '?')}"
            if not hmac.compare_digest(proof, _mac(self.key, "cloud", ticket, challenge)):
                self.log(f"edgesplit: refused {who}: it does not know the secret "
                         f"(still waiting for {', '.join(map(str, self.missing()))})")
                self.store.set(f"{PREFIX}stage/{ticket}", REFUSED)
            elif rank is None:
                self.log(f"edgesplit: refused {who}: no free stage for it (wanted {hello.get('want')})")
                self.store.set(f"{PREFIX}stage/{ticket}", REFUSED)
            else:
                self.admitted[rank] = ticket
                self.store.set(f"{PREFIX}stage/{ticket}",
                               f"{rank}:{_mac(self.key, 'edge', ticket, challenge, rank)}")

    def _stage_for(self, hello: Dict[str, Any]) -> Optional[int]:
        free = self.missing()
        want = hello.get("want")
        if want in free:
            return int(want)
        return free[0] if want == 0 and free else None

    def wait(self, timeout_s: float, check: Callable[[List[int]], None] = lambda missing: None,
             where: str = "") -> None:
        """Until every stage is admitted; `check(missing)` may raise (a local child died). Every few
        seconds a line names the ranks still missing and `where` (the store's host:port)."""
        deadline = time.monotonic() + timeout_s

        def missing() -> str:
            names = ", ".join(rank_name(r, self.world_size) for r in self.missing())
            return f"{names} at {where}" if where else names
        with Waiting(missing, timeout_s):
            while True:
                self.poll()
                if not self.missing():
                    return
                check(self.missing())
                if time.monotonic() > deadline:
                    raise PeerError(f"{missing()} did not connect to the edge within {timeout_s:g} s "
                                    f"(pipeline_backend.timeout_s)")
                time.sleep(0.05)


def _hello(raw: bytes) -> Dict[str, Any]:
    """A hello's fields (claims, used only to name the process); {} when it is not one."""
    try:
        hello = json.loads(raw[:1000])
    except ValueError:
        return {}
    return hello if isinstance(hello, dict) else {}
