"""The sequence model: a trigger, steps and exit rules, validated when parsed.

A sequence arrives as a plain dict (JSON from the API or a template) and is refused with a
:class:`~crm.errors.ValidationError` whose ``field`` is the path the UI highlights
(``steps[2].offset_days``). Any input at all either parses or raises that one error.

Versions: :func:`new_version` turns an edit into version N+1; enrolments keep the version they
entered with, so the scheduler keeps every version that still has customers inside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ValidationError
from .schedule import YEARLY_MODES

HANDLE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
TAG_PREFIX = "kizuna"
MAX_OFFSET_DAYS = 3660
MAX_STEPS = 50

TRIGGER_KINDS = (
    "first_order",
    "replenishment",
    "nth_order",
    "yearly_date",
    "segment_entered",
    "product_bought",
)
ANCHORS = ("order", "paid", "fulfilled")
DATE_SOURCES = ("birthday", "signup", "metafield")
CATCH_UP = ("skip", "latest")
DISCOUNT_KINDS = ("percentage", "amount")
#: Triggers whose cycle restarts at a new order, so that order must exit the running series.
ORDER_TRIGGERS = ("first_order", "replenishment", "product_bought")


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: str
    anchor: str = "order"
    product_ids: tuple[int, ...] = ()
    collection_ids: tuple[int, ...] = ()
    consumption_days: int | None = None
    nth: int | None = None
    date_source: str | None = None
    metafield: str | None = None
    yearly_mode: str = "on_day"
    days_before: int = 0
    segment: str | None = None


@dataclass(frozen=True, slots=True)
class Discount:
    kind: str  # percentage | amount
    value: Decimal  # percent (10 = 10 %) or an amount in the shop's currency
    valid_days: int | None = 14
    until_month_end: bool = False
    combines_with_products: bool = False
    combines_with_orders: bool = False
    combines_with_shipping: bool = True
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    key: str
    offset_days: int
    send_hour: int = 10
    title: str = ""
    message: bool = True  # a message step needs email-marketing consent
    discount: Discount | None = None
    flow_trigger: bool = False
    tags: tuple[str, ...] = ()  # extra merchant tags, added with the step's own tag

    def tag(self, sequence_id: str) -> str:
        return step_tag(sequence_id, self.key)


@dataclass(frozen=True, slots=True)
class ExitRules:
    on_order: bool = False  # any new order ends the series (win-back)
    on_redeem: bool = True  # the series' coupon used → it has done its job
    on_segment_left: bool = False


@dataclass(frozen=True, slots=True)
class Sequence:
    id: str
    trigger: Trigger
    steps: tuple[Step, ...]
    version: int = 1
    title: str = ""
    exit: ExitRules = field(default_factory=ExitRules)
    catch_up: str = "skip"
    active: bool = True
    starts_at: datetime | None = None
    ends_at: datetime | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(s.tag(self.id) for s in self.steps)

    @property
    def needs_consent(self) -> bool:
        return any(s.message for s in self.steps)

    def step_index(self, key: str) -> int:
        for i, s in enumerate(self.steps):
            if s.key == key:
                return i
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def step_tag(sequence_id: str, step_key: str) -> str:
    return f"{TAG_PREFIX}:{sequence_id}:{step_key}"


# -- parsing ------------------------------------------------------------------------------


class _Reader:
    """Typed access to one dict with the path of every field, for error messages."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ValidationError(f"{path or 'sequence'}: must be an object", field=path or None)
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise ValidationError(f"{key} is required", field=self.at(key))
        if not isinstance(value, str):
            raise ValidationError(f"{key} must be text", field=self.at(key))
        if choices and value not in choices:
            raise ValidationError(
                f"{key} must be one of {', '.join(choices)} (got {value[:40]!r})",
                field=self.at(key),
            )
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def whole(self, key: str, default: int | None = None, *, lo: int, hi: int) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise ValidationError(f"{key} is required", field=self.at(key))
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{key} must be a whole number", field=self.at(key))
        if not lo <= value <= hi:
            raise ValidationError(f"{key} must be between {lo} and {hi}", field=self.at(key))
        return value

    def opt_whole(self, key: str, *, lo: int, hi: int) -> int | None:
        return self.whole(key, lo=lo, hi=hi) if self.has(key) else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValidationError(f"{key} must be true or false", field=self.at(key))
        return value

    def number(self, key: str) -> Decimal:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValidationError(f"{key} must be a number", field=self.at(key))
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValidationError(f"{key} must be a number", field=self.at(key)) from None
        if not number.is_finite():
            raise ValidationError(f"{key} must be a finite number", field=self.at(key))
        return number

    def ids(self, key: str) -> tuple[int, ...]:
        value = self.data.get(key, [])
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise ValidationError(f"{key} must be a list of ids", field=self.at(key))
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str) and item.rsplit("/", 1)[-1].isdigit():
                item = int(item.rsplit("/", 1)[-1])  # accept a Shopify gid
            if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
                raise ValidationError(
                    f"{key}[{i}] must be a positive id", field=f"{self.at(key)}[{i}]"
                )
            out.append(item)
        return tuple(out)

    def instant(self, key: str) -> datetime | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValidationError(f"{key} must be an ISO 8601 date-time", field=self.at(key))
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"{key} must be an ISO 8601 date-time", field=self.at(key)
            ) from None
        if parsed.tzinfo is None:
            raise ValidationError(f"{key} must carry a UTC offset", field=self.at(key))
        return parsed


