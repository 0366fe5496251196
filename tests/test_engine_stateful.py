"""Hypothesis state machines: the engine against a plain dict, and the file store reopened.

`EngineMachine` drives the sans-I/O engine with a fake clock, a `RecordTable` for a store,
flushes that succeed, fail or stay in flight while other calls run, foreign reloads and
restarts. `FileMachine` drives two services on one JSON file and checks what a fresh
service reads after each save.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from pooled_sessions import Reason, SessionService
from pooled_sessions.engine.engine import Engine, Flush
from tests.enginekit import Rig

IDLE = 300.0  # expire_minutes=5
STEP = 30.0  # the touch step: a tenth of the idle time
USERS = st.sampled_from(["alice", "bob", "carol"])
KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.lists(st.booleans(), max_size=2), st.none()
)
ATTRIBUTES = st.dictionaries(KEYS, VALUES, max_size=3)


@dataclass
class Model:
    """What a session should be: its owner, attributes, and idle expiry."""

    username: str
    attributes: dict[str, Any]
    expires_at: float


class EngineMachine(RuleBasedStateMachine):
    """The engine against a dict of `Model`; ended ids must never come back."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(expire_minutes=IDLE / 60)
        self.live: dict[str, Model] = {}
        self.ended: set[str] = set()
        self.inflight: Flush | None = None

    @property
    def now(self) -> float:
        return self.rig.clock.now

    def _state(self, sid: str) -> str:
        """ "live", "dead", or "unsure" while the store's copy may expire a touch earlier."""
        model = self.live.get(sid)
        if model is None:
            return "dead"
        if model.expires_at <= self.now:
            return "dead"
        return "unsure" if model.expires_at - STEP <= self.now else "live"

    def _settle(self, sid: str, alive: bool) -> None:
        """An unsure session: the engine's answer decides; once expired it stays expired."""
        if not alive and sid in self.live:
            del self.live[sid]

    def _touch(self, sid: str) -> None:
        self.live[sid].expires_at = self.now + IDLE

    # -- calls -------------------------------------------------------------------------------

    @rule(target=ids, username=USERS, attributes=ATTRIBUTES)
    def create(self, username: str, attributes: dict[str, Any]) -> str:
        sid = self.rig.run(self.rig.engine.create(username, attributes, None))
        assert sid not in self.live and sid not in self.ended
        self.live[sid] = Model(username, dict(attributes), self.now + IDLE)
        return sid

    @rule(sid=ids)
    def validate(self, sid: str) -> None:
        state = self._state(sid)
        result = self.rig.run(self.rig.engine.validate(sid))
        if state == "unsure":
            self._settle(sid, result.valid)
        else:
            assert result.valid == (state == "live"), (state, result.reason)
        if result.valid:
            assert result.session is not None
            model = self.live[sid]
            assert (result.session.username, result.session.attributes) == (
                model.username,
                model.attributes,
            )
            self._touch(sid)
        elif sid in self.ended:
            assert result.reason is Reason.NOT_FOUND

    @rule(sid=ids)
    def get(self, sid: str) -> None:
        state = self._state(sid)
        session = self.rig.run(self.rig.engine.get(sid))
        if state == "unsure":
            self._settle(sid, session is not None)
        else:
            assert (session is not None) == (state == "live")
        if session is not None:
            assert session.attributes == self.live[sid].attributes

    @rule(sid=ids, attributes=ATTRIBUTES, remove=st.sets(KEYS, max_size=2))
    def update(self, sid: str, attributes: dict[str, Any], remove: set[str]) -> None:
        state = self._state(sid)
        done = self.rig.run(self.rig.engine.update(sid, attributes, remove))
        if state == "unsure":
            self._settle(sid, done)
        else:
            assert done == (state == "live")
        if done:
            model = self.live[sid]
            for key in remove:
                model.attributes.pop(key, None)
            model.attributes.update(attributes)
            self._touch(sid)

    @rule(sid=ids)
    def end(self, sid: str) -> None:
        state = self._state(sid)
        ended = self.rig.run(self.rig.engine.end(sid))
        if state == "unsure":
            self._settle(sid, ended)
        else:
            assert ended == (state == "live")
        if ended:
            del self.live[sid]
            self.ended.add(sid)

    @rule(target=ids, sid=ids)
    def rotate(self, sid: str) -> str:
        state = self._state(sid)
        new = self.rig.run(self.rig.engine.rotate(sid))
        if state == "unsure":
            self._settle(sid, new is not None)
        else:
            assert (new is not None) == (state == "live")
        if new is None:
            return sid
        self.live[new] = self.live.pop(sid)
        self.ended.add(sid)
        return new

    @rule(username=USERS)
    def sessions_of(self, username: str) -> None:
        listed = set(self.rig.run(self.rig.engine.sessions_of(username)))
        for sid, model in list(self.live.items()):
            if model.username != username:
                continue
            state = self._state(sid)
            if state == "unsure":
                self._settle(sid, sid in listed)
            else:
                assert (sid in listed) == (state == "live"), sid
        assert listed <= set(self.live), "only live sessions are listed"

    # -- time, flushes and the world outside ----------------------------------------------------

    @rule(seconds=st.sampled_from([1.0, 10.0, 29.0, 31.0, 120.0, 299.0, 301.0]))
    def advance(self, seconds: float) -> None:
        self.rig.clock.advance(seconds)

    @precondition(lambda self: self.inflight is None)
    @rule()
    def flush(self) -> None:
        self.rig.flush()
        self._check_store()

    @precondition(lambda self: self.inflight is None)
    @rule()
    def begin_flush(self) -> None:
        self.inflight = self.rig.engine.take_flush()

    @precondition(lambda self: self.inflight is not None)
    @rule(ok=st.booleans())
    def finish_flush(self, ok: bool) -> None:
        flush, self.inflight = self.inflight, None
        assert flush is not None
        if ok:
            result = self.rig.table.apply(flush.operations)
            self.rig.engine.flush_succeeded(flush, result, 0.0)
        else:
            self.rig.fail(flush)

    @rule()
    def foreign_reload(self) -> None:
        self.rig.engine.invalidate(None)

    @rule()
    def cleanup(self) -> None:
        self.rig.engine.cleanup()

    @precondition(lambda self: self.inflight is None)
    @rule()
    def restart(self) -> None:
        """Flush, then a new engine on the same store (a process restart)."""
        self.rig.flush()
        clock = self.rig.clock
        self.rig.engine = Engine(self.rig.settings, clock=clock.wall, monotonic=clock.monotonic)

    # -- what must always hold --------------------------------------------------------------------

    def _check_store(self) -> None:
        """After a complete flush, the store agrees with the model."""
        table = self.rig.table
        for sid in self.ended:
            assert table.load(sid) is None, "an ended session is back in the store"
        for sid, model in self.live.items():
            if self._state(sid) == "live":
                record = table.load(sid)
                assert record is not None, "a live session is missing from the store"
                assert record["username"] == model.username
                assert record["attributes"] == model.attributes

    @invariant()
    def ended_sessions_stay_ended(self) -> None:
        engine = self.rig.engine
        for sid in self.ended:
            assert self.rig.run(engine.get(sid)) is None

    @invariant()
    def pending_buffer_is_bounded(self) -> None:
        pending = self.rig.engine.pending
        assert len(pending) + pending.in_flight <= self.rig.settings.max_pending_sessions


EngineMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase


@dataclass
class Stored:
    """A session as the file must hold it after a save."""

    username: str
    attributes: dict[str, Any]


class FileMachine(RuleBasedStateMachine):
    """Two services (two app servers) on one file; a fresh service must read the model.

    Service ``a`` creates, updates keys ``a*`` and ends; service ``b`` updates keys ``b*``
    of sessions it can see. Both write behind (``write_behind=True``): each service's
    unsaved changes reach the model at its save.
    """

    ids = Bundle("file_ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pooled-sessions-fsm-"))
        self.path = self.dir / "sessions.json"
        self.services = {name: self._open() for name in ("a", "b")}
        self.stored: dict[str, Stored] = {}
        self.ended: set[str] = set()
        self.unsaved: dict[str, list[tuple[str, str, dict[str, Any] | None]]] = {"a": [], "b": []}

    def _open(self) -> SessionService:
        return SessionService(
            self.path,
            write_behind=True,
            save_delay_seconds=3600,
            batch_save_threshold=10**6,
            sync_interval_seconds=3600,
            cleanup_interval_minutes=60,
        )

    def teardown(self) -> None:
        for svc in self.services.values():
            svc.shutdown(timeout=1)
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        target=ids,
        username=USERS,
        attributes=st.dictionaries(st.sampled_from(["a1", "a2"]), VALUES, max_size=2),
    )
    def create(self, username: str, attributes: dict[str, Any]) -> str:
        sid = self.services["a"].create_session(username, attributes)
        self.unsaved["a"].append(("create", sid, {"username": username, **attributes}))
        return sid

    @rule(sid=ids, name=st.sampled_from(["a", "b"]), value=VALUES)
    def update(self, sid: str, name: str, value: Any) -> None:
        key = f"{name}1"
        if self.services[name].update_session(sid, {key: value}):
            self.unsaved[name].append(("update", sid, {key: value}))
        else:
            assert name == "b" or sid in self.ended, "a knows every session it did not end"

    @rule(sid=ids)
    def end(self, sid: str) -> None:
        if self.services["a"].end_session(sid):
            self.unsaved["a"].append(("end", sid, None))
            self.ended.add(sid)

    @rule(name=st.sampled_from(["a", "b"]))
    def save(self, name: str) -> None:
        self.services[name].force_save()
        self._apply(name)

    @rule(name=st.sampled_from(["a", "b"]))
    def reopen(self, name: str) -> None:
        assert self.services[name].shutdown().complete
        self._apply(name)
        self.services[name] = self._open()

    def _apply(self, name: str) -> None:
        for kind, sid, data in self.unsaved[name]:
            if kind == "end":
                self.stored.pop(sid, None)
            elif kind == "create":
                assert data is not None
                username = data.pop("username")
                self.stored[sid] = Stored(username, data)
            elif sid in self.stored and data is not None:
                self.stored[sid].attributes.update(data)
            elif sid not in self.ended:
                # b saw a session a had not saved yet: impossible, b reads only the file
                raise AssertionError(f"update of an unknown session {sid[:8]}")
        self.unsaved[name] = []

    @precondition(lambda self: not self.unsaved["a"] and not self.unsaved["b"])
    @invariant()
    def a_fresh_service_reads_the_model(self) -> None:
        with self._open() as fresh:
            for sid, stored in self.stored.items():
                session = fresh.get_session(sid)
                assert session is not None, f"{sid[:8]} was lost"
                assert (session.username, session.attributes) == (
                    stored.username,
                    stored.attributes,
                )
            for sid in self.ended:
                assert fresh.get_session(sid) is None, f"{sid[:8]} came back"
            for username in ("alice", "bob", "carol"):
                mine = {sid for sid, s in self.stored.items() if s.username == username}
                assert set(fresh.sessions_of(username)) == mine


FileMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFileMachine = FileMachine.TestCase
