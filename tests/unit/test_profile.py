"""Folding events into a profile: field by field, with Shopify's samples and variants."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from crm.errors import ValidationError
from crm.events import CustomersMerged, parse
from crm.profile import Profile, apply, fold, merge
from tests.unit import payloads
from tests.unit.payloads import days, sample

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
CID = 42


def build(*deliveries: tuple[str, dict[str, Any]], start: Profile | None = None) -> Profile:
    profile = fold((parse(topic, body) for topic, body in deliveries), start)
    assert profile is not None
    return profile


def roundtrip(profile: Profile) -> Profile:
    return Profile.from_dict(json.loads(json.dumps(profile.to_dict())))


def test_sample_order_builds_profile_field_by_field() -> None:
    """Shopify's orders/create sample is a voided, cancelled order: recorded but not counted."""
    profile = build(("orders/create", sample("orders_create")))
    assert profile.customer_id == 115310627314723954
    assert (profile.first_name, profile.last_name, profile.email) == (
        "John",
        "Smith",
        "john@example.com",
    )
    assert (profile.city, profile.province, profile.province_code, profile.country_code) == (
        "Ottawa",
        "Ontario",
        "ON",
        "CA",
    )
    assert profile.zip == "K2H7A8" and profile.phone is None and profile.created_at is None
    record = profile.orders[820982911946154508]
    assert record.name == "#9999" and record.total == Decimal("414.95") and record.currency == "USD"
    assert record.cancelled_at is not None and record.paid_at is None and not record.deleted
    assert [item.sku for item in record.line_items][:2] == ["SKU2006-001", "LENS-PROTECT-2YR"]
    assert profile.order_count == 0 and profile.total_spent == Decimal("0.00")
    assert profile.products == {} and profile.first_order_at is None
    assert roundtrip(profile) == profile


def test_sample_customer_then_consent_then_delete() -> None:
    profile = build(("customers/create", sample("customers_create")))
    assert profile.customer_id == 706405506930370084
    assert profile.created_at == datetime(2022, 1, 1, tzinfo=UTC)
    assert (profile.first_name, profile.email, profile.city, profile.zip) == (
        "Bob",
        "bob@biller.com",
        "Ottawa",
        "K2P 2L8",
    )
    assert profile.tags == () and profile.email_marketing_state is None
    consent = sample("customers_email_marketing_consent_update")
    profile = build(("customers_email_marketing_consent/update", consent), start=profile)
    assert profile.email_marketing_state == "NOT_SUBSCRIBED"
    gone = build(("customers/delete", sample("customers_delete")), start=profile)
    assert gone.deleted and gone.email is None and gone.first_name is None and not gone.active


def test_japanese_customer_with_orders_aggregates() -> None:
    """Three yen orders, one cancelled: count, spend, dates, interval and products."""
    profile = build(
        ("customers/create", payloads.customer(CID, updated_at=T0, created_at=T0)),
        (
            "orders/create",
            payloads.order(
                1,
                customer_id=CID,
                created_at=T0,
                total="12000",
                items=[payloads.line_item(111, 2), payloads.line_item(222, 1)],
                discount_codes=("WELCOME",),
            ),
        ),
        (
            "orders/create",
            payloads.order(
                2,
                customer_id=CID,
                created_at=T0 + days(30),
                total="9000",
                items=[payloads.line_item(111, 3)],
            ),
        ),
        (
            "orders/create",
            payloads.order(3, customer_id=CID, created_at=T0 + days(40), total="4000"),
        ),
        (
            "orders/cancelled",
            payloads.order(
                3,
                customer_id=CID,
                created_at=T0 + days(40),
                total="4000",
                updated_at=T0 + days(41),
                cancelled_at=T0 + days(41),
            ),
        ),
        (
            "orders/create",
            payloads.order(
                4,
                customer_id=CID,
                created_at=T0 + days(90),
                total="6000",
                items=[payloads.line_item(111, 1)],
            ),
        ),
    )
    assert (profile.first_name, profile.last_name) == ("花子", "山田")
    assert (profile.province, profile.province_code, profile.city) == ("東京都", "JP-13", "渋谷区")
    assert profile.email == "hanako@example.jp"  # the customer payload beats the order's copy
    assert profile.phone == "+81312345678" and profile.created_at == T0
    assert profile.order_count == 3
    assert profile.total_spent == Decimal("27000.00")
    assert profile.first_order_at == T0 and profile.last_order_at == T0 + days(90)
    assert profile.avg_order_interval_days == pytest.approx(45.0)
    assert profile.products == {
        111: [(T0, 2), (T0 + days(30), 3), (T0 + days(90), 1)],
        222: [(T0, 1)],
    }
    assert profile.orders[1].discount_codes == ("WELCOME",)
    assert profile.orders[1].paid_at == T0
    assert profile.orders[3].cancelled_at == T0 + days(41)
    assert profile.currency == "JPY"
    assert roundtrip(profile) == profile


