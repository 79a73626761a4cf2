"""Generated images in CIFAR-10's on-disk format (torchvision's pickled batches), written once per run."""
import json
import math
import pickle
from pathlib import Path
from typing import List

import numpy as np

FOLDER = "cifar-10-batches-py"  # torchvision's CIFAR10.base_folder
MARKER = ".edgesplit-generated"  # what was generated here: reused by a later call with the same sizes
TRAIN_FILES = 5


def _write_batch(path: Path, images: np.ndarray, labels: List[int]) -> None:
    # The real files are Python 2 pickles that torchvision reads with encoding="latin1": str keys,
    # uint8 rows of 3072 (each CHW), a list of int labels.
    entry = {"batch_label": path.name, "labels": labels, "data": images,
             "filenames": [f"{path.name}_{i}.png" for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, train_images: int = 50_000, test_images: int = 10_000, seed: int = 0) -> Path:
    """data_batch_1..5 (train_images in all), test_batch and batches.meta under root/FOLDER, as
    CIFAR-10 ships them, of uniform random pixels and labels; left as they are when root already
    holds this generation. Not the real files: the md5 check must be off (`+data.verify=false`)."""
    folder = root / FOLDER
    want = {"train": train_images, "test": test_images, "seed": seed}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    per_file = math.ceil(train_images / TRAIN_FILES)
    for b in range(TRAIN_FILES):
        n = max(0, min(per_file, train_images - b * per_file))
        _write_batch(folder / f"data_batch_{b + 1}", rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     rng.integers(0, 10, n).tolist())
    _write_batch(folder / "test_batch", rng.integers(0, 256, (test_images, 3072), dtype=np.uint8),
                 rng.integers(0, 10, test_images).tolist())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"],
                     "num_cases_per_batch": per_file, "num_vis": 3072}, f, protocol=2)
    marker.write_text(json.dumps(want))  # last: a generation cut short is written again
    return folder
