"""Every built-in store keeps the store contract (pooled_sessions.testing), and the
contract fails stores that break it."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions.adapters import ASYNC_STORES, SYNC_STORES
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.file.store_async import AioFileStore
from pooled_sessions.adapters.memory import AsyncMemoryStore, MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.config import Settings
from pooled_sessions.testing import (
    BasicStoreContract,
    PollContract,
    SlotContract,
    StoreFactory,
    TombstoneContract,
    WatchContract,
    assert_twins,
)
from pooled_sessions.testing.twins import public_methods


def registered(table: dict[str, str], scheme: str) -> Any:
    """The store class the registry names for ``scheme``."""
    module, _, name = table[scheme].partition(":")
    return getattr(importlib.import_module(module), name)


RedisStore = registered(SYNC_STORES, "redis")
AsyncRedisStore = registered(ASYNC_STORES, "redis")


def opener(kind: Callable[[StoreURL, Settings], Any], url: str) -> StoreFactory:
    """Store objects of ``kind`` on the backing store at ``url``."""
    parsed = StoreURL.parse(url)
    return lambda settings: kind(parsed, settings)


def memory_url() -> str:
    return f"memory://contract{uuid.uuid4().hex}"


class TestMemoryStore(BasicStoreContract, PollContract, TombstoneContract):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return opener(MemoryStore, memory_url())


class TestAsyncMemoryStore(BasicStoreContract, PollContract, TombstoneContract):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return opener(AsyncMemoryStore, memory_url())


class TestJsonFileStore(BasicStoreContract, PollContract, TombstoneContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return opener(JsonFileStore, str(tmp_path / "sessions.json"))


class TestAioFileStore(BasicStoreContract, PollContract, TombstoneContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return opener(AioFileStore, f"aiofile://{tmp_path / 'sessions.json'}")


class TestRedisStore(BasicStoreContract, TombstoneContract, SlotContract, WatchContract):
    @pytest.fixture
    def store_factory(self, any_redis_url: str) -> StoreFactory:
        return opener(RedisStore, any_redis_url)


class TestAsyncRedisStore(BasicStoreContract, TombstoneContract, SlotContract, WatchContract):
    @pytest.fixture
    def store_factory(self, any_redis_url: str) -> StoreFactory:
        return opener(AsyncRedisStore, any_redis_url)


# -- interface uniformity --------------------------------------------------------------

TWINS = [
    pytest.param(MemoryStore, AsyncMemoryStore, id="memory"),
    pytest.param(JsonFileStore, AioFileStore, id="file"),
    pytest.param(RedisStore, AsyncRedisStore, id="redis"),
]
PROTOCOL = {"load", "load_user", "write", "purge_expired", "poll", "scan", "count", "close"}


@pytest.mark.parametrize(("blocking", "asynchronous"), TWINS)
def test_each_store_and_its_asyncio_twin_offer_the_same_methods(
    blocking: type, asynchronous: type
) -> None:
    assert_twins(blocking, asynchronous)
    assert PROTOCOL | {"ended"} <= set(public_methods(blocking))


class _Blocking:
    def load(self, session_id: str) -> None: ...

    def scan(self) -> Iterator[str]:
        return iter(())

    def close(self) -> None: ...


class _Twin:
    async def load(self, session_id: str) -> None: ...

    async def scan(self) -> AsyncIterator[str]:
        yield "session"

    async def close(self) -> None: ...


class _BlockingScan:
    async def load(self, session_id: str) -> None: ...

    def scan(self) -> Iterator[str]:  # blocks where its twin would iterate with async for
        return iter(())

    async def close(self) -> None: ...


class _BlockingClose:
    async def load(self, session_id: str) -> None: ...

    async def scan(self) -> AsyncIterator[str]:
        yield "session"

    def close(self) -> None: ...  # not a coroutine function


class _Lacking:
    async def load(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


def test_assert_twins_passes_twins_and_catches_a_missing_method_or_one_of_the_wrong_kind() -> None:
    with pytest.raises(AssertionError, match=r"\['scan'\] vs \[\]"):
        assert_twins(_Blocking, _Lacking)
    with pytest.raises(AssertionError, match="scan is a plain and a plain"):
        assert_twins(_Blocking, _BlockingScan)
    with pytest.raises(AssertionError, match="close is a plain and a plain"):
        assert_twins(_Blocking, _BlockingClose)
    assert_twins(_Blocking, _Twin)


def test_the_library_imports_without_pytest() -> None:
    code = "import sys, pooled_sessions, pooled_sessions.adapters; print('pytest' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- the contract has teeth --------------------------------------------------------------

BROKEN_MEMORY_STORES = """
import dataclasses
import uuid

import pytest

from pooled_sessions.adapters.memory import MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Upsert
from pooled_sessions.testing import BasicStoreContract, PollContract, TombstoneContract


class DropsUserAgent(MemoryStore):
    def load(self, session_id):
        record = super().load(session_id)
        return None if record is None else {**record, "user_agent": None}


class WritesWholeSessions(MemoryStore):
    def write(self, operations, now):
        whole = [
            dataclasses.replace(op, changed=frozenset(op.attributes))
            if isinstance(op, Upsert) else op
            for op in operations
        ]
        return super().write(whole, now)


