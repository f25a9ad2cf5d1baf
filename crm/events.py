"""Webhook payloads turned into typed, frozen events.

``parse(topic, payload)`` reads Shopify's REST-shaped webhook body (any API version we have
seen: 2024-era payloads with ``tags`` and ``email_marketing_consent`` on the customer as well as
the 2025-01+ ones without) and returns one event per topic family. A payload it cannot use
raises ``ValidationError`` naming the field; nothing else escapes, whatever the input.

Every event has ``customer_ids`` (the profiles it touches; empty for a guest order, for an
order deletion or a fulfillment, whose owner the storage layer finds through its
order → customer index, see ``order_ids``) and ``updated_at`` (the version used for
last-writer-wins; ``None`` when the payload carries no time at all). All datetimes are
timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from crm.errors import ValidationError
from crm.money import ZERO, parse_amount, parse_currency

EMAIL_MARKETING_STATES = frozenset(
    {"SUBSCRIBED", "NOT_SUBSCRIBED", "UNSUBSCRIBED", "PENDING", "REDACTED", "INVALID"}
)
# Payment states in which the order has been paid (at least once).
PAID_STATES = frozenset({"paid", "partially_refunded", "refunded"})
# Fulfillment states that never shipped anything.
FAILED_FULFILLMENT_STATES = frozenset({"cancelled", "error", "failure"})
# Shopify refuses more than 250 tags on a customer; a payload far beyond is not Shopify's.
_MAX_ITEMS = 10_000
_ID_LIMIT = 2**64  # Shopify ids are positive 64-bit integers


# --- the events ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event carries."""

    topic: str
    customer_ids: tuple[int, ...] = ()
    updated_at: datetime | None = None

    @property
    def order_ids(self) -> tuple[int, ...]:
        """The orders this event is about (the storage layer indexes order → customer)."""
        return ()

    @property
    def touches_profiles(self) -> bool:
        return False


@dataclass(frozen=True, kw_only=True)
class Address:
    city: str | None = None
    province: str | None = None
    province_code: str | None = None
    country_code: str | None = None
    zip: str | None = None


@dataclass(frozen=True, kw_only=True)
class CustomerUpserted(Event):
    """``customers/create`` and ``customers/update`` (also the customer embedded in an order).

    ``None`` in ``tags`` / ``email_marketing_state`` means "the payload did not say" (2025-01+
    payloads never do), not "no tags".
    """

    customer_id: int
    created_at: datetime | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    address: Address | None = None
    tags: tuple[str, ...] | None = None
    email_marketing_state: str | None = None
    email_consent_updated_at: datetime | None = None
    metafields: tuple[tuple[str, str, datetime | None], ...] = ()

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class CustomerDeleted(Event):
    """``customers/delete``: a tombstone; the profile stays deleted whatever arrives later."""

    customer_id: int

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class CustomersMerged(Event):
    """``customers/merge``: Shopify kept ``kept_id`` and deleted ``deleted_id``.

    Only a ``completed`` merge moves anything (``status`` may be ``failed`` or in progress).
    The storage layer loads both profiles, stores ``merge(kept, deleted)`` under the kept id
    and ``apply(deleted_profile, event)`` (which marks it merged away) under the other.
    """

    kept_id: int
    deleted_id: int
    status: str
    job_id: str | None = None

    @property
    def completed(self) -> bool:
        return self.status in {"completed", "succeeded", "success"}

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class EmailConsentUpdated(Event):
    """``customers_email_marketing_consent/update``."""

    customer_id: int
    email: str | None
    state: str
    opt_in_level: str | None = None

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class TagsChanged(Event):
    """``customer.tags_added`` (``added=True``) and ``customer.tags_removed``."""

    customer_id: int
    tags: tuple[str, ...]
    added: bool

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class PurchasingSummary(Event):
    """``customers/purchasing_summary``: Shopify's own count and spend, kept for reconcile."""

    customer_id: int
    number_of_orders: int | None
    amount_spent: Decimal | None
    currency: str | None
    last_order_id: int | None

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class CustomerStatistics(Event):
    """Shopify's ``statistics { rfmGroup predictedSpendTier }``, read by reconcile (no webhook)."""

    customer_id: int
    rfm_group: str | None
    predicted_spend_tier: str | None = None

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class LineItem:
    product_id: int | None
    variant_id: int | None
    quantity: int
    title: str | None = None
    sku: str | None = None


