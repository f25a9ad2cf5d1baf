"""The customer search index as a tree of small sorted sets (worker.search_index)."""

from __future__ import annotations

import random

import redis

from crm.profile import OrderRecord, Profile
from worker import search_index

SHOP = "search-test.myshopify.com"
BASE = 7_000_000_000_000
FAMILY = ("sato", "suzuki", "takahashi", "tanaka", "佐藤", "鈴木", "高橋", "ito", "watanabe")
GIVEN = ("hana", "yui", "aoi", "ren", "sora", "花子", "結衣", "haruto", "mei")


def person(n: int, rng: random.Random) -> Profile:
    p = Profile(
        customer_id=BASE + n * 37,
        first_name=rng.choice(GIVEN),
        last_name=rng.choice(FAMILY),
        email=f"{rng.choice(GIVEN)}.{n}@{rng.choice(('example.com', 'gmail.com'))}",
    )
    for k in range(rng.randrange(3)):
        p.orders[n * 10 + k] = OrderRecord(id=n * 10 + k, name=f"#{1000 + n * 3 + k}")
    return p


def expected(people: list[Profile], query: str) -> set[int]:
    q = search_index._norm(query)
    return {p.customer_id for p in people if any(t.startswith(q) for t in search_index.terms(p))}


def stored_buckets(conn: redis.Redis) -> dict[bytes, list[bytes]]:
    return {
        b: conn.zrange(search_index.bucket_key(SHOP, b), 0, -1)  # type: ignore[misc]
        for b in search_index._bounds(conn, SHOP)
    }


def test_prefix_search_over_many_small_buckets(conn: redis.Redis) -> None:
    """1,500 customers indexed 300 at a time: every bucket is a listpack of at most CAP members
    of at most 64 bytes, each in the right bucket, and prefix lookups (names, "first last",
    emails, order numbers with or without #, Japanese) answer what a scan of the terms
    answers. Must not: miss a customer, answer one who does not match."""
    rng = random.Random(5)
    people = [person(n, rng) for n in range(1500)]
    for start in range(0, len(people), 300):
        search_index.reindex(conn, SHOP, people[start : start + 300])
    buckets = stored_buckets(conn)
    assert len(buckets) > 1500 * 4 // search_index.CAP
    bounds = sorted(buckets)
    for i, spelled in enumerate(bounds):
        members = buckets[spelled]
        key = search_index.bucket_key(SHOP, spelled)
        bound = search_index.unspell(spelled)
        assert conn.object("encoding", key) in (b"listpack", b"ziplist"), bound  # 7.x, 6.x
        assert 0 < len(members) <= search_index.CAP
        assert all(len(m) <= 64 for m in members)
        upper = search_index.unspell(bounds[i + 1]) if i + 1 < len(bounds) else None
        assert all(bound <= m and (upper is None or m < upper) for m in members)
        assert spelled.isalpha() or spelled == b""
    for query in ("sa", "sato", "SATO H", "hana.1", "yui.14", "佐藤", "佐藤 ", "#1003", "100",
                  "gmail", "takahashi sora", "zzz", "h"):  # fmt: skip
        want = expected(people, query)
        got = search_index.find(conn, SHOP, query, limit=5000)
        assert set(got) == want, query
        assert len(got) == len(want)
    assert len(search_index.find(conn, SHOP, "h", limit=25)) == 25


def test_changes_move_terms_and_empty_buckets_go(conn: redis.Redis) -> None:
    """Renaming every customer, then deleting them, leaves no stale term and no empty bucket
    or dangling bound. Must not: find someone under a name they no longer have."""
    rng = random.Random(6)
    people = [person(n, rng) for n in range(600)]
    search_index.reindex(conn, SHOP, people)
    renamed = []
    for p in people:
        q = p.copy()
        q.last_name = "yamada"
        renamed.append(q)
    with conn.pipeline(transaction=True) as pipe:
        search_index.update_many(pipe, SHOP, list(zip(people, renamed, strict=True)))
        pipe.execute()
    assert set(search_index.find(conn, SHOP, "yamada", limit=5000)) == {
        p.customer_id for p in people
    }
    for old in ("sato", "tanaka", "佐藤"):
        assert search_index.find(conn, SHOP, old) == []
    search_index.update_many(conn, SHOP, [(p, None) for p in renamed])
    assert conn.zcard(search_index.directory_key(SHOP)) == 0
    assert stored_buckets(conn) == {b"": []}
    assert not list(conn.scan_iter(f"kizuna:{SHOP}:search*"))


def test_long_terms_are_cut_and_still_found(conn: redis.Redis) -> None:
    """An email of 80 characters and a Japanese name of 30 characters are stored cut at 48
    bytes (a member stays within 64 bytes) and found by any prefix, even one longer than the
    cut. Must not: store a member that forces the large encoding."""
    p = Profile(
        customer_id=2**62,
        email="a-very-long-local-part-for-testing-cuts." + "x" * 30 + "@example.com",
        last_name="長" * 30,
    )
    search_index.update(conn, SHOP, None, p)
    members = [m for ms in stored_buckets(conn).values() for m in ms]
    assert members and all(len(m) <= 64 for m in members)
    assert search_index.find(conn, SHOP, "a-very-long") == [2**62]
    assert search_index.find(conn, SHOP, p.email or "") == [2**62]
    assert search_index.find(conn, SHOP, "長" * 20) == [2**62]


def test_a_redact_removes_every_term_of_one_customer(conn: redis.Redis) -> None:
    """``remove_customer`` scans the index and drops one customer's terms (both layouts),
    leaving the others. Must not: leave a term that still finds them."""
    rng = random.Random(7)
    people = [person(n, rng) for n in range(400)]
    search_index.reindex(conn, SHOP, people)
    target = people[17]
    conn.zadd(search_index.search_key(SHOP), {f"oldterm{search_index.SEP}{target.customer_id}": 0})
    removed = search_index.remove_customer(conn, SHOP, target.customer_id)
    assert removed == len(search_index.terms(target)) + 1
    for term in search_index.terms(target) | {"oldterm"}:
        assert target.customer_id not in search_index.find(conn, SHOP, term, limit=5000)
    assert search_index.find(conn, SHOP, people[18].email or "") == [people[18].customer_id]
