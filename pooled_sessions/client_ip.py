"""The client's address behind reverse proxies, from the peer address and forwarding headers.

Forwarding headers are believed only when the peer (the host that opened the connection)
is a configured trusted proxy, or, in hop-count mode, when the application sits behind a
known number of proxies. The chain is read from the right (the entry the nearest proxy
added); the first address not belonging to a trusted proxy is the client. Anything that
does not parse — obfuscated identifiers (``_hidden``), ``unknown``, garbage — ends the walk
with ``None``: it never becomes an address. Standard library only.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal

from pooled_sessions.errors import ConfigError

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Header = Literal["forwarded", "x-forwarded-for", "x-real-ip"]
HEADERS: tuple[Header, ...] = ("forwarded", "x-forwarded-for", "x-real-ip")
MAX_HEADER_CHARS = 8192
MAX_HOPS = 32
_MAX_TOKEN = 64  # "[" + a full IPv4-mapped IPv6 address + "]:65535" is 54 characters
_OBFUSCATED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def parse_address(text: object) -> Address | None:
    """An address from one token: ``IPv4``, ``IPv6``, ``[IPv6]``, with an optional ``:port``.

    IPv4-mapped IPv6 comes back as IPv4. Returns None for anything else: ``unknown``,
    obfuscated identifiers, zone ids, bad ports, non-ASCII or oversized text.
    """
    return _parsed(text) if isinstance(text, str) else None


@functools.lru_cache(maxsize=4096)  # every request parses its peer: most peers come back
def _parsed(text: str) -> Address | None:
    text = text.strip(" \t")
    if not text or len(text) > _MAX_TOKEN or not text.isascii() or not text.isprintable():
        return None
    want: type[Address] | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _port_ok(rest[1:]))):
            return None
        want = IPv6Address
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _port_ok(port):
            return None
        want = IPv4Address
    else:
        host = text
    if "%" in host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if want is not None and not isinstance(address, want):
        return None
    return _unmapped(address)


def _port_ok(port: str) -> bool:
    if port.isdigit():
        return len(port) <= 5 and int(port) <= 65535
    return _obfuscated(port)


def _obfuscated(token: str) -> bool:
    return len(token) > 1 and token[0] == "_" and set(token) <= _OBFUSCATED_CHARS


def _unmapped(address: Address) -> Address:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(value: object) -> Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if isinstance(value, IPv4Address | IPv6Address):
        return ipaddress.ip_network(_unmapped(value))
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ConfigError(f"trusted proxy must be an address or network, not {kind}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"trusted proxy {value[:64]!r} is not an IP address or network") from None


class ClientIPResolver:
    """Derive the client address of a request, believing only trusted proxies.

    ``trusted_proxies``: addresses and networks (``"10.0.0.0/8"``, ``"2001:db8::/32"``) of
    your proxies; or ``trusted_hops``: the number of proxies in front of the application
    (the peer is the last of them). ``header``: the one forwarding header your proxies set;
    any other is ignored, since a header a proxy passes through untouched is the client's
    to forge.
    """

    def __init__(
        self,
        trusted_proxies: Iterable[str | Address | Network] = (),
        *,
        trusted_hops: int | None = None,
        header: Header = "x-forwarded-for",
    ) -> None:
        if isinstance(trusted_proxies, str | bytes):
            raise ConfigError("trusted_proxies must be a list of addresses or networks")
        self.networks = tuple(_network(value) for value in trusted_proxies)
        if trusted_hops is not None:
            if (
                isinstance(trusted_hops, bool)
                or not isinstance(trusted_hops, int)
                or not 0 <= trusted_hops <= MAX_HOPS
            ):
                raise ConfigError(
                    f"trusted_hops must be an int in 0..{MAX_HOPS}, got {trusted_hops!r}"
                )
            if self.networks:
                raise ConfigError("give trusted_proxies or trusted_hops, not both")
        if header not in HEADERS:
            raise ConfigError(f"header must be one of {HEADERS}, got {header!r}")
        self.hops = trusted_hops
        self.header = header

    def resolve(self, peer: object, headers: object = None) -> str | None:
        """The client address for a request from ``peer`` (``"host"``, ``"host:port"`` or a
        ``(host, port)`` tuple) with ``headers`` (a mapping or ``(name, value)`` pairs, str
        or bytes); None when it cannot be known."""
        address = self.resolve_address(peer, headers)
        return None if address is None else str(address)

    def resolve_address(self, peer: object, headers: object = None) -> Address | None:
        """`resolve`, as an `ipaddress` object."""
        if isinstance(peer, tuple | list) and peer:
            peer = peer[0]
        peer_address = parse_address(peer)
        if peer_address is None or not self._believes(peer_address):
            return peer_address
        raw = _header_text(headers, self.header)
        if raw is None:
            return peer_address
        chain, complete = _chain(self.header, raw)
        if not chain:
            return None
        if self.hops is not None:
            if len(chain) >= self.hops:
                return chain[-self.hops]
            return chain[0] if complete else None
        for hop in reversed(chain):
            if hop is None or not self.trusts(hop):
                return hop
        return chain[0] if complete else None

    def from_wsgi(self, environ: Mapping[str, Any]) -> str | None:
        """`resolve` for a WSGI environ (``REMOTE_ADDR`` and ``HTTP_*`` keys)."""
        key = "HTTP_" + self.header.upper().replace("-", "_")
        value = environ.get(key)
        headers = None if value is None else {self.header: value}
        return self.resolve(environ.get("REMOTE_ADDR"), headers)

    def from_asgi(self, scope: Mapping[str, Any]) -> str | None:
        """`resolve` for an ASGI HTTP scope (``client`` and raw ``headers``)."""
        return self.resolve(scope.get("client"), scope.get("headers") or ())

    def trusts(self, address: Address) -> bool:
        """True when ``address`` is one of the trusted proxies."""
        return any(address in network for network in self.networks)

    def _believes(self, peer: Address) -> bool:
        if self.hops is not None:
            return self.hops > 0
        return self.trusts(peer)


def client_ip(
    peer: object,
    headers: object = None,
    *,
    trusted_proxies: Iterable[str | Address | Network] = (),
    trusted_hops: int | None = None,
    header: Header = "x-forwarded-for",
) -> str | None:
    """One-off `ClientIPResolver.resolve`; build a resolver once when you call it per request."""
    resolver = ClientIPResolver(trusted_proxies, trusted_hops=trusted_hops, header=header)
    return resolver.resolve(peer, headers)


# -- header parsing --------------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return "\x00"  # not a header value: parses as garbage, never as an address


def _header_text(headers: object, name: str) -> str | None:
    """Every value of header ``name`` (case-insensitive), joined with commas; None if absent."""
    if headers is None:
        return None
    if isinstance(headers, Mapping):
        items: Iterable[Any] = headers.items()
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        items = headers
    else:
        return "\x00"
    values: list[str] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            continue
        key, value = item
        if _text(key).strip().lower() != name:
            continue
        if isinstance(value, list | tuple):
            values.extend(_text(v) for v in value)
        else:
            values.append(_text(value))
    return ",".join(values) if values else None


def _chain(header: str, raw: str) -> tuple[list[Address | None], bool]:
    """The hops a header lists, left to right, and whether none were cut off."""
    complete = len(raw) <= MAX_HEADER_CHARS
    if not complete:
        raw = raw[-MAX_HEADER_CHARS:].partition(",")[2]  # drop the cut first entry
    tokens: list[str | None]
    if header == "forwarded":
        tokens = [_forwarded_for(element) for element in _split(raw, ",")]
    elif header == "x-forwarded-for":
        tokens = list(raw.split(","))
    else:
        tokens = [raw] if "," not in raw else ["\x00"]
    if len(tokens) > MAX_HOPS:
        tokens, complete = tokens[-MAX_HOPS:], False
    return [parse_address(token) for token in tokens], complete


def _forwarded_for(element: str) -> str | None:
    """The ``for=`` node of one RFC 7239 element, unquoted; None if absent, repeated or bad."""
    node = None
    for pair in _split(element, ";"):
        name, equals, value = pair.partition("=")
        if not equals:
            if pair.strip():
                return None
            continue
        if name.strip().lower() == "for":
            if node is not None:
                return None
            node = _unquote(value.strip())
            if node is None:
                return None
    return node


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings (RFC 7230 quoted-string and quoted-pair)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str | None:
    if not value.startswith('"'):
        return value if '"' not in value else None
    if len(value) < 2 or not value.endswith('"'):
        return None
    out: list[str] = []
    inner, escaped = value[1:-1], False
    for char in inner:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            out.append(char)
    return None if escaped else "".join(out)
