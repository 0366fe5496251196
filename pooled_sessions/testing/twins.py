"""A blocking store and its asyncio twin offer the same methods, each of its own kind."""

from __future__ import annotations

import inspect
from typing import Any


def public_methods(cls: type) -> dict[str, Any]:
    """The public callables of a class, by name (attributes set per instance aside)."""
    found = {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}
    return {name: value for name, value in found.items() if callable(value)}


def _kind(function: Any) -> str:
    """How a method is called: plain, coroutine, generator or a (sync or async) context."""
    wrapped = getattr(function, "__wrapped__", None)
    if wrapped is not None and inspect.isgeneratorfunction(wrapped):
        return "context manager"
    if wrapped is not None and inspect.isasyncgenfunction(wrapped):
        return "async context manager"
    if inspect.iscoroutinefunction(function):
        return "coroutine"
    if inspect.isasyncgenfunction(function):
        return "async generator"
    if inspect.isgeneratorfunction(function):
        return "generator"
    return "plain"


TWIN_KINDS = {
    "plain": {"coroutine"},
    "generator": {"async generator"},
    "context manager": {"async context manager"},
}
"""The kinds an asyncio twin's method may take, by the kind of the blocking one."""
ITERATORS = {"Iterator", "Iterable", "Generator"}
"""Return annotations of a plain blocking method whose twin may be an async generator."""


def _returns_iterator(function: Any) -> bool:
    """True if ``function`` is annotated to return an iterator (``scan``)."""
    annotation = inspect.signature(function).return_annotation
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.split("[")[0].rsplit(".", 1)[-1] in ITERATORS


def assert_twins(blocking: type, asynchronous: type) -> None:
    """Assert both classes have the same public methods, and each asyncio one is awaited
    (a coroutine function), iterated with ``async for`` or entered with ``async with``
    where the blocking one is called, iterated or entered."""
    sync_methods, async_methods = public_methods(blocking), public_methods(asynchronous)
    only_sync = sorted(set(sync_methods) - set(async_methods))
    only_async = sorted(set(async_methods) - set(sync_methods))
    pair = f"{blocking.__name__} and {asynchronous.__name__}"
    assert not only_sync and not only_async, f"{pair}: {only_sync} vs {only_async}"
    for name, method in sync_methods.items():
        sync_kind, async_kind = _kind(method), _kind(async_methods[name])
        allowed = TWIN_KINDS.get(sync_kind, set())
        if sync_kind == "plain" and _returns_iterator(method):
            allowed = allowed | TWIN_KINDS["generator"]
        assert async_kind in allowed, f"{pair}: {name} is a {sync_kind} and a {async_kind}"