def _handle(value: str, what: str, path: str) -> str:
    if not HANDLE_RE.match(value):
        raise ValidationError(
            f"{what} {value[:60]!r} may only use lowercase letters, digits and '-' "
            "(1–40 characters, not starting or ending with '-'); it becomes part of a tag",
            field=path,
        )
    return value


def _tag(value: str, path: str) -> str:
    if not value.strip() or len(value) > 255 or "," in value or any(ord(c) < 32 for c in value):
        raise ValidationError(
            "a tag must be 1–255 characters without commas or control characters", field=path
        )
    return value.strip()


def _trigger(r: _Reader) -> Trigger:
    kind = r.text("kind", choices=TRIGGER_KINDS)
    anchor = r.text("anchor", "order", choices=ANCHORS)
    product_ids = r.ids("product_ids")
    collection_ids = r.ids("collection_ids")
    consumption_days = r.opt_whole("consumption_days", lo=1, hi=MAX_OFFSET_DAYS)
    nth = r.opt_whole("nth", lo=2, hi=1000)
    date_source = r.opt_text("date_source")
    metafield = r.opt_text("metafield")
    mode = r.text("yearly_mode", "on_day", choices=YEARLY_MODES)
    days_before = r.whole("days_before", 0, lo=0, hi=180)
    segment = r.opt_text("segment")
    if kind in ("replenishment", "product_bought") and not (product_ids or collection_ids):
        raise ValidationError(
            "choose at least one product or collection", field=r.at("product_ids")
        )
    if kind == "replenishment" and consumption_days is None:
        raise ValidationError(
            "how many days does one unit last? (consumption_days)", field=r.at("consumption_days")
        )
    if kind == "nth_order" and nth is None:
        raise ValidationError("which order earns the gift? (nth, 2 or more)", field=r.at("nth"))
    if kind == "yearly_date":
        if date_source not in DATE_SOURCES:
            raise ValidationError(
                f"date_source must be one of {', '.join(DATE_SOURCES)}", field=r.at("date_source")
            )
        if date_source == "metafield":
            if metafield is None or not re.match(
                r"^[A-Za-z0-9_$-]{1,64}\.[A-Za-z0-9_-]{1,64}$", metafield
            ):
                raise ValidationError(
                    "name the date metafield as namespace.key", field=r.at("metafield")
                )
        if mode == "days_before" and days_before == 0:
            raise ValidationError("days_before must be 1 or more", field=r.at("days_before"))
    if kind == "segment_entered" and (segment is None or not HANDLE_RE.match(segment)):
        raise ValidationError("name the segment (its handle)", field=r.at("segment"))
    return Trigger(
        kind=kind,
        anchor=anchor,
        product_ids=product_ids,
        collection_ids=collection_ids,
        consumption_days=consumption_days,
        nth=nth,
        date_source=date_source,
        metafield=metafield,
        yearly_mode=mode,
        days_before=days_before,
        segment=segment,
    )


