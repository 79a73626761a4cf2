"""Short names for a sweep's jobs: the job number and the keys that vary in the sweep, as
`<num>_<value>,<key>=<value>` (a config group's choice by its option name, a key by its last part),
so job dirs, TensorBoard runs and MLflow runs read at a glance; the full override list stays in
.hydra/overrides.yaml and summary.json."""
import os
from typing import Any, Callable, Collection, Dict, List, Mapping, Sequence, Set

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

RESOLVER = "edgesplit.job_name"  # conf/config.yaml: hydra.sweep.subdir
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys"


def _parsed(lines: Sequence[str]) -> Dict[str, Any]:
    """Override by key (a later one of the same key wins, as Hydra's basic sweeper takes it)."""
    return {o.key_or_group: o for o in OverridesParser.create().parse_overrides(list(lines))}


def _varies(override: Any) -> bool:
    if not override.is_sweep_override():
        return False
    return not override.is_discrete_sweep() or len(list(override.sweep_string_iterator())) > 1


def shared_keys(task: Sequence[str], sweeper_params: Mapping[str, Any]) -> List[str]:
    """The keys that every job of a sweep gets with the same value: the command line's (`task`)
    and the preset's sweep (`hydra.sweeper.params`) overrides that list one value."""
    given = _parsed([f"{k}={v}" for k, v in sweeper_params.items()])
    given.update(_parsed(task))
    return sorted(key for key, override in given.items() if not _varies(override))


def job_name(num: int, overrides: Sequence[str], exclude: Collection[str],
             is_group: Callable[[str], bool]) -> str:
    """`<num>_` then the job's overrides without the `exclude`d keys, sorted: a config group's as
    its option (`quantize4`), a key's as its last part (`lr=0.4`), in full where two share it."""
    kept = [o for key, o in sorted(_parsed(overrides).items()) if key not in exclude]
    tails = [o.key_or_group.rsplit(".", 1)[-1] for o in kept]
    items = []
    for o, tail in zip(kept, tails):
        value = o.get_value_element_as_str()
        key = tail if tails.count(tail) == 1 else o.key_or_group
        items.append(value if is_group(o.key_or_group) else f"{key}={value}")
    return f"{num}_{','.join(items)}".replace(os.sep, "_")  # one dir, whatever a value holds


def _resolve(num: Any, *, _root_: DictConfig) -> str:
    """The resolver: the job's own overrides and its sweep's excluded keys, from its config."""
    hydra = _root_.hydra
    return job_name(int(num), list(hydra.overrides.task), set(hydra.job.config.override_dirname.exclude_keys),
                    lambda key: isinstance(OmegaConf.select(_root_, key), DictConfig))


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve)


# At import: the launching process and a launcher's job processes import this module with the
# callback, before any job's dir is resolved.
register_resolver()


def _quoted(keys: Set[str]) -> str:
    return ",".join(f"'{k}'" for k in sorted(keys))


class ShortJobNames(Callback):
    """conf/config.yaml, hydra.callbacks: a sweep's jobs compose with the keys every job shares
    added to `hydra.job.config.override_dirname.exclude_keys` (Hydra composes each job from the
    sweep's hydra overrides), so their dir names hold the swept keys only."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shared = shared_keys(list(config.hydra.overrides.task), config.hydra.sweeper.get("params") or {})
        keys = {*OmegaConf.select(config, EXCLUDE), *shared}
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append(f"{EXCLUDE}=[{_quoted(keys)}]")
