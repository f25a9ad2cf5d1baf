"""A customer's profile, folded from webhook events; pure and order-independent.

The profile is a set of last-writer-wins registers, one per field, each remembering the
version (the payload's ``updated_at``, UTC ISO) that wrote it. A write wins when its
``(version, value)`` is greater than the register's, so ties are broken by the value itself:
that makes ``apply`` commutative, associative and idempotent, and any permutation of the same
deliveries, with repeats, folds to the same profile. A write without a version (``""``) only
fills a register nobody with a version has written.

- Tags: a snapshot register (older API versions sent the full tag list on the customer) plus
  one add/remove register per tag (``customer.tags_added`` / ``_removed``); a per-tag change
  newer than the snapshot overrides it.
- Orders: keyed by id, each with its own ``updated_at``; ``paid_at`` and
  ``first_fulfilled_at`` keep the earliest value seen, ``deleted`` is a tombstone that never
  goes away. An order deletion or a fulfillment that arrives before its order leaves a stub
  (no ``created_at``) that the order fills in later.
- Aggregates (count, spend, first / last order, interval, products) are computed from the
  orders map, never stored, so they cannot drift from it.
- ``customers/delete`` is a tombstone too: the profile keeps its orders (the shop's history)
  and drops everything personal, now and for any older payload that arrives later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from crm.errors import ValidationError
from crm.events import (
    CustomerDeleted,
    CustomersMerged,
    CustomerStatistics,
    CustomerUpserted,
    EmailConsentUpdated,
    Event,
    FulfillmentCreated,
    LineItem,
    OrderDeleted,
    OrderUpserted,
    PurchasingSummary,
    TagsChanged,
    birth_date,
)
from crm.money import ZERO, normalize

# Fields written from customer payloads, each a last-writer-wins register.
IDENTITY_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "phone",
    "created_at",
    "city",
    "province",
    "province_code",
    "country_code",
    "zip",
)
ADDRESS_FIELDS = ("city", "province", "province_code", "country_code", "zip")
SHOPIFY_FIELDS = (
    "shopify_order_count",
    "shopify_amount_spent",
    "shopify_currency",
    "shopify_last_order_id",
    "shopify_rfm_group",
    "shopify_predicted_spend_tier",
)
# Everything personal, blanked on a deleted profile.
PERSONAL_FIELDS = (*IDENTITY_FIELDS, "email_marketing_state", "birth_date", *SHOPIFY_FIELDS)
BIRTH_DATE_METAFIELD = "facts.birth_date"


def _version(moment: datetime | None) -> str:
    """The register version of a write: UTC ISO time, or ``""`` when the payload had none."""
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def _value_key(value: Any) -> tuple[int, str]:
    """A total order over register values, used only to break version ties (None lowest)."""
    if value is None:
        return (0, "")
    return (1, json.dumps(_plain(value), sort_keys=True, ensure_ascii=False))


def _plain(value: Any) -> Any:
    """JSON-safe form of a register value."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# --- orders ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OrderRecord:
    """One order as the profile keeps it. ``created_at is None`` marks a stub (order unseen)."""

    id: int
    name: str | None = None
    created_at: datetime | None = None
    paid_at: datetime | None = None
    cancelled_at: datetime | None = None
    deleted: bool = False
    updated_at: datetime | None = None
    total: Decimal = ZERO
    currency: str = "XXX"
    line_items: tuple[LineItem, ...] = ()
    discount_codes: tuple[str, ...] = ()
    first_fulfilled_at: datetime | None = None

    @property
    def is_stub(self) -> bool:
        return self.created_at is None

    @property
    def is_live(self) -> bool:
        """Counts for the customer: seen, not cancelled, not deleted."""
        return self.created_at is not None and self.cancelled_at is None and not self.deleted

    def _core_key(self) -> tuple[int, str, tuple[int, str]]:
        core = {
            "name": self.name,
            "created_at": self.created_at,
            "cancelled_at": self.cancelled_at,
            "total": self.total,
            "currency": self.currency,
            "items": [_line_item_dict(item) for item in self.line_items],
            "codes": self.discount_codes,
        }
        return (0 if self.is_stub else 1, _version(self.updated_at), _value_key(core))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "created_at": _plain(self.created_at),
            "paid_at": _plain(self.paid_at),
            "cancelled_at": _plain(self.cancelled_at),
            "deleted": self.deleted or None,
            "updated_at": _plain(self.updated_at),
            "total": None if self.is_stub else str(self.total),
            "currency": None if self.is_stub else self.currency,
            "items": [_line_item_dict(item) for item in self.line_items] or None,
            "codes": list(self.discount_codes) or None,
            "fulfilled_at": _plain(self.first_fulfilled_at),
        }
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, order_id: int, data: Mapping[str, Any]) -> OrderRecord:
        return cls(
            id=order_id,
            name=data.get("name"),
            created_at=_dt(data.get("created_at")),
            paid_at=_dt(data.get("paid_at")),
            cancelled_at=_dt(data.get("cancelled_at")),
            deleted=bool(data.get("deleted", False)),
            updated_at=_dt(data.get("updated_at")),
            total=normalize(Decimal(data.get("total", "0"))),
            currency=str(data.get("currency", "XXX")),
            line_items=tuple(_line_item_from(item) for item in data.get("items", ())),
            discount_codes=tuple(str(code) for code in data.get("codes", ())),
            first_fulfilled_at=_dt(data.get("fulfilled_at")),
        )


