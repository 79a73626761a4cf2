"""The order of a multi-client epoch as plain data: which clients a round samples, how many steps
each takes, and in what order the steps run (no torch, no process: dist can replay it)."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

_SAMPLER = 0x5A3  # the sampler's own random stream of the run's seed


@dataclass(frozen=True)
class Turn:
    """One train step: of `client`, in round `round` of the epoch (0-based)."""
    round: int
    client: int


def sampled(count: int, fraction: float, seed: int, epoch: int, round_: int) -> List[int]:
    """The clients of a round, ascending: all of them at fraction 1, else max(1, round(fraction
    x count)) drawn from (seed, epoch, round) alone (a resumed run draws the same)."""
    m = max(1, int(round(fraction * count)))
    if m >= count:
        return list(range(count))
    rng = np.random.default_rng(np.random.SeedSequence([seed & (2**64 - 1), _SAMPLER, epoch, round_]))
    return sorted(int(k) for k in rng.choice(count, m, replace=False))


def round_steps(batches: int, rounds: int, local_steps: Optional[int]) -> List[int]:
    """A client's steps in each round of an epoch: `local_steps` each, or (null) its epoch's
    `batches` shared out over the rounds as evenly as they go."""
    if local_steps is not None:
        return [local_steps] * rounds
    return [len(part) for part in np.array_split(np.arange(batches), rounds)]


def epoch_turns(algorithm: str, batches: Sequence[int], rounds: int, local_steps: Optional[int],
                fraction: float, seed: int, epoch: int) -> List[Turn]:
    """Every train step of an epoch in the order they run. `sequential`: the sampled clients one
    after the other, each all its steps of the round (one edge model handed on); `sflv1`/`sflv2`:
    the clients work in parallel and the cloud serves their batches in turn (round robin in client
    order), a client that has no step left dropping out of the turn."""
    turns: List[Turn] = []
    for r in range(rounds):
        left: Dict[int, int] = {k: round_steps(batches[k], rounds, local_steps)[r]
                                for k in sampled(len(batches), fraction, seed, epoch, r)}
        if algorithm == "sequential":
            turns += [Turn(r, k) for k, n in left.items() for _ in range(n)]
            continue
        while any(left.values()):
            for k in left:
                if left[k]:
                    turns.append(Turn(r, k))
                    left[k] -= 1
    return turns


def round_ends(turns: Sequence[Turn]) -> List[int]:
    """The positions in `turns` after which a round ends (its averaging runs there)."""
    return [i for i, t in enumerate(turns) if i + 1 == len(turns) or turns[i + 1].round != t.round]
