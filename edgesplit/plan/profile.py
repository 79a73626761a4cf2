"""A host's profiles for a plan, through the cache: `python -m edgesplit.plan.profile [overrides]`
measures this host (the units at each micro-batch size of `plan.chunks`, the codecs of
`plan.compressors` at the boundaries of `plan.fronts` x `plan.backs`) and writes the profile to
`plan.profile=PATH` (else into the cache), for planning with another host's numbers."""
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from edgesplit.backends.partitions import resolve_devices
from edgesplit.errors import UserError
from edgesplit.plan.cache import cache_path, cached_profile, profile_key, write_profile
from edgesplit.plan.inputs import PlanInputs, plan_inputs
from edgesplit.plan.measure import Profile, boundary_tensors, measure_codecs, profile_units, sample_input

log = logging.getLogger("edgesplit")


def host_profile(inputs: PlanInputs, chunks: int) -> Profile:
    """This host's profile at `chunks` micro-batches: the cached one, with whatever the space needs
    that it lacks measured and written back."""
    first = next(iter(inputs.parts.values()))
    spec, plan = first.spec, inputs.plan
    device = resolve_devices(spec.pipeline.devices, spec.model.cloud_stages + 2)[0]
    rows = inputs.rows[chunks]
    key = profile_key(spec, rows, device)
    cached = cached_profile(key, plan.cache_dir)
    units = [u.to(device) for u in first.split.units]
    tensors = boundary_tensors(len(units), [f for f in plan.fronts if f < len(units)],
                               [b for b in plan.backs if b < len(units)])
    ids = {inputs.codec_ids[name]: parts for name, parts in inputs.parts.items()}
    if cached is not None and all(t in cached.codecs.get(c, {}) for c in ids for t in tensors):
        return cached
    x = sample_input(first, rows, device)
    measured, outputs = profile_units(units, x, int(plan.repeats), int(plan.warmup))
    codecs = measure_codecs(ids, outputs, tensors, int(plan.repeats), int(plan.warmup),
                            cached.codecs if cached is not None else None)
    profile = Profile(key, cached.units if cached is not None else measured,
                      x.numel() * x.element_size(), {**(cached.codecs if cached else {}), **codecs},
                      cached.calibrations if cached is not None else {})
    write_profile(profile, cache_path(key, plan.cache_dir))
    return profile


def brought_profiles(inputs: PlanInputs) -> Optional[Dict[int, Profile]]:
    """The profiles of `plan.profile` (another host's) by chunks, or None to measure this host."""
    if inputs.plan.profile is None:
        return None
    path = Path(inputs.plan.profile)
    try:
        by_rows = {int(k): v for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        raise UserError(f"plan.profile={path}: no such file") from None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"plan.profile={path}: not a file of python -m edgesplit.plan.profile "
                        f"({e})") from None
    out = {}
    for chunks, rows in inputs.rows.items():
        if rows not in by_rows:
            raise UserError(f"plan.profile={path}: no profile at a micro-batch of {rows} samples "
                            f"(it holds {sorted(by_rows)}): measure with the same data.batch_size "
                            f"and plan.chunks")
        out[chunks] = read_profile_data(by_rows[rows], path)
    return out


def read_profile_data(data: object, path: Path) -> Profile:
    try:
        return Profile.from_dict(data)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"plan.profile={path}: not a profile ({type(e).__name__}: {e})") from None


def profiles(inputs: PlanInputs) -> Dict[int, Profile]:
    """The plan's profiles by chunks: brought (`plan.profile`) or this host's."""
    return brought_profiles(inputs) or {m: host_profile(inputs, m) for m in inputs.rows}


def main(argv: List[str]) -> int:
    """Measure this host and write its profiles (one per micro-batch size) as one JSON file."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        inputs = plan_inputs([a for a in argv if not a.startswith("plan.profile=")])
        target = next((a.split("=", 1)[1] for a in argv if a.startswith("plan.profile=")), None)
        measured = {inputs.rows[m]: host_profile(inputs, m).to_dict() for m in inputs.rows}
        path = Path(target) if target else cache_path({"host": measured[min(measured)]["key"]},
                                                      inputs.plan.cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(measured, indent=1))
    except UserError as e:
        log.error(f"error: {e}")
        return 1
    except OSError as e:
        log.error(f"error: cannot write the profile: {e}")
        return 1
    log.info(f"profile of this host ({torch.__version__}, {len(measured)} micro-batch size(s)) written to "
             f"{path}; plan with it: python -m edgesplit.plan plan.profile={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
