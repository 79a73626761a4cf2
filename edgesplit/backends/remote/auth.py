"""The shared secret: where it comes from, the challenge-response that admits a cloud process, and
the message key of one session.

A cloud process takes a ticket from the edge's store and says hello with a fresh random nonce; the
edge answers with a fresh random challenge; the cloud answers HMAC(secret, ticket, challenge,
nonce); only then does the edge give it a stage number, tagged likewise, so the cloud knows the
edge is real too. Once every stage is admitted the edge publishes the session record (each stage's
challenge and nonce, in rank order, tagged), and every rank derives the session's message key from
the secret and that record. Both sides' nonces are fresh, so nothing recorded in one session (a
handshake answer, a sealed message) verifies in another. A wrong answer is refused with a log line
and takes no stage: the edge keeps waiting for the real one.

What the store exposes to anyone who can reach its port: the hellos (the pid, address and stage a
process claims, its nonce), the challenges, the proofs and stage answers (HMAC tags bound to both
nonces), the session record (nonces and its tag) and the ranks' last error lines. No key is derivable
from them without the secret; a weak secret could be guessed offline from a tag, hence MIN_SECRET."""
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.distributed as dist

from edgesplit.backends.remote.progress import Waiting
from edgesplit.backends.remote.transport import rank_name
from edgesplit.errors import ConfigError, PeerError

ENV = "EDGESPLIT_SECRET"
MIN_SECRET = 16  # characters: `openssl rand -hex 32` gives 64
PREFIX = "edgesplit/auth/"
SESSION = f"{PREFIX}session"
REFUSED = "refused"
NONCE_HEX = 32  # a nonce or challenge: 16 random bytes as hex


def resolve_secret(configured: Optional[str], local: bool, secret_file: Optional[str] = None) -> str:
    """`pipeline_backend.secret`, else the file `pipeline_backend.secret_file` names, else
    $EDGESPLIT_SECRET, else (local runs only) a fresh one."""
    if not configured and secret_file:
        try:
            configured = open(secret_file).read().strip()
        except OSError as e:
            raise ConfigError(f"pipeline_backend.secret_file={secret_file} cannot be read: "
                              f"{e.strerror or e}") from None
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


def client_secret(secret: str, client: int) -> str:
    """Client `client`'s own secret (many edges): the run secret's HMAC of its index, so holding one
    client's secret proves nothing about another's, and none of them gives back the run secret."""
    return hmac.new(secret.encode(), f"edgesplit client {client} v1".encode(), hashlib.sha256).hexdigest()


def session_key(secret: str, pairs: List[List[str]]) -> bytes:
    """The message key of one session: `pairs` holds each cloud stage's [edge challenge, cloud
    nonce] in rank order, so the key binds both sides' fresh nonces and the stages' order."""
    return hmac.new(derive(secret, "message"), f"session {json.dumps(pairs)}".encode(),
                    hashlib.sha256).digest()


def _mac(key: bytes, *parts: object) -> str:
    return hmac.new(key, "|".join(str(p) for p in parts).encode(), hashlib.sha256).hexdigest()


def _is_nonce(value: object) -> bool:
    return (isinstance(value, str) and len(value) == NONCE_HEX
            and all(c in "0123456789abcdef" for c in value))


def listening_socket(host: str, port: int, server: str = "the edge") -> socket.socket:
    """A socket bound to host:port only (not every interface), for the store to listen on."""
    try:
        return socket.create_server((host, port), backlog=128)
    except OSError as e:
        raise PeerError(f"{server} cannot listen on {host}:{port} "
                        f"(pipeline_backend.master_addr/master_port): {e}") from None


