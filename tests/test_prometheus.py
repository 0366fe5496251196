"""The Prometheus collector: a scrape of a real service through ``generate_latest``, for the
blocking and the asyncio service (read on its loop, which a scrape never blocks)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pooled_sessions import AsyncSessionService, SessionService
from pooled_sessions.integrations.prometheus import COUNTERS, GAUGES, SessionCollector


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of a scrape, by name."""
    text = generate_latest(registry).decode()
    families = text_string_to_metric_families(text)
    return {sample.name: sample.value for family in families for sample in family.samples}


def test_a_scrape_shows_the_services_counters(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(str(path), pool={"max_total": 8}) as service:
        registry = CollectorRegistry()
        registry.register(SessionCollector(service))
        ids = [service.create_session(f"user{n}", {"n": n}) for n in range(3)]
        service.update_session(ids[0], {"cart": [1, 2]})
        service.end_session(ids[1])
        samples = scrape(registry)
        stats = service.stats()
    assert samples["pooled_sessions_live_sessions"] == 2
    assert samples["pooled_sessions_pending_writes"] == 0
    assert samples["pooled_sessions_store_up"] == 1
    assert samples["pooled_sessions_flushes_total"] == stats["flushes"] >= 5
    assert samples["pooled_sessions_changes_total"] == stats["changes"]
    assert samples["pooled_sessions_store_errors_total"] == 0
    assert samples["pooled_sessions_pool_max_sessions"] == 8
    assert "pooled_sessions_last_cleanup_timestamp_seconds" not in samples  # none yet


def test_every_metric_has_help_and_the_store_label(tmp_path: Path) -> None:
    with SessionService(str(tmp_path / "sessions.json")) as service:
        registry = CollectorRegistry()
        registry.register(SessionCollector(service))
        text = generate_latest(registry).decode()
    for name, _ in [*GAUGES.values(), *COUNTERS.values()]:
        assert f"# HELP pooled_sessions_{name}" in text
    assert f'pooled_sessions_live_sessions{{store="{tmp_path}/sessions.json"}} 0.0' in text


def test_one_collector_shows_several_services_by_store(tmp_path: Path) -> None:
    with SessionService("memory://") as memory, SessionService(str(tmp_path / "s.json")) as file:
        registry = CollectorRegistry()
        registry.register(SessionCollector(memory, file))
        file.create_session("alice")
        text = generate_latest(registry).decode()
    assert 'pooled_sessions_live_sessions{store="memory://"} 0.0' in text
    assert f'pooled_sessions_live_sessions{{store="{tmp_path}/s.json"}} 1.0' in text


async def test_an_asyncio_service_is_read_on_its_loop_also_from_a_scrape_thread() -> None:
    async with AsyncSessionService("memory://") as service:
        registry = CollectorRegistry()
        registry.register(SessionCollector(service))
        await service.create_session("alice", {"cart": []})
        assert scrape(registry)["pooled_sessions_live_sessions"] == 1  # on the loop's thread
        from_thread, _ = await asyncio.gather(  # the loop runs on while the thread waits
            asyncio.to_thread(scrape, registry), service.create_session("bob")
        )
        assert from_thread["pooled_sessions_live_sessions"] in (1, 2)
        assert scrape(registry)["pooled_sessions_live_sessions"] == 2


def test_an_unused_asyncio_service_is_read_at_once() -> None:
    service = AsyncSessionService("memory://", check_store=False)
    registry = CollectorRegistry()
    registry.register(SessionCollector(service))
    assert scrape(registry)["pooled_sessions_live_sessions"] == 0
    asyncio.run(service.shutdown())
