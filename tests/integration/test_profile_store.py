"""Profiles and list indexes in Redis: save, load, counts, pages, CSV export, size."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import redis

from crm.events import LineItem
from crm.profile import OrderRecord, Profile
from crm.segments import Thresholds
from worker import profile_store

SHOP = "store-test.myshopify.com"
NOW = datetime(2026, 7, 1, tzinfo=UTC)


def customer(cid: int, *, orders: int = 0, spent: str = "40.00", **fields: object) -> Profile:
    """A typical customer: a few orders of two products, consent, a birthday metafield."""
    p = Profile(
        customer_id=cid,
        email=f"c{cid}@example.com",
        first_name="Hana",
        last_name="Sato",
        created_at=datetime(2026, 4, 3, tzinfo=UTC),
        email_marketing_state="SUBSCRIBED",
        city="Kyoto",
        province_code="JP-26",
        country_code="JP",
        zip="600-8001",
    )
    for n in range(orders):
        oid = cid * 1000 + n
        p.orders[oid] = OrderRecord(
            id=oid,
            name=f"#{1000 + n}",
            created_at=datetime(2026, 5, 1, tzinfo=UTC) + timedelta(days=30 * n),
            paid_at=datetime(2026, 5, 1, tzinfo=UTC) + timedelta(days=30 * n),
            updated_at=datetime(2026, 5, 2, tzinfo=UTC) + timedelta(days=30 * n),
            total=Decimal(spent),
            currency="USD",
            line_items=(
                LineItem(product_id=77, variant_id=7701, quantity=2, title="Green tea", sku="GT"),
                LineItem(product_id=88, variant_id=8801, quantity=1, title="Cup", sku="CUP"),
            ),
        )
    for name, value in fields.items():
        setattr(p, name, value)
    return p


def test_save_and_load_round_trip(conn: redis.Redis) -> None:
    p = customer(1, orders=2)
    profile_store.save(conn, SHOP, p, now=NOW)
    loaded = profile_store.load(conn, SHOP, 1)
    assert loaded is not None
    assert loaded.to_dict() == p.to_dict()
    assert loaded.order_count == 2 and loaded.total_spent == Decimal("80.00")
    assert profile_store.load(conn, SHOP, 2) is None


def test_a_typical_profile_stays_under_one_kilobyte(conn: redis.Redis) -> None:
    p = customer(706405506930370084, orders=3, tags=("vip", "kizuna:tea:1"))
    p.metafields["facts.birth_date"] = "1990-03-14"
    profile_store.save(conn, SHOP, p, now=NOW)
    size = conn.strlen(profile_store.profile_key(SHOP, p.customer_id))
    assert size < 1024, size


def test_lists_follow_the_profile_as_it_changes(conn: redis.Redis) -> None:
    profile_store.save(conn, SHOP, customer(1, orders=1), now=NOW)
    profile_store.save(conn, SHOP, customer(2), now=NOW)
    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts["all"] == 2
    assert counts["segment:new"] == 1 and counts["segment:prospect"] == 1
    assert counts["product:77"] == 1 and counts["signup:2026-04"] == 2
    assert counts["consent:SUBSCRIBED"] == 2
    # Customer 1 buys twice more, spending enough to be loyal; customer 2 unsubscribes.
    usd = Thresholds.for_currency("USD")  # loyal: 3 orders and 200 USD
    profile_store.save(conn, SHOP, customer(1, orders=3, spent="100.00"), now=NOW, thresholds=usd)
    profile_store.save(conn, SHOP, customer(2, email_marketing_state="UNSUBSCRIBED"), now=NOW)
    counts = profile_store.count_by_segment(conn, SHOP)
    assert "segment:new" not in counts and "segment:prospect" not in counts
    assert counts["segment:loyal"] == 1
    assert counts["consent:SUBSCRIBED"] == 1 and counts["consent:UNSUBSCRIBED"] == 1
    assert profile_store.members(conn, SHOP, "segment:loyal") == (0, [1])


def test_a_deleted_profile_leaves_every_list(conn: redis.Redis) -> None:
    profile_store.save(conn, SHOP, customer(1, orders=1), now=NOW)
    gone = customer(1, orders=1)
    gone.deleted = True
    profile_store.save(conn, SHOP, gone, now=NOW)
    assert profile_store.count_by_segment(conn, SHOP) == {}
    assert profile_store.delete(conn, SHOP, 1) is True
    assert profile_store.load(conn, SHOP, 1) is None
    assert profile_store.delete(conn, SHOP, 1) is False


def test_time_dependent_lists_are_computed_for_now(conn: redis.Redis) -> None:
    p = customer(1, orders=1)
    profile_store.save(conn, SHOP, p, now=NOW)
    assert "segment:new" in profile_store.count_by_segment(conn, SHOP)
    profile_store.save(conn, SHOP, p, now=NOW + timedelta(days=200))
    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts.get("segment:dormant") == 1 and "segment:new" not in counts


def test_members_pages_through_a_list_without_loss(conn: redis.Redis) -> None:
    with conn.pipeline() as pipe:
        for cid in range(1, 1201):
            profile_store.save(conn, SHOP, customer(cid), now=NOW, pipe=pipe, old_keys=())
        pipe.execute()
    seen: list[int] = []
    cursor, pages = 0, 0
    while True:
        cursor, ids = profile_store.members(conn, SHOP, "segment:prospect", cursor, 200)
        seen += ids
        pages += 1
        if cursor == 0:
            break
    assert set(seen) == set(range(1, 1201)) and pages > 1
    assert profile_store.count(conn, SHOP, "segment:prospect") == 1200


def test_shops_do_not_share_lists(conn: redis.Redis) -> None:
    profile_store.save(conn, SHOP, customer(1), now=NOW)
    assert profile_store.count_by_segment(conn, "other.myshopify.com") == {}
    assert profile_store.load(conn, "other.myshopify.com", 1) is None
    assert all(k.startswith(f"kizuna:{SHOP}:".encode()) for k in conn.scan_iter("kizuna:*"))


def test_csv_export_neutralises_formulas(conn: redis.Redis) -> None:
    """Tried: names and tags starting with =, +, -, @ (spreadsheet formulas).
    Must not: write a cell a spreadsheet would evaluate."""
    evil = customer(
        1,
        orders=1,
        first_name='=HYPERLINK("http://x","y")',
        last_name="+1+1",
        phone="+81 90 0000 0000",
        city="-2",
        tags=("@SUM(A1)",),
    )
    profile_store.save(conn, SHOP, evil, now=NOW)
    profile_store.save(conn, SHOP, customer(2), now=NOW)
    out = io.StringIO()
    rows = profile_store.export_csv(conn, SHOP, "all", out)
    assert rows == 2
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(table) == 2
    by_id = {row["customer_id"]: row for row in table}
    row = by_id["1"]
    assert row["first_name"] == '\'=HYPERLINK("http://x","y")'
    assert row["last_name"] == "'+1+1" and row["city"] == "'-2"
    assert row["phone"] == "'+81 90 0000 0000" and row["tags"] == "'@SUM(A1)"
    assert row["order_count"] == "1" and row["total_spent"] == "40.00"
    for cells in table:
        assert not any(v.startswith(("=", "+", "-", "@")) for v in cells.values())
    assert by_id["2"]["email"] == "c2@example.com"


def test_a_corrupt_stored_profile_is_reported_not_guessed(conn: redis.Redis) -> None:
    """Tried: garbage under a profile key. Must not: load as an empty or partial profile."""
    from crm.errors import ValidationError

    conn.set(profile_store.profile_key(SHOP, 1), b"not zlib")
    with pytest.raises(ValidationError):
        profile_store.load(conn, SHOP, 1)


# --- the stored format ---------------------------------------------------------------------------


def unusual(cid: int) -> Profile:
    """A profile using every corner of the format: microsecond and ``+09:00`` times, a version
    that is not a time, tag registers, a stub order, a deleted one, a three-decimal currency,
    an unknown register, a metafield that is not a date, merged customers."""
    jst = timezone(timedelta(hours=9))
    p = customer(cid, orders=2, spent="12.345", phone="+81 90 1234 5678", province="京都府")
    p.created_at = datetime(2026, 4, 3, 10, 11, 12, 345678, tzinfo=jst)
    p.tags = ("vip", "東京")
    p.tag_snapshot = ("2026-05-01T00:00:00.000001+00:00", ("vip",))
    p.tag_changes = {"東京": ("2026-05-02T00:00:00+00:00", True), "old": ("", False)}
    p.versions = {
        "email": "2026-05-01T00:00:00+00:00",
        "first_name": "2026-05-01T00:00:00+00:00",
        "created_at": "",
        "mf:facts.birth_date": "2026-05-01T09:00:00+09:00",
        "mf:custom.note": "2026-05-03T00:00:00.5+00:00",
        "some_future_register": "~",
    }
    p.metafields = {"facts.birth_date": "1990-03-14", "custom.note": "x"}
    p.birth_date = date(1990, 3, 14)
    p.shopify_order_count, p.shopify_amount_spent = 0, Decimal("0.00")
    p.shopify_currency, p.shopify_last_order_id = "KWD", 5
    p.merged_from = (3, 4)
    p.orders[9] = OrderRecord(id=9, first_fulfilled_at=datetime(2026, 5, 9, tzinfo=UTC))
    p.orders[10] = OrderRecord(
        id=10, name="#10", created_at=datetime(2026, 5, 9, 1, 2, 3, 4, tzinfo=UTC), deleted=True,
        cancelled_at=datetime(2026, 5, 9, 2, tzinfo=UTC), total=Decimal("-3.10"),
        discount_codes=("WELCOME", "10OFF"), currency="JPY",
    )  # fmt: skip
    return p


@pytest.mark.parametrize(
    "profile",
    [
        customer(1),
        customer(2, orders=3),
        unusual(3),
        Profile(customer_id=4),
        Profile(customer_id=5, deleted=True, merged_into=6),
        customer(7, birth_date=date(2000, 1, 1)),  # a birth date the metafield does not give
    ],
    ids=["plain", "orders", "unusual", "empty", "merged-away", "birth-date-alone"],
)
def test_the_packed_format_gives_back_every_field(profile: Profile) -> None:
    """Encoding then decoding gives an equal profile (every field, register and order) and the
    same list keys; the older formats of the same profile read back equal too. Must not: lose
    a microsecond, a register version, a stub order or a deleted one."""
    keys = {"all", "segment:new", "bday:03"}
    blob = profile_store.encode(profile, keys)
    assert blob[:1] == profile_store.FORMAT_4
    back, back_keys = profile_store.decode(blob)
    assert back == profile and back.to_dict() == profile.to_dict() and back_keys == keys
    for older in (profile_store.encode_v2, profile_store.encode_v1):
        old, old_keys = profile_store.decode(older(profile, keys))
        assert old == profile and old_keys == keys


@pytest.mark.parametrize("older", ["v1", "v2"])
def test_a_profile_in_an_old_format_is_read_and_rewritten_in_the_new(
    conn: redis.Redis, older: str
) -> None:
    """A profile stored by a previous version (format 1, zlib JSON; format 2, deflated array)
    loads, keeps its lists, and the next change through the store's transaction writes it in
    format 4, smaller."""
    p = customer(1, orders=3, tags=("vip",))
    keys = profile_store.save(conn, SHOP, p, now=NOW)
    old_blob = getattr(profile_store, f"encode_{older}")(p, keys)
    conn.set(profile_store.profile_key(SHOP, 1), old_blob)
    assert profile_store.load(conn, SHOP, 1) == p

    def add_tag(profiles: dict[int, Profile | None], _: object) -> dict[int, Profile]:
        changed = profiles[1]
        assert changed is not None
        changed = changed.copy()
        changed.tags = ("vip", "new")
        return {1: changed}

    profile_store.transact(conn, SHOP, [1], add_tag, now=NOW)
    blob = conn.get(profile_store.profile_key(SHOP, 1))
    assert isinstance(blob, bytes) and blob[:1] == profile_store.FORMAT_4
    assert len(blob) < len(old_blob)
    loaded, loaded_keys = profile_store.load_entry(conn, SHOP, 1)
    assert loaded is not None and loaded.tags == ("vip", "new") and loaded_keys == keys


def test_a_truncated_packed_profile_is_reported(conn: redis.Redis) -> None:
    """Tried: a packed profile cut short, and one with a broken array. Must not: load as a
    partial profile."""
    from crm.errors import ValidationError

    blob = profile_store.encode(customer(1, orders=2), {"all"})
    old = profile_store.encode_v2(customer(1, orders=2), {"all"})
    for bad in (
        blob[: len(blob) // 2],
        old[: len(old) // 2],
        profile_store.FORMAT_2 + b"\x00\x01",
        profile_store.FORMAT_4 + b"\x00\x01",
        profile_store.FORMAT_4 + blob[1:8] + b"\xff" * 40,
    ):
        conn.set(profile_store.profile_key(SHOP, 1), bad)
        with pytest.raises(ValidationError):
            profile_store.load(conn, SHOP, 1)


def test_saving_many_at_once_writes_what_saving_one_by_one_writes(conn: redis.Redis) -> None:
    """One transaction saving 60 profiles (new ones, changed ones, one leaving every list) leaves
    Redis in exactly the state that 60 separate saves leave: same profiles, list members, order
    index and last-order scores (compared between two shops' keys)."""
    batched, single = "batched.myshopify.com", "single.myshopify.com"
    first = [customer(cid, orders=cid % 4) for cid in range(1, 61)]
    second = [customer(cid, orders=(cid % 4) + 1) for cid in range(1, 61)]
    second[5].deleted = True
    for shop in (batched, single):
        for p in first:
            profile_store.save(conn, shop, p, now=NOW)
    for p in second:
        profile_store.save(conn, single, p, now=NOW)
    by_id = {p.customer_id: p for p in second}
    profile_store.transact(conn, batched, by_id, lambda _p, _r: by_id, now=NOW)
    assert dump(conn, batched) == dump(conn, single)
    assert len(dump(conn, batched)) > 60


def dump(conn: redis.Redis, shop: str) -> dict[str, object]:
    """Every key of ``shop`` but its search index, in a comparable form (profiles decoded)."""
    out: dict[str, object] = {}
    prefix = f"kizuna:{shop}:"
    for raw in conn.scan_iter(match=prefix + "*", count=1000):
        key = raw.decode()[len(prefix) :]
        kind = conn.type(raw)
        if key.startswith("search"):
            continue
        if kind == b"string":
            out[key] = profile_store.decode(conn.get(raw))  # type: ignore[arg-type]
        elif kind == b"set":
            out[key] = conn.smembers(raw)
        elif kind == b"hash":
            out[key] = conn.hgetall(raw)
        elif kind == b"zset":
            out[key] = conn.zrange(raw, 0, -1, withscores=True)
    return out


def test_search_terms_are_fewer_but_find_the_same(conn: redis.Redis) -> None:
    """The index keeps email, last name, "first last" and order names without ``#``: a first
    name, a full name, ``#1000`` and ``1000`` find the customer. Must not: leave a stale term
    that finds the customer after a rename."""
    from worker import search_index

    p = customer(1, orders=1)
    profile_store.save(conn, SHOP, p, now=NOW)
    search_index.update(conn, SHOP, None, p)
    for query in ("hana", "HANA SA", "sato", "#1000", "1000", "c1@"):
        assert search_index.find(conn, SHOP, query) == [1], query
    stored = [m for b in search_index._bounds(conn, SHOP)
              for m in conn.zrange(search_index.bucket_key(SHOP, b), 0, -1)]  # fmt: skip
    assert {m.partition(b"\x1f")[0].decode() for m in stored} == {
        "c1@example.com", "sato", "hana sato", "1000"
    }  # fmt: skip

    renamed = p.copy()
    renamed.first_name = "Aoi"
    profile_store.transact(conn, SHOP, [1], lambda _p, _r: {1: renamed}, now=NOW)
    assert search_index.find(conn, SHOP, "hana") == []
    assert search_index.find(conn, SHOP, "aoi s") == [1]


def test_an_index_of_the_previous_layout_is_still_read(conn: redis.Redis) -> None:
    """An index written by the previous version (one sorted set of ``term\\x1fid``, with the
    first version's first-name and ``#``-name terms) keeps answering, and a rename removes the
    customer's stale terms from it. Must not: find the customer under the old name."""
    from worker import search_index

    p = customer(1, orders=1)
    profile_store.save(conn, SHOP, p, now=NOW)
    key = search_index.search_key(SHOP)
    old_terms = ("hana", "#1000", "1000", "c1@example.com", "sato", "hana sato")
    conn.zadd(key, {f"{t}{search_index.SEP}1": 0 for t in old_terms})
    for query in ("#1000", "hana s", "c1@"):
        assert search_index.find(conn, SHOP, query) == [1], query

    renamed = p.copy()
    renamed.first_name = "Aoi"
    profile_store.transact(conn, SHOP, [1], lambda _p, _r: {1: renamed}, now=NOW)
    assert search_index.find(conn, SHOP, "hana") == []
    assert search_index.find(conn, SHOP, "aoi s") == [1]
    assert search_index.find(conn, SHOP, "1000") == [1]
    left = {m.decode().split(search_index.SEP)[0] for m in conn.zrange(key, 0, -1)}
    assert left == {"1000", "c1@example.com", "sato"}


def test_a_profile_cache_never_answers_a_profile_another_writer_changed(
    conn: redis.Redis,
) -> None:
    """``transact`` with a cache takes a profile from it only when the stored bytes are those
    it cached. Tried: another writer changes a cached customer between two transactions.
    Must not: hand the stale cached profile to the change (which would undo the other
    write)."""
    cache = profile_store.ProfileCache(size=2)
    seen: list[Profile | None] = []

    def tag(name: str) -> profile_store.Change:
        def change(profiles: dict[int, Profile | None], _: object) -> dict[int, Profile]:
            seen.append(profiles[1])
            current = profiles[1] or customer(1)
            changed = current.copy()
            changed.tags = (*current.tags, name)
            return {1: changed}

        return change

    profile_store.transact(conn, SHOP, [1], tag("a"), now=NOW, cache=cache)
    profile_store.transact(conn, SHOP, [1], tag("b"), now=NOW, cache=cache)
    assert cache.hits == 1 and seen[1] is not None and seen[1].tags == ("a",)
    profile_store.transact(conn, SHOP, [1], tag("other"), now=NOW)  # another writer
    profile_store.transact(conn, SHOP, [1], tag("c"), now=NOW, cache=cache)
    assert seen[3] is not None and seen[3].tags == ("a", "b", "other")
    assert cache.misses == 1
    loaded = profile_store.load(conn, SHOP, 1)
    assert loaded is not None and loaded.tags == ("a", "b", "other", "c")
    for cid in (2, 3, 4):
        profile_store.transact(conn, SHOP, [cid], lambda _p, _r, c=cid: {c: customer(c)},
                               now=NOW, cache=cache)  # fmt: skip
    assert len(cache._entries) == 2
