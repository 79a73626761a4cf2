"""The profile cache: one JSON file (data only) per (model, width, input shape, micro-batch, device,
torch version), so re-planning the same model on the same host measures nothing again."""
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from edgesplit.assemble import RunSpec
from edgesplit.errors import write_failed
from edgesplit.plan.measure import Profile


PROFILE_FORMAT = 2  # 2: units' train_peak_bytes measured (profiles of format 1 are measured again)


def profile_key(spec: RunSpec, rows: int, device: torch.device) -> Dict[str, Any]:
    """What a profile's figures depend on: the model (its `_target_` and keys, width among them) and
    classes, the input shape, the micro-batch's rows, the device, torch's version and threads, and
    the precision."""
    return {"format": PROFILE_FORMAT, "model": spec.model.target, "num_classes": spec.facts.num_classes,
            "input_shape": list(spec.facts.input_shape), "micro_batch": rows, "device": str(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": spec.precision.name}


def compressor_id(compressor: Mapping[str, Any]) -> str:
    """A compressor option with its keys: its name and a hash of its resolved config."""
    text = json.dumps(compressor, sort_keys=True, default=str)
    return f"{compressor['name']}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgesplit"


def cache_path(key: Mapping[str, Any], cache_dir: Optional[str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / f"profile-{digest}.json"


def cached_profile(key: Mapping[str, Any], cache_dir: Optional[str]) -> Optional[Profile]:
    """The cached profile of `key`, or None (none yet, or one of another key or unreadable)."""
    path = cache_path(key, cache_dir)
    if not path.exists():
        return None
    try:
        profile = Profile.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged cache entry is measured again
    return profile if profile.key == dict(key) else None


def write_profile(profile: Profile, path: Path) -> Path:
    """Write `profile` to `path` atomically (a rename), making its folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile.to_dict(), indent=1))
        tmp.replace(path)
    except OSError as e:
        raise write_failed(path, e) from None
    return path
