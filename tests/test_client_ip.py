"""The client IP helper: trusted proxies, header formats, and hostile input."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooled_sessions.client_ip import (
    MAX_HOPS,
    ClientIPResolver,
    Header,
    client_ip,
    parse_address,
)
from pooled_sessions.errors import ConfigError

TRUSTED = ["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"]
PROXY = "10.0.0.1"
CLIENT = "198.51.100.7"
XFF = "X-Forwarded-For"

# (peer, headers, header setting, expected client address)
CASES: list[tuple[Any, Any, Header, str | None]] = [
    # untrusted peers: their headers are ignored whatever they say
    ("203.0.113.9", None, "x-forwarded-for", "203.0.113.9"),
    ("203.0.113.9", {XFF: "1.1.1.1"}, "x-forwarded-for", "203.0.113.9"),
    ("203.0.113.9", {XFF: "10.0.0.2"}, "x-forwarded-for", "203.0.113.9"),
    ("203.0.113.9", {"X-Real-IP": "1.1.1.1"}, "x-real-ip", "203.0.113.9"),
    ("203.0.113.9", {"Forwarded": "for=1.1.1.1"}, "forwarded", "203.0.113.9"),
    ("203.0.113.9:5555", {XFF: "1.1.1.1"}, "x-forwarded-for", "203.0.113.9"),
    ("192.0.2.2", {XFF: "1.1.1.1"}, "x-forwarded-for", "192.0.2.2"),
    # trusted peers, well-formed chains
    (PROXY, None, "x-forwarded-for", PROXY),
    (PROXY, {}, "x-forwarded-for", PROXY),
    (PROXY, {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    ("192.0.2.1", {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: f"{CLIENT}, 10.0.0.5"}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: f"6.6.6.6, {CLIENT}"}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: f"10.9.9.9, {CLIENT}, 10.0.0.5, 10.0.0.4"}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: "10.0.0.3, 10.0.0.2"}, "x-forwarded-for", "10.0.0.3"),
    (PROXY, {XFF: f"{CLIENT}:4711"}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: "2001:db8::1"}, "x-forwarded-for", "2001:db8::1"),
    (PROXY, {XFF: "[2001:db8::1]:443"}, "x-forwarded-for", "2001:db8::1"),
    (PROXY, {XFF: "2001:0DB8:0000:0000:0000:0000:0000:0001"}, "x-forwarded-for", "2001:db8::1"),
    (PROXY, {XFF: f"::ffff:{CLIENT}"}, "x-forwarded-for", CLIENT),
    (PROXY, {XFF: f"{CLIENT}, ::ffff:10.0.0.9"}, "x-forwarded-for", CLIENT),
    ("::ffff:10.0.0.1", {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    ("10.0.0.1:5555", {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    (("10.0.0.1", 5555), {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    (["10.0.0.1", 5555], {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    ("[2001:db8:ffff::1]:80", {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    ("2001:db8:ffff::1", {XFF: CLIENT}, "x-forwarded-for", CLIENT),
    (PROXY, {"x-forwarded-for": CLIENT}, "x-forwarded-for", CLIENT),
    (PROXY, {"X-FORWARDED-FOR": CLIENT}, "x-forwarded-for", CLIENT),
    (
        PROXY,
        [(XFF, "6.6.6.6"), ("x-forwarded-for", f"{CLIENT}, 10.0.0.4")],
        "x-forwarded-for",
        CLIENT,
    ),
    (PROXY, [(b"x-forwarded-for", CLIENT.encode())], "x-forwarded-for", CLIENT),
    (PROXY, {XFF: ["6.6.6.6", CLIENT]}, "x-forwarded-for", CLIENT),
    # obfuscated, unknown and garbage entries never become an address
    (PROXY, {XFF: "unknown"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}, unknown"}, "x-forwarded-for", None),
    (PROXY, {XFF: "_hidden"}, "x-forwarded-for", None),
    (PROXY, {XFF: "not-an-ip"}, "x-forwarded-for", None),
    (PROXY, {XFF: ""}, "x-forwarded-for", None),
    (PROXY, {XFF: " , , "}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT},"}, "x-forwarded-for", None),
    (PROXY, {XFF: "1.2.3.4.5"}, "x-forwarded-for", None),
    (PROXY, {XFF: "999.1.1.1"}, "x-forwarded-for", None),
    (PROXY, {XFF: "01.2.3.4"}, "x-forwarded-for", None),
    (PROXY, {XFF: "0x7f.0.0.1"}, "x-forwarded-for", None),
    (PROXY, {XFF: "fe80::1%eth0"}, "x-forwarded-for", None),
    (PROXY, {XFF: "fe80::1%<script>"}, "x-forwarded-for", None),
    (PROXY, {XFF: "١٩٨.٥١.١٠٠.٧"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}:99999"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}:"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}:80:80"}, "x-forwarded-for", None),
    (PROXY, {XFF: "[2001:db8::1"}, "x-forwarded-for", None),
    (PROXY, {XFF: "[2001:db8::1]x"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"[{CLIENT}]:80"}, "x-forwarded-for", None),
    (PROXY, {XFF: "2001:db8::1:80:x"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}\x00"}, "x-forwarded-for", None),
    (PROXY, {XFF: f"{CLIENT}\r\nSet-Cookie: a=b"}, "x-forwarded-for", None),
    (PROXY, {XFF: '"198.51.100.7"'}, "x-forwarded-for", None),
    (PROXY, {XFF: "1" * 70_000}, "x-forwarded-for", None),
    (PROXY, {XFF: "a," * 60_000 + CLIENT}, "x-forwarded-for", CLIENT),
    (
        PROXY,
        {XFF: CLIENT + ", " + ", ".join(["10.0.0.2"] * (MAX_HOPS + 5))},
        "x-forwarded-for",
        None,
    ),
    (PROXY, [(b"x-forwarded-for", "198.51.100.\xb7".encode("latin-1"))], "x-forwarded-for", None),
    (PROXY, {XFF: 12345}, "x-forwarded-for", None),
    (PROXY, 42, "x-forwarded-for", None),
    # Forwarded (RFC 7239)
    (PROXY, {"Forwarded": f"for={CLIENT};proto=https"}, "forwarded", CLIENT),
    (PROXY, {"Forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "forwarded", "2001:db8:cafe::17"),
    (PROXY, {"Forwarded": f"for={CLIENT}, for=10.0.0.5"}, "forwarded", CLIENT),
    (PROXY, {"Forwarded": f'For="{CLIENT}:8080";by=10.0.0.1'}, "forwarded", CLIENT),
    (PROXY, {"Forwarded": f"by=10.0.0.1;for={CLIENT};host=example.com"}, "forwarded", CLIENT),
    (PROXY, {"Forwarded": 'for="[2001:db8::1]:_p0rt"'}, "forwarded", "2001:db8::1"),
    (PROXY, {"Forwarded": 'for="\\198.51.100.7"'}, "forwarded", CLIENT),
    (PROXY, {"Forwarded": 'for="_gazonk"'}, "forwarded", None),
    (PROXY, {"Forwarded": "for=unknown"}, "forwarded", None),
    (PROXY, {"Forwarded": f'for="{CLIENT}, 6.6.6.6"'}, "forwarded", None),
    (PROXY, {"Forwarded": "proto=https"}, "forwarded", None),
    (PROXY, {"Forwarded": f"for=1.1.1.1;for={CLIENT}"}, "forwarded", None),
    (PROXY, {"Forwarded": f'for="{CLIENT}'}, "forwarded", None),
    (PROXY, {"Forwarded": f'for={CLIENT}"'}, "forwarded", None),
    (PROXY, {"Forwarded": f'for="{CLIENT}\\"'}, "forwarded", None),
    (PROXY, {"Forwarded": f"for={CLIENT};garbage"}, "forwarded", None),
    (PROXY, {"Forwarded": ";;;,,,"}, "forwarded", None),
    # only the configured header counts
    (PROXY, {"Forwarded": "for=6.6.6.6"}, "x-forwarded-for", PROXY),
    (PROXY, {XFF: "6.6.6.6"}, "forwarded", PROXY),
    (PROXY, {"X-Real-IP": "6.6.6.6", XFF: CLIENT}, "x-forwarded-for", CLIENT),
    (PROXY, {"X-Real-IP": CLIENT}, "x-real-ip", CLIENT),
    (PROXY, {"X-Real-IP": f"{CLIENT}, 6.6.6.6"}, "x-real-ip", None),
    # the peer itself must parse
    (None, {XFF: CLIENT}, "x-forwarded-for", None),
    ("garbage", {XFF: CLIENT}, "x-forwarded-for", None),
    ("", None, "x-forwarded-for", None),
    (12345, None, "x-forwarded-for", None),
    ((), None, "x-forwarded-for", None),
]


@pytest.mark.parametrize(("peer", "headers", "header", "expected"), CASES)
def test_trusted_networks(peer: Any, headers: Any, header: Header, expected: str | None) -> None:
    assert ClientIPResolver(TRUSTED, header=header).resolve(peer, headers) == expected


@pytest.mark.parametrize(
    ("hops", "xff", "expected"),
    [
        (1, f"6.6.6.6, {CLIENT}", CLIENT),
        (2, f"6.6.6.6, {CLIENT}, 203.0.113.5", CLIENT),
        (2, CLIENT, CLIENT),
        (2, f"{CLIENT}, unknown", CLIENT),
        (1, f"{CLIENT}, unknown", None),
        (1, "garbage", None),
        (3, ", ".join(["10.0.0.2"] * (MAX_HOPS + 5)), "10.0.0.2"),
        (0, CLIENT, "203.0.113.9"),
    ],
)
def test_trusted_hops(hops: int, xff: str, expected: str | None) -> None:
    """In hop mode any peer is the last proxy; the client is ``hops`` entries from the right."""
    resolver = ClientIPResolver(trusted_hops=hops)
    assert resolver.resolve("203.0.113.9", {XFF: xff}) == expected


def test_hops_mode_without_header_gives_the_peer() -> None:
    assert ClientIPResolver(trusted_hops=1).resolve("203.0.113.9", {}) == "203.0.113.9"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "not an IP address or network"),
        ({"trusted_proxies": ["proxy.internal"]}, "not an IP address or network"),
        ({"trusted_proxies": "10.0.0.1"}, "list of addresses"),
        ({"trusted_proxies": [10]}, "not int"),
        ({"trusted_proxies": ["10.0.0.1"], "trusted_hops": 1}, "not both"),
        ({"trusted_hops": -1}, "trusted_hops"),
        ({"trusted_hops": True}, "trusted_hops"),
        ({"trusted_hops": MAX_HOPS + 1}, "trusted_hops"),
        ({"header": "x-client-ip"}, "header must be one of"),
    ],
)
def test_bad_configuration_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientIPResolver(**kwargs)


def test_networks_accept_address_objects() -> None:
    resolver = ClientIPResolver(
        [ipaddress.ip_address("::ffff:10.0.0.1"), ipaddress.ip_network("2001:db8::/32")]
    )
    assert resolver.trusts(ipaddress.IPv4Address("10.0.0.1"))
    assert resolver.trusts(ipaddress.IPv6Address("2001:db8::5"))
    assert not resolver.trusts(ipaddress.IPv4Address("10.0.0.2"))


def test_wsgi_and_asgi_shapes() -> None:
    resolver = ClientIPResolver(TRUSTED)
    environ = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": f"6.6.6.6, {CLIENT}"}
    assert resolver.from_wsgi(environ) == CLIENT
    assert (
        resolver.from_wsgi({"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": CLIENT})
        == "203.0.113.9"
    )
    scope = {"client": (PROXY, 41000), "headers": [(b"x-forwarded-for", CLIENT.encode())]}
    assert resolver.from_asgi(scope) == CLIENT
    assert resolver.from_asgi({"client": None, "headers": []}) is None


def test_one_off_function() -> None:
    assert client_ip(PROXY, {XFF: CLIENT}, trusted_proxies=["10.0.0.0/8"]) == CLIENT
    assert client_ip(PROXY, {XFF: CLIENT}) == PROXY  # nothing trusted by default


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1\t", "192.0.2.1"),
        ("[::1]", "::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::ffff:192.0.2.1]:1", "192.0.2.1"),
        ("192.0.2.1:_x", "192.0.2.1"),
        ("192.0.2.1:_", None),
        ("192.0.2.1:_a b", None),
        (None, None),
        (b"192.0.2.1", None),
    ],
)
def test_parse_address(token: Any, expected: str | None) -> None:
    parsed = parse_address(token)
    assert (None if parsed is None else str(parsed)) == expected


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "1.2.3.4",
                    "[::1]:80",
                    "unknown",
                    "_x",
                    '"',
                    "\\",
                    ";",
                    ",",
                    "for=",
                    "=",
                    " ",
                    "10.0.0.2",
                    "::ffff:10.0.0.2",
                    "%",
                    "[",
                    "]",
                    ":",
                ]
            ),
            max_size=30,
        ).map("".join),
    ),
    header=st.sampled_from(["forwarded", "x-forwarded-for", "x-real-ip"]),
)
def test_arbitrary_header_text_never_crashes(value: str, header: Header) -> None:
    """Whatever the header says: no exception; the answer is None or a canonical address."""
    resolver = ClientIPResolver(TRUSTED, header=header)
    result = resolver.resolve(PROXY, {header: value})
    if result is not None:
        assert str(ipaddress.ip_address(result)) == result
        assert "%" not in result
    assert resolver.resolve("203.0.113.9", {header: value}) == "203.0.113.9"
