"""The model-inversion attack: a decoder the cloud trains on (activation, input) pairs of an
auxiliary set to rebuild inputs from the activations it receives, and the grid of what it rebuilds."""
import io
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesplit.privacy.metrics import psnr, ssim
from edgesplit.run.rundir import atomic_write

GRID_NAME = "privacy_inversion.png"
BATCH, LR, WIDTH = 32, 1e-3, 32
GRID_IMAGES = 8


class InversionDecoder(nn.Module):
    """Activations [N, C, h, w] (or [N, D]) to images [N, *image_shape]: resized to the image's size,
    then three 3x3 convolutions (a flat activation: one linear layer). Inputs are standardized by
    the auxiliary set's mean and spread (any activation scale trains alike)."""

    def __init__(self, activation_shape: Tuple[int, ...], image_shape: Tuple[int, ...],
                 mean: float, std: float) -> None:
        super().__init__()
        self.image_shape, self.mean, self.std = image_shape, mean, max(std, 1e-8)
        channels = image_shape[0]
        if len(activation_shape) == 3 and len(image_shape) == 3:
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(activation_shape[0], WIDTH, 3, padding=1), nn.ReLU(),
                nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU(), nn.Conv2d(WIDTH, channels, 3, padding=1))
            self.spatial = True
        else:
            numel = int(torch.tensor(activation_shape).prod())
            self.body = nn.Linear(numel, int(torch.tensor(image_shape).prod()))
            self.spatial = False

    def forward(self, a: Tensor) -> Tensor:
        a = (a - self.mean) / self.std
        if self.spatial:
            a = F.interpolate(a, size=self.image_shape[1:], mode="bilinear", align_corners=False)
            return self.body(a)
        return self.body(a.flatten(1)).view(-1, *self.image_shape)


def train_decoder(activations: Tensor, images: Tensor, steps: int, seed: int) -> InversionDecoder:
    """The cloud's decoder, trained by Adam on MSE from (activation, image) pairs of the aux set;
    its initialisation and batches drawn from `seed` alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = InversionDecoder(tuple(activations.shape[1:]), tuple(images.shape[1:]),
                                   float(activations.mean()), float(activations.std()))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=LR)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(len(images), (min(BATCH, len(images)),), generator=g)
            loss = F.mse_loss(decoder(activations[rows]), images[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return decoder.eval()


def inversion_scores(decoder: nn.Module, activations: Tensor,
                     images: Tensor) -> Tuple[Dict[str, float], Tensor]:
    """PSNR and SSIM of the decoder's images of `activations` against `images` (the range: the
    originals' max - min), and those images."""
    with torch.no_grad():
        rebuilt = decoder(activations)
    data_range = float(images.max() - images.min()) or 1.0
    return ({"inversion_psnr": psnr(images, rebuilt, data_range),
             "inversion_ssim": ssim(images, rebuilt, data_range)}, rebuilt)


def write_grid(path: Path, originals: Tensor, rebuilt: Tensor, title: str) -> None:
    """A PNG of the first GRID_IMAGES originals (top row) over their reconstructions (bottom row),
    each shown over the originals' range."""
    from matplotlib.figure import Figure

    n = min(GRID_IMAGES, len(originals))
    low, high = float(originals.min()), float(originals.max())
    fig = Figure(figsize=(1.2 * n, 2.8))
    for row, images in enumerate((originals, rebuilt)):
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            image = ((images[i].float() - low) / max(high - low, 1e-8)).clamp(0, 1)
            ax.imshow(image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy(),
                      cmap=None if image.shape[0] == 3 else "gray")
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write(path, buffer.getvalue())
