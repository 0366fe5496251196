"""Conversion of environment-variable text to typed setting values."""

from __future__ import annotations

from .errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_value(key: str, kind: str, text: str) -> bool | int | float | str | None:
    """Convert ``text`` of variable ``key`` to ``kind``: bool, int, float, str, or none|KIND."""
    lowered = text.strip().lower()
    if kind.startswith("none|"):
        if lowered in ("", "none"):
            return None
        kind = kind[5:]
    if kind == "bool":
        if lowered not in _TRUE + _FALSE:
            raise ConfigError(f"{key}={text!r} is not a boolean")
        return lowered in _TRUE
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a number") from None
    return text
