"""A shop's sequence definitions, every version of each, their on/off state, and its rules.

Keys (under ``kizuna:{shop}:`` so ``shop/redact`` removes them with the shop):

- ``seqs`` — hash sequence id → JSON ``{"v": current version, "on": 0|1, "at": created}``;
- ``seq:{id}`` — hash version → the definition (:func:`crm.sequence.to_dict` JSON). Every
  version is kept: customers inside keep the version they entered with;
- ``seq:{id}:saved`` — hash version → when it was saved (ISO, the injected clock), shown in
  the editor's version history;
- ``rules`` — hash of the shop's sequence rules: ``salt`` (the coupon salt, drawn once),
  ``cap_days`` (frequency cap), ``quiet`` (``"21-8"``).

:func:`shop_rules` is the one place a shop's :class:`~crm.enrolment.ShopRules` are built.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis

from crm.enrolment import ShopRules
from crm.errors import ValidationError
from crm.schedule import QuietHours
from crm.sequence import Sequence, from_dict, new_version, to_dict

MAX_SEQUENCES = 100
DEFAULT_TIMEZONE = "UTC"


def index_key(shop: str) -> str:
    return f"kizuna:{shop}:seqs"


def versions_key(shop: str, sequence_id: str) -> str:
    return f"kizuna:{shop}:seq:{sequence_id}"


def saved_key(shop: str, sequence_id: str) -> str:
    return f"kizuna:{shop}:seq:{sequence_id}:saved"


def rules_key(shop: str) -> str:
    return f"kizuna:{shop}:rules"


@dataclass(frozen=True, slots=True)
class Meta:
    sequence_id: str
    version: int
    active: bool
    created_at: str


def _meta(sequence_id: str, raw: bytes | str | None) -> Meta | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return Meta(sequence_id, int(data["v"]), bool(data["on"]), str(data.get("at", "")))


def _meta_json(version: int, active: bool, created_at: str) -> str:
    return json.dumps({"v": version, "on": int(active), "at": created_at}, separators=(",", ":"))


def _definition(seq: Sequence) -> str:
    data = to_dict(seq)
    data.pop("active", None)  # on/off lives in the index, not in the versioned definition
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# -- reads ----------------------------------------------------------------------------------


def meta(conn: redis.Redis, shop: str, sequence_id: str) -> Meta | None:
    return _meta(sequence_id, conn.hget(index_key(shop), sequence_id))


def metas(conn: redis.Redis, shop: str) -> list[Meta]:
    raw: dict[bytes, bytes] = conn.hgetall(index_key(shop))  # type: ignore[assignment]
    out = [_meta(k.decode(), v) for k, v in raw.items()]
    return sorted((m for m in out if m is not None), key=lambda m: (m.created_at, m.sequence_id))


def load(
    conn: redis.Redis, shop: str, sequence_id: str, version: int | None = None
) -> Sequence | None:
    """The sequence at ``version`` (default: the current one), ``active`` from its state."""
    m = meta(conn, shop, sequence_id)
    if m is None:
        return None
    raw = conn.hget(versions_key(shop, sequence_id), str(version or m.version))
    if raw is None:
        return None
    seq = from_dict(json.loads(raw))
    return replace(seq, active=m.active)


def versions(conn: redis.Redis, shop: str, sequence_id: str) -> list[int]:
    return sorted(int(v) for v in conn.hkeys(versions_key(shop, sequence_id)))


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version, for the editor's history."""

    version: int
    saved_at: str | None  # ISO; None for a version saved before save times were kept
    steps: int


