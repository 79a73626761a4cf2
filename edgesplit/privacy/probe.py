"""The attacks of an honest-but-curious cloud, run beside training on copies of what crosses the
edge link (`privacy.label_leak`, `privacy.input_leak`): per-epoch figures, never a training change."""
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sized, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from edgesplit.boundary.boundary import RAW, Boundary
from edgesplit.codecs import Crossing
from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import eval_mode
from edgesplit.privacy.inversion import GRID_NAME, inversion_scores, train_decoder, write_grid
from edgesplit.privacy.metrics import cosine_leak_auc, distance_correlation, leak_auc, norm_scores
from edgesplit.privacy.schema import PrivacyConfig


class LabelLeak:
    """The gradient the cloud decodes at the back boundary (what crosses cloud <- edge-back) during
    the first `batches` train steps of an epoch, each sample's row matched to its label by its
    dataset index; scored by the norm and cosine attacks at the epoch's end."""

    def __init__(self, boundary: Boundary, batches: int) -> None:
        self.boundary, self.batches = boundary, batches
        self.labels: Dict[int, int] = {}  # this step's: dataset index -> label
        self.rows: List[Tensor] = []
        self.row_labels: List[Tensor] = []
        self.seconds = 0.0

    def _tap(self, pass_: str, grad: Tensor, ids: Optional[Tensor]) -> None:
        if pass_ != "backward":
            return
        tic = time.perf_counter()
        assert ids is not None, "a tapped crossing without its samples' dataset indices"
        self.rows.append(grad.detach().float().flatten(1).cpu())
        self.row_labels.append(torch.tensor([self.labels[int(i)] for i in ids.tolist()]))
        self.seconds += time.perf_counter() - tic

    def watch(self, loader: Any) -> "Watched":
        return Watched(loader, self)

    def listen(self, y: Optional[Tensor], ids: Optional[Tensor]) -> None:
        """The next train step's labels and ids (tapped), or None: the tap is off."""
        if y is None or ids is None:
            self.boundary.tap = None
            return
        self.labels = dict(zip(ids.tolist(), y.tolist()))
        self.boundary.tap = self._tap

    def scores(self) -> Dict[str, float]:
        """The epoch's leak AUCs; the rows are dropped."""
        grads, labels = torch.cat(self.rows), torch.cat(self.row_labels)
        self.rows, self.row_labels = [], []
        return {"label_auc_norm": leak_auc(norm_scores(grads), labels),
                "label_auc_cosine": cosine_leak_auc(grads, labels)}


class Watched:
    """An epoch's training batches, the first `batches` of them tapped (len and dataset as the loader's)."""

    def __init__(self, loader: Any, leak: LabelLeak) -> None:
        self.loader, self.leak = loader, leak

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        try:
            for step, (x, y, ids) in enumerate(self.loader):
                tapped = step < self.leak.batches
                self.leak.listen(y.cpu() if tapped else None, ids if tapped else None)
                yield x, y, ids
        finally:
            self.leak.listen(None, None)


def _stack(dataset: Dataset, indices: Tensor) -> Tensor:
    return torch.stack([dataset[int(i)][0] for i in indices])


class InputLeak:
    """The front activations as the cloud decodes them (the training codec: the edge front in eval
    mode, one encode and decode that leaves the codec's state alone) of a fixed validation subset:
    their distance correlation with the inputs, and a decoder trained on the aux share (the first
    `aux_fraction` of a fixed permutation) to rebuild the `scored` others from them."""

    def __init__(self, front: List[nn.Module], boundary: Boundary, val: Dataset, p: PrivacyConfig,
                 seed: int, run_dir: Path) -> None:
        n = len(cast(Sized, val))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        aux = max(1, min(n - 1, round(p.aux_fraction * n)))
        self.aux_images, self.images = _stack(val, order[:aux]), _stack(val, order[aux:aux + p.scored])
        if len(self.images) < 4:
            raise ConfigError(f"privacy.aux_fraction={p.aux_fraction} leaves {len(self.images)} of the "
                              f"{n} validation images to score (see data.val_size): 4 are needed")
        self.front, self.boundary, self.steps, self.seed = front, boundary, p.decoder_steps, seed
        self.grid = run_dir / GRID_NAME

    def cloud_view(self, images: Tensor) -> Tensor:
        device = next((t.device for u in self.front for t in u.parameters()), torch.device("cpu"))
        b = self.boundary
        codec = RAW.activation if b.warm else b.codecs.activation
        decoder = RAW.activation if b.warm else b.receiver.activation
        with torch.no_grad(), eval_mode(self.front):
            a = nn.Sequential(*self.front)(images.to(device))
            return decoder.decode(codec.encode(a, None, Crossing()), None, Crossing()).float().cpu()

    def scores(self, epoch: int) -> Dict[str, float]:
        seen = self.cloud_view(self.images)
        decoder = train_decoder(self.cloud_view(self.aux_images), self.aux_images, self.steps,
                                self.seed + epoch)
        out, rebuilt = inversion_scores(decoder, seen, self.images)
        out["input_dcor"] = distance_correlation(self.images, seen)
        write_grid(self.grid, self.images, rebuilt, f"epoch {epoch + 1}: originals (top), the cloud's "
                   f"reconstructions (bottom), PSNR {out['inversion_psnr']:.1f} dB")
        return out


class PrivacyProbe:
    """The run's attacks; `figures(epoch)` after each epoch's evaluation gives their results and
    their cost (`seconds`: the epoch's time in them), keyed as summary.json's `privacy`."""

    def __init__(self, label: Optional[LabelLeak], inputs: Optional[InputLeak]) -> None:
        self.label, self.inputs = label, inputs

    def watch(self, loader: Any) -> Any:
        return loader if self.label is None else self.label.watch(loader)

    def figures(self, epoch: int) -> Dict[str, float]:
        tic, out = time.perf_counter(), {}
        with torch.random.fork_rng(devices=[]):  # what the attacks draw is theirs alone
            if self.inputs is not None:
                out.update(self.inputs.scores(epoch))
            if self.label is not None:
                out.update(self.label.scores())
                tic -= self.label.seconds  # and the taps' time within the epoch's steps
                self.label.seconds = 0.0
        out["seconds"] = time.perf_counter() - tic
        return out


def build_probe(p: PrivacyConfig, backend: Any, front: List[nn.Module], val: Dataset, seed: int,
                run_dir: Path) -> Optional[PrivacyProbe]:
    """The attacks `p` asks for (None: privacy=none's, no cost) on the backend's edge-link
    boundaries (its `boundaries`: front, back, in this process) and edge-front units `front`."""
    if not (p.label_leak or p.input_leak):
        return None
    boundaries = getattr(backend, "boundaries", None)
    if boundaries is None:
        raise ConfigError(f"privacy.label_leak / input_leak: the backend {type(backend).__name__} "
                          f"offers no `boundaries` (front, back) to measure at")
    return PrivacyProbe(LabelLeak(boundaries[1], p.batches) if p.label_leak else None,
                        InputLeak(front, boundaries[0], val, p, seed, run_dir) if p.input_leak else None)
