"""Parsing webhook bodies into typed events: Shopify's samples, variants and hostile input."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm import events
from crm.errors import ValidationError
from crm.events import (
    AppScopesUpdated,
    AppUninstalled,
    BulkOperationFinished,
    CustomerDataRequest,
    CustomerDeleted,
    CustomerRedact,
    CustomersMerged,
    CustomerUpserted,
    EmailConsentUpdated,
    FulfillmentCreated,
    OrderDeleted,
    OrderUpserted,
    PurchasingSummary,
    ShopRedact,
    TagsChanged,
    parse,
)
from crm.profile import Profile, apply
from tests.unit import payloads
from tests.unit.payloads import MERGE_SAMPLE, SAMPLE_FOR_TOPIC, sample

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
NEW_YEAR_2022 = datetime(2022, 1, 1, 0, 0, tzinfo=UTC)  # the samples' "2021-12-31T19:00-05:00"


def test_orders_create_sample_field_by_field() -> None:
    event = parse("orders/create", sample("orders_create"))
    assert isinstance(event, OrderUpserted)
    assert event.order_id == 820982911946154508
    assert event.customer_ids == (115310627314723954,)
    assert event.customer_id == 115310627314723954
    assert event.name == "#9999"
    assert event.created_at == NEW_YEAR_2022 and event.updated_at == NEW_YEAR_2022
    assert event.cancelled_at == NEW_YEAR_2022
    assert event.paid_at is None  # "voided": never paid
    assert event.total == Decimal("414.95") and event.currency == "USD"
    assert len(event.line_items) == 5
    first = event.line_items[0]
    assert (first.product_id, first.variant_id, first.quantity) == (788032119674292922, None, 1)
    assert (first.title, first.sku) == ("Aviator sunglasses", "SKU2006-001")
    assert event.line_items[1].product_id is None
    assert event.discount_codes == () and event.first_fulfilled_at is None
    assert event.customer is not None and event.customer.first_name == "John"
    assert event.customer.address is not None and event.customer.address.province_code == "ON"
    assert event.order_ids == (820982911946154508,)


def test_customer_sample_field_by_field() -> None:
    for topic in ("customers/create", "customers/update"):
        event = parse(topic, sample(SAMPLE_FOR_TOPIC[topic]))
        assert isinstance(event, CustomerUpserted)
        assert event.customer_ids == (706405506930370084,)
        assert event.created_at == NEW_YEAR_2022 and event.updated_at == NEW_YEAR_2022
        assert (event.first_name, event.last_name) == ("Bob", "Biller")
        assert event.email == "bob@biller.com" and event.phone is None
        assert event.address is not None
        assert (event.address.city, event.address.province, event.address.country_code) == (
            "Ottawa",
            "ON",
            "CA",
        )
        assert event.address.zip == "K2P 2L8"
        # 2025-01+ payloads: no tags and no consent, which means "not said", not "none".
        assert event.tags is None and event.email_marketing_state is None


def test_small_samples_field_by_field() -> None:
    deleted = parse("customers/delete", sample("customers_delete"))
    assert isinstance(deleted, CustomerDeleted) and deleted.customer_id == 706405506930370084

    consent = parse(
        "customers_email_marketing_consent/update",
        sample("customers_email_marketing_consent_update"),
    )
    assert isinstance(consent, EmailConsentUpdated)
    assert (consent.customer_id, consent.state, consent.email) == (
        706405506930370084,
        "NOT_SUBSCRIBED",
        "bob@biller.com",
    )
    assert consent.updated_at is None  # consent_updated_at is null in the sample

    tags = parse("customer.tags_added", sample("customer_tags_added"))
    assert isinstance(tags, TagsChanged)
    assert (tags.customer_id, tags.tags, tags.added) == (1, ("tag1", "tag2"), True)
    assert tags.updated_at == datetime(2005, 5, 5, 5, tzinfo=UTC)
    removed = parse("customer.tags_removed", sample("customer_tags_added"))
    assert isinstance(removed, TagsChanged) and removed.added is False

    summary = parse("customers/purchasing_summary", sample("customers_purchasing_summary"))
    assert isinstance(summary, PurchasingSummary)
    assert (summary.customer_id, summary.number_of_orders, summary.last_order_id) == (1, 1, 1)
    assert (summary.amount_spent, summary.currency) == (Decimal("100.00"), "USD")

    fulfillment = parse("fulfillments/create", sample("fulfillments_create"))
    assert isinstance(fulfillment, FulfillmentCreated)
    assert (fulfillment.fulfillment_id, fulfillment.order_id) == (123456, 820982911946154508)
    assert fulfillment.customer_ids == () and fulfillment.order_ids == (820982911946154508,)
    assert fulfillment.created_at == NEW_YEAR_2022 and fulfillment.shipped

    deletion = parse("orders/delete", sample("orders_delete"))
    assert isinstance(deletion, OrderDeleted)
    assert deletion.order_id == 820982911946154508 and deletion.customer_ids == ()


def test_app_bulk_and_compliance_samples_touch_no_profile() -> None:
    bulk = parse("bulk_operations/finish", sample("bulk_operations_finish"))
    assert isinstance(bulk, BulkOperationFinished)
    assert (bulk.operation_id, bulk.status, bulk.type) == (
        "gid://shopify/BulkOperation/147595010",
        "completed",
        "query",
    )
    request = parse("customers/data_request", sample("customers_data_request"))
    assert isinstance(request, CustomerDataRequest)
    assert (request.customer_id, request.orders_requested, request.data_request_id) == (
        191167,
        (299938, 280263, 220458),
        9999,
    )
    redact = parse("customers/redact", sample("customers_redact"))
    assert isinstance(redact, CustomerRedact) and redact.orders_to_redact == (
        299938,
        280263,
        220458,
    )
    shop = parse("shop/redact", sample("shop_redact"))
    assert isinstance(shop, ShopRedact) and shop.shop_id == 954889
    scopes = parse(
        "app/scopes_update",
        {
            "id": 1,
            "shop_id": "gid://shopify/Shop/548380009",
            "previous": ["read_products"],
            "current": ["read_products", "write_products"],
            "updated_at": "2024-06-25T00:00:00.000Z",
        },
    )
    assert isinstance(scopes, AppScopesUpdated)
    assert scopes.current == ("read_products", "write_products")
    gone = parse("app/uninstalled", {"id": 548380009, "name": "Super Toys", "domain": None})
    assert isinstance(gone, AppUninstalled) and gone.shop_id == 548380009
    for event in (bulk, request, redact, shop, scopes, gone):
        assert event.customer_ids == () and not event.touches_profiles


def test_customers_merge_documented_sample() -> None:
    event = parse("customers/merge", MERGE_SAMPLE, triggered_at=T0)
    assert isinstance(event, CustomersMerged)
    assert (event.kept_id, event.deleted_id, event.status) == (1, 2, "failed")
    assert event.customer_ids == (1, 2) and not event.completed and event.updated_at == T0
    done = parse("customers/merge", {**MERGE_SAMPLE, "status": "completed", "errors": []})
    assert isinstance(done, CustomersMerged) and done.completed


def test_every_topic_in_app_toml_parses() -> None:
    """Each topic we subscribe to has a parser (a topic missing here would fail every delivery)."""
    from plugin.appconfig import load_app_config

    topics = {topic for sub in load_app_config().subscriptions for topic in sub.topics}
    assert "customers/merge" in topics and "shop/redact" in topics
    assert topics <= set(events.TOPICS), topics - set(events.TOPICS)


def test_japanese_names_and_prefecture() -> None:
    body = payloads.customer(7, updated_at=T0, created_at=T0, first_name="太郎", last_name="佐藤")
    event = parse("customers/update", body)
    assert isinstance(event, CustomerUpserted)
    assert (event.first_name, event.last_name) == ("太郎", "佐藤")
    assert event.address is not None
    assert (event.address.province, event.address.province_code) == ("東京都", "JP-13")
    assert (event.address.city, event.address.zip, event.address.country_code) == (
        "渋谷区",
        "150-0001",
        "JP",
    )


def test_guest_order_has_no_customer() -> None:
    event = parse("orders/create", payloads.order(5, customer_id=None, created_at=T0))
    assert isinstance(event, OrderUpserted)
    assert event.is_guest and event.customer_ids == () and not event.touches_profiles
    assert event.total == Decimal("5000.00") and event.currency == "JPY"


def test_shop_money_preferred_over_presentment_and_refunds_lower_total() -> None:
    body = payloads.order(9, customer_id=3, created_at=T0, total="8000")
    body["current_total_price_set"]["presentment_money"] = {
        "amount": "55.00",
        "currency_code": "USD",
    }
    event = parse("orders/updated", body)
    assert isinstance(event, OrderUpserted) and event.total == Decimal("8000.00")
    refund = parse("orders/updated", payloads.refunded(body, "3000"))
    assert isinstance(refund, OrderUpserted) and refund.total == Decimal("3000.00")


def test_paid_at_candidates() -> None:
    """Created paid: processed_at; paid later (orders/paid): that payload's updated_at."""
    created = parse("orders/create", payloads.order(1, customer_id=3, created_at=T0))
    assert isinstance(created, OrderUpserted) and created.paid_at == T0
    pending = payloads.order(1, customer_id=3, created_at=T0, financial_status="pending")
    first = parse("orders/create", pending)
    assert isinstance(first, OrderUpserted) and first.paid_at is None
    later = payloads.order(
        1, customer_id=3, created_at=T0, updated_at=T0 + payloads.days(2), financial_status="paid"
    )
    paid = parse("orders/paid", later)
    assert isinstance(paid, OrderUpserted) and paid.paid_at == T0 + payloads.days(2)