def history(conn: redis.Redis, shop: str, sequence_id: str) -> list[Version]:
    """Every version of a sequence, oldest first, with its save time and step count.

    Version 1 saved before save times were stored falls back to the sequence's creation
    time (the same moment); a later one without a time answers ``None``.
    """
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(versions_key(shop, sequence_id))
        pipe.hgetall(saved_key(shop, sequence_id))
        pipe.hget(index_key(shop), sequence_id)
        definitions, saved, raw_meta = pipe.execute()
    m = _meta(sequence_id, raw_meta)
    times = {int(k): v.decode() for k, v in saved.items()}
    if m is not None and m.created_at:
        times.setdefault(1, m.created_at)
    out = []
    for raw_version, raw_def in definitions.items():
        number = int(raw_version)
        steps = json.loads(raw_def).get("steps") or []
        out.append(Version(number, times.get(number), len(steps)))
    return sorted(out, key=lambda v: v.version)


def all_current(conn: redis.Redis, shop: str) -> list[Sequence]:
    out = []
    for m in metas(conn, shop):
        seq = load(conn, shop, m.sequence_id)
        if seq is not None:
            out.append(seq)
    return out


class VersionCache:
    """Sequence versions read once per job (a batch touches the same few versions again)."""

    def __init__(self, conn: redis.Redis, shop: str) -> None:
        self.conn, self.shop = conn, shop
        self._cache: dict[tuple[str, int | None], Sequence | None] = {}

    def get(self, sequence_id: str, version: int | None = None) -> Sequence | None:
        key = (sequence_id, version)
        if key not in self._cache:
            self._cache[key] = load(self.conn, self.shop, sequence_id, version)
        return self._cache[key]


# -- writes ---------------------------------------------------------------------------------


def create(conn: redis.Redis, shop: str, sequence: Sequence, now: datetime) -> Sequence:
    """Store a new, inactive sequence as version 1.

    The id is taken as given if free, else suffixed (``replenishment-2``…): creating from the
    same template twice gives two sequences, never an overwrite.
    """
    base = sequence.id
    for n in range(1, MAX_SEQUENCES + 2):
        seq_id = base if n == 1 else f"{base[:36]}-{n}"
        candidate = replace(sequence, id=seq_id, version=1, active=False)
        if len(conn.hkeys(index_key(shop))) >= MAX_SEQUENCES:
            raise ValidationError(f"at most {MAX_SEQUENCES} sequences per shop", field="id")
        with conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(index_key(shop))
                if pipe.hexists(index_key(shop), seq_id):
                    pipe.reset()
                    continue
                pipe.multi()
                pipe.hset(index_key(shop), seq_id, _meta_json(1, False, now.isoformat()))
                pipe.delete(versions_key(shop, seq_id), saved_key(shop, seq_id))
                pipe.hset(versions_key(shop, seq_id), "1", _definition(candidate))
                pipe.hset(saved_key(shop, seq_id), "1", now.isoformat())
                pipe.execute()
                return candidate
            except redis.WatchError:
                continue
    raise ValidationError("no free id for this sequence", field="id")


def update(
    conn: redis.Redis,
    shop: str,
    sequence_id: str,
    edited: Any,
    now: datetime | None = None,
) -> Sequence:
    """Validate an edit and store it as the next version (unchanged: same version), with
    ``now`` as its save time when given.

    Raises :class:`ValidationError` (naming the field) and changes nothing on a bad edit.
    """
    while True:
        with conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(index_key(shop))
                m = _meta(sequence_id, pipe.hget(index_key(shop), sequence_id))
                current = load(conn, shop, sequence_id)
                if m is None or current is None:
                    raise KeyError(sequence_id)
                proposal = edited
                if isinstance(edited, Mapping):
                    proposal = {k: v for k, v in edited.items() if k != "active"}
                # On/off is not part of a version: compare the definitions alone, or saving an
                # unchanged inactive sequence would fork a version (``from_dict`` reads a
                # missing ``active`` as on).
                nxt = new_version(replace(current, active=True), proposal)
                if nxt.version == current.version:
                    pipe.reset()
                    return current
                pipe.multi()
                pipe.hset(versions_key(shop, sequence_id), str(nxt.version), _definition(nxt))
                if now is not None:
                    pipe.hset(saved_key(shop, sequence_id), str(nxt.version), now.isoformat())
                pipe.hset(
                    index_key(shop), sequence_id, _meta_json(nxt.version, m.active, m.created_at)
                )
                pipe.execute()
                return replace(nxt, active=m.active)
            except redis.WatchError:
                continue


