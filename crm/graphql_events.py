"""Admin GraphQL nodes and bulk-export rows turned into the typed events of :mod:`crm.events`.

Backfill (bulk JSONL) and reconcile (paged queries) read customers and orders from the Admin
API, not from webhooks; they hand what they read to :func:`crm.profile.apply` as the same
events a webhook would produce, so every path merges by the same last-writer-wins rules and a
profile built from the API equals one built from the webhooks of the same history.

- :func:`customer_events` — a ``Customer`` node (``CustomersUpdatedSince`` / ``CustomerById``
  selection, or a bulk row plus its ``Metafield`` child rows) → ``CustomerUpserted`` (identity,
  address, consent, tags snapshot, metafields), ``PurchasingSummary`` (Shopify's count and
  spend, and ``lastOrder { id }`` as the ``last_order_id`` the ``customers/purchasing_summary``
  webhook fills, which places the count among our orders) and ``CustomerStatistics``
  (``rfmGroup``) when selected.
- :func:`order_event` — an ``Order`` node (``OrdersUpdatedSince`` selection, or a bulk row plus
  its ``LineItem`` child rows) → ``OrderUpserted``. ``paid_at`` is ``processedAt`` for an order
  Shopify reports paid (the webhook path takes the same value from ``orders/create``).
- :class:`BulkGroups` — folds a JSONL stream into (parent row, child rows) groups one at a time,
  so a backfill never holds more than one parent's rows.

Everything here is pure; a node it cannot use raises ``ValidationError`` naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm.errors import ValidationError
from crm.events import (
    FAILED_FULFILLMENT_STATES,
    PAID_STATES,
    Address,
    CustomerStatistics,
    CustomerUpserted,
    Event,
    LineItem,
    OrderUpserted,
    PurchasingSummary,
    _as_datetime,
    _as_id,
    _marketing_state,
    _tags,
)
from crm.money import ZERO, parse_amount, parse_currency

CUSTOMER_TOPIC = "graphql/customer"
ORDER_TOPIC = "graphql/order"


def gid_type(value: Any) -> str | None:
    """``"Customer"`` for ``gid://shopify/Customer/1``; None for anything else."""
    if not isinstance(value, str) or not value.startswith("gid://shopify/"):
        return None
    return value[len("gid://shopify/") :].split("/", 1)[0] or None


def _obj(node: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = node.get(key)
    if value is None or type(value) is dict:  # parsed JSON: a dict (checked first: cheaper)
        return value
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where}.{key} must be an object", field=f"{where}.{key}")
    return value


def _str(node: Mapping[str, Any], key: str, where: str) -> str | None:
    value = node.get(key)
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationError(f"{where}.{key} must be a string", field=f"{where}.{key}")
    text = str(value).strip()
    return text or None


def _time(node: Mapping[str, Any], key: str, where: str) -> datetime | None:
    value = node.get(key)
    if value is None or value == "":
        return None
    return _as_datetime(value, f"{where}.{key}")


def _count(node: Mapping[str, Any], key: str, where: str) -> int | None:
    value = node.get(key)
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValidationError(f"{where}.{key} must be a count", field=f"{where}.{key}")
    return int(text)


def _money(node: Mapping[str, Any], key: str, where: str) -> tuple[Decimal, str | None] | None:
    """``(amount, currency)`` from a ``MoneyV2`` or a ``MoneyBag``'s ``shopMoney``."""
    money = _obj(node, key, where)
    if money is None:
        return None
    if "shopMoney" in money:
        money = _obj(money, "shopMoney", f"{where}.{key}")
        if money is None:
            return None
    raw, code = money.get("amount"), money.get("currencyCode")
    if raw is None:
        return None
    if type(raw) is str and (code is None or type(code) is str):
        return _money_of(raw, code, f"{where}.{key}")  # the common case: the same few recur
    amount = parse_amount(raw, field=f"{where}.{key}.amount")
    currency = None if code is None else parse_currency(code, field=f"{where}.{key}.currencyCode")
    return amount, currency


