"""What a store can hold and give back unchanged: the call-time checks of session data.

Every store writes UTF-8 JSON. Text with a lone surrogate has no UTF-8 form, a non-str
object key or a tuple would come back changed, and nesting past what readers parse would
make the stored data unreadable; each is refused at the call that brings it, with a
`SessionDataError` naming where it is, so no write that is bound to fail is ever queued.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

from pooled_sessions.errors import SessionDataError

MAX_NESTING = 32
"""Deepest nesting of lists and objects in one attribute value: far inside what every
reader of a store parses (a file puts four levels above it; Python's parser stops near
1,000, Redis's cjson at 1,000, many JSON libraries at 100 or 128)."""
SCALARS = frozenset((str, int, float, bool, type(None)))
"""Types whose values need no walk (JSON encoding itself refuses NaN and infinities)."""
_STR = frozenset((str,))
Path = tuple[str | int, ...]
_TOO_DEEP = f"nests lists and objects deeper than {MAX_NESTING} levels"
_NOT_UTF8 = "holds a lone surrogate, which is not Unicode text: it cannot be stored as UTF-8"


def is_utf8(text: str) -> bool:
    """True if ``text`` encodes to UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(text: str, what: str) -> str:
    """Return ``text`` if it encodes to UTF-8, else raise SessionDataError naming ``what``."""
    if text.isascii() or is_utf8(text):
        return text
    raise SessionDataError(f"{what} {text[:40]!r} {_NOT_UTF8}")


def check_value(name: str, value: object) -> None:
    """Refuse an attribute value JSON would give back changed, or nested too deep to read.

    Object keys must be str at every depth (JSON would turn ``1`` into ``"1"``), tuples are
    refused (they would come back as lists), and lists and objects nest at most
    `MAX_NESTING` levels.
    """
    try:
        _walk(value, 0)
    except _Refused as refused:
        raise SessionDataError(f"attribute {name!r}{_at(refused.path)} {refused}") from None


def unstorable(name: str, value: object, error: Exception | None = None) -> SessionDataError:
    """The error for a value the JSON encoder refused (``error``) or whose text is not UTF-8,
    naming the item at fault when it can be found."""
    found = _first_unstorable(value, ())
    if found is None:
        reason = "" if error is None else f": {error}"
        return SessionDataError(f"attribute {name!r} cannot be stored as JSON{reason}")
    path, item = found
    where = f"attribute {name!r}{_at(path)}"
    if isinstance(item, float):
        return SessionDataError(f"{where} is {item!r}, which JSON cannot hold (no NaN or infinity)")
    if isinstance(item, int):
        limit = sys.get_int_max_str_digits()
        return SessionDataError(f"{where} is an integer of more than {limit} digits: too long")
    return SessionDataError(f"{where} {_NOT_UTF8}")


class _Refused(Exception):
    """Why a value cannot be stored; ``path`` is filled in on the way out of the walk."""

    path: Path = ()


def _walk(value: object, depth: int) -> None:
    # A container is first checked whole in C (the types of its items against a set);
    # its items are looked at one by one only when it holds containers.
    if isinstance(value, dict):
        if depth >= MAX_NESTING:
            raise _Refused(_TOO_DEEP)
        if not _STR.issuperset(map(type, value)):
            _check_keys(value)
        if not SCALARS.issuperset(map(type, value.values())):
            _walk_items(value.items(), depth)
    elif isinstance(value, list):
        if depth >= MAX_NESTING:
            raise _Refused(_TOO_DEEP)
        if not SCALARS.issuperset(map(type, value)):
            _walk_items(enumerate(value), depth)
    elif isinstance(value, tuple):
        raise _Refused("is a tuple: JSON would give it back as a list (store a list)")
    elif not isinstance(value, str | int | float):
        raise _Refused(f"is of type {type(value).__name__!r}, which JSON cannot hold")


def _walk_items(items: Iterable[tuple[str | int, object]], depth: int) -> None:
    flat_ok = depth + 1 < MAX_NESTING
    for step, item in items:
        if type(item) in SCALARS:
            continue
        if (  # the common case, a flat object (a cart item), without a call
            type(item) is dict
            and flat_ok
            and _STR.issuperset(map(type, item))
            and SCALARS.issuperset(map(type, item.values()))
        ):
            continue
        try:
            _walk(item, depth + 1)
        except _Refused as refused:
            refused.path = (step, *refused.path)
            raise


def _check_keys(value: dict[object, object]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise _Refused(
                f"has the key {key!r}: keys of objects must be str (JSON would give it back as "
                "a string)"
            )


def _first_unstorable(value: object, path: Path) -> tuple[Path, object] | None:
    """The first text that is not UTF-8 (a key counts), float that is not finite, or
    integer too long for Python to write as digits."""
    if isinstance(value, str):
        return None if is_utf8(value) else (path, value)
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, int):
        return None if _writable_int(value) else (path, value)
    items: Iterable[tuple[str | int, object]] = ()
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and not is_utf8(key):
                return (*path, key), key
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for step, item in items:
        found = _first_unstorable(item, (*path, step))
        if found is not None:
            return found
    return None


def _writable_int(value: int) -> bool:
    try:
        str(value)
    except ValueError:
        return False
    return True


def _at(path: Path) -> str:
    """`` at ['cart'][0]``: where in an attribute value, cut short for a message."""
    if not path:
        return ""
    text = "".join(f"[{step!r}]" for step in path)
    return " at " + (text if len(text) <= 120 else text[:117] + "...")
