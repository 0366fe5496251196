"""Store URLs, parsed once into a frozen value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

from pooled_sessions.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreURL:
    """A store location: ``scheme://host:port/path?query``, or a plain file path."""

    text: str
    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    query: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> StoreURL:
        """Parse a URL or a path; a path (or ``file://``) means the JSON file store."""
        if isinstance(text, os.PathLike):
            text = os.fspath(text)
        if not isinstance(text, str):
            raise ConfigError(f"a store URL must be a str or a path, not {type(text).__name__}")
        if not text.strip():
            raise ConfigError("the store URL is empty")
        if "://" not in text:
            return cls(text=text, scheme="file", path=os.path.abspath(text))
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"bad store URL {redact(text)!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if not scheme:
            raise ConfigError(f"store URL {redact(text)!r} has no scheme")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        return cls(
            text=text,
            scheme=scheme,
            host=unquote(parts.hostname or ""),
            port=port,
            path=unquote(parts.path),
            query=MappingProxyType(query),
        )

    def __str__(self) -> str:
        return redact(self.text)


def redact(text: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.split("@")[-1]
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
