"""Store URLs, parsed once into a frozen value; credentials redacted for display."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pooled_sessions.errors import ConfigError
from pooled_sessions.redaction import Secrets, redact, scrub, secrets_of

KNOWN_SCHEMES = frozenset({"file", "aiofile", "memory", "redis", "rediss", "unix", "redis+cluster"})
"""The built-in stores' schemes: a string starting ``scheme:`` without ``//`` is refused."""
FILE_SCHEMES = frozenset({"file", "aiofile"})
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class StoreURL:
    """A store location: ``scheme://host:port/path?query``, or a plain file path.

    ``text`` is the URL as given, credentials included: only the code that builds a
    client reads it. Everything shown (``str()``, ``repr()``, `display`) is redacted.
    """

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
            _refuse_malformed(text)
            return cls(text=text, scheme="file", path=os.path.abspath(text))
        parts, port = _split(text)
        scheme = parts.scheme.lower()
        if not scheme:
            raise ConfigError(f"store URL {redact(text)!r} has no scheme")
        url = cls(
            text=text,
            scheme=scheme,
            host=unquote(parts.hostname or ""),
            port=port,
            path=unquote(parts.path),
            query=MappingProxyType(dict(parse_qsl(parts.query, keep_blank_values=True))),
        )
        if scheme in FILE_SCHEMES:
            _refuse_file_host(url, parts.netloc)
        elif "@" in parts.path and scheme != "memory":
            raise ConfigError(
                f"bad store URL {redact(text)!r}: an '@' after the host is ambiguous (a "
                "password holding '@' or '/', or a socket path holding '@', must be "
                "percent-encoded: %40, %2F)"
            )
        return url

    @property
    def display(self) -> str:
        """The URL as it may be shown: in messages, logs, stats and the command's output."""
        return redact(self.text)

    @property
    def secrets(self) -> Secrets:
        """The credentials the URL carries, to take out of the client library's messages."""
        return secrets_of(self.text)

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"StoreURL({self.display!r})"


def _split(text: str) -> tuple[SplitResult, int | None]:
    """``urlsplit`` and the port, as a `ConfigError` that echoes no credential."""
    shown = redact(text)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigError(f"bad store URL {shown!r}: {scrub(str(exc), secrets_of(text))}") from None
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"bad store URL {shown!r}: the port is not a number from 0 to 65535 (a password "
            "holding '/', '?', '#' or '@' must be percent-encoded)"
        ) from None
    if "#" in text:
        raise ConfigError(
            f"bad store URL {shown!r}: a '#' starts a fragment, which a store URL never has "
            "(a password or path holding '#' must be percent-encoded: %23)"
        )
    return parts, port


def _refuse_malformed(text: str) -> None:
    """A string that starts like a URL of a known store (``redis:/host``) is not a path."""
    match = _SCHEME_PREFIX.match(text)
    if match is None or match.group(1).lower() not in KNOWN_SCHEMES:
        return
    scheme = match.group(1).lower()
    raise ConfigError(
        f"store URL {redact(text)!r} is malformed: a {scheme} URL starts with {scheme}:// "
        f"(a file whose name starts with {scheme}: can be given as ./{redact(text)})"
    )


def _refuse_file_host(url: StoreURL, netloc: str) -> None:
    """``file://sessions.json`` puts the name in the host part: the path is lost."""
    if netloc in ("", "localhost"):
        return
    raise ConfigError(
        f"store URL {url.display!r} names a host ({redact('x://' + netloc)[4:]!r}); "
        f"a {url.scheme}:// URL takes an absolute path: {url.scheme}:///abs/path/sessions.json "
        "(three slashes), or give a plain path such as sessions.json"
    )


__all__ = ["FILE_SCHEMES", "KNOWN_SCHEMES", "StoreURL", "redact"]
