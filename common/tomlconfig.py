"""TOML configuration files as both daemons read them: a table of known keys, each with a
converter that checks its value, and errors that name the file, the key and the value given.

Pure: `values_from_string` turns text into the fields of a configuration; reading the file is
`read_config_text`'s only business. Each daemon's `config` module lists its keys and builds its
own frozen configuration from the fields.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what it must be."""


#: Checks one value: (the key as shown in errors, the value) -> the field's value.
Converter = Callable[[str, object], Any]
#: TOML key (dotted) -> (the configuration's field, or None for a key only checked, converter).
Keys = Mapping[str, tuple[str | None, Converter]]


def integer(low: int, high: int, unit: str = "an integer") -> Converter:
    """An integer from `low` to `high`; `unit` says what it is in the error."""

    def convert(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: must be {unit} from {low} to {high} (got {value!r})")
        return value

    return convert


def number(low: float, high: float) -> Converter:
    """An integer or float from `low` to `high`, as a float."""

    def convert(key: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"{key}: must be a number from {low:g} to {high:g} (got {value!r})")
        return float(value)

    return convert


port = integer(0, 65535, "a port number")


def boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false (got {value!r})")
    return value


def path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty path string (got {value!r})")
    return Path(value)


def host(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a host name or address (got {value!r})")
    return value


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def values_from_string(
    text: str, source: str, keys: Keys, required: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The configuration's field values in TOML `text`, each checked by its key's converter.
    An unknown key, a missing `required` one (key -> an example for the error) or a value its
    converter refuses is a ConfigError naming `source` and the key."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    flat = flatten(table)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in keys:
            raise ConfigError(f"{source}: unknown key {key} (known: {', '.join(sorted(keys))})")
        field_name, convert = keys[key]
        converted = convert(f"{source}: {key}", value)
        if field_name is not None:
            values[field_name] = converted
    for key, example in (required or {}).items():
        if key not in flat:
            raise ConfigError(f"{source}: {key}: required (e.g. {example})")
    return values


def read_config_text(path: Path) -> str:
    """The text of the configuration file at `path`; ConfigError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text: {error.reason}") from error
