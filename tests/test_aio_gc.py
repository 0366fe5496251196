"""AsyncSessionService moves its long-lived sessions out of the garbage collector's walk
after large growth (pooled_sessions/service_gc.py); no timing is asserted."""

from __future__ import annotations

import gc
from collections.abc import Collection, Iterator
from typing import Any

import pytest

from pooled_sessions import AsyncSessionService, service_gc
from pooled_sessions.engine.entry import Entry

ON_DEMAND: dict[str, Any] = {
    "write_behind": True,  # flushes only when the test asks
    "save_delay_seconds": 3600,
    "batch_save_threshold": 10**9,
}


@pytest.fixture
def small_marks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Freeze from 300 live sessions, every 200 new ones; unfreeze what the test froze."""
    monkeypatch.setattr(service_gc, "FREEZE_FROM", 300)
    monkeypatch.setattr(service_gc, "FREEZE_EVERY", 200)
    yield
    gc.unfreeze()


def walked(session_ids: Collection[str]) -> set[str]:
    """Which of these sessions' engine entries the collector walks (its generations 0-2)."""
    wanted = set(session_ids)
    return {o.session_id for o in gc.get_objects() if type(o) is Entry and o.session_id in wanted}


async def create(svc: AsyncSessionService, count: int, start: int = 0) -> list[str]:
    return [await svc.create_session(f"user{n}", {"cart": [n]}) for n in range(start, count)]


async def test_a_large_load_leaves_the_collectors_walk_after_its_flush(small_marks: None) -> None:
    async with AsyncSessionService("memory://", **ON_DEMAND) as svc:
        frozen = gc.get_freeze_count()
        ids = await create(svc, 300)
        assert walked(ids) == set(ids), "nothing is frozen before the flush"
        assert gc.get_freeze_count() == frozen
        await svc.force_save()
        # each session: its entry and user index, and the store's record, attributes, list
        # and user index; all moved at once, with everything else alive
        assert gc.get_freeze_count() >= frozen + 6 * 300
        assert walked(ids) == set()
        gc.collect()
        assert walked(ids) == set(), "a full collection still leaves them out"
        assert await svc.validate_session(ids[0]), "frozen sessions work as before"
        assert await svc.update_session(ids[1], {"cart": [2]})
        await svc.force_save()
        assert (await svc.get_session(ids[1])) is not None


async def test_later_sessions_are_frozen_once_enough_of_them_came(small_marks: None) -> None:
    async with AsyncSessionService("memory://", **ON_DEMAND) as svc:
        await create(svc, 300)
        await svc.force_save()
        frozen = gc.get_freeze_count()
        few = await create(svc, 400, start=300)
        await svc.force_save()
        assert walked(few) == set(few), "100 new sessions are not worth a freeze"
        more = await create(svc, 500, start=400)
        await svc.force_save()
        assert walked(few + more) == set(), "200 since the last freeze are"
        assert gc.get_freeze_count() > frozen


async def test_a_small_service_never_freezes(small_marks: None) -> None:
    async with AsyncSessionService("memory://", **ON_DEMAND) as svc:
        frozen = gc.get_freeze_count()
        ids = await create(svc, 299)
        await svc.force_save()
        assert gc.get_freeze_count() == frozen
        assert walked(ids) == set(ids)
