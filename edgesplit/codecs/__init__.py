"""Codecs of the compression boundaries: tensor -> one flat uint8 payload (header included)."""
from .base import Codec, Crossing, NonFiniteError
from .entropy import Entropy
from .identity import Identity
from .quantize import Quantize
from .randtopk import RandTopK
from .topk import TopK
from .topk_quantize import TopKQuantize

__all__ = ["Codec", "Crossing", "NonFiniteError", "Entropy", "Identity", "Quantize", "RandTopK",
           "TopK", "TopKQuantize"]
