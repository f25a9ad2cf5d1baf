"""``/api/settings``: the merchant's per-shop settings, and data & privacy.

Stored as one JSON document at ``kizuna:{shop}:settings``. A write is validated as a whole
(the saved document merged with the request's fields) before anything is stored: a bad field
answers ``422 {"error": "validation", "field", "message"}`` and leaves the stored settings as
they were.

Other parts read the settings with :func:`load_settings` (thresholds for the segment lists,
frequency cap and quiet hours for the scheduler, holdout and cost per message for analytics).
Until the merchant saves a loyal spend, it follows the shop currency
(:func:`crm.money.loyal_spend_default`: ¥30,000 or its rough equal). A save that changes the
thresholds queues :func:`worker.segment_refresh.resave`, which files every profile again under
the new thresholds.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request

from crm.errors import ValidationError
from crm.money import loyal_spend_default, parse_amount
from crm.schedule import QuietHours
from crm.segments import Thresholds
from worker import sequence_store

from . import shops
from .guard import require_session

bp = Blueprint("api_settings", __name__, url_prefix="/api/settings")

MAX_CAP_DAYS = 90
MAX_HOLDOUT = 50  # percent: more would starve the sequence it measures


def settings_key(shop: str) -> str:
    return f"kizuna:{shop}:settings"


@dataclass(frozen=True, kw_only=True)
class ShopSettings:
    """What the merchant sets on the settings page; every field has a working default."""

    loyal_min_orders: int = 3
    loyal_min_spent: Decimal = Decimal("30000")
    dormant_days: int = 180
    churned_days: int = 365
    frequency_cap_days: int | None = None
    quiet_start: int | None = None
    quiet_end: int | None = None
    holdout_percent: int = 0
    cost_per_message: Decimal = Decimal("0")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            loyal_min_orders=self.loyal_min_orders,
            loyal_min_spent=self.loyal_min_spent,
            dormant_days=self.dormant_days,
            churned_days=self.churned_days,
        )

    @property
    def quiet_hours(self) -> QuietHours | None:
        if self.quiet_start is None or self.quiet_end is None:
            return None
        return QuietHours(self.quiet_start, self.quiet_end)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loyal_min_spent"] = str(self.loyal_min_spent)
        out["cost_per_message"] = str(self.cost_per_message)
        return out


def _whole(data: dict[str, Any], name: str, low: int, high: int, *, optional: bool) -> Any:
    value = data[name]
    if value is None or value == "":
        if optional:
            return None
        raise ValidationError(f"{name} is required", field=name)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number", field=name)
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}", field=name)
    return value


_RANGES: dict[str, tuple[int, int, bool]] = {
    "loyal_min_orders": (1, 1000, False),
    "dormant_days": (1, 3650, False),
    "churned_days": (2, 3660, False),
    "frequency_cap_days": (0, MAX_CAP_DAYS, True),
    "quiet_start": (0, 23, True),
    "quiet_end": (0, 23, True),
    "holdout_percent": (0, MAX_HOLDOUT, False),
}


def parse_settings(data: Any, base: ShopSettings | None = None) -> ShopSettings:
    """``base`` with the fields of ``data`` applied; ``ValidationError`` names the bad field."""
    if not isinstance(data, dict):
        raise ValidationError("settings must be a JSON object", field="settings")
    base = base or ShopSettings()
    known = set(ShopSettings.__dataclass_fields__)
    unknown = sorted(set(data) - known - {"shop"})
    if unknown:
        raise ValidationError(f"unknown setting: {unknown[0]}", field=unknown[0])
    values: dict[str, Any] = {}
    for name, (low, high, optional) in _RANGES.items():
        if name in data:
            values[name] = _whole(data, name, low, high, optional=optional)
    for name in ("loyal_min_spent", "cost_per_message"):
        if name in data:
            amount = parse_amount(data[name], field=name)
            if amount < 0:
                raise ValidationError(f"{name} must not be negative", field=name)
            values[name] = amount
    result = replace(base, **values)
    if values.get("frequency_cap_days") == 0:
        result = replace(result, frequency_cap_days=None)
    if (result.quiet_start is None) != (result.quiet_end is None):
        name = "quiet_end" if result.quiet_end is None else "quiet_start"
        raise ValidationError("quiet hours need both a start and an end hour", field=name)
    if result.dormant_days >= result.churned_days:
        raise ValidationError(
            "dormant_days must be smaller than churned_days", field="dormant_days"
        )
    _ = result.thresholds  # Thresholds runs its own checks
    return result


def _stored(conn: redis.Redis | Any, shop: str) -> dict[str, Any]:
    """The saved document, with the cap and quiet hours from the scheduler's ``rules`` hash
    (:mod:`worker.sequence_store` owns them: the scheduler reads them from there)."""
    raw = conn.get(settings_key(shop))
    data: dict[str, Any] = json.loads(raw) if raw else {}
    rules: dict[bytes, bytes] = conn.hgetall(sequence_store.rules_key(shop))  # type: ignore[assignment]
    cap = rules.get(b"cap_days")
    quiet = rules.get(b"quiet")
    data["frequency_cap_days"] = round(float(cap)) if cap else None
    if quiet:
        start, end = quiet.decode().split("-")
        data["quiet_start"], data["quiet_end"] = int(start), int(end)
    else:
        data["quiet_start"] = data["quiet_end"] = None
    return data


def defaults_for(conn: redis.Redis | Any, shop: str) -> ShopSettings:
    """The defaults of ``shop``: the loyal spend in its currency (from the shop record)."""
    record = shops.load(conn, shop)
    currency = record.facts.currency if record is not None and record.facts else None
    return ShopSettings(loyal_min_spent=loyal_spend_default(currency or None))


def load_settings(conn: redis.Redis, shop: str) -> ShopSettings:
    return parse_settings(_stored(conn, shop), defaults_for(conn, shop))


def _write(pipe: Any, shop: str, value: ShopSettings) -> None:
    """Queue the writes of ``value``: the document, and the cap and quiet hours in the
    format :func:`worker.sequence_store.shop_rules` reads."""
    doc = value.to_dict()
    for name in ("frequency_cap_days", "quiet_start", "quiet_end"):
        doc.pop(name)
    pipe.set(settings_key(shop), json.dumps(doc, separators=(",", ":")))
    rules = sequence_store.rules_key(shop)
    if value.frequency_cap_days:
        pipe.hset(rules, "cap_days", repr(float(value.frequency_cap_days)))
    else:
        pipe.hdel(rules, "cap_days")
    if value.quiet_hours is not None:
        pipe.hset(rules, "quiet", f"{value.quiet_start}-{value.quiet_end}")
    else:
        pipe.hdel(rules, "quiet")


def save_settings(conn: redis.Redis, shop: str, value: ShopSettings) -> None:
    with conn.pipeline(transaction=True) as pipe:
        _write(pipe, shop, value)
        pipe.execute()


def _res() -> Any:
    return current_app.extensions["kizuna"]


def _public(shop: str, value: ShopSettings) -> dict[str, Any]:
    record = shops.load(_res().redis, shop)
    facts = record.facts if record else None
    return {
        "settings": value.to_dict(),
        "defaults": defaults_for(_res().redis, shop).to_dict(),
        "timezone": facts.timezone if facts else None,
        "currency": facts.currency if facts else None,
    }


def validation_error(exc: ValidationError) -> Response:
    response = jsonify(error="validation", field=exc.field, message=str(exc))
    response.status_code = 422
    return response


@bp.get("")
@require_session
def get_settings() -> Response:
    return jsonify(_public(g.shop, load_settings(_res().redis, g.shop)))


@bp.put("")
@require_session
def put_settings() -> Response:
    conn: redis.Redis = _res().redis
    body = request.get_json(silent=True)
    keys = (settings_key(g.shop), sequence_store.rules_key(g.shop))
    with conn.pipeline() as pipe:  # optimistic: a concurrent save makes this one start over
        while True:
            try:
                pipe.watch(*keys)
                current = parse_settings(_stored(pipe, g.shop), defaults_for(conn, g.shop))
                try:
                    updated = parse_settings(body, current)
                except ValidationError as exc:
                    pipe.reset()
                    return validation_error(exc)
                pipe.multi()
                _write(pipe, g.shop, updated)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if updated.thresholds != current.thresholds:
        from worker.segment_refresh import schedule_resave

        schedule_resave(conn, g.shop)  # the lists follow the new thresholds
    return jsonify(_public(g.shop, updated))


@bp.get("/export.csv")
@require_session
def export_all() -> Response:
    """Every active customer profile Kizuna keeps for this shop, as CSV (data & privacy)."""
    from worker import profile_store

    out = io.StringIO()
    profile_store.export_csv(_res().redis, g.shop, profile_store.ALL, out)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="kizuna-{g.shop}.csv"'
    return response


#: What ``erase`` keeps: the merchant's own data (shop record and tokens, settings, rules with
#: the coupon salt, sequence definitions), never a customer's.
KEPT_SUFFIXES = ("shop", "settings", "rules", "seqs")
KEPT_PREFIXES = ("seq:",)


def _kept(shop: str, key: bytes) -> bool:
    suffix = key.decode()[len(f"kizuna:{shop}:") :]
    return suffix in KEPT_SUFFIXES or suffix.startswith(KEPT_PREFIXES)


@bp.post("/erase")
@require_session
def erase() -> Response:
    """Delete every customer-derived key of this shop. The body must repeat the shop's domain."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("confirm") != g.shop:
        return validation_error(
            ValidationError("type the shop's domain to confirm", field="confirm")
        )
    conn: redis.Redis = _res().redis
    deleted = 0
    batch: list[bytes] = []
    for key in conn.scan_iter(match=f"kizuna:{g.shop}:*", count=1000):
        if not _kept(g.shop, key):
            batch.append(key)
        if len(batch) >= 500:
            deleted += int(conn.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(conn.unlink(*batch))
    return jsonify(erased=deleted)