@functools.lru_cache(maxsize=4096)
def _money_of(raw: str, code: str | None, where: str) -> tuple[Decimal, str | None]:
    """:func:`_money` of an amount and a currency given as strings (Decimals are immutable;
    a refused value raises, and errors are not cached)."""
    amount = parse_amount(raw, field=f"{where}.amount")
    return amount, None if code is None else parse_currency(code, field=f"{where}.currencyCode")


@functools.lru_cache(maxsize=8192)
def _gid_number(value: str, where: str) -> int:
    """:func:`crm.events._as_id` of a GID string (products and variants recur in every
    order)."""
    return _as_id(value, where)


def _ref_id(node: Mapping[str, Any], key: str, where: str) -> int | None:
    """The id of the object ``node[key]`` (``{"id": ...}``), None when absent."""
    ref = _obj(node, key, where)
    if ref is None:
        return None
    value = ref.get("id")
    if value is None:
        return None
    if type(value) is str:
        return _gid_number(value, f"{where}.{key}.id")
    return _as_id(value, f"{where}.{key}.id")


# --- customers -----------------------------------------------------------------------------------


def customer_events(
    node: Mapping[str, Any], *, metafields: Iterable[Mapping[str, Any]] = ()
) -> list[Event]:
    """The events a ``Customer`` node stands for (see the module docstring)."""
    if not isinstance(node, Mapping):
        raise ValidationError("customer node must be an object", field="customer")
    where = "customer"
    customer_id = _as_id(node.get("id"), f"{where}.id")
    updated_at = _time(node, "updatedAt", where)
    email_obj = _obj(node, "defaultEmailAddress", where)
    email = None if email_obj is None else _str(email_obj, "emailAddress", f"{where}.email")
    email = email or _str(node, "email", where)
    state: str | None = None
    consent_at: datetime | None = None
    consent = email_obj or _obj(node, "emailMarketingConsent", where)
    if consent is not None and consent.get("marketingState") is not None:
        state = _marketing_state(consent["marketingState"], f"{where}.marketingState")
        consent_at = _time(consent, "marketingUpdatedAt", where) or _time(
            consent, "consentUpdatedAt", where
        )
    phone_obj = _obj(node, "defaultPhoneNumber", where)
    phone = None if phone_obj is None else _str(phone_obj, "phoneNumber", f"{where}.phone")
    address_obj = _obj(node, "defaultAddress", where)
    address = None
    if address_obj is not None:
        country = _str(address_obj, "countryCodeV2", f"{where}.defaultAddress")
        address = Address(
            city=_str(address_obj, "city", f"{where}.defaultAddress"),
            province=_str(address_obj, "province", f"{where}.defaultAddress"),
            province_code=_str(address_obj, "provinceCode", f"{where}.defaultAddress"),
            country_code=country.upper() if country else None,
            zip=_str(address_obj, "zip", f"{where}.defaultAddress"),
        )
    found: dict[str, tuple[str, str, datetime | None]] = {}
    birth = _obj(node, "birthDate", where)
    if birth is not None and _str(birth, "value", f"{where}.birthDate") is not None:
        value = _str(birth, "value", f"{where}.birthDate")
        assert value is not None
        version = _time(birth, "updatedAt", f"{where}.birthDate") or updated_at
        found["facts.birth_date"] = ("facts.birth_date", value, version)
    for index, row in enumerate(metafields):
        mwhere = f"{where}.metafields[{index}]"
        namespace, key = _str(row, "namespace", mwhere), _str(row, "key", mwhere)
        value = _str(row, "value", mwhere)
        if not namespace or not key or value is None:
            raise ValidationError(f"{mwhere} needs namespace, key and value", field=mwhere)
        version = _time(row, "updatedAt", mwhere) or updated_at
        found[f"{namespace}.{key}"] = (f"{namespace}.{key}", value, version)
    tags = None if node.get("tags") is None else _tags(node["tags"], f"{where}.tags")
    out: list[Event] = [
        CustomerUpserted(
            topic=CUSTOMER_TOPIC,
            customer_ids=(customer_id,),
            updated_at=updated_at,
            customer_id=customer_id,
            created_at=_time(node, "createdAt", where),
            email=email,
            first_name=_str(node, "firstName", where),
            last_name=_str(node, "lastName", where),
            phone=phone,
            address=address,
            tags=tags,
            email_marketing_state=state,
            email_consent_updated_at=consent_at,
            metafields=tuple(sorted(found.values(), key=lambda item: item[0])),
        )
    ]
    count = _count(node, "numberOfOrders", where)
    spent = _money(node, "amountSpent", where)
    if count is not None or spent is not None:
        last_order = _obj(node, "lastOrder", where)
        out.append(
            PurchasingSummary(
                topic=CUSTOMER_TOPIC,
                customer_ids=(customer_id,),
                updated_at=updated_at,
                customer_id=customer_id,
                number_of_orders=count,
                amount_spent=None if spent is None else spent[0],
                currency=None if spent is None else spent[1],
                last_order_id=None
                if last_order is None or last_order.get("id") is None
                else _as_id(last_order["id"], f"{where}.lastOrder.id"),
            )
        )
    stats = _obj(node, "statistics", where)
    if stats is not None:
        out.append(
            CustomerStatistics(
                topic=CUSTOMER_TOPIC,
                customer_ids=(customer_id,),
                updated_at=updated_at,
                customer_id=customer_id,
                rfm_group=_str(stats, "rfmGroup", f"{where}.statistics"),
                predicted_spend_tier=_str(stats, "predictedSpendTier", f"{where}.statistics"),
            )
        )
    return out


