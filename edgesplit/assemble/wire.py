"""Frozen dataclasses of data (RunSpec and its parts) to JSON-ready values and back, by their
field types: nested dataclasses, tuples, optionals; anything else must be JSON already."""
import dataclasses
import typing
from typing import Any, Dict, Type, TypeVar

T = TypeVar("T")


def to_data(obj: Any) -> Dict[str, Any]:
    """The dataclass `obj` as a dict of JSON-ready values (tuples become lists)."""
    return dataclasses.asdict(obj)


def _value(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return from_data(kind, value)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v) for v in value)
        return tuple(_value(a, v) for a, v in zip(args, value))
    if origin is typing.Union:
        # the member that fits what came: a list is the tuple, a dict the dataclass
        for arg in args:
            if (isinstance(value, list) and typing.get_origin(arg) is tuple) or \
                    (isinstance(value, dict) and dataclasses.is_dataclass(arg)):
                return _value(arg, value)
    return value


def from_data(cls: Type[T], data: Dict[str, Any]) -> T:
    """The dataclass `cls` from to_data's dict; ValueError naming what is missing or unknown."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    unknown = set(data) - {f.name for f in fields}
    missing = {f.name for f in fields if f.default is dataclasses.MISSING} - set(data)
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _value(hints[name], value) for name, value in data.items()})