def test_250_line_items() -> None:
    items = [payloads.line_item(1000 + i, quantity=1 + i % 3) for i in range(250)]
    event = parse("orders/create", payloads.order(4, customer_id=3, created_at=T0, items=items))
    assert isinstance(event, OrderUpserted)
    assert len(event.line_items) == 250
    assert (
        event.line_items[249].product_id == 1249 and event.line_items[249].quantity == 1 + 249 % 3
    )


def test_older_api_version_order_falls_back_to_plain_totals() -> None:
    body = payloads.older_api_version(payloads.order(4, customer_id=3, created_at=T0, total="7700"))
    assert "current_total_price_set" not in body and "total_price_set" not in body
    event = parse("orders/create", body)
    assert isinstance(event, OrderUpserted)
    assert event.total == Decimal("7700.00") and event.currency == "JPY"
    assert event.line_items[0].quantity == 1


def test_legacy_customer_carries_tags_and_consent() -> None:
    body = payloads.legacy_customer(
        8, updated_at=T0, tags="vip, 定期便 ,, vip", state="subscribed", consent_at=T0
    )
    event = parse("customers/update", body)
    assert isinstance(event, CustomerUpserted)
    assert event.tags == ("vip", "定期便")
    assert event.email_marketing_state == "SUBSCRIBED" and event.email_consent_updated_at == T0
    old = payloads.customer(8, updated_at=T0)
    old["accepts_marketing"] = True
    boolean = parse("customers/update", old)
    assert isinstance(boolean, CustomerUpserted) and boolean.email_marketing_state == "SUBSCRIBED"


