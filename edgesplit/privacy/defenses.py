"""The defenses of the `privacy` group, which the edge applies (the cloud needs neither the labels
nor any of them): NoPeek's distance-correlation loss on the edge front's output (Vepakomma et al.,
2020), and on the gradient the edge sends back to the cloud at the back boundary, Gaussian noise
scaled to its norm and the max-norm defense of Li et al. (ICLR 2022).

The unit of the gradient defenses is the micro-batch, the rows the edge sends in one payload
(gpipe and dist send each micro-batch's gradient as its backward makes it; naive's micro-batch is
the batch): with pipeline_backend.chunks=1 it is the batch, as in the papers. Their random draws
are seeded by the crossing (the run's seed, the train step, the micro-batch's first sample id),
as stochastic rounding's, so every backend draws the same numbers and a resumed run continues
bit for bit."""
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from edgesplit.privacy.dcor import distance_correlation


def _flat(g: Tensor) -> Tensor:
    return g.reshape(g.shape[0], -1).float()


def max_norm(g: Tensor, generator: torch.Generator) -> Tensor:
    """Li et al.'s max-norm: each sample's gradient g_j becomes g_j (1 + sigma_j xi_j), xi_j ~ N(0, 1)
    one scalar per sample, sigma_j = sqrt(max_k |g_k|^2 / |g_j|^2 - 1): noise along g_j's own
    direction that makes every sample's expected squared norm the micro-batch's largest (the
    authors' code, label-protection's gradient_masking). A zero gradient stays zero."""
    norm2 = _flat(g).pow(2).sum(1)
    ratio = norm2.max() / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    sigma = torch.where(norm2 > 0, (ratio - 1).clamp_min(0).sqrt(), torch.zeros_like(norm2))
    xi = torch.randn(norm2.shape, generator=generator, device=g.device)
    factor = 1 + sigma * xi
    return (g.float() * factor.view(-1, *[1] * (g.dim() - 1))).to(g.dtype)


def gaussian_noise(g: Tensor, relative: float, generator: torch.Generator) -> Tensor:
    """g plus i.i.d. Gaussian noise of one std for the whole micro-batch, relative * |g| / sqrt(numel):
    the noise's norm is about `relative` times the gradient's. One std for all samples, not one
    per sample: a std proportional to each sample's norm would leave the noisy norms in the true
    ones' order and ratios exactly (what the norm attack reads); a common one pulls them towards
    one value (Li et al.'s isotropic Gaussian baseline is scaled by the batch the same way). In
    high dimension the noise's own norm barely varies, so the order mostly survives: against the
    norm attack max-norm is the defense, the noise mostly against the direction attack."""
    g32 = g.float()
    std = relative * torch.linalg.vector_norm(g32) / math.sqrt(max(g.numel(), 1))
    noise = torch.randn(g.shape, generator=generator, device=g.device)
    return (g32 + std * noise).to(g.dtype)


class GradientDefense:
    """What the back boundary applies to each gradient it sends (Boundary.defense): max-norm first
    (where on), then Gaussian noise (where `grad_noise` > 0), both drawn from one generator seeded
    by the crossing's key."""

    def __init__(self, grad_noise: float, use_max_norm: bool) -> None:
        self.grad_noise, self.use_max_norm = grad_noise, use_max_norm

    def __call__(self, g: Tensor, key: int) -> Tensor:
        generator = torch.Generator(device=g.device).manual_seed(key)
        if self.use_max_norm:
            g = max_norm(g, generator)
        if self.grad_noise > 0:
            g = gaussian_noise(g, self.grad_noise, generator)
        return g

    def __repr__(self) -> str:
        return f"GradientDefense(grad_noise={self.grad_noise:g}, max_norm={self.use_max_norm})"


class _NoPeekTap(torch.autograd.Function):
    """Identity on the front's output z; its backward adds the gradient of the NoPeek term
    factor * dcor(x, z) to the one that came back from the cloud. The term depends on z and the
    input x alone, so its gradient enters the graph at z and reaches the edge front's parameters
    only: the cloud's and the edge back's gradients of a step are those without it."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, x: Tensor, factor: float) -> Tensor:
        ctx.save_for_backward(z, x)
        ctx.factor = factor
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        z, x = ctx.saved_tensors
        with torch.enable_grad(), torch.autocast(z.device.type, enabled=False):
            leaf = z.detach().float().requires_grad_(True)
            (term,) = torch.autograd.grad(distance_correlation(x.detach(), leaf), leaf)
        return grad + (ctx.factor * term).to(grad.dtype), None, None


class NoPeekFront(nn.Module):
    """The edge front partition with NoPeek's loss term: weight x dcor(input, output) per
    micro-batch, weighted by its share of the batch as its cross-entropy is (chunks=1: the batch's
    distance correlation). The backend calls `begin_step` with the batch's rows and fp16's loss
    scale before each train step. The term is not part of the reported loss (train/loss stays
    the task's cross-entropy)."""

    def __init__(self, inner: nn.Module, weight: float) -> None:
        super().__init__()
        self.inner, self.weight = inner, weight
        self.batch_rows, self.loss_scale = 0, 1.0

    def begin_step(self, batch_rows: int, loss_scale: float = 1.0) -> None:
        self.batch_rows, self.loss_scale = batch_rows, loss_scale

    def forward(self, x: Tensor) -> Tensor:
        z = self.inner(x)
        if not (self.training and torch.is_grad_enabled()):
            return z
        if self.batch_rows < 1:
            raise RuntimeError("NoPeekFront: a train step without begin_step (the batch's rows)")
        factor = self.weight * self.loss_scale * x.shape[0] / self.batch_rows
        return _NoPeekTap.apply(z, x, factor)

    def extra_repr(self) -> str:
        return f"nopeek_weight={self.weight:g}"


@dataclass(frozen=True)
class Defenses:
    """The run's defenses (`privacy.nopeek_weight`, `grad_noise`, `max_norm`), data only: all off
    by default, and then nothing in a step changes."""
    nopeek_weight: float = 0.0
    grad_noise: float = 0.0
    max_norm: bool = False

    @staticmethod
    def of(privacy: Optional[DictConfig]) -> "Defenses":
        """From the `privacy` config (None, as in a run saved before the group existed: none)."""
        if privacy is None:
            return Defenses()
        return Defenses(float(privacy.nopeek_weight), float(privacy.grad_noise), bool(privacy.max_norm))

    def gradient(self) -> Optional[GradientDefense]:
        """The back boundary's defense of the gradient the edge sends (None: none)."""
        if self.grad_noise > 0 or self.max_norm:
            return GradientDefense(self.grad_noise, self.max_norm)
        return None

    def front(self, partition: nn.Module) -> Optional[NoPeekFront]:
        """The edge front partition with NoPeek's term (None where nopeek_weight is 0)."""
        return NoPeekFront(partition, self.nopeek_weight) if self.nopeek_weight > 0 else None