def _line_item_dict(item: LineItem) -> dict[str, Any]:
    data = {
        "p": item.product_id,
        "v": item.variant_id,
        "q": item.quantity,
        "t": item.title,
        "s": item.sku,
    }
    return {key: value for key, value in data.items() if value is not None}


def _line_item_from(data: Mapping[str, Any]) -> LineItem:
    return LineItem(
        product_id=data.get("p"),
        variant_id=data.get("v"),
        quantity=int(data["q"]),
        title=data.get("t"),
        sku=data.get("s"),
    )


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def merge_orders(a: OrderRecord, b: OrderRecord) -> OrderRecord:
    """Join two records of the same order: newer core wins, earliest dates, sticky deletion."""
    core = a if a._core_key() >= b._core_key() else b
    return replace(
        core,
        paid_at=_earliest(a.paid_at, b.paid_at),
        first_fulfilled_at=_earliest(a.first_fulfilled_at, b.first_fulfilled_at),
        deleted=a.deleted or b.deleted,
    )


def order_from_event(event: OrderUpserted) -> OrderRecord:
    return OrderRecord(
        id=event.order_id,
        name=event.name,
        created_at=event.created_at,
        paid_at=event.paid_at,
        cancelled_at=event.cancelled_at,
        updated_at=event.updated_at,
        total=event.total,
        currency=event.currency,
        line_items=event.line_items,
        discount_codes=event.discount_codes,
        first_fulfilled_at=event.first_fulfilled_at,
    )


