"""Hypothesis over the inputs of every public call: refused at the call, or read back unchanged.

Each example opens a fresh store (a new file, or a new Redis key prefix), makes the calls,
saves (`force_save`, then `shutdown`), opens a second service on the same store and reads
the session back. An input is either refused at its call with the library's documented
errors (`SessionDataError`, `TypeError`, `ValueError`, each naming the problem) or stored
and given back unchanged, type for type; a flush never fails.
"""

from __future__ import annotations

import math
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pooled_sessions import ClientInfo, SessionDataError, SessionService, ValidationResult
from pooled_sessions.model import MAX_USER_AGENT_LENGTH
from pooled_sessions.storable import MAX_NESTING
from tests.aio_backends import LoopThread, SyncFacade
from tests.backends import ServiceAPI
from tests.redis_servers import unique_prefix

EXAMPLES = 60
Opener = Callable[[], ServiceAPI]

# -- inputs ---------------------------------------------------------------------------------
# Each input has a well-formed strategy and a hostile one (lone surrogates, non-str keys,
# tuples, NaN, nesting past the limit, wrong types); an example draws at most one input
# from its hostile strategy, so that accepted and refused calls both come often.

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
TEXT = st.text(max_size=12)  # any code point but a surrogate: controls, astral, unassigned
HOSTILE_TEXT = st.one_of(
    TEXT,
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), SURROGATE, st.text(max_size=4)),
)
BIG_INTS = st.builds(  # up to the 4,300 digits Python parses (past it: test_session_data)
    lambda e, sign: sign * 10**e, st.sampled_from([19, 20, 300, 4299]), st.sampled_from([1, -1])
)
EDGE_FLOATS = st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 1e16, 0.1])


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _values(text: st.SearchStrategy[str], hostile: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=hostile, allow_infinity=hostile)
    numbers = st.one_of(st.integers(), BIG_INTS, floats, EDGE_FLOATS)
    scalars = st.one_of(st.none(), st.booleans(), numbers, text)
    keys: st.SearchStrategy[Any] = text
    if hostile:
        keys = st.one_of(text, text, st.integers(-3, 3), st.booleans(), st.none(), st.floats(0, 1))

    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        found = st.one_of(
            st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
        )
        return st.one_of(found, st.lists(children, max_size=3).map(tuple)) if hostile else found

    depths = st.integers(MAX_NESTING - 2, MAX_NESTING + (3 if hostile else 0))
    return st.one_of(st.recursive(scalars, containers, max_leaves=12), depths.map(_nested))


def _attributes(hostile: bool) -> st.SearchStrategy[Any]:
    text = HOSTILE_TEXT if hostile else TEXT
    names = st.one_of(text, text, st.integers(0, 3)) if hostile else text
    found = st.dictionaries(names, _values(text, hostile), min_size=int(hostile), max_size=4)
    return st.one_of(found, found, found, st.lists(st.integers(), max_size=2)) if hostile else found


PRINTABLE = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=20)
URL_SAFE = string.ascii_letters + string.digits + "-_"
ADDRESSES = st.one_of(st.ip_addresses().map(str), st.just("fe80::1%eth0"))
USER_AGENTS = st.one_of(TEXT, st.integers(1000, 1100).map(lambda n: "U" * n))  # cut at 1,024
INPUTS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    # name: (well-formed, hostile)
    "username": (
        st.one_of(st.sampled_from(["alice", "zoë ☃ o'brien", "x" * 256]), PRINTABLE, st.none()),
        st.one_of(HOSTILE_TEXT, st.just("x" * 257), st.just(""), st.integers()),
    ),
    "attributes": (st.one_of(_attributes(False), st.none()), _attributes(True)),
    "client": (
        st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"ip": ADDRESSES, "user_agent": USER_AGENTS}),
        ),
        st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "ip": st.one_of(HOSTILE_TEXT, st.builds("fe80::1%{}".format, HOSTILE_TEXT)),
                    "user_agent": HOSTILE_TEXT,
                },
            ),
            st.dictionaries(HOSTILE_TEXT, TEXT, max_size=2),
            st.integers(),
        ),
    ),
    "session_id": (
        st.one_of(st.none(), st.text(URL_SAFE, min_size=1, max_size=256)),
        st.one_of(st.text(URL_SAFE, min_size=257, max_size=300), HOSTILE_TEXT, st.integers()),
    ),
    "update": (_attributes(False), _attributes(True)),
    "remove": (st.lists(TEXT, max_size=2), st.one_of(TEXT, st.lists(st.integers(), max_size=2))),
}
WILD = st.sampled_from([None] * 5 + ["attributes"] * 4 + ["update"] * 3 + [*INPUTS] * 1)