def test_missing_optional_fields_are_none() -> None:
    body = {"id": 12, "created_at": "2026-01-10T09:00:00Z", "updated_at": "2026-01-10T09:00:00Z"}
    event = parse("orders/create", body)
    assert isinstance(event, OrderUpserted)
    assert event.is_guest and event.line_items == () and event.total == Decimal("0.00")
    assert event.name is None and event.currency == "XXX"
    bare = parse("customers/update", {"id": 12})
    assert isinstance(bare, CustomerUpserted)
    assert bare.updated_at is None and bare.email is None and bare.address is None


def test_gid_and_string_ids_and_offsets_normalised_to_utc() -> None:
    body = {
        "id": "12",
        "created_at": "2026-01-10T18:00:00+09:00",
        "customer": {"id": "gid://shopify/Customer/5"},
    }
    event = parse("orders/create", body)
    assert isinstance(event, OrderUpserted)
    assert event.order_id == 12 and event.customer_id == 5
    assert event.created_at == T0 and event.created_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("topic", "body", "field"),
    [
        ("orders/create", {"created_at": "2026-01-01T00:00:00Z"}, "id"),
        ("orders/create", {"id": 1}, "created_at"),
        ("orders/create", {"id": 1, "created_at": "yesterday"}, "created_at"),
        ("orders/create", {"id": -4, "created_at": "2026-01-01T00:00:00Z"}, "id"),
        ("orders/create", {"id": True, "created_at": "2026-01-01T00:00:00Z"}, "id"),
        (
            "orders/create",
            {"id": 1, "created_at": "2026-01-01T00:00:00Z", "total_price": "NaN"},
            "total_price",
        ),
        (
            "orders/create",
            {"id": 1, "created_at": "2026-01-01T00:00:00Z", "line_items": {}},
            "line_items",
        ),
        (
            "orders/create",
            {"id": 1, "created_at": "2026-01-01T00:00:00Z", "line_items": [{"quantity": -1}]},
            "line_items[0].quantity",
        ),
        ("customers/update", {"id": "gid://shopify/Customer/x"}, "id"),
        (
            "customers_email_marketing_consent/update",
            {"customer_id": 1, "email_marketing_consent": {"state": "maybe"}},
            "email_marketing_consent.state",
        ),
        ("customer.tags_added", {"customerId": 1, "tags": [1, 2]}, "tags"),
        (
            "customers/merge",
            {
                "admin_graphql_api_customer_kept_id": 1,
                "admin_graphql_api_customer_deleted_id": 1,
                "status": "completed",
            },
            "admin_graphql_api_customer_deleted_id",
        ),
        ("orders/fly", {"id": 1}, "topic"),
    ],
)
def test_unusable_payloads_refused_with_field(topic: str, body: dict[str, Any], field: str) -> None:
    """Tried: a body missing or mangling one field. Must not: parse into an event, or raise
    anything but ValidationError naming that field."""
    with pytest.raises(ValidationError) as refused:
        parse(topic, body)
    assert refused.value.field == field
    assert str(refused.value)