def _discount(r: _Reader) -> Discount:
    kind = r.text("kind", choices=DISCOUNT_KINDS)
    value = r.number("value")
    if value <= 0:
        raise ValidationError("the discount must be more than 0", field=r.at("value"))
    if kind == "percentage" and value > 100:
        raise ValidationError("a percentage discount cannot exceed 100%", field=r.at("value"))
    if kind == "amount" and value > Decimal("1000000"):
        raise ValidationError("the amount is implausibly large", field=r.at("value"))
    if -value.normalize().as_tuple().exponent > 2:  # type: ignore[operator]
        raise ValidationError("use at most two decimals", field=r.at("value"))
    until_month_end = r.flag("until_month_end", False)
    valid_days = r.opt_whole("valid_days", lo=1, hi=365)
    if valid_days is None and not until_month_end:
        if "valid_days" in r.data:
            raise ValidationError(
                "a coupon needs an expiry: valid_days or until_month_end", field=r.at("valid_days")
            )
        valid_days = 14
    combines = r.data.get("combines_with") or {}
    c = _Reader(combines, r.at("combines_with"))
    title = r.opt_text("title")
    if title is not None and len(title) > 255:
        raise ValidationError("the title is at most 255 characters", field=r.at("title"))
    return Discount(
        kind=kind,
        value=value,
        valid_days=valid_days,
        until_month_end=until_month_end,
        combines_with_products=c.flag("product_discounts", False),
        combines_with_orders=c.flag("order_discounts", False),
        combines_with_shipping=c.flag("shipping_discounts", True),
        title=title,
    )


def _step(r: _Reader) -> Step:
    key = _handle(r.text("key"), "the step key", r.at("key"))
    title = r.text("title", "")
    if len(title) > 255:
        raise ValidationError("the title is at most 255 characters", field=r.at("title"))
    raw_tags = r.data.get("tags", [])
    if raw_tags is None:
        raw_tags = []
    if not isinstance(raw_tags, list):
        raise ValidationError("tags must be a list", field=r.at("tags"))
    tags = tuple(
        _tag(t if isinstance(t, str) else "", f"{r.at('tags')}[{i}]")
        for i, t in enumerate(raw_tags)
    )
    discount = (
        _discount(_Reader(r.data["discount"], r.at("discount"))) if r.has("discount") else None
    )
    return Step(
        key=key,
        offset_days=r.whole("offset_days", lo=0, hi=MAX_OFFSET_DAYS),
        send_hour=r.whole("send_hour", 10, lo=0, hi=23),
        title=title,
        message=r.flag("message", True),
        discount=discount,
        flow_trigger=r.flag("flow_trigger", False),
        tags=tags,
    )