def test_refund_lowers_total_but_keeps_the_order() -> None:
    body = payloads.order(1, customer_id=CID, created_at=T0, total="10000")
    later = payloads.refunded(
        payloads.order(1, customer_id=CID, created_at=T0, total="10000", updated_at=T0 + days(3)),
        "2500",
    )
    profile = build(("orders/create", body), ("orders/updated", later))
    assert profile.order_count == 1 and profile.total_spent == Decimal("2500.00")
    full = payloads.refunded(
        payloads.order(1, customer_id=CID, created_at=T0, total="10000", updated_at=T0 + days(5)),
        "0",
    )
    profile = build(("orders/updated", full), start=profile)
    assert profile.order_count == 1 and profile.total_spent == Decimal("0.00")


@pytest.mark.parametrize("delete_first", [False, True])
def test_deleted_order_leaves_totals_whichever_arrives_first(delete_first: bool) -> None:
    """orders/delete carries only the id: the caller hands the owner's profile (found by index)."""
    create = ("orders/create", payloads.order(7, customer_id=CID, created_at=T0, total="3000"))
    keep = (
        "orders/create",
        payloads.order(8, customer_id=CID, created_at=T0 + days(1), total="500"),
    )
    delete = ("orders/delete", payloads.order_delete(7))
    order = [delete, create, keep] if delete_first else [create, keep, delete]
    profile = build(*order, start=Profile(customer_id=CID))
    assert profile.orders[7].deleted
    assert profile.order_count == 1 and profile.total_spent == Decimal("500.00")
    assert profile.first_order_at == T0 + days(1)


@pytest.mark.parametrize("ship_first", [False, True])
def test_first_fulfillment_date_is_the_earliest(ship_first: bool) -> None:
    create = ("orders/create", payloads.order(7, customer_id=CID, created_at=T0))
    ship_late = ("fulfillments/create", payloads.fulfillment(71, 7, T0 + days(3)))
    ship_early = ("fulfillments/create", payloads.fulfillment(70, 7, T0 + days(1)))
    failed = ("fulfillments/create", payloads.fulfillment(69, 7, T0, status="cancelled"))
    steps = (
        [ship_late, failed, ship_early, create]
        if ship_first
        else [create, ship_late, ship_early, failed]
    )
    profile = build(*steps, start=Profile(customer_id=CID))
    assert profile.orders[7].first_fulfilled_at == T0 + days(1)
    assert profile.order_count == 1  # the stub was filled in, not counted twice


def test_stub_from_early_fulfillment_is_not_an_order() -> None:
    profile = build(
        ("fulfillments/create", payloads.fulfillment(70, 9, T0)), start=Profile(customer_id=CID)
    )
    assert profile.orders[9].is_stub and profile.order_count == 0 and profile.products == {}


def test_older_customer_payload_never_overwrites_newer() -> None:
    newer = payloads.customer(CID, updated_at=T0 + days(2), email="new@example.jp", first_name="花")
    older = payloads.customer(CID, updated_at=T0, email="old@example.jp", first_name="華")
    for steps in ([newer, older], [older, newer]):
        profile = build(*(("customers/update", body) for body in steps))
        assert (profile.email, profile.first_name) == ("new@example.jp", "花")


def test_cleared_field_in_newer_payload_clears_it() -> None:
    profile = build(
        ("customers/update", payloads.customer(CID, updated_at=T0)),
        ("customers/update", payloads.customer(CID, updated_at=T0 + days(1), phone=None)),
    )
    assert profile.phone is None and profile.email == "hanako@example.jp"


def test_consent_last_writer_wins_and_undated_never_beats_dated() -> None:
    subscribed = payloads.consent(CID, "subscribed", T0 + days(1))
    unsubscribed = payloads.consent(CID, "unsubscribed", T0 + days(2))
    undated = payloads.consent(CID, "subscribed", None)
    topic = "customers_email_marketing_consent/update"
    for steps in ([subscribed, unsubscribed, undated], [undated, unsubscribed, subscribed]):
        profile = build(*((topic, body) for body in steps))
        assert profile.email_marketing_state == "UNSUBSCRIBED"
    assert build((topic, undated)).email_marketing_state == "SUBSCRIBED"