def test_non_object_body_refused() -> None:
    """Tried: a JSON array / string / null as the whole body. Must not: raise a TypeError."""
    bodies: list[Any] = [[], "x", None, 3]
    for body in bodies:
        with pytest.raises(ValidationError):
            parse("orders/create", body)


# --- fuzzing: only ValidationError may escape, and any parsed event folds into a valid profile --

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
_interesting = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        2**65,
        1.5,
        float("nan"),
        "",
        "x",
        "2026-13-40",
        "1e999999",
        "gid://shopify/Order/9",
        "2026-01-01T00:00:00Z",
        "ＮａＮ",
        "１２",
        [],
        {},
        [None],
        {"amount": "1e400"},
        "-0",
    ]
)


def _assert_sound(topic: str, body: Any) -> None:
    try:
        event = parse(topic, body)
    except ValidationError as refused:
        assert str(refused)
        return
    if event.touches_profiles and len(event.customer_ids) == 1:
        profile = apply(None, event)
    elif event.touches_profiles and event.order_ids:
        profile = apply(Profile(customer_id=1), event)
    else:
        return
    stored = json.loads(json.dumps(profile.to_dict()))
    assert Profile.from_dict(stored) == profile
    assert profile.order_count >= 0 and profile.total_spent is not None
    _ = (profile.products, profile.avg_order_interval_days, profile.first_order_at)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(events.TOPICS), body=_json)
def test_fuzz_arbitrary_json(topic: str, body: Any) -> None:
    """Tried: arbitrary JSON under every topic. Must not: raise anything but ValidationError,
    or produce a profile that fails to round-trip through JSON."""
    _assert_sound(topic, body)


def _all_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _all_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            found += _all_paths(child, (*path, index))
    return found


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, dict[str, Any], list[tuple[Any, ...]]]]:
    loaded = []
    for topic, name in sorted(SAMPLE_FOR_TOPIC.items()):
        body = sample(name)
        loaded.append((topic, body, _all_paths(body)))
    loaded.append(("customers/merge", MERGE_SAMPLE, _all_paths(MERGE_SAMPLE)))
    return loaded


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_mutated_samples(
    samples: list[tuple[str, dict[str, Any], list[tuple[Any, ...]]]], data: st.DataObject
) -> None:
    """Tried: Shopify's samples with 1–3 values replaced by odd JSON or deleted. Must not:
    raise anything but ValidationError, or fold into a corrupt profile."""
    topic, original, paths = data.draw(st.sampled_from(samples))
    body: dict[str, Any] = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent: Any = body
        try:
            for step in path[:-1]:
                parent = parent[step]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(_interesting | _json)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    _assert_sound(topic, body)


_EDGE_VALUES = [0, -1, 1_000_000, 1_000_001, 2**64 - 1, 2**64, True, 1.5, "", "  ", " 12 ",
                "abc", "gid://shopify/Product/9", "１２", "7" * 25]  # fmt: skip
_ODD_VALUES = st.one_of(
    st.sampled_from(_EDGE_VALUES), st.none(), st.integers(min_value=-5, max_value=2**65),
    st.text(max_size=8), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
)  # fmt: skip
_LINE_ITEM_KEYS = ("current_quantity", "quantity", "product_id", "variant_id", "title", "name",
                   "sku")  # fmt: skip
_GOOD_LINE_ITEM = {"current_quantity": 1, "quantity": 2, "product_id": 7, "variant_id": 8,
                   "title": " 錠剤 ", "name": " 名 ", "sku": " S-1 "}  # fmt: skip


@st.composite
def _line_items(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed line item with a few fields changed to odd values or left out."""
    item = dict(_GOOD_LINE_ITEM)
    for key in draw(st.sets(st.sampled_from(_LINE_ITEM_KEYS), min_size=1, max_size=3)):
        if draw(st.booleans()):
            item[key] = draw(_ODD_VALUES)
        else:
            del item[key]
    return item


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line_items(), min_size=1, max_size=3))
def test_line_items_read_the_same_whatever_mapping_holds_them(items: list[dict[str, Any]]) -> None:
    """Tried: line items whose fields have every JSON type (and non-JSON floats, lists, huge
    and negative numbers, blank and padded strings), once as the plain dicts a decoded payload
    holds (the readers' fast path) and once as read-only mappings (the general path). Must not
    happen: a different event, a different error or field named, or an error escaping as
    anything but ``ValidationError``."""
    from types import MappingProxyType

    body = payloads.order(5, customer_id=7, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    outcomes = []
    for wrap in (dict, MappingProxyType):
        body["line_items"] = [wrap(item) for item in items]
        try:
            outcomes.append(events.parse("orders/create", body))
        except ValidationError as exc:
            outcomes.append((str(exc), exc.field))
    assert outcomes[0] == outcomes[1]
