"""Leakage metrics as pure functions: leak AUC of the norm and cosine label attacks, distance
correlation, PSNR and SSIM (definitions and references in docs/privacy.md)."""
import math
from typing import List

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor

PSNR_CAP_DB = 100.0  # a perfect reconstruction (MSE 0) reads as this, not inf: strict JSON has no inf
SSIM_K1, SSIM_K2, SSIM_WINDOW, SSIM_SIGMA = 0.01, 0.03, 11, 1.5  # Wang et al. 2004


def leak_auc(scores: Tensor, labels: Tensor) -> float:
    """How well a per-sample score separates the labels: the ROC AUC, taken in the better of its two
    orientations (max(AUC, 1 - AUC): the attacker needs to know only which side is which), 0.5 = no
    leak, 1 = every label recovered. `scores` [N] (one score for every class) or [N, K] (column k
    scores class k); the one-vs-rest AUC of each class present, averaged (macro; of two classes
    with one score both are the same figure). NaN when fewer than two classes are present."""
    labels = labels.detach().cpu().long()
    scores = scores.detach().cpu().double()
    classes = sorted(int(c) for c in labels.unique())
    if len(classes) < 2:
        return math.nan
    aucs: List[float] = []
    for c in classes:
        column = scores if scores.dim() == 1 else scores[:, c]
        auc = float(roc_auc_score((labels == c).numpy(), column.numpy()))
        aucs.append(max(auc, 1.0 - auc))
    return sum(aucs) / len(aucs)


def norm_scores(grads: Tensor) -> Tensor:
    """The norm attack (Li et al., ICLR 2022): each sample's gradient L2 norm is its score."""
    return torch.linalg.vector_norm(grads.detach().flatten(1).double(), dim=1)


def cosine_scores(grads: Tensor, references: Tensor) -> Tensor:
    """The cosine (direction) attack (Li et al., ICLR 2022): [N, K] cosine similarity of each
    sample's gradient with a reference gradient of each class (one sample whose label the attacker
    knows, `references` [K, ...])."""
    g = F.normalize(grads.detach().flatten(1).double(), dim=1)
    r = F.normalize(references.detach().flatten(1).double(), dim=1)
    return g @ r.T


def cosine_leak_auc(grads: Tensor, labels: Tensor) -> float:
    """leak_auc of the cosine attack, each class's reference the first sample of that class; a
    class absent from `labels` scores 0 against everything (NaN with fewer than two classes)."""
    labels = labels.detach().cpu().long()
    flat = grads.detach().flatten(1).cpu()
    width = int(labels.max()) + 1
    references = torch.zeros(width, flat.shape[1], dtype=flat.dtype)
    for c in labels.unique():
        references[int(c)] = flat[int((labels == c).nonzero()[0])]
    return leak_auc(cosine_scores(flat, references), labels)


def _u_centered_distances(x: Tensor) -> Tensor:
    """The U-centred distance matrix of N >= 4 samples (Székely & Rizzo 2014), its diagonal 0."""
    n, d = x.shape[0], torch.cdist(x, x)
    rows, cols = d.sum(0, keepdim=True), d.sum(1, keepdim=True)
    a = d - rows / (n - 2) - cols / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    return a.fill_diagonal_(0.0)


def distance_correlation(x: Tensor, y: Tensor) -> float:
    """The bias-corrected distance correlation of two paired sets of N >= 4 samples (any shapes,
    rows flattened): sqrt of the bias-corrected dCor² (Székely & Rizzo 2014, the U-statistic of
    Székely, Rizzo & Bakirov 2007's dCor), clipped at 0. Near 0 for independent sets at any N (the
    plain V-statistic reads ~0.3 for 256 independent samples), 1 where one set is the other under a
    similarity map (scale, rotation, shift: distances kept up to a factor); 0 where either set is
    constant."""
    if x.shape[0] < 4:
        raise ValueError(f"distance correlation needs at least 4 samples, got {x.shape[0]}")
    a = _u_centered_distances(x.detach().flatten(1).double())
    b = _u_centered_distances(y.detach().flatten(1).double())
    cov, var_x, var_y = (a * b).sum(), (a * a).sum(), (b * b).sum()
    if var_x <= 0 or var_y <= 0:
        return 0.0
    return math.sqrt(max(float(cov / torch.sqrt(var_x * var_y)), 0.0))


def psnr(original: Tensor, reconstructed: Tensor, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range² / MSE) over the whole set, capped at
    PSNR_CAP_DB (identical images)."""
    mse = float(F.mse_loss(reconstructed.detach().double(), original.detach().double()))
    if mse <= 0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(data_range ** 2 / mse), PSNR_CAP_DB)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(original: Tensor, reconstructed: Tensor, data_range: float) -> float:
    """Mean structural similarity (Wang et al. 2004) of [N, C, H, W] images, each channel apart: an
    11x11 Gaussian window of sigma 1.5 over the valid positions (no padding), K1 0.01, K2 0.03. An
    image smaller than 11 pixels gets the largest window that fits, sigma scaled alike. 1 for
    identical images."""
    x, y = original.detach().double(), reconstructed.detach().double()
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    channels = x.shape[1]
    w = _gaussian_window(size, SSIM_SIGMA * size / SSIM_WINDOW).expand(channels, 1, size, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=channels)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(index.mean())
