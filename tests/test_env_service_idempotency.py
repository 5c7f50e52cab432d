"""The request deduplicator on its own: one run per key, outcomes kept for a while, 503s rerun."""

from __future__ import annotations

import asyncio

import pytest

from browser_control.env_service.idempotency import IdempotencyKeyReused, RequestDeduplicator


class Busy(Exception):
    pass


def test_concurrent_and_later_requests_with_one_key_share_one_run() -> None:
    async def scenario() -> None:
        dedup = RequestDeduplicator()
        runs = 0
        release = asyncio.Event()

        async def work() -> int:
            nonlocal runs
            runs += 1
            await release.wait()
            return runs

        first = asyncio.create_task(dedup.run("key-0001", "/step a", work))
        second = asyncio.create_task(dedup.run("key-0001", "/step a", work))
        await asyncio.sleep(0)
        # the first caller gives up (client timeout, server cancel): the work still finishes for the retry
        first.cancel()
        release.set()
        assert await second == (1, True)
        assert await dedup.run("key-0001", "/step a", work) == (1, True)
        assert await dedup.run("key-0002", "/step a", work) == (2, False)
        assert await dedup.run(None, "/step a", work) == (3, False)
        assert runs == 3
        with pytest.raises(IdempotencyKeyReused):
            await dedup.run("key-0001", "/step b", work)

    asyncio.run(scenario())


def test_errors_are_replayed_but_503s_rerun() -> None:
    async def scenario() -> None:
        dedup = RequestDeduplicator(rerun_after=lambda exc: isinstance(exc, Busy))
        runs = 0

        async def fail(exc: Exception) -> None:
            nonlocal runs
            runs += 1
            raise exc

        for _ in range(2):
            with pytest.raises(ValueError):
                await dedup.run("key-0003", "x", lambda: fail(ValueError("lost")))
        assert runs == 1
        for _ in range(2):
            with pytest.raises(Busy):
                await dedup.run("key-0004", "x", lambda: fail(Busy()))
        assert runs == 3

    asyncio.run(scenario())


def test_old_outcomes_are_forgotten_by_age_and_by_count() -> None:
    async def scenario() -> None:
        async def work() -> str:
            return "ok"

        by_count = RequestDeduplicator(max_entries=3)
        for i in range(10):
            await by_count.run(f"key-{i:04d}", "x", work)
        assert len(by_count) <= 4

        by_age = RequestDeduplicator(ttl_s=0.0)
        for i in range(10):
            await by_age.run(f"key-{i:04d}", "x", work)
        assert len(by_age) <= 1

    asyncio.run(scenario())
