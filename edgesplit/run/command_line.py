"""train.py's overrides checked before Hydra composes them: a misspelled key or option is one line
with the closest valid names (Hydra's own message is several lines and advises adding the key with
`+`), and a config group given twice is refused (Hydra silently takes the last)."""
import contextlib
import difflib
import io
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra._internal.utils import get_args_parser  # the parser hydra.main uses
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import OmegaConf

from edgesplit.errors import ConfigError

_COULD_NOT_OVERRIDE = "Could not override '"  # Hydra's message for a key the config does not have


def closest(name: str, candidates: Sequence[str], n: int = 3) -> List[str]:
    """Up to n of `candidates` that look most like `name` (difflib's ratio), best first."""
    return difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=n, cutoff=0.6)


def _did_you_mean(found: Sequence[str], everything: Sequence[str], what: str) -> str:
    if found:
        return f"did you mean {' or '.join(found)}?"
    return f"{what}: {', '.join(everything)}" if everything else "nothing to choose from"


def _values(override: Override) -> List[str]:
    """The option names an override of a group chooses (each of a sweep's); none for deletions."""
    if override.is_delete() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []  # a glob picks among the options that exist
    if override.is_sweep_override():
        return list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    value = override.value()
    return [value] if isinstance(value, str) else []


def _is_group(loader: Any, name: str) -> bool:
    parent, _, leaf = name.rpartition("/")
    return leaf in loader.list_groups(parent)


def _check_groups(loader: Any, groups: Sequence[Override]) -> None:
    given = Counter(o.get_key_element().lstrip("+") for o in groups)
    for key, times in given.items():
        if times > 1:
            lines = [str(o.input_line) for o in groups if o.get_key_element().lstrip("+") == key]
            raise ConfigError(f"{key} is given {times} times ({' '.join(lines)}): give it once (with -m, "
                              f"sweep its options as {key}=a,b)")
    for o in groups:
        options = loader.get_group_options(o.key_or_group)
        for value in _values(o):
            if value not in options and value != "null":
                raise ConfigError(f"{o.key_or_group}={value} is not an option of {o.key_or_group}: "
                                  f"{_did_you_mean(closest(value, options), options, 'the options are')}")


def _probe(override: Override) -> Optional[str]:
    """The override as one job would see it: a sweep's first value (an interval or glob sweep: none)."""
    if not override.is_sweep_override():
        return str(override.input_line)
    if not override.is_discrete_sweep() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return None
    return f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")


def _unknown_key(key: str, config: Dict[str, Any]) -> ConfigError:
    """`key` is not in `config` (a plain container): the closest of its parent's keys, or where the
    parent is no key either, the closest full keys."""
    keys = list(_keys(config))
    parent, _, leaf = key.rpartition(".")
    if parent in keys:
        names = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
        found = [f"{parent}.{k}" for k in closest(leaf, names)]
        hint = _did_you_mean(found, names, f"the keys of {parent} are")
    else:
        hint = _did_you_mean(closest(key, keys), [k for k in keys if "." not in k], "the top-level keys are")
    return ConfigError(f"{key} is not a key of the config: {hint}")


def check_overrides(overrides: Sequence[str], config_dir: Path, config_name: str = "config") -> None:
    """Raise a one-line ConfigError for a misspelled key or option or a group given twice; anything
    else (syntax, a wrong type, a value out of range) is left to Hydra and edgesplit's own checks."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra says what is wrong with the syntax
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [o for o in parsed if not o.is_delete() and _is_group(loader, o.key_or_group)]
        _check_groups(loader, groups)
        if all(o in groups or o.is_add() or o.is_delete() for o in parsed):
            return  # no key to look up: the composition is Hydra's alone
        pairs = [(o, p) for o in parsed if (p := _probe(o)) is not None]
        probes = [p for _, p in pairs]
        try:
            compose(config_name, overrides=probes, return_hydra_config=True)
            return
        except Exception as e:  # Hydra raises several types; all but a missing key are its to report
            message = str(e) if isinstance(e, ConfigCompositionException) else ""
        if not message.startswith(_COULD_NOT_OVERRIDE):
            return
        key = message[len(_COULD_NOT_OVERRIDE):].split("'", 1)[0]
        rest = [p for o, p in pairs if o.key_or_group != key]
        try:
            config = compose(config_name, overrides=rest, return_hydra_config=True)
        except Exception:
            return
    raise _unknown_key(key, OmegaConf.to_container(config, resolve=False))  # type: ignore[arg-type]


def check_argv(argv: Sequence[str], config_dir: Path) -> None:
    """check_overrides on a train.py command line (Hydra's own argument parser finds the overrides);
    a command line that names another config is left to Hydra."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's complaints: Hydra repeats them
            args, _ = get_args_parser().parse_known_args(list(argv))
    except SystemExit:
        return
    if args.config_path or args.config_name or args.config_dir or args.shell_completion:
        return
    check_overrides(args.overrides, config_dir)
