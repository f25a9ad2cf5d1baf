"""Admin GraphQL nodes and bulk rows become the same events webhooks do (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from graphql import build_schema, parse, validate

from crm.errors import ValidationError
from crm.events import CustomerUpserted, OrderUpserted, PurchasingSummary
from crm.graphql_events import BulkGroups, customer_events, groups, order_event
from crm.profile import fold
from tests.conftest import SHOPIFY_SHARED, shared_or_skip
from worker.backfill import CUSTOMERS_QUERY, orders_query

CUSTOMER: dict[str, Any] = {
    "id": "gid://shopify/Customer/42", "firstName": "Yui", "lastName": "Abe",
    "createdAt": "2026-01-02T03:04:05Z", "updatedAt": "2026-06-01T00:00:00Z",
    "tags": ["b", "a", "a"], "numberOfOrders": "2",
    "amountSpent": {"amount": "2400.0", "currencyCode": "JPY"},
    "defaultEmailAddress": {"emailAddress": "yui@example.com", "marketingState": "SUBSCRIBED",
                            "marketingUpdatedAt": "2026-02-01T00:00:00Z"},
    "defaultAddress": {"city": "Osaka", "provinceCode": "JP-27", "countryCodeV2": "jp"},
    "birthDate": {"value": "1995-05-06", "updatedAt": "2026-03-01T00:00:00Z"},
    "statistics": {"rfmGroup": "LOYAL", "predictedSpendTier": "HIGH"},
}  # fmt: skip
ORDER: dict[str, Any] = {
    "id": "gid://shopify/Order/9", "name": "#1009", "createdAt": "2026-06-01T10:00:00Z",
    "processedAt": "2026-06-01T10:00:00Z", "updatedAt": "2026-06-03T00:00:00Z",
    "cancelledAt": None, "displayFinancialStatus": "PAID", "discountCodes": ["WELCOME"],
    "customer": {"id": "gid://shopify/Customer/42"},
    "currentTotalPriceSet": {"shopMoney": {"amount": "1200.0", "currencyCode": "JPY"}},
    "fulfillments": [{"createdAt": "2026-06-02T00:00:00Z", "status": "SUCCESS"},
                     {"createdAt": "2026-06-01T12:00:00Z", "status": "CANCELLED"}],
}  # fmt: skip
LINE: dict[str, Any] = {
    "id": "gid://shopify/LineItem/5", "title": "Tea", "quantity": 3, "currentQuantity": 2,
    "product": {"id": "gid://shopify/Product/7"}, "variant": None,
    "__parentId": "gid://shopify/Order/9",
}  # fmt: skip


def test_a_customer_node_gives_identity_consent_tags_birthday_and_totals() -> None:
    """Every selected field lands in the event that carries it, typed and normalised."""
    upsert, summary, stats = customer_events(CUSTOMER)
    assert isinstance(upsert, CustomerUpserted) and isinstance(summary, PurchasingSummary)
    assert upsert.customer_id == 42 and upsert.email == "yui@example.com"
    assert upsert.tags == ("a", "b") and upsert.email_marketing_state == "SUBSCRIBED"
    assert upsert.email_consent_updated_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert upsert.address is not None and upsert.address.country_code == "JP"
    assert summary.number_of_orders == 2 and summary.amount_spent == Decimal("2400.00")
    profile = fold([upsert, summary, stats])
    assert profile is not None and profile.birth_date == date(1995, 5, 6)
    assert profile.shopify_rfm_group == "LOYAL"


def test_the_last_order_lands_where_the_purchasing_summary_puts_it() -> None:
    """``lastOrder { id }`` (the backfill's export) fills ``last_order_id`` as the webhook's
    ``lastOrderId`` does, so the profile can place Shopify's count among its orders; a customer
    without orders (``lastOrder: null``) names none, and a malformed id is refused by name."""
    _, summary, _ = customer_events({**CUSTOMER, "lastOrder": {"id": "gid://shopify/Order/9"}})
    assert isinstance(summary, PurchasingSummary) and summary.last_order_id == 9
    profile = fold([summary])
    assert profile is not None and profile.shopify_last_order_id == 9
    _, none, _ = customer_events({**CUSTOMER, "numberOfOrders": "0", "lastOrder": None})
    assert isinstance(none, PurchasingSummary) and none.last_order_id is None
    with pytest.raises(ValidationError) as info:
        customer_events({**CUSTOMER, "lastOrder": {"id": "gid://shopify/Order/x"}})
    assert info.value.field == "customer.lastOrder.id"


def test_an_order_node_with_bulk_line_items() -> None:
    """Current quantity, earliest successful fulfillment, paid time from processedAt."""
    event = order_event(ORDER, line_items=[LINE])
    assert isinstance(event, OrderUpserted) and event.customer_id == 42
    assert event.total == Decimal("1200.00") and event.currency == "JPY"
    assert event.line_items[0].quantity == 2 and event.line_items[0].product_id == 7
    assert event.first_fulfilled_at == datetime(2026, 6, 2, tzinfo=UTC)
    assert event.paid_at == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert event.discount_codes == ("WELCOME",)


def test_bad_nodes_are_refused_naming_the_field() -> None:
    """A node with a non-id, an unparseable time or a negative count raises ValidationError
    naming the field; nothing else escapes."""
    for node, name in (
        ({**CUSTOMER, "id": "gid://shopify/Customer/x"}, "customer.id"),
        ({**CUSTOMER, "updatedAt": "soon"}, "customer.updatedAt"),
        ({**CUSTOMER, "numberOfOrders": "-1"}, "customer.numberOfOrders"),
        ({**ORDER, "createdAt": None}, "order.createdAt"),
    ):
        with pytest.raises(ValidationError) as info:
            (customer_events if name.startswith("customer") else order_event)(node)
        assert info.value.field == name


def test_rows_fold_into_groups_and_strays_are_refused() -> None:
    """Children follow their parent into one group; a child naming another parent is
    refused rather than silently dropped."""
    rows = [(0, ORDER), (1, LINE), (2, {**ORDER, "id": "gid://shopify/Order/10"})]
    found = list(groups(rows))
    assert [len(g.children) for g in found] == [1, 0] and found[1].first_line == 2
    folder = BulkGroups()
    folder.feed({**ORDER, "id": "gid://shopify/Order/10"}, 0)
    with pytest.raises(ValidationError):
        folder.feed(LINE, 1)


def test_the_bulk_queries_validate_against_the_admin_schema() -> None:
    """The backfill's export queries are valid 2026-07 Admin documents, and the customers'
    export asks for the last order (the anchor of Shopify's count)."""
    assert "lastOrder { id }" in CUSTOMERS_QUERY
    schema_text = shared_or_skip(SHOPIFY_SHARED / "admin-2026-07.graphql").read_text()
    schema = build_schema(schema_text, assume_valid=True)
    for text in (
        CUSTOMERS_QUERY,
        orders_query(None),
        orders_query(datetime(2026, 5, 1, tzinfo=UTC)),
    ):
        errors = validate(schema, parse(text))
        assert not errors, [e.message for e in errors]
