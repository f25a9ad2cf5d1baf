"""Profiles and list indexes in Redis: save, load, counts, pages, CSV export, size."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
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
