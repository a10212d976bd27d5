"""The access-key check cache: bursts share one read, changes take effect at once."""

from __future__ import annotations

from datetime import UTC, datetime

import trio
import trio.testing

from storage.accounts import ApiKeyRecord, KeyAuthRecord, UserRecord
from web.key_cache import KeyAuthCache


class Reads:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> KeyAuthRecord | None:
        self.count += 1
        await trio.sleep(0.1)
        return None


def record(n: int) -> KeyAuthRecord:
    """A distinct record per key (ids and access key ``k<n>``)."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    owner = UserRecord(id=100 + n, email=f"u{n}@example.com", password_hash=None, name=None,
                       phone_number=None, profile_img=None, sns_type="email", status="active",
                       marketing_agree=False, created_at=when, updated_at=when)
    key = ApiKeyRecord(id=n, user_id=owner.id, access_key=f"k{n}", secret_key=f"s{n}",
                       user_memo=None, status="active", is_whitelisted=False, created_at=when,
                       updated_at=when)
    return KeyAuthRecord(key=key, owner=owner, allowed=(f"10.0.0.{n}",))


class RecordReads(Reads):
    def __init__(self, found: KeyAuthRecord) -> None:
        super().__init__()
        self.found = found

    async def __call__(self) -> KeyAuthRecord | None:
        await super().__call__()
        return self.found


async def test_a_burst_of_lookups_reads_once(autojump_clock: trio.testing.MockClock) -> None:
    """Bursts on three keys at once, some waiters arriving mid-read: one read per key, and
    every waiter gets its own key's record (the one its key's read returned)."""
    cache = KeyAuthCache(ttl=5)
    reads = {n: RecordReads(record(n)) for n in range(3)}
    got: dict[tuple[int, int], KeyAuthRecord | None] = {}

    async def lookup(n: int, waiter: int) -> None:
        got[n, waiter] = await cache.get(f"k{n}", reads[n])

    async with trio.open_nursery() as nursery:
        for waiter in range(100):
            if waiter == 50:
                await trio.sleep(0.05)  # the reads (0.1 s each) are under way
            for n in reads:
                nursery.start_soon(lookup, n, waiter)
    for n in reads:  # and afterwards, from the entry
        await lookup(n, 100)
    assert {n: r.count for n, r in reads.items()} == {0: 1, 1: 1, 2: 1}
    assert len(got) == 3 * 101
    wrong = {who: rec for who, rec in got.items() if rec is not reads[who[0]].found}
    assert not wrong, wrong


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