# --- orders --------------------------------------------------------------------------------------


def _line_item(row: Mapping[str, Any], where: str) -> LineItem:
    if not isinstance(row, Mapping):
        raise ValidationError(f"{where} must be an object", field=where)
    quantity = _count(row, "currentQuantity", where)
    if quantity is None:
        quantity = _count(row, "quantity", where)
    if quantity is None or quantity > 1_000_000:
        raise ValidationError(f"{where}.quantity must be a count", field=f"{where}.quantity")
    return LineItem(
        product_id=_ref_id(row, "product", where),
        variant_id=_ref_id(row, "variant", where),
        quantity=quantity,
        title=_str(row, "title", where) or _str(row, "name", where),
        sku=_str(row, "sku", where),
    )


def order_event(
    node: Mapping[str, Any], *, line_items: Iterable[Mapping[str, Any]] | None = None
) -> OrderUpserted:
    """The ``OrderUpserted`` an ``Order`` node stands for.

    ``line_items`` are the bulk export's child rows; without them the node's own
    ``lineItems { nodes }`` (paged query) are read.
    """
    if not isinstance(node, Mapping):
        raise ValidationError("order node must be an object", field="order")
    where = "order"
    order_id = _as_id(node.get("id"), f"{where}.id")
    created_at = _time(node, "createdAt", where)
    if created_at is None:
        raise ValidationError("order.createdAt is missing", field="order.createdAt")
    customer_id = _ref_id(node, "customer", where)
    total_currency = _money(node, "currentTotalPriceSet", where) or _money(
        node, "totalPriceSet", where
    )
    total, currency = total_currency if total_currency is not None else (ZERO, None)
    if currency is None:
        code = node.get("currencyCode")
        currency = "XXX" if code is None else parse_currency(code, field=f"{where}.currencyCode")
    financial = _str(node, "displayFinancialStatus", where)
    paid_at = None
    if (financial or "").lower() in PAID_STATES:
        paid_at = _time(node, "processedAt", where) or created_at
    codes = node.get("discountCodes") or []
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise ValidationError("order.discountCodes must be strings", field="order.discountCodes")
    first_fulfilled: datetime | None = None
    fulfillments = node.get("fulfillments") or []
    if not isinstance(fulfillments, list):
        raise ValidationError("order.fulfillments must be a list", field="order.fulfillments")
    for index, entry in enumerate(fulfillments):
        fwhere = f"{where}.fulfillments[{index}]"
        if not isinstance(entry, Mapping):
            raise ValidationError(f"{fwhere} must be an object", field=fwhere)
        status = (_str(entry, "status", fwhere) or "").lower()
        shipped_at = _time(entry, "createdAt", fwhere)
        if shipped_at is not None and status not in FAILED_FULFILLMENT_STATES:
            first_fulfilled = min(first_fulfilled or shipped_at, shipped_at)
    if line_items is None:
        page = _obj(node, "lineItems", where)
        rows: Iterable[Mapping[str, Any]] = [] if page is None else (page.get("nodes") or [])
    else:
        rows = line_items
    items = tuple(_line_item(row, f"{where}.lineItems[{i}]") for i, row in enumerate(rows))
    return OrderUpserted(
        topic=ORDER_TOPIC,
        customer_ids=() if customer_id is None else (customer_id,),
        updated_at=_time(node, "updatedAt", where),
        order_id=order_id,
        customer_id=customer_id,
        name=_str(node, "name", where),
        created_at=created_at,
        cancelled_at=_time(node, "cancelledAt", where),
        paid_at=paid_at,
        total=total,
        currency=currency,
        line_items=items,
        discount_codes=tuple(sorted({c.strip() for c in codes if c.strip()})),
        first_fulfilled_at=first_fulfilled,
        financial_status=None if financial is None else financial.lower(),
    )


