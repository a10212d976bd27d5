"""The access-key check cache: bursts share one read, changes take effect at once."""

from __future__ import annotations

import trio
import trio.testing

from storage.accounts import KeyAuthRecord
from web.key_cache import KeyAuthCache


class Reads:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> KeyAuthRecord | None:
        self.count += 1
        await trio.sleep(0.1)
        return None


async def test_a_burst_of_lookups_reads_once(autojump_clock: trio.testing.MockClock) -> None:
    cache, reads = KeyAuthCache(ttl=5), Reads()
    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(cache.get, "k", reads)
    assert reads.count == 1


async def test_entries_expire(autojump_clock: trio.testing.MockClock) -> None:
    cache, reads = KeyAuthCache(ttl=5), Reads()
    await cache.get("k", reads)
    await cache.get("k", reads)
    assert reads.count == 1
    await trio.sleep(6)
    await cache.get("k", reads)
    assert reads.count == 2


async def test_clear_drops_entries_and_loads_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache, reads = KeyAuthCache(ttl=5), Reads()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.get, "k", reads)
        await trio.sleep(0.05)
        cache.clear()  # a change landed while the read was running: its result is not kept
    await cache.get("k", reads)
    assert reads.count == 2


async def test_ttl_zero_turns_it_off() -> None:
    cache, reads = KeyAuthCache(ttl=0), Reads()
    await cache.get("k", reads)
    await cache.get("k", reads)
    assert reads.count == 2
