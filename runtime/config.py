"""One way to build a settings dataclass (MelSpec, DeformConfig, ...) from a stored mapping.

Bundles, checkpoints and manifests store these as JSON objects; `config_from_mapping` reads one
back and names, in one message, the fields that are missing, unknown or of the wrong type, with
where the mapping came from. Standard library only: every layer may use it.
"""
from __future__ import annotations

import dataclasses
import numbers
import typing
from typing import Any, Mapping, TypeVar

from embedtalk_sdk.runtime.errors import EmbedTalkError

__all__ = ["ConfigError", "config_from_mapping"]

T = TypeVar("T")


class ConfigError(EmbedTalkError, ValueError):
    """A mapping that does not describe a settings dataclass; the message names the fields and the source."""


def _convert(value: Any, kind: Any) -> Any:
    """`value` as the field's declared type (bool, int, float, str); ValueError if it is not one.
    Lossless only: 2.5 is not an int, True is not a number. Other declared types pass as they are."""
    if kind not in (bool, int, float, str):
        return value
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (kind is bool and isinstance(value, bool)) or (kind is str and isinstance(value, str)):
        return value
    if kind is float and number:
        return float(value)
    if kind is int and number and (isinstance(value, numbers.Integral) or float(value).is_integer()):
        return int(value)
    raise ValueError(f"{value!r} is not {kind.__name__}")


def config_from_mapping(cls: type[T], data: Mapping[str, Any], source: str | None = None, *,
                        defaults: Mapping[str, Any] | None = None, ignore_unknown: bool = False) -> T:
    """Build dataclass `cls` from the fields in `data`, each converted to its declared type.

    Args:
        cls: the dataclass; its `__post_init__` still checks the values' ranges.
        data: the stored mapping (a manifest block, a checkpoint's JSON).
        source: where `data` came from, for the message (default: "<cls>.from_dict").
        defaults: values for fields `data` may lack (an older writer's meaning, or `asdict(cls())`);
            any other absent field is an error.
        ignore_unknown: keys that are not fields are skipped (the fields share a block with other
            keys) instead of refused (the mapping is the dataclass's own: an unknown key is a newer
            writer's setting that this reader would silently drop).

    Raises:
        ConfigError (a ValueError) naming every missing, unknown and ill-typed field, and `source`;
        also for a value that `cls` itself refuses.
    """
    where, defaults = source or f"{cls.__name__}.from_dict", defaults or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected an object of {cls.__name__} fields, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    problems = []
    missing = [n for n in names if n not in data and n not in defaults]
    if missing:
        problems.append(f"missing fields {missing}")
    unknown = [] if ignore_unknown else [k for k in data if k not in names]
    if unknown:
        problems.append(f"unknown fields {unknown}")
    values = {}
    for n in names:
        try:
            values[n] = _convert(data[n], hints[n]) if n in data else defaults.get(n)
        except ValueError as e:
            problems.append(f"field {n!r}: {e}")
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)} ({cls.__name__} fields: {', '.join(names)})")
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
