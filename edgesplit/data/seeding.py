"""The seed of an epoch's data randomness (sample order, augmentation), shared by every loader."""
import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on (seed, epoch) only."""
    state = np.random.SeedSequence([seed & (2**64 - 1), epoch & (2**64 - 1)]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))
