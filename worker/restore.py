"""Restore a lost enrolment from what Shopify holds: the step's tag and the customer's coupon.

Shopify is the durable record of what Kizuna did: every step leaves its tag
``kizuna:<sequence>:<step>`` on the customer (earlier steps' tags are removed, an exit removes
them all) and a coupon step leaves a code that is deterministic per (customer, sequence, step,
cycle) (:func:`crm.coupons.coupon_code`). When Kizuna's Redis lost the enrolments (FLUSHALL, a
lost volume, an uninstall and reinstall), ``kizuna rebuild`` brings the profiles back with their
tags; when the customer is next evaluated for a sequence (the sequence's activation evaluates
everyone; a profile change evaluates one customer) and has no enrolment but carries one of the
sequence's tags, :func:`restored` rebuilds the enrolment at the step after the tagged one, so
the step already done is not run again (no second Flow trigger, no second coupon).

A tag is trusted only for the customer's *current* cycle:

- the tagged step's time in the current cycle must have come (a tag left from an earlier cycle
  of a yearly or segment sequence names a step not yet due in this one);
- if that step or an earlier one issued a coupon, the current cycle's code must exist in
  Shopify, restricted to this customer (one ``codeDiscountNodeByCode`` read).

Otherwise the customer enters as if new, by the rules then in force. The sequence definitions
themselves live only in Kizuna's Redis: after a wipe the merchant re-creates and re-activates
them (same ids), and the activation restores everyone's place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm.coupons import coupon_code
from crm.decisions import Decision
from crm.enrolment import Enrolment, ShopRules, customer_gid, qualifying_cycle, step_times
from crm.profile import Profile
from crm.sequence import Sequence

from . import writeback


@dataclass(frozen=True, slots=True)
class Restored:
    enrolment: Enrolment
    decision: Decision
    tag: str
    code: str | None


def tagged_step(seq: Sequence, tags: tuple[str, ...] | list[str] | set[str]) -> int | None:
    """The index of the latest step of ``seq`` whose tag the customer carries, if any."""
    have = {t.strip().lower() for t in tags}
    found = [i for i, step in enumerate(seq.steps) if step.tag(seq.id).lower() in have]
    return max(found) if found else None


def restored(
    profile: Profile,
    seq: Sequence,
    now: datetime,
    rules: ShopRules,
    segments: dict[str, datetime],
    coupon_is_theirs: Any,
) -> Restored | None:
    """The enrolment the customer's tags and coupon prove, or None (enter as new).

    ``coupon_is_theirs(code, customer_gid) -> bool`` asks Shopify whether ``code`` exists and is
    restricted to that customer (called only when a coupon step is at or before the tag).
    """
    index = tagged_step(seq, profile.tags)
    if index is None:
        return None
    entry = qualifying_cycle(profile, seq, now, rules, segments, None)  # the cycle now
    if entry is None:
        return None
    plan = step_times(seq, entry.anchor_at, rules.timezone)  # as the engine computes them
    if plan[index] > now:
        return None  # the tag is from an earlier cycle: this cycle's step is not due yet
    cid = profile.customer_id
    code = None
    coupons = [i for i in range(index + 1) if seq.steps[i].discount is not None]
    if coupons:
        if not rules.coupon_salt:
            return None
        step = seq.steps[coupons[-1]]
        code = coupon_code(rules.coupon_salt, cid, seq.id, step.key, entry.cycle)
        if not coupon_is_theirs(code, customer_gid(cid)):
            return None
    history = tuple((i, int(min(plan[i], now).timestamp())) for i in range(index + 1))
    following = index + 1
    done = following >= len(seq.steps)
    enr = Enrolment(
        customer_id=cid,
        sequence_id=seq.id,
        version=seq.version,
        cycle=entry.cycle,
        anchor_at=entry.anchor_at,
        next_step=following,
        due_at=None if done else plan[following],
        status="done" if done else "active",
        entered_at=min(entry.anchor_at, now),
        history=history,
    )
    tag = seq.steps[index].tag(seq.id)
    detail: dict[str, Any] = {**entry.detail, "cycle": entry.cycle, "restored_from_tag": tag}
    if code:
        detail["restored_coupon"] = code
    decision = Decision(
        at=now,
        customer_id=cid,
        sequence=seq.id,
        decision="entered",
        reason=entry.reason,
        version=seq.version,
        step=seq.steps[index].key,
        detail=detail,
    )
    return Restored(enr, decision, tag, code)


def coupon_checker(admin: Any, shop: str, token: str) -> Any:
    """``coupon_is_theirs`` for :func:`restored`, reading Shopify with ``token``.

    A refused token raises :class:`~crm.errors.Unauthorized` out of :func:`restored`; the
    caller runs it under :func:`worker.reauth.refused`, which refreshes the token or pauses the
    shop (the evaluation is then parked and runs again after the re-auth)."""

    def check(code: str, owner_gid: str) -> bool:
        node = writeback.lookup_coupon(admin, shop, token, code)
        if node is None:
            return False
        basic = node.get("codeDiscount") or {}
        customers = {c.get("id") for c in (basic.get("context") or {}).get("customers") or []}
        return customers == {owner_gid}

    return check