@dataclass(frozen=True, kw_only=True)
class OrderUpserted(Event):
    """``orders/create|updated|paid|cancelled``.

    ``total`` is in the shop's currency (``current_total_price_set.shop_money``, so refunds and
    edits are reflected; older payloads fall back to ``total_price``). ``paid_at`` is a
    candidate (the earliest seen wins): ``processed_at`` when the order was created paid, the
    payload's ``updated_at`` when it became paid later.
    """

    order_id: int
    customer_id: int | None
    name: str | None
    created_at: datetime
    cancelled_at: datetime | None
    paid_at: datetime | None
    total: Decimal
    currency: str
    line_items: tuple[LineItem, ...]
    discount_codes: tuple[str, ...]
    first_fulfilled_at: datetime | None
    financial_status: str | None = None
    customer: CustomerUpserted | None = None

    @property
    def is_guest(self) -> bool:
        """An order without a customer: counted for the shop, attached to nobody."""
        return self.customer_id is None

    @property
    def order_ids(self) -> tuple[int, ...]:
        return (self.order_id,)

    @property
    def touches_profiles(self) -> bool:
        return self.customer_id is not None


@dataclass(frozen=True, kw_only=True)
class OrderDeleted(Event):
    """``orders/delete`` carries only the order id: the caller finds the owner by its index."""

    order_id: int

    @property
    def order_ids(self) -> tuple[int, ...]:
        return (self.order_id,)

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class FulfillmentCreated(Event):
    """``fulfillments/create``: the shipping date of an order (no customer in the payload)."""

    fulfillment_id: int
    order_id: int
    created_at: datetime | None
    status: str | None

    @property
    def shipped(self) -> bool:
        return self.created_at is not None and self.status not in FAILED_FULFILLMENT_STATES

    @property
    def order_ids(self) -> tuple[int, ...]:
        return (self.order_id,)

    @property
    def touches_profiles(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class AppUninstalled(Event):
    shop_id: int | None
    domain: str | None = None


@dataclass(frozen=True, kw_only=True)
class AppScopesUpdated(Event):
    previous: tuple[str, ...]
    current: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class BulkOperationFinished(Event):
    operation_id: str
    status: str
    error_code: str | None
    type: str | None
    completed_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class CustomerDataRequest(Event):
    """``customers/data_request`` (compliance): answered by others, touches no profile."""

    shop_domain: str | None
    customer_id: int | None
    email: str | None
    orders_requested: tuple[int, ...] = field(default=())
    data_request_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class CustomerRedact(Event):
    """``customers/redact`` (compliance): handled by the privacy job, not by ``apply``."""

    shop_domain: str | None
    customer_id: int | None
    email: str | None
    orders_to_redact: tuple[int, ...] = field(default=())


@dataclass(frozen=True, kw_only=True)
class ShopRedact(Event):
    shop_domain: str | None
    shop_id: int | None = None


# --- field readers: each one checks the JSON type and names the field when it refuses --------


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# The readers below take a fast path for the exact JSON types a decoded payload holds (``dict``,
# ``str``, ``int``) before the general checks: an order with 20 line items calls them a few
# hundred times, and an ABC ``isinstance`` or an error path's field name built in advance costs
# more than the read itself. The general path (and every error message) is unchanged.


def _require_obj(value: Any, path: str) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    if not isinstance(value, Mapping):
        raise ValidationError(f"{path or 'payload'} must be a JSON object", field=path or None)
    return value


def _opt_obj(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is dict:
        return value
    return _require_obj(value, _where(path, key))


def _opt_list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"{_where(path, key)} must be a list", field=_where(path, key))
    if len(value) > _MAX_ITEMS:
        raise ValidationError(f"{_where(path, key)} has too many items", field=_where(path, key))
    return value


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"{_where(path, key)} must be a string", field=_where(path, key))
    text = str(value).strip()
    return text or None


