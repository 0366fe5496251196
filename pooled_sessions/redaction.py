"""Credentials kept out of everything shown: store URLs in messages, logs, stats and reprs.

`redact` is the one function that decides what of a URL is a secret: the password of its
user information (``redis://:pw@host``, ``redis://user:pw@host``; user information with
no colon is hidden whole, as some write the password there) and the value of any query
option named like a password (``?password=``, ``?ssl_password=``, a misspelling of
them, or any name holding ``pass``, ``pwd``, ``secret``, ``token``, ``auth``, ``cred``).
A URL whose ``@`` is past its host part (a password with an unescaped ``/``, ``?`` or
``#``), or that lacks its ``//`` (``redis:/:pw@host``), is hidden up to that ``@``.
`scrub` takes the secrets `secrets_of` found in a URL out of any other text, such as an
error message of the Redis client.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"
MIN_SCRUBBED = 4
"""Secrets shorter than this are not searched for in free text: they would match anywhere
(a URL shows them masked all the same)."""
LOCAL_SCHEMES = frozenset({"file", "aiofile", "memory"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "auth", "cred")
_SECRET_NAMES = ("password", "passwd", "ssl_password")
_PIECES = re.compile(r"[:/?#]")


class Secrets(tuple[str, ...]):
    """Credentials to take out of texts; a repr (a debugger, a dump of ``vars()``) hides them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Secrets({len(self)} hidden)"

    __str__ = __repr__


def redact(text: str) -> str:
    """``text`` (a store URL or a plain path) with every credential in it replaced by ***."""
    return _parsed(text)[0]


def secrets_of(text: str) -> Secrets:
    """The credentials ``text`` carries, as written and percent-decoded (for `scrub`)."""
    return _parsed(text)[1]


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` with each secret (of at least `MIN_SCRUBBED` characters) replaced."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_SCRUBBED:
            message = message.replace(secret, MASK)
    return message


def is_secret_option(name: str) -> bool:
    """True for a query option whose value is a credential (or looks meant as one)."""
    lowered = unquote_plus(name).lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return bool(difflib.get_close_matches(lowered, _SECRET_NAMES, n=1, cutoff=0.75))


def _parsed(text: str) -> tuple[str, Secrets]:
    """What `redact` shows and what `secrets_of` finds, in one pass."""
    scheme, sep, rest = text.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return _malformed(text)
    found: list[str] = []
    head, rest = _userinfo(scheme.lower(), rest, found)
    return f"{scheme}://{head}{_masked_query(rest, found)}", _collected(found)


def _malformed(text: str) -> tuple[str, Secrets]:
    """A path, or a URL missing its ``//`` (``redis:/:pw@host``): hidden up to its last
    ``@``, and its query's credentials masked."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        return text, Secrets()
    found: list[str] = []
    head, at = "", rest.rfind("@")
    if at >= 0:
        hidden, head, rest = rest[:at], f"{MASK}@", rest[at + 1 :]
        found.extend([hidden, *_PIECES.split(hidden)])
    return f"{scheme}:{head}{_masked_query(rest, found)}", _collected(found)


def _masked_query(rest: str, found: list[str]) -> str:
    """``rest`` (a URL past its user information) with its credential options masked."""
    before, question, query = rest.partition("?")
    return f"{before}{question}{_query(query, found)}" if question else rest


def _collected(found: list[str]) -> Secrets:
    """The secrets found, as written and percent-decoded, once each."""
    forms = found + [unquote_plus(s) for s in found] + [unquote(s) for s in found]
    return Secrets(dict.fromkeys(s for s in forms if s))


def _userinfo(scheme: str, rest: str, found: list[str]) -> tuple[str, str]:
    """The shown user information (with its ``@``) and what follows it."""
    at = rest.rfind("@")
    if at < 0:
        return "", rest
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if at < cut:
        user, colon, password = rest[:at].partition(":")
        found.append(password if colon else user)
        return (f"{user}:{MASK}@" if colon else f"{MASK}@"), rest[at + 1 :]
    question = rest.find("?")
    in_query = 0 <= question < at
    if scheme in LOCAL_SCHEMES or (in_query and not _broken_host(rest[:cut])):
        return "", rest  # an ``@`` in a path or an option's value, not a credential
    hidden = rest[:at]
    found.extend([hidden, *_PIECES.split(hidden)])
    return f"{MASK}@", rest[at + 1 :]


def _broken_host(authority: str) -> bool:
    """True when ``host[:port]`` is not one: the URL's real user information ran past it."""
    if not authority:
        return False
    if authority.startswith("["):  # an IPv6 address
        _, bracket, tail = authority.partition("]")
        return not bracket or not (tail == "" or (tail[:1] == ":" and tail[1:].isdigit()))
    host, colon, port = authority.partition(":")
    return not host or (bool(colon) and not port.isdigit())


def _query(query: str, found: list[str]) -> str:
    """The query with the value of every credential option masked."""
    shown = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        if equals and is_secret_option(name):
            found.append(value)
            piece = f"{name}={MASK}"
        shown.append(piece)
    return "&".join(shown)