def test_tags_from_legacy_snapshot_and_tag_events() -> None:
    legacy = payloads.legacy_customer(
        CID, updated_at=T0, tags="vip, 定期便", state="subscribed", consent_at=T0
    )
    added = payloads.tags_event(CID, ["sample-buyer"], T0 + days(1))
    removed = payloads.tags_event(CID, ["vip"], T0 + days(2))
    stale_removal = payloads.tags_event(CID, ["定期便"], T0 - days(1))
    profile = build(
        ("customer.tags_removed", removed),
        ("customer.tags_added", added),
        ("customers/update", legacy),
        ("customer.tags_removed", stale_removal),
    )
    assert profile.tags == ("sample-buyer", "定期便")
    assert profile.email_marketing_state == "SUBSCRIBED"
    assert roundtrip(profile) == profile


def test_birthday_metafield_sets_birth_date() -> None:
    body = payloads.customer(CID, updated_at=T0)
    body["metafields"] = payloads.birthday_metafield("1990-03-15", T0)
    profile = build(("customers/update", body))
    assert profile.birth_date == date(1990, 3, 15)
    assert profile.metafields == {"facts.birth_date": "1990-03-15"}
    fixed = payloads.customer(CID, updated_at=T0 + days(1))
    fixed["metafields"] = payloads.birthday_metafield("1990-03-16", T0 + days(1))
    assert build(("customers/update", fixed), start=profile).birth_date == date(1990, 3, 16)


def test_purchasing_summary_kept_beside_our_figures() -> None:
    body = sample("customers_purchasing_summary")
    body["customerId"] = f"gid://shopify/Customer/{CID}"
    profile = build(("customers/purchasing_summary", body))
    assert profile.shopify_order_count == 1 and profile.shopify_amount_spent == Decimal("100.00")
    assert profile.shopify_currency == "USD" and profile.shopify_last_order_id == 1
    assert profile.order_count == 0  # Shopify's count is not ours


def test_guest_order_attaches_to_nobody() -> None:
    """Tried: applying a guest order to a profile and to no profile. Must not: change the
    profile, or create a profile for nobody."""
    guest = parse("orders/create", payloads.order(5, customer_id=None, created_at=T0))
    profile = build(("customers/create", payloads.customer(CID, updated_at=T0)))
    assert apply(profile, guest) == profile and profile.orders == {}
    with pytest.raises(ValueError):
        apply(None, guest)


def test_event_for_another_customer_refused() -> None:
    """Tried: applying customer 43's update to customer 42. Must not: change the profile."""
    profile = build(("customers/create", payloads.customer(CID, updated_at=T0)))
    with pytest.raises(ValueError):
        apply(profile, parse("customers/update", payloads.customer(43, updated_at=T0)))


def test_apply_is_pure() -> None:
    profile = build(("customers/create", payloads.customer(CID, updated_at=T0)))
    before = profile.to_dict()
    apply(profile, parse("orders/create", payloads.order(1, customer_id=CID, created_at=T0)))
    apply(profile, parse("customer.tags_added", payloads.tags_event(CID, ["x"], T0)))
    assert profile.to_dict() == before


def test_deleted_customer_keeps_orders_and_ignores_older_updates() -> None:
    create = ("customers/create", payloads.customer(CID, updated_at=T0))
    buy = ("orders/create", payloads.order(1, customer_id=CID, created_at=T0, total="2000"))
    delete = ("customers/delete", {"id": CID})
    late = ("customers/update", payloads.customer(CID, updated_at=T0 + days(1)))
    tag = ("customer.tags_added", payloads.tags_event(CID, ["vip"], T0 + days(1)))
    one = build(create, buy, delete, late, tag)
    two = build(late, delete, tag, buy, create)
    assert one == two
    assert one.deleted and one.email is None and one.tags == () and one.versions == {}
    assert one.order_count == 1 and one.total_spent == Decimal("2000.00")


def test_customers_merge_moves_everything_to_the_survivor() -> None:
    kept = build(
        ("customers/create", payloads.customer(1, updated_at=T0, email="a@example.jp")),
        ("orders/create", payloads.order(10, customer_id=1, created_at=T0, total="1000")),
        ("customer.tags_added", payloads.tags_event(1, ["a"], T0)),
    )
    gone = build(
        ("customers/create", payloads.customer(2, updated_at=T0 + days(1), phone="+819000000000")),
        ("orders/create", payloads.order(20, customer_id=2, created_at=T0 + days(5), total="3000")),
        (
            "orders/create",
            payloads.order(
                21, customer_id=2, created_at=T0 + days(9), total="4000", cancelled_at=T0 + days(9)
            ),
        ),
        ("customer.tags_added", payloads.tags_event(2, ["b"], T0)),
    )
    event = parse("customers/merge", {**payloads.MERGE_SAMPLE, "status": "completed", "errors": []})
    assert isinstance(event, CustomersMerged)
    survivor = apply(merge(kept, gone), event)
    assert survivor.customer_id == 1 and survivor.merged_from == (2,) and survivor.active
    assert set(survivor.orders) == {10, 20, 21}
    assert survivor.order_count == 2 and survivor.total_spent == Decimal("4000.00")
    assert survivor.tags == ("a", "b")
    assert survivor.phone == "+819000000000"  # the newer register wins
    assert merge(survivor, gone) == survivor  # a retried merge changes nothing
    merged_away = apply(gone, event)
    assert merged_away.merged_into == 1 and merged_away.deleted and not merged_away.active
    failed = parse("customers/merge", payloads.MERGE_SAMPLE)
    assert apply(gone, failed) == gone


