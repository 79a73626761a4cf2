"""The leakage metrics on constructed cases with known answers (edgesplit.privacy.metrics)."""
import math
from typing import Callable

import pytest
import torch

from edgesplit.privacy.metrics import (PSNR_CAP_DB, cosine_leak_auc, distance_correlation, leak_auc,
                                       norm_scores, psnr, ssim)

G = torch.Generator().manual_seed(0)
BINARY = torch.randint(0, 2, (64,), generator=G)
THREE = torch.arange(3).repeat_interleave(20)  # balanced: 20 samples of each of 3 classes
DIRECTIONS = torch.randn(3, 8, generator=G)
SCALES = torch.rand(64, 1, generator=G) + 0.5


@pytest.mark.parametrize("case, auc", [
    # a gradient whose norm is the label: every label recovered, whichever class has the larger norm
    (lambda: leak_auc(norm_scores(BINARY.float()[:, None] * torch.ones(64, 4) + 1), BINARY), 1.0),
    (lambda: leak_auc(norm_scores((2 - BINARY.float())[:, None] * torch.ones(64, 4)), BINARY), 1.0),
    (lambda: leak_auc(torch.ones(64), BINARY), 0.5),  # one score for all: nothing learned
    # 3 classes, score = label: 0 and 2 separate fully, 1 sits between them (AUC 1/2): macro 5/6
    (lambda: leak_auc(THREE.double(), THREE), 5 / 6),
    # a direction per class at any scale: the cosine attack recovers every label, the norm attack not
    (lambda: cosine_leak_auc(DIRECTIONS[THREE] * SCALES[:60], THREE), 1.0),
    (lambda: cosine_leak_auc((2.0 * BINARY - 1)[:, None] * torch.ones(64, 4) * SCALES, BINARY), 1.0),
    (lambda: leak_auc(norm_scores((2.0 * BINARY - 1)[:, None] * torch.ones(64, 4)), BINARY), 0.5),
])
def test_leak_auc_known_answers(case: Callable[[], float], auc: float) -> None:
    assert case() == pytest.approx(auc, abs=1e-9)


def test_leak_auc_of_one_class_is_nan() -> None:
    assert math.isnan(leak_auc(torch.rand(8), torch.zeros(8, dtype=torch.long)))


X = torch.randn(256, 6, generator=G)
ROTATION = torch.linalg.qr(torch.randn(6, 6, generator=G))[0]


@pytest.mark.parametrize("y, low, high", [
    (torch.randn(256, 9, generator=G), 0.0, 0.15),  # independent: near 0
    (X, 1.0 - 1e-9, 1.0 + 1e-9),  # identical: 1
    (3 * X @ ROTATION + 2, 1.0 - 1e-9, 1.0 + 1e-9),  # a similarity map (scale, rotation, shift): 1
    (X ** 3, 0.5, 0.95),  # dependent, not a similarity map: between
    (torch.ones(256, 2), 0.0, 0.0),  # constant: 0
])
def test_distance_correlation_known_answers(y: torch.Tensor, low: float, high: float) -> None:
    assert low <= distance_correlation(X, y) <= high


IMAGES = torch.rand(3, 3, 32, 32, generator=G)


def test_psnr_and_ssim_known_answers() -> None:
    assert psnr(IMAGES, IMAGES, 1.0) == PSNR_CAP_DB  # identical: capped, not inf
    assert psnr(IMAGES, IMAGES + 0.1, 1.0) == pytest.approx(20.0)  # MSE 0.01 of range 1: 20 dB
    assert ssim(IMAGES, IMAGES, 1.0) == pytest.approx(1.0)
    small = IMAGES[:, :1, :8, :8]  # smaller than the 11-pixel window: the largest one that fits
    assert ssim(small, small, 1.0) == pytest.approx(1.0)
    assert ssim(IMAGES, torch.rand(3, 3, 32, 32, generator=G), 1.0) < 0.1  # unrelated noise
    # torchmetrics' documented example (rand 3x3x256x256 against 0.75 x itself) reads 0.9219, as
    # does any size of it (48 here: a fraction of the time)
    p = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(42))
    assert ssim(p * 0.75, p, 1.0) == pytest.approx(0.9219, abs=1e-3)
