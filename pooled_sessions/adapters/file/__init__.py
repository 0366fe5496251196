"""The JSON file store: one atomic document, read and written by the sync and asyncio twins."""

from __future__ import annotations

from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.file.store_async import AioFileStore

__all__ = ["AioFileStore", "JsonFileStore"]