@dataclass
class Calls:
    """One example: a session's creation, an update, a few reads."""

    wild: str | None
    username: Any
    attributes: Any
    client: Any
    session_id: Any
    update: Any
    remove: Any
    rotate: bool
    probe_id: Any


@st.composite
def calls(draw: st.DrawFn) -> Calls:
    """The inputs of one example, at most one of them (``wild``) drawn from its hostile side."""
    wild = draw(WILD)
    drawn = {name: draw(pair[name == wild]) for name, pair in INPUTS.items()}
    probe_id = draw(st.one_of(HOSTILE_TEXT, st.text(URL_SAFE, min_size=1), st.integers()))
    return Calls(wild=wild, rotate=draw(st.booleans()), probe_id=probe_id, **drawn)


# -- what may be stored -----------------------------------------------------------------------


def storable(attributes: dict[Any, Any]) -> bool:
    """True if every attribute may be stored, by the rules the README states."""
    return all(isinstance(k, str) and _utf8(k) and _value(v) for k, v in attributes.items())


def _value(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        try:
            return bool(str(value))  # past 4,300 digits Python neither writes nor parses it
        except ValueError:
            return False
    if value is None:
        return True
    if depth >= MAX_NESTING:
        return False
    if type(value) is list:
        return all(_value(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _utf8(k) for k in value) and all(
            _value(item, depth + 1) for item in value.values()
        )
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def same(found: Any, expected: Any) -> bool:
    """Equal and of the same JSON type throughout (1, 1.0 and True differ; so do 0.0, -0.0)."""
    if type(found) is not type(expected):
        return False
    if isinstance(expected, float):
        return bool(found.hex() == expected.hex())
    if isinstance(expected, dict):
        return found.keys() == expected.keys() and all(same(found[k], expected[k]) for k in found)
    if isinstance(expected, list):
        return len(found) == len(expected) and all(map(same, found, expected))
    return bool(found == expected)


def refused(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``call()``'s result, or the documented error it raised (anything else fails the test)."""
    try:
        return call(), None
    except (TypeError, ValueError) as exc:
        assert type(exc) in (SessionDataError, TypeError, ValueError), repr(exc)
        assert str(exc), "an error names its problem"
        return None, exc


# -- stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_loop() -> Iterator[LoopThread]:
    """One event loop for the asyncio services of this module."""
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(
    scope="module",
    params=[
        "memory",
        "file",
        "aiofile",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("async-redis", marks=pytest.mark.redis),
    ],
)
def fresh_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], Opener]:
    """A maker of fresh stores: each call names a new one and returns its service opener."""
    folder = tmp_path_factory.mktemp("fuzz")
    kind: str = request.param
    base = request.getfixturevalue("redis_server").url if "redis" in kind else ""
    runner: LoopThread | None = None
    if kind in ("aiofile", "async-redis"):
        runner = request.getfixturevalue("fuzz_loop")

    def make() -> Opener:
        url = {
            "memory": f"memory://fuzz{uuid.uuid4().hex}",
            "file": str(folder / f"{uuid.uuid4().hex}.json"),
            "aiofile": f"aiofile://{folder / uuid.uuid4().hex}.json",
            "redis": f"{base}?prefix={unique_prefix()}",
            "async-redis": f"{base}?prefix={unique_prefix()}",
        }[kind]
        if runner is None:
            return lambda: SessionService(url)
        loop = runner
        return lambda: SyncFacade(loop, url, {})

    return make


# -- the property ---------------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calls=calls())
def test_every_input_is_refused_at_its_call_or_read_back_unchanged_after_a_reopen(
    fresh_store: Callable[[], Opener], calls: Calls
) -> None:
    open_service = fresh_store()
    svc = open_service()
    try:
        expected = _make_calls(svc, calls)
        svc.force_save()
        stats = svc.stats()
        assert stats["flush_failures"] == 0, stats["last_error"]
        report = svc.shutdown()
        assert report.complete, report
    finally:
        svc.shutdown()
    reopened = open_service()
    try:
        _check_read_back(reopened, expected)
    finally:
        reopened.shutdown()


@dataclass
class Expected:
    """What the store must give back: sessions by id, and one written after every call."""

    sessions: dict[str, tuple[str, dict[str, Any], str | None, str | None]]


def _make_calls(svc: ServiceAPI, calls: Calls) -> Expected:
    expected = Expected({})
    attributes = calls.attributes
    sid, error = refused(
        lambda: svc.create_session(
            calls.username, attributes, calls.client, session_id=calls.session_id
        )
    )
    if isinstance(attributes, dict) and not storable(attributes):
        assert error is not None, "unstorable attributes were taken"
    event("created" if sid is not None else f"create refused: {type(error).__name__}")
    if sid is not None:
        client = ClientInfo.coerce(calls.client) or ClientInfo()
        user_agent = client.user_agent
        if user_agent is not None:
            assert len(user_agent) <= MAX_USER_AGENT_LENGTH
        stored = dict(attributes or {})
        changed, error = refused(lambda: svc.update_session(sid, calls.update, remove=calls.remove))
        event("updated" if changed else f"update refused: {type(error).__name__}")
        if not (isinstance(calls.update, dict) and storable(calls.update)):
            assert error is not None, "an unstorable update was taken"
        if changed:
            stored = {k: v for k, v in stored.items() if k not in calls.remove}
            stored.update(calls.update)
        if calls.rotate:
            sid = svc.rotate_session(sid)
            assert sid is not None
        expected.sessions[sid] = (calls.username, stored, client.ip, user_agent)
    result, _ = refused(lambda: svc.validate_session(calls.probe_id, calls.client))
    assert result is None or isinstance(result, ValidationResult)
    refused(lambda: svc.get_session(calls.probe_id))
    if calls.username is not None:
        refused(lambda: svc.sessions_of(calls.username))
    control = svc.create_session("control", {"written": "after every call"})
    expected.sessions[control] = ("control", {"written": "after every call"}, None, None)
    return expected


def _check_read_back(svc: ServiceAPI, expected: Expected) -> None:
    for sid, (username, attributes, ip, user_agent) in expected.sessions.items():
        session = svc.get_session(sid)
        assert session is not None, f"session of {username!r} lost"
        assert same(session.username, username)
        assert same(session.attributes, attributes), (session.attributes, attributes)
        assert (session.ip, session.user_agent) == (ip, user_agent)
        if username is not None:  # an anonymous session belongs to no user
            assert sid in svc.sessions_of(username)


def test_the_fuzz_reaches_both_outcomes() -> None:
    """The hostile attributes are sometimes storable and sometimes not (the property needs both)."""
    seen: set[bool] = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(_attributes(True))
    def probe(attributes: Any) -> None:
        if isinstance(attributes, dict):
            seen.add(storable(attributes))

    probe()
    assert seen == {True, False}


def test_the_storable_oracle_follows_the_documented_rules() -> None:
    """The test's own oracle agrees with the README on the cases it names."""
    assert storable({"cart": [3, 7], "n": None, "f": -0.0, "u": "zoë 😀"})
    assert storable({"deep": _nested(MAX_NESTING), "big": 10**4299})
    bad_values = ({1: "a"}, {"t": (1,)}, {"s": "\ud800"}, {"x": math.nan}, {"d": _nested(33)})
    for bad in (*bad_values, {"big": 10**4300}, {"k": {"a": {None: 1}}}):
        assert not storable(bad), bad
