"""Customer lists in buckets that keep Redis's compact encoding (worker.list_index)."""

from __future__ import annotations

import random

import redis

from worker import list_index

SHOP = "lists-test.myshopify.com"
BASE = 7_000_000_000_000


def add(conn: redis.Redis, name: str, ids: list[int]) -> None:
    list_index.queue_changes(conn, SHOP, {name: ids}, {})


def remove(conn: redis.Redis, name: str, ids: list[int]) -> None:
    list_index.queue_changes(conn, SHOP, {}, {name: ids})


def buckets_of(conn: redis.Redis, name: str) -> list[str]:
    n = list_index.buckets(conn, SHOP, [name])[name]
    return [list_index.index_key(SHOP, name, b) for b in range(n)]


def test_a_large_list_stays_in_small_integer_sets(conn: redis.Redis) -> None:
    """3,000 customers added 500 at a time: the list grows buckets, each an intset of at most
    512 members, and counts, pages and membership answer as one set would. Must not: let a
    bucket fall into the hash-table encoding, lose or repeat a member."""
    ids = [BASE + 7 * i for i in range(3000)]
    for start in range(0, 3000, 500):
        add(conn, "all", ids[start : start + 500])
    add(conn, "segment:loyal", ids[:40])
    keys = buckets_of(conn, "all")
    assert len(keys) >= 3000 // (2 * list_index.LOAD)
    for key in keys:
        assert conn.object("encoding", key) == b"intset", key
        assert 0 < conn.scard(key) <= 512
    assert list_index.count(conn, SHOP, "all") == 3000
    assert list_index.counts(conn, SHOP) == {"all": 3000, "segment:loyal": 40}
    assert list(list_index.iter_members(conn, SHOP, "all", batch=128)) != []
    assert sorted(list_index.iter_members(conn, SHOP, "all", batch=128)) == ids
    assert list_index.contains(conn, SHOP, ["all", "segment:loyal"], [ids[0], ids[100], 5]) == [
        True, False, False,
    ]  # fmt: skip

    remove(conn, "all", ids[::2])
    assert list_index.count(conn, SHOP, "all") == 1500
    assert sorted(list_index.iter_members(conn, SHOP, "all")) == ids[1::2]
    assert conn.hget(list_index.sizes_key(SHOP), "all") == b"1500"


def test_pages_never_exceed_the_count_and_end_with_cursor_zero(conn: redis.Redis) -> None:
    """Paging 1,000 members 64 at a time: no page is larger than asked, the last cursor is 0,
    and every member comes back exactly once."""
    ids = [BASE + i for i in range(1000)]
    add(conn, "all", ids)
    seen: list[int] = []
    cursor, pages = 0, 0
    while True:
        cursor, page = list_index.members(conn, SHOP, "all", cursor, 64)
        assert len(page) <= 64
        seen += page
        pages += 1
        assert pages < 100
        if cursor == 0:
            break
    assert sorted(seen) == ids and len(seen) == len(ids)


def test_a_scan_sees_every_member_that_stays_while_the_list_grows(conn: redis.Redis) -> None:
    """Between every two pages another 30 customers join (so buckets split under the scan).
    Must not: miss a customer who was in the list before the scan started."""
    rng = random.Random(3)
    before = [BASE + rng.randrange(10**9) for _ in range(800)]
    add(conn, "all", before)
    seen: set[int] = set()
    cursor = 0
    for step in range(200):
        cursor, page = list_index.members(conn, SHOP, "all", cursor, 50)
        seen.update(page)
        if cursor == 0:
            break
        add(conn, "all", [BASE + 10**10 + step * 1000 + i for i in range(30)])
    assert cursor == 0
    assert set(before) <= seen
    assert list_index.buckets(conn, SHOP, ["all"])["all"] > 4


def test_a_list_of_the_previous_layout_is_read_and_split_on_its_next_write(
    conn: redis.Redis,
) -> None:
    """A list stored by the previous version (one set of 2,000 ids, a hash table, no bucket
    count) is counted and paged as it is; the next write splits it into compact buckets
    without losing anyone."""
    ids = [BASE + 13 * i for i in range(2000)]
    conn.sadd(list_index.index_key(SHOP, "all"), *ids)
    conn.sadd(list_index.indexes_key(SHOP), "all")
    assert conn.object("encoding", list_index.index_key(SHOP, "all")) == b"hashtable"
    assert list_index.count(conn, SHOP, "all") == 2000
    assert sorted(list_index.iter_members(conn, SHOP, "all")) == ids
    assert list_index.contains(conn, SHOP, ["all"], ids[:3]) == [True, True, True]

    add(conn, "all", [1])
    keys = buckets_of(conn, "all")
    assert len(keys) > 8
    assert all(conn.object("encoding", k) == b"intset" for k in keys)
    assert sorted(list_index.iter_members(conn, SHOP, "all")) == [1, *ids]
    assert list_index.counts(conn, SHOP) == {"all": 2001}


def test_writes_join_the_callers_transaction(conn: redis.Redis) -> None:
    """Changes queued on a MULTI pipeline happen when it executes, not before; a discarded
    transaction changes nothing."""
    with conn.pipeline(transaction=True) as pipe:
        list_index.queue_changes(pipe, SHOP, {"all": [BASE]}, {})
        assert list_index.count(conn, SHOP, "all") == 0
        pipe.reset()
    assert list_index.count(conn, SHOP, "all") == 0 and not conn.exists(list_index.sizes_key(SHOP))
    with conn.pipeline(transaction=True) as pipe:
        list_index.queue_changes(pipe, SHOP, {"all": [BASE]}, {})
        pipe.execute()
    assert list_index.count(conn, SHOP, "all") == 1
