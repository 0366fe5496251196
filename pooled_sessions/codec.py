"""Session data on the wire: attribute encoding, store records, write operations, the file document.

A *record* is what a store keeps for one session: a JSON-ready dict whose attributes
hold decoded values. Write operations carry attributes JSON-encoded, once, at the call
that brought them, so bad data is refused there and never reaches a flush. The checks of
session ids and user names, and the short form of an id for messages, live here too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple, TypedDict

from pooled_sessions.errors import CorruptStoreError, SessionDataError
from pooled_sessions.storable import SCALARS, check_text, check_value, is_utf8, unstorable
from pooled_sessions.text_pool import TextPool

FORMAT_NAME = "pooled_sessions"
FORMAT_VERSION = 2
"""Version 2 adds ``generation``, the snapshot a file store's journal extends."""
READ_VERSIONS = (1, 2)
"""Versions this library reads (a version-1 file is generation 0)."""
MAX_ID_LENGTH = 256
MAX_USERNAME_LENGTH = 256
_ID_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}")
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_encode_ascii = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_encode_text = json.encoder.encode_basestring  # what `_encode` does with a str


def encode_value(value: Any) -> str:
    """One value as compact JSON (`_encode`), sooner for the scalars most attributes and
    record fields hold (the encoder costs about 0.7 µs for an int, this 0.1)."""
    kind = type(value)
    if kind is str:
        return _encode_text(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0.0:  # finite: NaN and infinities are refused
        return float.__repr__(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _encode(value)


SHARED_TEXT_LENGTH = 24
"""Attribute texts (and, read from a store, names) up to this length are held once for
every session that holds them (``true``, ``"dark"``, ``"en-GB"``, ``"member"``) ..."""
SHARED_TEXTS = 4096
"""... in a pool of this many distinct texts."""
_short_texts = TextPool(SHARED_TEXTS)


def _shared(text: str) -> str:
    """``text``, or the equal one the pool holds if it is short (see `SHARED_TEXT_LENGTH`)."""
    return _short_texts.share(text) if len(text) <= SHARED_TEXT_LENGTH else text


class Record(TypedDict):
    """One stored session (its id is the key it is stored under)."""

    username: str
    attributes: dict[str, Any]
    ip: str | None
    user_agent: str | None
    created_at: float
    last_accessed_at: float
    expires_at: float
    absolute_expires_at: float | None


Changes = bool | frozenset[str]
"""What a store found other processes had changed since it last looked: False nothing; the
ids of the sessions they wrote or ended; True when it cannot say which (every cached
session is stale)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Upsert:
    """Write one session: every attribute is carried, ``changed``/``removed`` say which moved.

    A store that holds the session applies only the changed keys (so concurrent writers
    of different attributes both keep theirs) and never shortens ``expires_at``. A store
    that lacks it (never written, expired, evicted, purged) writes the whole snapshot only
    for a full write (``created``: a new session, a migration); a partial write of a
    missing session is refused, so a late write never brings one back. A tombstone refuses
    every upsert. ``create`` (with ``created``) makes it a create-if-absent: a store that
    holds another session under the id refuses it (`WriteResult.taken`); the same creation
    sent again (same user and creation time: a retried batch) is applied as usual.
    """

    session_id: str
    username: str
    attributes: Mapping[str, str]
    """Each attribute's JSON text. A store in the process may keep this very mapping
    (`adapters.held`): the writer hands over a new one for each change, never changing
    one it has written."""
    changed: frozenset[str]
    removed: frozenset[str]
    ip: str | None
    user_agent: str | None
    created_at: float
    last_accessed_at: float
    expires_at: float
    absolute_expires_at: float | None
    created: bool
    rotated_from: tuple[str, ...] = ()
    """Ids this session had before a rotation the store has not confirmed, newest first:
    a store that counts pool slots moves the slot one of them holds to this id."""
    create: bool = False
    succeeds: str | None = None
    """For the create of a rotation, the id it replaces (ended in the same batch): the
    store writes it only if it held that session when the batch began (or this batch's
    own end of it, written by an earlier attempt), else refuses it (`WriteResult.refused`),
    so a session ended elsewhere never lives on under a new id."""

    def __post_init__(self) -> None:
        if self.create and not self.created:
            raise ValueError("Upsert(create=True) needs created=True: a create carries it all")


@dataclass(frozen=True, slots=True)
class Delete:
    """End one session; the store keeps a tombstone so no late write brings it back."""

    session_id: str
    username: str
    ended_at: float


Operation = Upsert | Delete


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a store reports after a batch.

    ``refused``: upserts of sessions that are gone (ended, or a partial write of one the
    store lacks); the writer drops them. ``reloaded``: what the store read of other
    processes' writes on the way (see `Changes`). ``taken``: creates refused because
    another session holds the id; it is live, just not the writer's.
    """

    refused: frozenset[str] = frozenset()
    reloaded: Changes = False
    taken: frozenset[str] = frozenset()


def short_id(session_id: str) -> str:
    """A session id cut short for messages and logs: enough to correlate, useless to replay."""
    return session_id[:8] + "…"


def is_valid_id(session_id: object) -> bool:
    """True for a non-empty, bounded, URL-safe session id."""
    return isinstance(session_id, str) and _ID_RE.fullmatch(session_id) is not None


def check_id(session_id: object) -> str:
    """Return ``session_id`` if valid, else raise naming the problem."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    if not is_valid_id(session_id):
        raise ValueError(
            "session_id must be 1-256 URL-safe characters (A-Z a-z 0-9 _ -), "
            f"got {session_id[:40]!r}"
        )
    return session_id


ANONYMOUS = ""
"""The user of a session with none (a visitor before login), as records store it."""


def check_owner(username: object) -> str:
    """``username`` checked, or `ANONYMOUS` for None: who a new session belongs to."""
    return ANONYMOUS if username is None else check_username(username)


def check_username(username: object) -> str:
    """Return ``username`` if it is a usable user name, else raise."""
    if not isinstance(username, str):
        raise TypeError(f"username must be a str, not {type(username).__name__}")
    check_text(username, "username")
    if not username or len(username) > MAX_USERNAME_LENGTH or not username.isprintable():
        raise ValueError(
            f"username must be 1-{MAX_USERNAME_LENGTH} printable characters, got {username[:40]!r}"
        )
    return username


def encode_attributes(attributes: object) -> dict[str, str]:
    """JSON-encode each attribute value at the call, refusing what a store could not write
    or would give back changed (see `check_value`); the text is valid UTF-8."""
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    encoded: dict[str, str] = {}
    for key, value in attributes.items():
        if not isinstance(key, str):
            raise SessionDataError(f"attribute names must be str, got {key!r}")
        if not key.isascii():
            check_text(key, "an attribute name")
        if type(value) not in SCALARS:
            check_value(key, value)
        try:
            text = encode_value(value)
        except (TypeError, ValueError) as exc:
            raise unstorable(key, value, exc) from None
        if not text.isascii() and not is_utf8(text):
            raise unstorable(key, value)
        encoded[key] = _shared(text)
    return encoded


def encode_stored(attributes: Mapping[str, Any]) -> dict[str, str]:
    """JSON-encode the attributes of a record read from a store, keeping whatever it holds.

    The store's reader already parsed them, so no call-time rule is applied again (data
    written before a rule existed stays readable); a lone surrogate that a file held as
    an escape stays one, escaped, rather than poisoning later writes.
    """
    encoded: dict[str, str] = {}
    for key, value in attributes.items():
        try:
            text = encode_value(value)
        except (TypeError, ValueError) as exc:
            raise SessionDataError(f"attribute {key!r} cannot be stored as JSON: {exc}") from None
        if not text.isascii() and not is_utf8(text):
            text = _encode_ascii(value)
        encoded[_shared(key)] = _shared(text)
    return encoded


def encoded_size(attributes: Mapping[str, str]) -> int:
    """Stored size of encoded attributes, in UTF-8 bytes (names and JSON texts)."""
    size = 0
    for key, text in attributes.items():
        size += (len(key) if key.isascii() else len(key.encode())) + 4
        size += len(text) if text.isascii() else len(text.encode())
    return size


def check_size(session_id: str, attributes: Mapping[str, str], limit: int) -> None:
    """Refuse attributes whose encoded size passes ``limit``."""
    size = encoded_size(attributes)
    if size > limit:
        raise SessionDataError(
            f"session {short_id(session_id)}: attributes take {size} bytes, over max_session_bytes "
            f"({limit})"
        )


def upsert_of(
    session_id: str,
    record: Record,
    attributes: Mapping[str, str],
    *,
    changed: Iterable[str] | None = None,
    removed: Iterable[str] = (),
    created: bool = True,
    create: bool = False,
    rotated_from: tuple[str, ...] = (),
    succeeds: str | None = None,
) -> Upsert:
    """The write of ``record`` with its ``attributes`` already encoded; ``changed``
    (default: every attribute) and ``removed`` say which moved; ``create``: a
    create-if-absent (a session a service just started)."""
    return Upsert(
        session_id=session_id,
        username=record["username"],
        attributes=attributes,
        changed=frozenset(attributes if changed is None else changed),
        removed=frozenset(removed),
        ip=record["ip"],
        user_agent=record["user_agent"],
        created_at=record["created_at"],
        last_accessed_at=record["last_accessed_at"],
        expires_at=record["expires_at"],
        absolute_expires_at=record["absolute_expires_at"],
        created=created,
        create=create,
        rotated_from=rotated_from,
        succeeds=succeeds,
    )


def same_creation(record: Record, username: str, created_at: float) -> bool:
    """True when ``record`` is the session created for ``username`` at ``created_at``: a
    create sent again (a retried batch) rather than another writer's session."""
    return record["created_at"] == created_at and record["username"] == username


def expiry_passed(expires_at: float, absolute_expires_at: float | None, now: float) -> bool:
    """True when a session's idle (``expires_at``) or absolute expiry has passed by ``now``:
    the one rule the engine's entries and every store's records follow."""
    return expires_at <= now or (absolute_expires_at is not None and absolute_expires_at <= now)


def is_expired(record: Record, now: float) -> bool:
    """True when a stored session's idle or absolute expiry has passed."""
    return expiry_passed(record["expires_at"], record["absolute_expires_at"], now)


_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "username": (str,),
    "attributes": (dict,),
    "ip": (str, type(None)),
    "user_agent": (str, type(None)),
    "created_at": (int, float),
    "last_accessed_at": (int, float),
    "expires_at": (int, float),
    "absolute_expires_at": (int, float, type(None)),
}


