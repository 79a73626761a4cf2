"""Distance correlation (Székely, Rizzo and Bakirov, 2007) between two batches, differentiable: the
statistic NoPeek minimises between the edge front's input and its output."""
import torch
from torch import Tensor

_TINY = 1e-12  # keeps the division and sqrt's gradient finite where the statistic is 0


def _centered_distances(x: Tensor) -> Tensor:
    """The double-centred matrix of Euclidean distances between the rows of `x` (n, d). cdist
    never forms the (n, n, d) differences, and its gradient is 0 where a distance is 0 (the
    diagonal, duplicate rows) where sqrt's would be infinite."""
    d = torch.cdist(x, x)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """The sample distance correlation of `x` and `y` over the batch dimension (dim 0; the other
    dimensions flattened into features): a 0-d fp32 tensor in [0, 1], 0 for independent samples
    (as n grows), 1 where y is x up to a shift, scale and rotation. Where either batch is
    constant (its distance variance is 0) it is 0. Differentiable in both arguments."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"distance_correlation: {x.shape[0]} rows of x, {y.shape[0]} of y")
    a = _centered_distances(x.reshape(x.shape[0], -1).float())
    b = _centered_distances(y.reshape(y.shape[0], -1).float())
    dcov2_xy, dvar2_x, dvar2_y = (a * b).mean(), (a * a).mean(), (b * b).mean()
    # clamped before sqrt, not after: a constant batch's gradient is 0, not 0 x inf = NaN
    ratio = dcov2_xy / (dvar2_x * dvar2_y).clamp_min(_TINY ** 2).sqrt()
    defined = (dvar2_x > 0) & (dvar2_y > 0)
    return torch.where(defined, ratio.clamp_min(_TINY).sqrt(), torch.zeros_like(ratio))