# --- bulk export rows ----------------------------------------------------------------------------


@dataclass
class Group:
    """One root row of a bulk export and the child rows that named it as ``__parentId``."""

    row: dict[str, Any]
    children: list[dict[str, Any]] = field(default_factory=list)
    first_line: int = 0

    @property
    def kind(self) -> str | None:
        return gid_type(self.row.get("id"))

    def events(self) -> list[Event]:
        """The events of this group (``ValidationError`` for a row of an unknown type)."""
        if self.kind == "Customer":
            metafields = [c for c in self.children if gid_type(c.get("id")) == "Metafield"]
            return customer_events(self.row, metafields=metafields)
        if self.kind == "Order":
            lines = [c for c in self.children if gid_type(c.get("id")) == "LineItem"]
            return [order_event(self.row, line_items=lines)]
        raise ValidationError(f"bulk row of unknown type: {self.row.get('id')!r}", field="id")


class BulkGroups:
    """Folds JSONL rows (in file order) into :class:`Group` s, emitting each when it closes.

    Shopify writes a parent before its children and, with ``groupObjects``, every child right
    after its parent: a group is closed by the next root row or by :meth:`close`. A child whose
    parent is not the open group (an ungrouped export) raises ``ValidationError``: the caller
    must ask for grouped output rather than silently lose line items.
    """

    def __init__(self) -> None:
        self._open: Group | None = None

    def feed(self, row: Mapping[str, Any], line: int) -> Group | None:
        """Take the row read at ``line``; answer the group it closed, if any."""
        if not isinstance(row, Mapping):
            raise ValidationError(f"line {line}: not a JSON object", field="row")
        parent = row.get("__parentId")
        if parent is None:
            own = row if isinstance(row, dict) else dict(row)  # parsed rows are ours already
            done, self._open = self._open, Group(row=own, first_line=line)
            return done
        if self._open is None or self._open.row.get("id") != parent:
            raise ValidationError(
                f"line {line}: child of {parent!r} is not next to its parent", field="__parentId"
            )
        self._open.children.append(row if isinstance(row, dict) else dict(row))
        return None

    def close(self) -> Group | None:
        done, self._open = self._open, None
        return done


def groups(rows: Iterable[tuple[int, Mapping[str, Any]]]) -> Iterator[Group]:
    """Every group of ``(line number, row)`` pairs, in order."""
    folder = BulkGroups()
    for line, row in rows:
        done = folder.feed(row, line)
        if done is not None:
            yield done
    last = folder.close()
    if last is not None:
        yield last