def check_record(session_id: object, record: object, where: str) -> Record:
    """Return ``record`` if it has the shape of a Record, else raise CorruptStoreError."""
    if not is_valid_id(session_id):
        raise CorruptStoreError(f"{where}: invalid session id {str(session_id)[:40]!r}")
    if not isinstance(record, dict) or record.keys() != _RECORD_TYPES.keys():
        raise CorruptStoreError(f"{_label(where, session_id)} is not a session record")
    for key, types in _RECORD_TYPES.items():
        value = record[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise CorruptStoreError(f"{_label(where, session_id)} has a bad {key!r}")
    return record  # type: ignore[return-value]


def _label(where: str, session_id: object) -> str:
    """How an error names a record: built only for one that fails (valid ones are many)."""
    return f"{where}: session {short_id(str(session_id))}"


def encode_document(
    encoded_records: Iterable[tuple[str, str]], tombstones: Mapping[str, float], generation: int = 1
) -> str:
    """The file document, from (session id, `encode_record` text) pairs."""
    members = (document_member(sid, text) for sid, text in encoded_records)
    return "".join(document_parts(members, tombstones, generation))


def document_member(session_id: str, text: str) -> str:
    """One ``"id":value`` member of the document's sessions (or tombstones) object."""
    return f"{_encode(session_id)}:{text}"


def document_parts(
    members: Iterable[str], tombstones: Mapping[str, float], generation: int, per_piece: int = 128
) -> Iterator[str]:
    """The file document in pieces of at most ``per_piece`` sessions (or tombstones) each.

    ``members`` are the sessions as `document_member` texts (a table caches them, so a
    flush of a large file mostly joins strings). Joined, the pieces are `encode_document`;
    a writer that must not hold the CPU for long (an event loop) does other work between
    them.
    """
    yield (
        f'{{"format":"{FORMAT_NAME}","version":{FORMAT_VERSION},"generation":{generation},'
        '"sessions":{'
    )
    yield from _joined(members, per_piece)
    yield '},"tombstones":{'
    ended = (document_member(sid, _encode(t)) for sid, t in tombstones.items())
    yield from _joined(ended, per_piece)
    yield "}}\n"


def _joined(members: Iterable[str], per_piece: int) -> Iterator[str]:
    members, comma = iter(members), ""
    while chunk := list(islice(members, per_piece)):
        yield comma + ",".join(chunk)
        comma = ","


def encode_record(record: Record) -> str:
    """One record as compact JSON."""
    return _encode(record)


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing ones that overflow (this library never writes them)."""
    value = float(text)
    if value - value != 0.0:
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)
"""One decoder for every parse: ``json.loads`` given these hooks builds a new one each call."""


def parse_json(data: bytes | str) -> Any:
    """Parse JSON as this library writes it: ValueError for NaN, Infinity or an overflow.
    What ``json.loads`` does, with its hooks: bytes decoded as it decodes them."""
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        return _DECODER.decode(data)
    return _DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))


class Snapshot(NamedTuple):
    """A decoded file document."""

    sessions: dict[str, Record]
    tombstones: dict[str, float]
    generation: int
    version: int


def decode_document(data: bytes, where: str) -> tuple[dict[str, Record], dict[str, float]]:
    """Parse and check a file document; anything unexpected raises CorruptStoreError."""
    snapshot = decode_snapshot(data, where)
    return snapshot.sessions, snapshot.tombstones


def decode_snapshot(data: bytes, where: str) -> Snapshot:
    """`decode_document`, with the document's generation and format version."""
    try:
        document = parse_json(data)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge integers, deep nesting
        raise CorruptStoreError(
            f"{where} is not valid JSON ({str(exc)[:200]}); it was left as it is"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise CorruptStoreError(f"{where} is not a pooled_sessions file; it was left as it is")
    version, generation = check_version(document, where)
    sessions, tombstones = document.get("sessions"), document.get("tombstones")
    if not isinstance(sessions, dict) or not isinstance(tombstones, dict):
        raise CorruptStoreError(f"{where} lacks its sessions or tombstones table")
    for sid, record in sessions.items():
        check_record(sid, record, where)
    for sid, ended_at in tombstones.items():
        check_time(ended_at, sid, where)
    return Snapshot(sessions, tombstones, generation, version)


def check_version(header: Mapping[str, Any], where: str) -> tuple[int, int]:
    """The format version and generation a document's header gives (generation 0 for a
    version-1 document); CorruptStoreError for a version or generation this library lacks."""
    version = header.get("version")
    if type(version) is not int or version not in READ_VERSIONS:
        raise CorruptStoreError(
            f"{where} has format version {version!r}; this library reads versions "
            f"{' and '.join(map(str, READ_VERSIONS))}"
        )
    if version == 1:
        return 1, 0
    generation = header.get("generation")
    if type(generation) is not int or generation < 1:
        raise CorruptStoreError(f"{where} has a bad generation {generation!r}")
    return 2, generation


def check_time(ended_at: object, session_id: str, where: str) -> float:
    """A tombstone's time, or CorruptStoreError."""
    if not isinstance(ended_at, int | float) or isinstance(ended_at, bool):
        raise CorruptStoreError(f"{where}: tombstone {short_id(session_id)} has a bad time")
    return ended_at