def test_from_dict_refuses_corrupt_data() -> None:
    """Tried: loading stored profiles with a bad id, a bad date, a bad total. Must not: return
    a profile, or raise anything but ValidationError."""
    good = build(("orders/create", payloads.order(1, customer_id=CID, created_at=T0))).to_dict()
    bad_orders = {**good, "orders": {"1": {**good["orders"]["1"], "total": "lots"}}}
    corrupt: list[Any] = [{"id": "x"}, {**good, "created_at": "soon"}, bad_orders, {}, []]
    for data in corrupt:
        with pytest.raises(ValidationError):
            Profile.from_dict(data)


def _aggregates(profile: Profile) -> tuple[Any, ...]:
    return (
        profile.order_count, profile.total_spent, profile.currency, profile.first_order_at,
        profile.last_order_at, profile.avg_order_interval_days, profile.products,
        profile.product_ids, profile.discount_codes_used, [o.id for o in profile.live_orders],
    )  # fmt: skip


def _fresh(profile: Profile) -> tuple[Any, ...]:
    """The aggregates of a profile that never computed them (no cache to be stale)."""
    return _aggregates(roundtrip(profile))


def test_derived_figures_follow_orders_changed_in_place() -> None:
    """Tried: reading the aggregates (which caches the sorted live orders), then changing the
    orders dict in place — popping an order (as ingest does for a moved order), replacing one
    with a cancelled record, adding one, replacing one with an equal copy — and changing a
    copy's orders. Must not happen: any aggregate still answering for the old orders, a copy
    changing the original, or the cached list handed out to be mutated by a caller."""
    body = payloads.order(1, customer_id=CID, created_at=T0, total="3000",
                          items=[payloads.line_item(7, 2)], discount_codes=("A",))  # fmt: skip
    profile = build(
        ("orders/create", body),
        ("orders/create", payloads.order(2, customer_id=CID, created_at=T0 + days(30))),
        ("orders/create", payloads.order(3, customer_id=CID, created_at=T0 + days(90))),
    )
    assert profile.order_count == 3 and _aggregates(profile) == _fresh(profile)

    profile.live_orders.clear()  # a caller's list, not the cache
    assert profile.order_count == 3

    twin = profile.copy()
    twin.orders.pop(3)
    assert twin.order_count == 2 and profile.order_count == 3
    assert _aggregates(twin) == _fresh(twin) and _aggregates(profile) == _fresh(profile)

    profile.orders.pop(1)
    assert profile.order_count == 2 and profile.product_ids == {111}
    assert _aggregates(profile) == _fresh(profile)

    profile.orders[2] = replace(profile.orders[2], cancelled_at=T0 + days(31))
    assert profile.order_count == 1 and profile.first_order_at == T0 + days(90)
    assert _aggregates(profile) == _fresh(profile)

    profile.orders[1] = twin.orders[1]
    profile.orders[3] = replace(profile.orders[3])  # an equal record, another object
    assert profile.order_count == 2 and profile.discount_codes_used == {"A"}
    assert _aggregates(profile) == _fresh(profile)

    profile.orders = {}
    assert profile.order_count == 0 and profile.last_order_at is None


def test_write_compares_values_only_on_a_version_tie() -> None:
    """Tried: two customer payloads with the same ``updated_at`` and different names, in both
    orders, and an older one after them. Must not happen: the result depending on the order,
    or the older payload winning."""
    first = payloads.customer(CID, updated_at=T0, first_name="Aki")
    second = payloads.customer(CID, updated_at=T0, first_name="Yuki")
    older = payloads.customer(CID, updated_at=T0 - days(1), first_name="Zen")
    one = build(("customers/update", first), ("customers/update", second))
    two = build(("customers/update", second), ("customers/update", first))
    assert one == two and one.first_name == "Yuki"  # the tie goes to the greater value
    assert build(("customers/update", older), start=one) == one
