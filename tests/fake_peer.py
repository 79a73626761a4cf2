"""A genuine dist process turned attacker (it knows the secret): its n-th message of a kind carries
other bytes (a pickle) where the receiver expects data (test_trust_payloads, test_trust_cloud)."""
import os
import pickle
from typing import Any, Callable, List, Tuple

import torch
from torch import Tensor

from edgesplit.backends.remote import transport
from edgesplit.backends.remote.protocol import Header


class Exploit:
    """A pickle that would create `path` if anything unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def evil_pickle(marker: str) -> bytes:
    return pickle.dumps(Exploit(marker))


def poison_sends(kind: str, nth: int, payload: bytes,
                 patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """The `nth` message of `kind` (a Kind name) this process sends carries `payload` instead;
    `patch` is setattr or a test's monkeypatch.setattr."""
    real = transport.Transport.send
    sent_kinds: List[str] = []

    def send(self: transport.Transport, dst: int, header: Header, data: Tensor) -> Any:
        sent_kinds.append(header.kind.name)
        if header.kind.name == kind and sent_kinds.count(kind) == nth:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return real(self, dst, header, data)
    patch(transport.Transport, "send", send)
