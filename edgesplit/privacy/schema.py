"""The `privacy` config group's schema: which leakage the run measures and which defenses it applies."""
from dataclasses import dataclass


@dataclass
class PrivacyConfig:
    """`privacy=none`: nothing measured, nothing changed, no cost."""
    name: str = "none"
    label_leak: bool = False  # norm and cosine attacks on the gradient the cloud receives (leak AUC)
    input_leak: bool = False  # distance correlation and a model-inversion decoder on front activations
    batches: int = 4  # batches each attack is measured on, per epoch
    aux_fraction: float = 0.5  # input_leak: share of the validation set the cloud's decoder trains on
    scored: int = 128  # input_leak: validation images scored (beside the aux share), at most the rest
    decoder_steps: int = 300  # input_leak: the cloud's inversion decoder's Adam steps, each epoch
    nopeek_weight: float = 0.0  # defense: distance-correlation loss on the edge front's output
    grad_noise: float = 0.0  # defense: Gaussian noise on the gradient the edge sends back, x its norm
    max_norm: bool = False  # defense: the max-norm label-leak defense on that gradient