# --- the profile -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Profile:
    """Everything Kizuna knows about one customer. Build it with ``apply``; read the fields.

    ``versions`` maps each register (a field name, ``mf:<namespace.key>`` for a metafield)
    to the version that wrote it; ``tag_snapshot`` / ``tag_changes`` hold the tag registers
    from which ``tags`` is computed. Callers only read these to persist them.
    """

    customer_id: int
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    created_at: datetime | None = None
    email_marketing_state: str | None = None
    tags: tuple[str, ...] = ()
    birth_date: date | None = None
    city: str | None = None
    province: str | None = None
    province_code: str | None = None
    country_code: str | None = None
    zip: str | None = None
    metafields: dict[str, str] = field(default_factory=dict)
    orders: dict[int, OrderRecord] = field(default_factory=dict)
    deleted: bool = False
    merged_into: int | None = None
    merged_from: tuple[int, ...] = ()
    # Shopify's own figures, kept beside ours (purchasing_summary webhook, reconcile).
    shopify_order_count: int | None = None
    shopify_amount_spent: Decimal | None = None
    shopify_currency: str | None = None
    shopify_last_order_id: int | None = None
    shopify_rfm_group: str | None = None
    shopify_predicted_spend_tier: str | None = None
    # Register versions and tag registers (see the module docstring).
    versions: dict[str, str] = field(default_factory=dict)
    tag_snapshot: tuple[str, tuple[str, ...]] | None = None
    tag_changes: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # The live orders, sorted, and the order records they were computed from (see _live).
    _live_cache: tuple[tuple[OrderRecord, ...], tuple[OrderRecord, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # --- derived, read-only ---

    def _live(self) -> tuple[OrderRecord, ...]:
        """The live orders, oldest first, computed once per state of ``orders``.

        Every aggregate (count, spend, dates, products, segments) reads them, and each used to
        filter and sort the orders again. ``orders`` is a plain dict that callers may change in
        place (``apply`` works on a copy, ``ingest`` pops a moved order), so the cache is not
        trusted blindly: it is kept with the tuple of records it was computed from and used only
        while ``orders`` still holds those records, in that order (records are frozen, and the
        comparison is by identity first, so a hit costs one pass in C over the dict).
        """
        records = tuple(self.orders.values())
        cached = self._live_cache
        if cached is not None and cached[0] == records:
            return cached[1]
        live = tuple(sorted((o for o in records if o.is_live), key=_live_order_key))
        self._live_cache = (records, live)
        return live

    @property
    def live_orders(self) -> list[OrderRecord]:
        """Orders that count, oldest first (not cancelled, not deleted, not stubs)."""
        return list(self._live())

    @property
    def order_count(self) -> int:
        return len(self._live())

    @property
    def total_spent(self) -> Decimal:
        """Sum of live orders' current totals, in the shop currency (refunds deducted)."""
        return normalize(sum((order.total for order in self._live()), ZERO))

    @property
    def currency(self) -> str | None:
        live = self._live()
        return live[-1].currency if live else self.shopify_currency

    @property
    def first_order_at(self) -> datetime | None:
        live = self._live()
        return live[0].created_at if live else None

    @property
    def last_order_at(self) -> datetime | None:
        live = self._live()
        return live[-1].created_at if live else None

    @property
    def avg_order_interval_days(self) -> float | None:
        """Mean days between consecutive live orders; ``None`` below two orders."""
        live = self._live()
        if len(live) < 2:
            return None
        first, last = live[0].created_at, live[-1].created_at
        assert first is not None and last is not None
        return (last - first).total_seconds() / 86400 / (len(live) - 1)

    @property
    def products(self) -> dict[int, list[tuple[datetime, int]]]:
        """Product id → (order date, quantity) per live order, oldest first."""
        bought: dict[int, list[tuple[datetime, int]]] = {}
        for order in self._live():
            assert order.created_at is not None
            per_order: dict[int, int] = {}
            for item in order.line_items:
                if item.product_id is not None and item.quantity > 0:
                    per_order[item.product_id] = per_order.get(item.product_id, 0) + item.quantity
            for product_id, quantity in per_order.items():
                bought.setdefault(product_id, []).append((order.created_at, quantity))
        return bought

    @property
    def product_ids(self) -> set[int]:
        """The products of :attr:`products` (bought in a live order), without the history."""
        return {
            item.product_id
            for order in self._live()
            for item in order.line_items
            if item.product_id is not None and item.quantity > 0
        }

    @property
    def discount_codes_used(self) -> set[str]:
        return {code for order in self._live() for code in order.discount_codes}

    @property
    def shopify_counted_at(self) -> datetime | None:
        """When Shopify took ``shopify_order_count`` (its register's version): orders created
        later are not in that count. ``None`` when unknown."""
        version = self.versions.get("shopify_order_count")
        try:
            moment = datetime.fromisoformat(version) if version else None
        except ValueError:
            return None
        return None if moment is None or moment.tzinfo is None else moment

    @property
    def active(self) -> bool:
        """Neither deleted nor merged away: belongs in the shop's lists."""
        return not self.deleted and self.merged_into is None

    # --- persistence ---

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-safe dict (ISO strings, decimal strings); ``from_dict`` reverses it."""
        data: dict[str, Any] = {"id": self.customer_id}
        for name in (*PERSONAL_FIELDS, "merged_into"):
            value = getattr(self, name)
            if value is not None:
                data[name] = _plain(value)
        if self.tags:
            data["tags"] = list(self.tags)
        if self.metafields:
            data["metafields"] = dict(sorted(self.metafields.items()))
        if self.orders:
            data["orders"] = {
                str(order_id): self.orders[order_id].to_dict() for order_id in sorted(self.orders)
            }
        if self.deleted:
            data["deleted"] = True
        if self.merged_from:
            data["merged_from"] = list(self.merged_from)
        if self.versions:
            data["v"] = dict(sorted(self.versions.items()))
        if self.tag_snapshot is not None:
            data["tag_snapshot"] = [self.tag_snapshot[0], list(self.tag_snapshot[1])]
        if self.tag_changes:
            data["tag_changes"] = {
                tag: [ver, present] for tag, (ver, present) in sorted(self.tag_changes.items())
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """The profile ``to_dict`` wrote; ``ValidationError`` if ``data`` is not one."""
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ValidationError(f"stored profile is corrupt: {exc}", field="profile") from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Profile:
        snapshot = data.get("tag_snapshot")
        amount = data.get("shopify_amount_spent")
        profile = cls(
            customer_id=int(data["id"]),
            email=data.get("email"),
            first_name=data.get("first_name"),
            last_name=data.get("last_name"),
            phone=data.get("phone"),
            created_at=_dt(data.get("created_at")),
            email_marketing_state=data.get("email_marketing_state"),
            tags=tuple(data.get("tags", ())),
            birth_date=None
            if data.get("birth_date") is None
            else date.fromisoformat(data["birth_date"]),
            city=data.get("city"),
            province=data.get("province"),
            province_code=data.get("province_code"),
            country_code=data.get("country_code"),
            zip=data.get("zip"),
            metafields={str(k): str(v) for k, v in data.get("metafields", {}).items()},
            orders={
                int(order_id): OrderRecord.from_dict(int(order_id), order)
                for order_id, order in data.get("orders", {}).items()
            },
            deleted=bool(data.get("deleted", False)),
            merged_into=None if data.get("merged_into") is None else int(data["merged_into"]),
            merged_from=tuple(int(i) for i in data.get("merged_from", ())),
            shopify_order_count=data.get("shopify_order_count"),
            shopify_amount_spent=None if amount is None else normalize(Decimal(amount)),
            shopify_currency=data.get("shopify_currency"),
            shopify_last_order_id=data.get("shopify_last_order_id"),
            shopify_rfm_group=data.get("shopify_rfm_group"),
            shopify_predicted_spend_tier=data.get("shopify_predicted_spend_tier"),
            versions={str(k): str(v) for k, v in data.get("v", {}).items()},
            tag_snapshot=None
            if snapshot is None
            else (str(snapshot[0]), tuple(str(t) for t in snapshot[1])),
            tag_changes={
                str(tag): (str(ver), bool(present))
                for tag, (ver, present) in data.get("tag_changes", {}).items()
            },
        )
        return profile

    def copy(self) -> Profile:
        """A copy whose dicts can be changed without touching this profile.

        Field by field rather than ``dataclasses.replace`` (which re-runs ``__init__`` and
        costs as much as the rest of an ``apply``); the live-order cache comes along, and stays
        right for the copy because it checks the records it was computed from.
        """
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.metafields = dict(self.metafields)
        twin.orders = dict(self.orders)
        twin.versions = dict(self.versions)
        twin.tag_changes = dict(self.tag_changes)
        return twin


def _live_order_key(order: OrderRecord) -> tuple[datetime | None, int]:
    return (order.created_at, order.id)


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"naive time {value!r}")
    return moment.astimezone(UTC)


# --- folding events ----------------------------------------------------------------------------


def _write(profile: Profile, register: str, attr: str | None, value: Any, version: str) -> None:
    """Last-writer-wins: ``value`` replaces the register if ``(version, value)`` is greater."""
    current_version = profile.versions.get(register)
    if current_version is not None:
        # (current_version, current) >= (version, value), comparing values only on a tie of
        # versions (the common case is decided by the versions alone).
        if current_version > version:
            return
        if current_version == version:
            current = (
                profile.metafields.get(register[3:]) if attr is None else getattr(profile, attr)
            )
            if _value_key(current) >= _value_key(value):
                return
    profile.versions[register] = version
    if attr is None:
        if value is None:
            profile.metafields.pop(register[3:], None)
        else:
            profile.metafields[register[3:]] = value
    else:
        setattr(profile, attr, value)


def _apply_customer(profile: Profile, event: CustomerUpserted) -> None:
    version = _version(event.updated_at)
    address = event.address
    values: dict[str, Any] = {
        "email": event.email,
        "first_name": event.first_name,
        "last_name": event.last_name,
        "phone": event.phone,
        "created_at": event.created_at,
    }
    for name in ADDRESS_FIELDS:
        values[name] = None if address is None else getattr(address, name)
    for name, value in values.items():
        _write(profile, name, name, value, version)
    if event.email_marketing_state is not None:
        consent_version = _version(event.email_consent_updated_at or event.updated_at)
        _write(
            profile, "email_marketing_state", "email_marketing_state",
            event.email_marketing_state, consent_version,
        )  # fmt: skip
    if event.tags is not None:
        candidate = (version, event.tags)
        if profile.tag_snapshot is None or _snapshot_key(candidate) > _snapshot_key(
            profile.tag_snapshot
        ):
            profile.tag_snapshot = candidate
    for key, value, meta_version in event.metafields:
        _write(profile, f"mf:{key}", None, value, _version(meta_version))


def _snapshot_key(snapshot: tuple[str, tuple[str, ...]]) -> tuple[str, tuple[int, str]]:
    return (snapshot[0], _value_key(snapshot[1]))


def _set_tag(profile: Profile, tag: str, version: str, present: bool) -> None:
    current = profile.tag_changes.get(tag)
    if current is None or (version, present) > current:
        profile.tag_changes[tag] = (version, present)


def _settle(profile: Profile) -> Profile:
    """Recompute what is derived from the registers, and blank a deleted profile."""
    if profile.deleted:
        for name in PERSONAL_FIELDS:
            setattr(profile, name, None)
        profile.metafields = {}
        profile.versions = {}
        profile.tag_snapshot = None
        profile.tag_changes = {}
        profile.tags = ()
        return profile
    snapshot_version = None if profile.tag_snapshot is None else profile.tag_snapshot[0]
    snapshot_tags = set() if profile.tag_snapshot is None else set(profile.tag_snapshot[1])
    tags = set(snapshot_tags)
    for tag, (version, present) in profile.tag_changes.items():
        if snapshot_version is None or version > snapshot_version:
            if present:
                tags.add(tag)
            else:
                tags.discard(tag)
    profile.tags = tuple(sorted(tags))
    profile.birth_date = birth_date(profile.metafields.get(BIRTH_DATE_METAFIELD))
    return profile


def _put_order(profile: Profile, record: OrderRecord) -> None:
    existing = profile.orders.get(record.id)
    profile.orders[record.id] = record if existing is None else merge_orders(existing, record)


def _target_id(event: Event) -> int | None:
    return event.customer_ids[0] if len(event.customer_ids) == 1 else None


def apply(profile: Profile | None, event: Event) -> Profile:
    """The profile after ``event``; pure (``profile`` is not changed), idempotent, commutative.

    ``profile`` is ``None`` for a customer not seen yet. Events whose owner the payload does
    not name (``OrderDeleted``, ``FulfillmentCreated``) need the owner's profile, found by the
    caller through its order → customer index. An event that concerns no profile (a guest
    order, app and compliance topics) returns ``profile`` unchanged.
    """
    if isinstance(event, CustomersMerged):
        return _apply_merge_event(profile, event)
    if not event.touches_profiles:
        if profile is None:
            raise ValueError(f"{event.topic} concerns no customer; there is no profile to build")
        return profile
    target = _target_id(event)
    if profile is None:
        if target is None:
            raise ValueError(f"{event.topic} names no customer: pass the owner's profile")
        profile = Profile(customer_id=target)
    elif target is not None and target != profile.customer_id:
        raise ValueError(f"{event.topic} is for customer {target}, not {profile.customer_id}")
    result = profile.copy()
    if result.deleted and not isinstance(event, OrderUpserted | OrderDeleted | FulfillmentCreated):
        return _settle(result)
    if isinstance(event, CustomerUpserted):
        _apply_customer(result, event)
    elif isinstance(event, OrderUpserted):
        _put_order(result, order_from_event(event))
        if event.customer is not None and not result.deleted:
            _apply_customer(result, event.customer)
    elif isinstance(event, OrderDeleted):
        _put_order(result, OrderRecord(id=event.order_id, deleted=True))
    elif isinstance(event, FulfillmentCreated):
        shipped_at = event.created_at if event.shipped else None
        _put_order(result, OrderRecord(id=event.order_id, first_fulfilled_at=shipped_at))
    elif isinstance(event, CustomerDeleted):
        result.deleted = True
    elif isinstance(event, EmailConsentUpdated):
        _write(
            result, "email_marketing_state", "email_marketing_state",
            event.state, _version(event.updated_at),
        )  # fmt: skip
    elif isinstance(event, TagsChanged):
        for tag in event.tags:
            _set_tag(result, tag, _version(event.updated_at), event.added)
    elif isinstance(event, PurchasingSummary):
        version = _version(event.updated_at)
        _write(
            result, "shopify_order_count", "shopify_order_count", event.number_of_orders, version
        )
        _write(result, "shopify_amount_spent", "shopify_amount_spent", event.amount_spent, version)
        _write(result, "shopify_currency", "shopify_currency", event.currency, version)
        _write(
            result, "shopify_last_order_id", "shopify_last_order_id",
            event.last_order_id, version,
        )  # fmt: skip
    elif isinstance(event, CustomerStatistics):
        version = _version(event.updated_at)
        _write(result, "shopify_rfm_group", "shopify_rfm_group", event.rfm_group, version)
        _write(
            result, "shopify_predicted_spend_tier", "shopify_predicted_spend_tier",
            event.predicted_spend_tier, version,
        )  # fmt: skip
    return _settle(result)


def _apply_merge_event(profile: Profile | None, event: CustomersMerged) -> Profile:
    """On the kept profile, remember the merged id; on the other, mark it merged away."""
    if profile is None:
        raise ValueError("customers/merge needs one of the two profiles")
    if profile.customer_id not in (event.kept_id, event.deleted_id):
        raise ValueError(f"customers/merge is not about customer {profile.customer_id}")
    if not event.completed:
        return profile
    result = profile.copy()
    if profile.customer_id == event.kept_id:
        result.merged_from = tuple(sorted({*result.merged_from, event.deleted_id}))
    else:
        result.merged_into = event.kept_id
        result.deleted = True
    return _settle(result)


def merge(survivor: Profile, merged: Profile) -> Profile:
    """``survivor`` with everything of ``merged`` (``customers/merge``): orders, registers, tags.

    A join of the two profiles' registers, so it is idempotent and may be repeated; the
    result keeps the survivor's id, and its ``deleted`` / ``merged_into`` state.
    """
    result = survivor.copy()
    for record in merged.orders.values():
        _put_order(result, record)
    result.merged_from = tuple(
        sorted(
            {*survivor.merged_from, *merged.merged_from, merged.customer_id}
            - {survivor.customer_id}
        )
    )
    if result.deleted:
        return _settle(result)
    for register, version in merged.versions.items():
        if register.startswith("mf:"):
            _write(result, register, None, merged.metafields.get(register[3:]), version)
        else:
            _write(result, register, register, getattr(merged, register), version)
    # Shopify unites the two customers' tags: the merged customer's tags become additions.
    if merged.tag_snapshot is not None:
        for tag in merged.tag_snapshot[1]:
            _set_tag(result, tag, merged.tag_snapshot[0], True)
    for tag, (version, present) in merged.tag_changes.items():
        if present:
            _set_tag(result, tag, version, True)
    return _settle(result)


def fold(events: Iterable[Event], profile: Profile | None = None) -> Profile | None:
    """``apply`` each event in turn (events that touch no profile are skipped)."""
    for event in events:
        if event.touches_profiles or isinstance(event, CustomersMerged):
            profile = apply(profile, event)
    return profile