class MergesCreates(MemoryStore):
    def write(self, operations, now):
        plain = [
            dataclasses.replace(op, create=False) if isinstance(op, Upsert) else op
            for op in operations
        ]
        return super().write(plain, now)


class RecreatesLostSessions(MemoryStore):
    def write(self, operations, now):
        whole = [
            dataclasses.replace(op, created=True)
            if isinstance(op, Upsert) and self.load(op.session_id) is None else op
            for op in operations
        ]
        return super().write(whole, now)


class ForgetsEnds(MemoryStore):
    def write(self, operations, now):
        result = super().write(operations, now)
        self._table.tombstones.clear()
        return result


class NeverPolls(MemoryStore):
    def poll(self):
        return False


def factory(kind):
    url = StoreURL.parse(f"memory://broken{uuid.uuid4().hex}")
    return lambda settings: kind(url, settings)


class TestDropsUserAgent(BasicStoreContract):
    @pytest.fixture
    def store_factory(self):
        return factory(DropsUserAgent)


class TestWritesWholeSessions(BasicStoreContract):
    @pytest.fixture
    def store_factory(self):
        return factory(WritesWholeSessions)


class TestMergesCreates(BasicStoreContract):
    @pytest.fixture
    def store_factory(self):
        return factory(MergesCreates)


class TestRecreatesLostSessions(BasicStoreContract):
    @pytest.fixture
    def store_factory(self):
        return factory(RecreatesLostSessions)


class TestForgetsEnds(TombstoneContract):
    @pytest.fixture
    def store_factory(self):
        return factory(ForgetsEnds)


class TestNeverPolls(PollContract):
    @pytest.fixture
    def store_factory(self):
        return factory(NeverPolls)
"""

BROKEN_REDIS_STORES = """
import importlib

import pytest

from pooled_sessions.adapters import SYNC_STORES
from pooled_sessions.testing import SlotContract, WatchContract

URL = {url!r}
module, _, name = SYNC_STORES["redis"].partition(":")
RedisStore = getattr(importlib.import_module(module), name)


class GreedySlots(RedisStore):
    def claim_slot(self, session_id, expires_at, limit, replaces=()):
        super().claim_slot(session_id, expires_at, limit, replaces)
        return True


class Deaf(RedisStore):
    def watch(self, callback):
        pass


class TestGreedySlots(SlotContract):
    @pytest.fixture
    def store_factory(self):
        return lambda settings: GreedySlots(URL, settings)


class TestDeaf(WatchContract):
    watch_timeout = 0.3

    @pytest.fixture
    def store_factory(self):
        return lambda settings: Deaf(URL, settings)
"""


def outcomes(pytester: pytest.Pytester, source: str) -> tuple[set[str], set[str]]:
    """Names (``Class::test``) of the tests that passed and failed in ``source``."""
    pytester.makepyfile(test_broken=source)
    recorded = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:asyncio")
    passed, _, failed = recorded.listoutcomes()
    return (
        {report.nodeid.split("::", 1)[1] for report in passed},
        {report.nodeid.split("::", 1)[1] for report in failed},
    )


def test_the_contract_fails_stores_that_break_it(pytester: pytest.Pytester) -> None:
    passed, failed = outcomes(pytester, BROKEN_MEMORY_STORES)
    assert {
        "TestDropsUserAgent::test_records_round_trip_every_field_unchanged",
        "TestWritesWholeSessions::test_an_upsert_applies_only_its_changed_and_removed_attributes",
        "TestForgetsEnds::test_an_end_is_seen_by_every_store_object",
        "TestForgetsEnds::test_a_late_write_to_an_ended_id_is_refused",
        "TestNeverPolls::test_poll_reports_another_store_objects_write_once",
        "TestMergesCreates::test_a_create_of_an_id_another_session_holds_is_taken",
        "TestMergesCreates::test_a_large_batch_reports_exactly_its_taken_ids",
        "TestRecreatesLostSessions::test_a_partial_upsert_of_a_session_the_store_lacks_is_refused",
    } <= failed
    assert "TestDropsUserAgent::test_load_user_returns_that_users_sessions_only" not in failed
    assert "TestMergesCreates::test_a_create_sent_again_is_applied_not_taken" in passed
    assert "TestRecreatesLostSessions::test_a_create_sent_again_is_applied_not_taken" in passed
    for name in ("TestDropsUserAgent", "TestWritesWholeSessions", "TestForgetsEnds"):
        assert any(test.startswith(f"{name}::") for test in passed), f"{name}: nothing ran"


@pytest.mark.redis
def test_the_slot_and_watch_contracts_fail_stores_that_break_them(
    pytester: pytest.Pytester, redis_url: str
) -> None:
    passed, failed = outcomes(pytester, BROKEN_REDIS_STORES.format(url=redis_url))
    assert {
        "TestGreedySlots::test_slots_are_limited_across_store_objects",
        "TestGreedySlots::test_an_end_frees_its_slot",
        "TestDeaf::test_an_end_by_another_store_object_is_told",
        "TestDeaf::test_a_change_by_another_store_object_is_told",
    } <= failed
    assert "TestGreedySlots::test_the_store_can_claim_slots" in passed
    assert "TestDeaf::test_the_store_can_watch" in passed