def set_active(conn: redis.Redis, shop: str, sequence_id: str, active: bool) -> bool:
    """Turn a sequence on or off; answer whether its state changed. KeyError if unknown."""
    while True:
        with conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(index_key(shop))
                m = _meta(sequence_id, pipe.hget(index_key(shop), sequence_id))
                if m is None:
                    raise KeyError(sequence_id)
                if m.active == active:
                    pipe.reset()
                    return False
                pipe.multi()
                pipe.hset(index_key(shop), sequence_id, _meta_json(m.version, active, m.created_at))
                pipe.execute()
                return True
            except redis.WatchError:
                continue


# -- the shop's rules -----------------------------------------------------------------------


def derived_salt(secret: str, shop: str) -> str:
    """A coupon salt computed from the app's client secret and the shop's domain.

    It survives the loss of Redis: after a FLUSHALL the same codes are computed again, so the
    write-back finds the coupon it created before instead of issuing a second one.
    """
    digest = hmac.new(secret.encode(), f"kizuna coupon salt|{shop}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode("ascii").rstrip("=")


def coupon_salt(conn: redis.Redis, shop: str, secret: str | None = None) -> str:
    """The shop's coupon salt, set once (HSETNX: concurrent first calls agree): derived from
    ``secret`` (:func:`derived_salt`) when given, else random (then not reproducible)."""
    first = derived_salt(secret, shop) if secret else secrets.token_urlsafe(24)
    conn.hsetnx(rules_key(shop), "salt", first)
    raw = conn.hget(rules_key(shop), "salt")
    assert raw is not None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def set_rules(
    conn: redis.Redis,
    shop: str,
    *,
    frequency_cap_days: float | None = None,
    quiet_hours: QuietHours | None = None,
) -> None:
    """Store the frequency cap and quiet hours (``None`` clears one)."""
    key = rules_key(shop)
    with conn.pipeline(transaction=True) as pipe:
        if frequency_cap_days:
            pipe.hset(key, "cap_days", repr(float(frequency_cap_days)))
        else:
            pipe.hdel(key, "cap_days")
        if quiet_hours is not None:
            pipe.hset(key, "quiet", f"{quiet_hours.start}-{quiet_hours.end}")
        else:
            pipe.hdel(key, "quiet")
        pipe.execute()


def shop_rules(
    conn: redis.Redis, shop: str, record: Any = None, *, secret: str | None = None
) -> ShopRules:
    """The :class:`ShopRules` of ``shop``: time zone and currency from its shop record
    (:mod:`plugin.shops`), cap, quiet hours and salt from ``rules`` (``secret``, the app's
    client secret, makes a missing salt reproducible: see :func:`coupon_salt`)."""
    if record is None:
        from plugin import shops

        record = shops.load(conn, shop)
    facts = getattr(record, "facts", None)
    salt = coupon_salt(conn, shop, secret)
    raw: dict[bytes, bytes] = conn.hgetall(rules_key(shop))  # type: ignore[assignment]
    cap = raw.get(b"cap_days")
    quiet = raw.get(b"quiet")
    quiet_hours = None
    if quiet:
        start, end = quiet.decode().split("-")
        quiet_hours = QuietHours(int(start), int(end))
    return ShopRules(
        timezone=(facts.timezone if facts and facts.timezone else DEFAULT_TIMEZONE),
        currency=(facts.currency if facts and facts.currency else "USD"),
        coupon_salt=salt,
        frequency_cap_days=float(cap) if cap else None,
        quiet_hours=quiet_hours,
    )