def from_dict(data: Any) -> Sequence:
    """Parse and validate a sequence definition; raise :class:`ValidationError` naming the field."""
    r = _Reader(data, "")
    seq_id = _handle(r.text("id"), "the sequence id", "id")
    title = r.text("title", "")
    if len(title) > 255:
        raise ValidationError("the title is at most 255 characters", field="title")
    version = r.whole("version", 1, lo=1, hi=1_000_000)
    trigger = _trigger(_Reader(r.data.get("trigger"), "trigger"))
    raw_steps = r.data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ValidationError("a sequence needs at least one step", field="steps")
    if len(raw_steps) > MAX_STEPS:
        raise ValidationError(f"at most {MAX_STEPS} steps", field="steps")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        step = _step(_Reader(raw, f"steps[{i}]"))
        if any(s.key == step.key for s in steps):
            raise ValidationError(f"step key {step.key!r} is used twice", field=f"steps[{i}].key")
        if steps and (step.offset_days, step.send_hour) <= (
            steps[-1].offset_days,
            steps[-1].send_hour,
        ):
            raise ValidationError(
                f"steps must be in time order: this step comes before or with step {i}",
                field=f"steps[{i}].offset_days",
            )
        steps.append(step)
    exit_r = _Reader(r.data.get("exit") or {}, "exit")
    exit_rules = ExitRules(
        on_order=exit_r.flag("on_order", False),
        on_redeem=exit_r.flag("on_redeem", True),
        on_segment_left=exit_r.flag("on_segment_left", False),
    )
    starts_at = r.instant("starts_at")
    ends_at = r.instant("ends_at")
    if starts_at and ends_at and ends_at <= starts_at:
        raise ValidationError("the end date must come after the start date", field="ends_at")
    return Sequence(
        id=seq_id,
        trigger=trigger,
        steps=tuple(steps),
        version=version,
        title=title,
        exit=exit_rules,
        catch_up=r.text("catch_up", "skip", choices=CATCH_UP),
        active=r.flag("active", True),
        starts_at=starts_at,
        ends_at=ends_at,
    )


def to_dict(seq: Sequence) -> dict[str, Any]:
    """A JSON-safe dict that :func:`from_dict` turns back into an equal sequence."""
    t = seq.trigger
    trigger: dict[str, Any] = {"kind": t.kind, "anchor": t.anchor}
    if t.product_ids:
        trigger["product_ids"] = list(t.product_ids)
    if t.collection_ids:
        trigger["collection_ids"] = list(t.collection_ids)
    for name in ("consumption_days", "nth", "date_source", "metafield", "segment"):
        if getattr(t, name) is not None:
            trigger[name] = getattr(t, name)
    if t.kind == "yearly_date":
        trigger["yearly_mode"] = t.yearly_mode
    if t.days_before:
        trigger["days_before"] = t.days_before
    steps = []
    for s in seq.steps:
        step: dict[str, Any] = {
            "key": s.key,
            "offset_days": s.offset_days,
            "send_hour": s.send_hour,
            "title": s.title,
            "message": s.message,
            "flow_trigger": s.flow_trigger,
        }
        if s.tags:
            step["tags"] = list(s.tags)
        if s.discount:
            d = s.discount
            step["discount"] = {
                "kind": d.kind,
                "value": str(d.value),
                "valid_days": d.valid_days,
                "until_month_end": d.until_month_end,
                "combines_with": {
                    "product_discounts": d.combines_with_products,
                    "order_discounts": d.combines_with_orders,
                    "shipping_discounts": d.combines_with_shipping,
                },
            }
            if d.title:
                step["discount"]["title"] = d.title
        steps.append(step)
    out: dict[str, Any] = {
        "id": seq.id,
        "version": seq.version,
        "title": seq.title,
        "trigger": trigger,
        "steps": steps,
        "exit": {
            "on_order": seq.exit.on_order,
            "on_redeem": seq.exit.on_redeem,
            "on_segment_left": seq.exit.on_segment_left,
        },
        "catch_up": seq.catch_up,
        "active": seq.active,
    }
    if seq.starts_at:
        out["starts_at"] = seq.starts_at.isoformat()
    if seq.ends_at:
        out["ends_at"] = seq.ends_at.isoformat()
    return out


def new_version(current: Sequence, edited: Any) -> Sequence:
    """Validate an edit of ``current`` and return it as the next version.

    The id cannot change (it is in every customer's tags); an edit that changes nothing
    keeps the current version, so saving twice does not fork versions.
    """
    if not isinstance(edited, Mapping):
        raise ValidationError("sequence: must be an object")
    proposal = from_dict({**edited, "id": edited.get("id", current.id), "version": current.version})
    if proposal.id != current.id:
        raise ValidationError("the sequence id cannot change once saved", field="id")
    if proposal == current:
        return current
    return replace(proposal, version=current.version + 1)