def _as_id(value: Any, where: str) -> int:
    """A Shopify id from an int, a numeric string or a GID (``gid://shopify/Customer/1``)."""
    if isinstance(value, bool):
        raise ValidationError(f"{where} must be an id, got a boolean", field=where)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("gid://"):
            text = text.rsplit("/", 1)[-1].split("?", 1)[0]
        if not text.isascii() or not text.isdigit() or len(text) > 20:
            raise ValidationError(f"{where} is not a Shopify id: {value[:60]!r}", field=where)
        number = int(text)
    else:
        raise ValidationError(f"{where} must be an id, got {type(value).__name__}", field=where)
    if number <= 0 or number >= _ID_LIMIT:
        raise ValidationError(f"{where} is out of range: {number}", field=where)
    return number


def _req_id(obj: Mapping[str, Any], key: str, path: str) -> int:
    value = obj.get(key)
    if value is None:
        raise ValidationError(f"{_where(path, key)} is missing", field=_where(path, key))
    return _as_id(value, _where(path, key))


def _opt_id(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is int and 0 < value < _ID_LIMIT:
        return value
    return _as_id(value, _where(path, key))


def _as_datetime(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{where} must be an ISO 8601 time", field=where)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            f"{where} is not an ISO 8601 time: {value[:40]!r}", field=where
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{where} is out of range: {value[:40]!r}", field=where) from None


def _opt_datetime(obj: Mapping[str, Any], key: str, path: str) -> datetime | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return _as_datetime(value, _where(path, key))


def _req_datetime(obj: Mapping[str, Any], key: str, path: str) -> datetime:
    value = _opt_datetime(obj, key, path)
    if value is None:
        raise ValidationError(f"{_where(path, key)} is missing", field=_where(path, key))
    return value


def _opt_int(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            return int(value.strip()[:19])
        raise ValidationError(f"{_where(path, key)} must be an integer", field=_where(path, key))
    return value


def _tags(value: Any, where: str) -> tuple[str, ...]:
    """Tags from a list or from REST's comma-separated string; trimmed, unique, sorted."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        if len(value) > _MAX_ITEMS:
            raise ValidationError(f"{where} has too many tags", field=where)
        items = value
    else:
        raise ValidationError(
            f"{where} must be a list of tags or a comma-separated string", field=where
        )
    tags: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValidationError(f"{where} must hold strings", field=where)
        tag = item.strip()
        if tag:
            tags.add(tag)
    return tuple(sorted(tags))


def _marketing_state(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where} must be a marketing state", field=where)
    state = value.strip().upper()
    if state not in EMAIL_MARKETING_STATES:
        raise ValidationError(
            f"{where} is not a known marketing state: {value[:40]!r}", field=where
        )
    return state


def _money(obj: Mapping[str, Any], key: str, path: str) -> tuple[Decimal, str | None] | None:
    """``(amount, currency)`` from a ``*_set`` object's ``shop_money``, if present."""
    money_set = _opt_obj(obj, key, path)
    if money_set is None:
        return None
    shop_money = _opt_obj(money_set, "shop_money", _where(path, key))
    if shop_money is None or shop_money.get("amount") is None:
        return None
    where = _where(_where(path, key), "shop_money")
    amount = parse_amount(shop_money.get("amount"), field=_where(where, "amount"))
    code = shop_money.get("currency_code")
    currency = None if code is None else parse_currency(code, field=_where(where, "currency_code"))
    return amount, currency


# --- parsers per topic family ----------------------------------------------------------------


def _address(obj: Mapping[str, Any] | None, path: str) -> Address | None:
    if obj is None:
        return None
    country = _opt_str(obj, "country_code", path)
    return Address(
        city=_opt_str(obj, "city", path),
        province=_opt_str(obj, "province", path),
        province_code=_opt_str(obj, "province_code", path),
        country_code=country.upper() if country else None,
        zip=_opt_str(obj, "zip", path),
    )


def _metafields(
    obj: Mapping[str, Any], path: str, default_version: datetime | None
) -> tuple[tuple[str, str, datetime | None], ...]:
    """``metafields`` (present when the subscription asks for namespaces) as (key, value, ver)."""
    found: dict[str, tuple[str, str, datetime | None]] = {}
    for index, item in enumerate(_opt_list(obj, "metafields", path)):
        where = f"{_where(path, 'metafields')}[{index}]"
        entry = _require_obj(item, where)
        namespace = _opt_str(entry, "namespace", where)
        key = _opt_str(entry, "key", where)
        value = _opt_str(entry, "value", where)
        if not namespace or not key or value is None:
            raise ValidationError(f"{where} needs namespace, key and value", field=where)
        version = _opt_datetime(entry, "updated_at", where) or default_version
        found[f"{namespace}.{key}"] = (f"{namespace}.{key}", value, version)
    return tuple(sorted(found.values(), key=lambda item: item[0]))


def _customer(topic: str, obj: Mapping[str, Any], path: str) -> CustomerUpserted:
    updated_at = _opt_datetime(obj, "updated_at", path)
    tags = None if obj.get("tags") is None else _tags(obj["tags"], _where(path, "tags"))
    state: str | None = None
    consent_at: datetime | None = None
    consent = _opt_obj(obj, "email_marketing_consent", path)
    if consent is not None and consent.get("state") is not None:
        where = _where(path, "email_marketing_consent")
        state = _marketing_state(consent.get("state"), _where(where, "state"))
        consent_at = _opt_datetime(consent, "consent_updated_at", where)
    elif isinstance(obj.get("accepts_marketing"), bool):
        # Payloads before 2022-04 only had the boolean.
        state = "SUBSCRIBED" if obj["accepts_marketing"] else "NOT_SUBSCRIBED"
        consent_at = _opt_datetime(obj, "accepts_marketing_updated_at", path)
    address = _address(_opt_obj(obj, "default_address", path), _where(path, "default_address"))
    return CustomerUpserted(
        topic=topic,
        customer_ids=(customer_id := _req_id(obj, "id", path),),
        updated_at=updated_at,
        customer_id=customer_id,
        created_at=_opt_datetime(obj, "created_at", path),
        email=_opt_str(obj, "email", path),
        first_name=_opt_str(obj, "first_name", path),
        last_name=_opt_str(obj, "last_name", path),
        phone=_opt_str(obj, "phone", path),
        address=address,
        tags=tags,
        email_marketing_state=state,
        email_consent_updated_at=consent_at,
        metafields=_metafields(obj, path, updated_at),
    )


def _line_item_fast(item: Any) -> LineItem | None:
    """The line item when every field it reads has the type Shopify sends (ints, strings);
    None for anything else, which :func:`_line_item` then reads (and refuses) as usual."""
    if type(item) is not dict:
        return None
    quantity = item.get("current_quantity")
    if quantity is None:
        quantity = item.get("quantity")
    if type(quantity) is not int or not 0 <= quantity <= 1_000_000:
        return None
    product, variant, sku = item.get("product_id"), item.get("variant_id"), item.get("sku")
    if product is not None and not (type(product) is int and 0 < product < _ID_LIMIT):
        return None
    if variant is not None and not (type(variant) is int and 0 < variant < _ID_LIMIT):
        return None
    if sku is not None and type(sku) is not str:
        return None
    title = item.get("title")
    if title is not None and type(title) is not str:
        return None
    text = title.strip() if title else None
    if not text:  # as ``_opt_str(title) or _opt_str(name)``: the name only when no title
        name = item.get("name")
        if name is not None and type(name) is not str:
            return None
        text = name.strip() if name else None
    return LineItem(
        product_id=product,
        variant_id=variant,
        quantity=quantity,
        title=text or None,
        sku=(sku.strip() or None) if sku else None,
    )


def _line_item(item: Any, where: str) -> LineItem:
    obj = _require_obj(item, where)
    quantity = _opt_int(obj, "current_quantity", where)
    if quantity is None:
        quantity = _opt_int(obj, "quantity", where)
    if quantity is None or quantity < 0 or quantity > 1_000_000:
        raise ValidationError(f"{where}.quantity must be a count", field=f"{where}.quantity")
    return LineItem(
        product_id=_opt_id(obj, "product_id", where),
        variant_id=_opt_id(obj, "variant_id", where),
        quantity=quantity,
        title=_opt_str(obj, "title", where) or _opt_str(obj, "name", where),
        sku=_opt_str(obj, "sku", where),
    )


def _order_total(obj: Mapping[str, Any]) -> tuple[Decimal, str | None]:
    for key in ("current_total_price_set", "total_price_set"):
        found = _money(obj, key, "")
        if found is not None:
            return found
    for key in ("current_total_price", "total_price"):
        if obj.get(key) is not None:
            return parse_amount(obj[key], field=key), None
    return ZERO, None


def _order(topic: str, obj: Mapping[str, Any], triggered_at: datetime | None) -> OrderUpserted:
    order_id = _req_id(obj, "id", "")
    updated_at = _opt_datetime(obj, "updated_at", "") or triggered_at
    created_at = _req_datetime(obj, "created_at", "")
    customer_obj = _opt_obj(obj, "customer", "")
    customer = None
    customer_id = None
    if customer_obj is not None and customer_obj.get("id") is not None:
        customer = _customer("orders/customer", customer_obj, "customer")
        customer_id = customer.customer_id
    total, currency = _order_total(obj)
    if currency is None:
        code = obj.get("currency")
        currency = parse_currency(code, field="currency") if code is not None else "XXX"
    financial = _opt_str(obj, "financial_status", "")
    paid_at = None
    if topic == "orders/paid" or (financial or "").lower() in PAID_STATES:
        processed = _opt_datetime(obj, "processed_at", "") or created_at
        paid_at = processed if topic == "orders/create" else (updated_at or processed)
    codes: set[str] = set()
    for index, entry in enumerate(_opt_list(obj, "discount_codes", "")):
        code_text = _opt_str(_require_obj(entry, f"discount_codes[{index}]"), "code", "")
        if code_text:
            codes.add(code_text)
    first_fulfilled: datetime | None = None
    for index, entry in enumerate(_opt_list(obj, "fulfillments", "")):
        where = f"fulfillments[{index}]"
        fulfillment = _require_obj(entry, where)
        status = _opt_str(fulfillment, "status", where)
        shipped_at = _opt_datetime(fulfillment, "created_at", where)
        if shipped_at is not None and status not in FAILED_FULFILLMENT_STATES:
            first_fulfilled = min(first_fulfilled or shipped_at, shipped_at)
    items = tuple(
        _line_item_fast(item) or _line_item(item, f"line_items[{index}]")
        for index, item in enumerate(_opt_list(obj, "line_items", ""))
    )
    return OrderUpserted(
        topic=topic,
        customer_ids=() if customer_id is None else (customer_id,),
        updated_at=updated_at,
        order_id=order_id,
        customer_id=customer_id,
        name=_opt_str(obj, "name", ""),
        created_at=created_at,
        cancelled_at=_opt_datetime(obj, "cancelled_at", ""),
        paid_at=paid_at,
        total=total,
        currency=currency,
        line_items=items,
        discount_codes=tuple(sorted(codes)),
        first_fulfilled_at=first_fulfilled,
        financial_status=financial,
        customer=customer,
    )


def _fulfillment(topic: str, obj: Mapping[str, Any]) -> FulfillmentCreated:
    return FulfillmentCreated(
        topic=topic,
        updated_at=_opt_datetime(obj, "updated_at", ""),
        fulfillment_id=_req_id(obj, "id", ""),
        order_id=_req_id(obj, "order_id", ""),
        created_at=_opt_datetime(obj, "created_at", ""),
        status=_opt_str(obj, "status", ""),
    )


def _consent(
    topic: str, obj: Mapping[str, Any], triggered_at: datetime | None
) -> EmailConsentUpdated:
    customer_id = _req_id(obj, "customer_id", "")
    consent = _opt_obj(obj, "email_marketing_consent", "")
    if consent is None:
        raise ValidationError("email_marketing_consent is missing", field="email_marketing_consent")
    where = "email_marketing_consent"
    return EmailConsentUpdated(
        topic=topic,
        customer_ids=(customer_id,),
        updated_at=_opt_datetime(consent, "consent_updated_at", where) or triggered_at,
        customer_id=customer_id,
        email=_opt_str(obj, "email_address", ""),
        state=_marketing_state(consent.get("state"), f"{where}.state"),
        opt_in_level=_opt_str(consent, "opt_in_level", where),
    )


def _tags_changed(topic: str, obj: Mapping[str, Any], triggered_at: datetime | None) -> TagsChanged:
    customer_id = _req_id(obj, "customerId", "")
    if obj.get("tags") is None:
        raise ValidationError("tags is missing", field="tags")
    return TagsChanged(
        topic=topic,
        customer_ids=(customer_id,),
        updated_at=_opt_datetime(obj, "occurredAt", "") or triggered_at,
        customer_id=customer_id,
        tags=_tags(obj["tags"], "tags"),
        added=topic == "customer.tags_added",
    )


def _purchasing_summary(
    topic: str, obj: Mapping[str, Any], triggered_at: datetime | None
) -> PurchasingSummary:
    customer_id = _req_id(obj, "customerId", "")
    spent = _opt_obj(obj, "amountSpent", "")
    amount = currency = None
    if spent is not None and spent.get("amount") is not None:
        amount = parse_amount(spent.get("amount"), field="amountSpent.amount")
        code = spent.get("currencyCode")
        currency = None if code is None else parse_currency(code, field="amountSpent.currencyCode")
    count = _opt_int(obj, "numberOfOrders", "")
    if count is not None and count < 0:
        raise ValidationError("numberOfOrders must not be negative", field="numberOfOrders")
    return PurchasingSummary(
        topic=topic,
        customer_ids=(customer_id,),
        updated_at=_opt_datetime(obj, "occurredAt", "") or triggered_at,
        customer_id=customer_id,
        number_of_orders=count,
        amount_spent=amount,
        currency=currency,
        last_order_id=_opt_id(obj, "lastOrderId", ""),
    )


def _merge(topic: str, obj: Mapping[str, Any], triggered_at: datetime | None) -> CustomersMerged:
    kept = _req_id(obj, "admin_graphql_api_customer_kept_id", "")
    deleted = _req_id(obj, "admin_graphql_api_customer_deleted_id", "")
    if kept == deleted:
        raise ValidationError(
            "a customer cannot be merged into itself", field="admin_graphql_api_customer_deleted_id"
        )
    status = _opt_str(obj, "status", "")
    if status is None:
        raise ValidationError("status is missing", field="status")
    return CustomersMerged(
        topic=topic,
        customer_ids=(kept, deleted),
        updated_at=triggered_at,
        kept_id=kept,
        deleted_id=deleted,
        status=status.lower(),
        job_id=_opt_str(obj, "admin_graphql_api_job_id", ""),
    )


def _ids(obj: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(_as_id(v, f"{key}[{i}]") for i, v in enumerate(_opt_list(obj, key, "")))


def _compliance_customer(obj: Mapping[str, Any]) -> tuple[int | None, str | None]:
    customer = _opt_obj(obj, "customer", "")
    if customer is None:
        return None, None
    return _opt_id(customer, "id", "customer"), _opt_str(customer, "email", "customer")


def _scopes(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    return _tags(value, key)


# --- the entry point -------------------------------------------------------------------------

TOPICS = (
    "orders/create",
    "orders/updated",
    "orders/paid",
    "orders/cancelled",
    "orders/delete",
    "fulfillments/create",
    "customers/create",
    "customers/update",
    "customers/delete",
    "customers/merge",
    "customers_email_marketing_consent/update",
    "customers/purchasing_summary",
    "customer.tags_added",
    "customer.tags_removed",
    "app/uninstalled",
    "app/scopes_update",
    "bulk_operations/finish",
    "customers/data_request",
    "customers/redact",
    "shop/redact",
)


def parse(topic: str, payload: Mapping[str, Any], *, triggered_at: datetime | None = None) -> Event:
    """The typed event for a webhook body; ``ValidationError`` if the body cannot be used.

    ``triggered_at`` (the ``X-Shopify-Triggered-At`` header, optional) is the version used
    when the payload itself carries no time (consent updates without ``consent_updated_at``,
    merges, deletions).
    """
    if not isinstance(topic, str):
        raise ValidationError("topic must be a string", field="topic")
    topic = topic.strip().lower()
    obj = _require_obj(payload, "")
    if triggered_at is not None and triggered_at.tzinfo is None:
        triggered_at = triggered_at.replace(tzinfo=UTC)
    try:
        return _parse(topic, obj, triggered_at)
    except RecursionError:  # pragma: no cover - only absurdly nested JSON gets here
        raise ValidationError("payload is nested too deeply") from None


def _parse(topic: str, obj: Mapping[str, Any], triggered_at: datetime | None) -> Event:
    if topic in {"orders/create", "orders/updated", "orders/paid", "orders/cancelled"}:
        return _order(topic, obj, triggered_at)
    if topic == "orders/delete":
        return OrderDeleted(topic=topic, updated_at=triggered_at, order_id=_req_id(obj, "id", ""))
    if topic == "fulfillments/create":
        return _fulfillment(topic, obj)
    if topic in {"customers/create", "customers/update"}:
        return _customer(topic, obj, "")
    if topic == "customers/delete":
        customer_id = _req_id(obj, "id", "")
        return CustomerDeleted(
            topic=topic,
            customer_ids=(customer_id,),
            updated_at=triggered_at,
            customer_id=customer_id,
        )
    if topic == "customers/merge":
        return _merge(topic, obj, triggered_at)
    if topic == "customers_email_marketing_consent/update":
        return _consent(topic, obj, triggered_at)
    if topic == "customers/purchasing_summary":
        return _purchasing_summary(topic, obj, triggered_at)
    if topic in {"customer.tags_added", "customer.tags_removed"}:
        return _tags_changed(topic, obj, triggered_at)
    if topic == "app/uninstalled":
        return AppUninstalled(
            topic=topic,
            updated_at=triggered_at,
            shop_id=_opt_id(obj, "id", ""),
            domain=_opt_str(obj, "myshopify_domain", "") or _opt_str(obj, "domain", ""),
        )
    if topic == "app/scopes_update":
        return AppScopesUpdated(
            topic=topic,
            updated_at=_opt_datetime(obj, "updated_at", "") or triggered_at,
            previous=_scopes(obj, "previous"),
            current=_scopes(obj, "current"),
        )
    if topic == "bulk_operations/finish":
        operation = _opt_str(obj, "admin_graphql_api_id", "")
        if operation is None:
            raise ValidationError("admin_graphql_api_id is missing", field="admin_graphql_api_id")
        status = _opt_str(obj, "status", "")
        if status is None:
            raise ValidationError("status is missing", field="status")
        completed_at = _opt_datetime(obj, "completed_at", "")
        return BulkOperationFinished(
            topic=topic,
            updated_at=completed_at or triggered_at,
            operation_id=operation,
            status=status.lower(),
            error_code=_opt_str(obj, "error_code", ""),
            type=_opt_str(obj, "type", ""),
            completed_at=completed_at,
        )
    if topic == "customers/data_request":
        requested_id, email = _compliance_customer(obj)
        request = _opt_obj(obj, "data_request", "")
        return CustomerDataRequest(
            topic=topic,
            updated_at=triggered_at,
            shop_domain=_opt_str(obj, "shop_domain", ""),
            customer_id=requested_id,
            email=email,
            orders_requested=_ids(obj, "orders_requested"),
            data_request_id=None if request is None else _opt_id(request, "id", "data_request"),
        )
    if topic == "customers/redact":
        redacted_id, email = _compliance_customer(obj)
        return CustomerRedact(
            topic=topic,
            updated_at=triggered_at,
            shop_domain=_opt_str(obj, "shop_domain", ""),
            customer_id=redacted_id,
            email=email,
            orders_to_redact=_ids(obj, "orders_to_redact"),
        )
    if topic == "shop/redact":
        return ShopRedact(
            topic=topic,
            updated_at=triggered_at,
            shop_domain=_opt_str(obj, "shop_domain", ""),
            shop_id=_opt_id(obj, "shop_id", ""),
        )
    raise ValidationError(f"unknown webhook topic: {topic[:80]!r}", field="topic")


def birth_date(value: str | None) -> date | None:
    """``facts.birth_date`` (a metafield of type ``date``); ``None`` if absent or malformed."""
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None
