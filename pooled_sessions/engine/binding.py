"""Client binding: reading a request's client, and whether it differs from the session's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pooled_sessions.config import Settings
from pooled_sessions.engine.entry import Entry
from pooled_sessions.model import ClientInfo

CLIENT_CACHE_SIZE = 1024


class ClientBinding:
    """The `client_binding` policy, with a small cache of parsed client dicts."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.client_binding
        self._user_agent = settings.bind_user_agent
        self._clients: dict[tuple[tuple[str, Any], ...], ClientInfo] = {}

    def coerce(self, client: ClientInfo | Mapping[str, Any] | None) -> ClientInfo | None:
        """`ClientInfo.coerce`, remembering recent dicts: parsing an address is costly."""
        if client is None or type(client) is not dict:
            return ClientInfo.coerce(client)
        try:
            key = tuple(client.items())
            cached = self._clients.get(key)
        except TypeError:  # an unhashable value: coerce names the problem
            return ClientInfo.coerce(client)
        if cached is not None:
            return cached
        info = ClientInfo.coerce(client)
        if info is not None:
            if len(self._clients) >= CLIENT_CACHE_SIZE:
                self._clients.clear()
            self._clients[key] = info
        return info

    def differs(self, entry: Entry, info: ClientInfo) -> bool:
        """True when the request's client is not the session's (always False when off)."""
        if self.mode == "off":
            return False
        if info.ip is not None and entry.ip is not None and info.ip != entry.ip:
            return True
        return bool(
            self._user_agent
            and info.user_agent is not None
            and entry.user_agent is not None
            and info.user_agent != entry.user_agent
        )