def _own_address(host: str, port: int) -> str:
    """The address this host reaches host:port from (what the edge's log names)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


@dataclass(frozen=True)
class Admission:
    """What a cloud process holds once the edge admitted it."""
    rank: int
    challenge: str  # the edge's, for this ticket
    nonce: str  # this process's


@dataclass(frozen=True)
class Sides:
    """How a join's lines name the store's host and the process that joins, and the fix for a
    refused secret (many edges across hosts: the cloud, and a client's edge host)."""
    server: str = "the edge"
    joiner: str = "this cloud process"
    fix: str = f"set the same {ENV} or pipeline_backend.secret on every host"


def _not_the_edge(host: str, port: int, why: str, sides: Sides) -> PeerError:
    return PeerError(f"the process at {host}:{port} did not prove it knows the secret ({why}): "
                     f"it is not {sides.server} of this run, or it replays another session")


def _await(store: dist.Store, key: str, deadline: float, host: str, port: int, limit_s: float,
           sides: Sides) -> None:
    """store.wait by polling: torch's wait prints C++ warnings on stderr when it times out."""
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise PeerError(f"{sides.server} at {host}:{port} did not admit {sides.joiner} within "
                            f"{limit_s:g} s (pipeline_backend.timeout_s)")
        time.sleep(0.05)


def _admit(store: dist.Store, key: bytes, want: int, host: str, port: int,
           timeout_s: float, limit_s: Optional[float] = None, sides: Sides = Sides()) -> Admission:
    deadline, limit_s = time.monotonic() + timeout_s, limit_s or timeout_s
    ticket = int(store.add(f"{PREFIX}tickets", 1))
    nonce = secrets.token_hex(NONCE_HEX // 2)
    hello = {"want": want, "pid": os.getpid(), "address": _own_address(host, port), "nonce": nonce}
    store.set(f"{PREFIX}hello/{ticket}", json.dumps(hello))
    _await(store, f"{PREFIX}challenge/{ticket}", deadline, host, port, limit_s, sides)
    challenge = store.get(f"{PREFIX}challenge/{ticket}").decode(errors="replace")
    store.set(f"{PREFIX}proof/{ticket}", _mac(key, "cloud", ticket, challenge, nonce))
    _await(store, f"{PREFIX}stage/{ticket}", deadline, host, port, limit_s, sides)
    answer = store.get(f"{PREFIX}stage/{ticket}").decode(errors="replace")
    if answer == REFUSED:
        raise PeerError(f"{sides.server} at {host}:{port} refused {sides.joiner}: its secret differs "
                        f"({sides.fix})")
    rank, _, tag = answer.partition(":")
    if not (rank.isdigit() and hmac.compare_digest(tag, _mac(key, "edge", ticket, challenge, nonce,
                                                             rank))):
        raise _not_the_edge(host, port, "its stage answer's tag is wrong", sides)
    return Admission(int(rank), challenge, nonce)


def join(store: dist.Store, secret: str, want: int, host: str, port: int,
         timeout_s: float) -> int:
    """Cloud side: prove the secret to the edge behind `store`; returns the stage rank it gives
    (`want`, or any free one when want is 0)."""
    return _admit(store, derive(secret, "join"), want, host, port, timeout_s).rank


def join_session(store: dist.Store, secret: str, want: int, host: str, port: int,
                 timeout_s: float, limit_s: Optional[float] = None,
                 sides: Sides = Sides()) -> Tuple[int, bytes]:
    """join(), then (once the edge has admitted every stage) the session's message key, all within
    timeout_s (`limit_s`: the limit its message names, default timeout_s)."""
    key, deadline = derive(secret, "join"), time.monotonic() + timeout_s
    admitted = _admit(store, key, want, host, port, timeout_s, limit_s, sides)
    _await(store, SESSION, deadline, host, port, limit_s or timeout_s, sides)
    text, _, tags = store.get(SESSION).decode(errors="replace").rpartition("|")
    expected = _mac(key, "session", text)
    if not any(hmac.compare_digest(tag, expected) for tag in tags.split(",")):
        raise _not_the_edge(host, port, "its session record's tag is wrong", sides)
    try:
        pairs = json.loads(text)
        mine = pairs[admitted.rank - 1]
    except (ValueError, TypeError, IndexError, KeyError):
        mine = None
    if mine != [admitted.challenge, admitted.nonce]:
        raise _not_the_edge(host, port, "its session record is not this session's", sides)
    return admitted.rank, session_key(secret, pairs)


class Gate:
    """Edge side: admits cloud processes that prove the secret, one stage number each. Many edges
    (`per_rank`): rank r must prove client r - 1's own secret (client_secret) and ask for rank r."""

    def __init__(self, store: dist.Store, secret: str, world_size: int,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                 flush=True),
                 per_rank: bool = False) -> None:
        self.store, self.secret, self.world_size, self.log = store, secret, world_size, log
        self.key, self.per_rank = derive(secret, "join"), per_rank
        self.secrets = {r: client_secret(secret, r - 1) if per_rank else secret for r in range(1, world_size)}
        self.keys: Dict[int, bytes] = {}  # rank -> its message key, once session() ran
        self.seen = 0  # tickets handled so far
        self.pending: Dict[int, Tuple[str, Dict[str, Any]]] = {}  # ticket -> challenge, hello
        self.admitted: Dict[int, int] = {}  # stage rank -> ticket
        self.pairs: Dict[int, List[str]] = {}  # stage rank -> [challenge, its nonce]

    def missing(self) -> List[int]:
        return [r for r in range(1, self.world_size) if r not in self.admitted]

    def poll(self) -> None:
        """Challenge new hellos, judge new proofs."""
        tickets = int(self.store.add(f"{PREFIX}tickets", 0))
        for ticket in range(self.seen + 1, tickets + 1):
            if not self.store.check([f"{PREFIX}hello/{ticket}"]):
                break  # it took its ticket and has not said hello yet
            self.seen = ticket
            challenge = secrets.token_hex(NONCE_HEX // 2)
            self.pending[ticket] = (challenge, _hello(self.store.get(f"{PREFIX}hello/{ticket}")))
            self.store.set(f"{PREFIX}challenge/{ticket}", challenge)
        for ticket, (challenge, hello) in list(self.pending.items()):
            if self.store.check([f"{PREFIX}proof/{ticket}"]):
                del self.pending[ticket]
                self._judge(ticket, challenge, hello)

    def _judge(self, ticket: int, challenge: str, hello: Dict[str, Any]) -> None:
        proof = self.store.get(f"{PREFIX}proof/{ticket}").decode(errors="replace")
        nonce = hello.get("nonce")
        rank = self._stage_for(hello)
        key = derive(self.secrets[rank], "join") if rank is not None else self.key
        role = "edge" if self.per_rank else "cloud"
        who = f"{role} process {hello.get('address', '?')} pid {hello.get('pid', '?')}"
        if not _is_nonce(nonce):
            self.log(f"edgesplit: refused {who}: its hello carries no nonce (another edgesplit "
                     f"version, or not edgesplit)")
        elif rank is not None and self.per_rank and not hmac.compare_digest(
                proof, _mac(key, "cloud", ticket, challenge, nonce)):
            self.log(f"edgesplit: refused {who}: it claims client {rank - 1} and does not hold that "
                     f"client's key (still waiting for {', '.join(map(str, self.missing()))})")
        elif not hmac.compare_digest(proof, _mac(key, "cloud", ticket, challenge, nonce)):
            self.log(f"edgesplit: refused {who}: it does not know the secret, or it replays "
                     f"another session (still waiting for {', '.join(map(str, self.missing()))})")
        elif rank is None:
            self.log(f"edgesplit: refused {who}: no free stage for it (wanted {hello.get('want')})")
        else:
            self.admitted[rank], self.pairs[rank] = ticket, [challenge, str(nonce)]
            self.store.set(f"{PREFIX}stage/{ticket}",
                           f"{rank}:{_mac(key, 'edge', ticket, challenge, nonce, rank)}")
            return
        self.store.set(f"{PREFIX}stage/{ticket}", REFUSED)

    def _stage_for(self, hello: Dict[str, Any]) -> Optional[int]:
        free = self.missing()
        want = hello.get("want")
        if want in free:
            return int(want)
        return free[0] if want == 0 and free else None

    def session(self) -> bytes:
        """Every stage admitted: publish the session record; returns the session's message key."""
        pairs = [self.pairs[r] for r in range(1, self.world_size)]
        text = json.dumps(pairs)
        tags = sorted({_mac(derive(s, "join"), "session", text) for s in self.secrets.values()})
        self.store.set(SESSION, f"{text}|{','.join(tags)}")
        self.keys = {r: session_key(s, pairs) for r, s in self.secrets.items()}
        return session_key(self.secret, pairs)

    def wait(self, timeout_s: float, check: Callable[[List[int]], None] = lambda missing: None,
             where: str = "") -> bytes:
        """Until every stage is admitted; `check(missing)` may raise (a local child died). Every few
        seconds a line names the ranks still missing and `where` (the store's host:port). Returns
        the session's message key."""
        deadline = time.monotonic() + timeout_s

        def missing() -> str:
            names = ", ".join(rank_name(r, self.world_size, self.per_rank) for r in self.missing())
            return f"{names} at {where}" if where else names
        with Waiting(missing, timeout_s):
            while True:
                self.poll()
                if not self.missing():
                    return self.session()
                check(self.missing())
                if time.monotonic() > deadline:
                    server = "cloud" if self.per_rank else "edge"
                    raise PeerError(f"{missing()} did not connect to the {server} within {timeout_s:g} s "
                                    f"(pipeline_backend.timeout_s)")
                time.sleep(0.05)


def _hello(raw: bytes) -> Dict[str, Any]:
    """A hello's fields (claims, used only to name the process); {} when it is not one."""
    try:
        hello = json.loads(raw[:1000])
    except ValueError:
        return {}
    return hello if isinstance(hello, dict) else {}
