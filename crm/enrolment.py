"""The enrolment state machine: who enters a sequence, when each step is due, who leaves.

Everything is decided from the profile as it is now (plus the time, the shop's rules and the
customer's current segments), never from the event that just arrived, so evaluating twice or
out of order gives the same answer. A worker calls :func:`evaluate` on every profile update
and :func:`due_step` when the scheduler finds an enrolment due; both return the new enrolment
state and :class:`~crm.decisions.Decision` entries explaining it.

An :class:`Enrolment` is small on purpose: the scheduler holds one per customer per sequence,
and the Redis layer stores :meth:`Enrolment.encode`'s short string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from .coupons import coupon_code, validity
from .decisions import Decision
from .schedule import (
    QuietHours,
    local_date,
    local_midnight,
    next_free_slot,
    next_yearly,
    replenishment_days,
    step_time,
    yearly_occurrence,
)
from .sequence import Sequence, Step

#: A step whose time passed less than this long ago still runs (an order placed at 15:00
#: must not skip its "same day, 10:00" step); older ones follow the catch-up policy.
GRACE = timedelta(hours=24)
NAMESPACE = "kizuna"
SUBSCRIBED = "SUBSCRIBED"
STATUSES = ("active", "done", "exited")


# -- what the engine reads from a profile (crm.profile.Profile satisfies it) --------------


class LineItemLike(Protocol):
    @property
    def product_id(self) -> int | None: ...
    @property
    def quantity(self) -> int: ...


class OrderLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def paid_at(self) -> datetime | None: ...
    @property
    def cancelled_at(self) -> datetime | None: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def line_items(self) -> Seq[LineItemLike]: ...
    @property
    def discount_codes(self) -> Seq[str]: ...
    @property
    def first_fulfilled_at(self) -> datetime | None: ...


class ProfileLike(Protocol):
    @property
    def customer_id(self) -> int: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def email_marketing_state(self) -> str | None: ...
    @property
    def birth_date(self) -> date | None: ...
    @property
    def metafields(self) -> Mapping[str, str]: ...
    @property
    def orders(self) -> Mapping[int, OrderLike]: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def shopify_order_count(self) -> int | None: ...
    @property
    def shopify_last_order_id(self) -> int | None: ...
    @property
    def shopify_counted_at(self) -> datetime | None: ...


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShopRules:
    """The shop-wide settings the engine needs (from the shop record, not the environment)."""

    timezone: str = "Asia/Tokyo"
    currency: str = "JPY"
    coupon_salt: str = ""
    frequency_cap_days: float | None = None
    quiet_hours: QuietHours | None = None
    #: collection id → product ids, for collection-based triggers
    collections: Mapping[int, frozenset[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Enrolment:
    customer_id: int
    sequence_id: str
    version: int
    cycle: int  # first order: 1; replenishment: the anchoring order id; nth: n; yearly: year
    anchor_at: datetime  # the instant step offsets count from (its local day is day 0)
    next_step: int
    due_at: datetime | None
    status: str = "active"
    entered_at: datetime | None = None
    history: tuple[tuple[int, int], ...] = ()  # (step index, epoch seconds written)

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def last_step_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.history[-1][1], UTC) if self.history else None

    def encode(self) -> str:
        """``version|cycle|anchor|next|due|status|entered|i:ts,i:ts`` with epoch seconds."""

        def ts(d: datetime | None) -> str:
            return "" if d is None else str(int(d.timestamp()))

        hist = ",".join(f"{i}:{t}" for i, t in self.history)
        return "|".join(
            [
                str(self.version),
                str(self.cycle),
                ts(self.anchor_at),
                str(self.next_step),
                ts(self.due_at),
                self.status[0],
                ts(self.entered_at),
                hist,
            ]
        )

    @classmethod
    def decode(cls, customer_id: int, sequence_id: str, raw: str) -> Enrolment:
        def dt(s: str) -> datetime | None:
            return datetime.fromtimestamp(int(s), UTC) if s else None

        version, cycle, anchor, nxt, due, status, entered, hist = raw.split("|")
        anchor_at = dt(anchor)
        assert anchor_at is not None
        return cls(
            customer_id=customer_id,
            sequence_id=sequence_id,
            version=int(version),
            cycle=int(cycle),
            anchor_at=anchor_at,
            next_step=int(nxt),
            due_at=dt(due),
            status={"a": "active", "d": "done", "e": "exited"}[status],
            entered_at=dt(entered),
            history=tuple(
                (int(i), int(t)) for i, t in (p.split(":") for p in hist.split(",") if p)
            ),
        )


@dataclass(frozen=True, slots=True)
class Metafield:
    namespace: str
    key: str
    type: str
    value: str

    def as_input(self, owner_gid: str) -> dict[str, str]:
        """One ``MetafieldsSetInput``."""
        return {
            "ownerId": owner_gid,
            "namespace": self.namespace,
            "key": self.key,
            "type": self.type,
            "value": self.value,
        }


@dataclass(frozen=True, slots=True)
class DiscountSpec:
    """One customer's unique code, ready for ``discountCodeBasicCreate``."""

    code: str
    title: str
    kind: str  # percentage | amount
    value: Decimal
    currency: str
    starts_at: datetime
    ends_at: datetime
    customer_gid: str
    combines_with: Mapping[str, bool]
    usage_limit: int = 1
    applies_once_per_customer: bool = True

    def graphql_input(self) -> dict[str, Any]:
        """The ``DiscountCodeBasicInput``; 2026-07 takes ``context``, not ``customerSelection``."""
        if self.kind == "percentage":
            value: dict[str, Any] = {"percentage": float(self.value / 100)}
        else:
            value = {"discountAmount": {"amount": str(self.value), "appliesOnEachItem": False}}
        return {
            "title": self.title,
            "code": self.code,
            "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat(),
            "context": {"customers": {"add": [self.customer_gid]}},
            "customerGets": {"value": value, "items": {"all": True}},
            "usageLimit": self.usage_limit,
            "appliesOncePerCustomer": self.applies_once_per_customer,
            "combinesWith": dict(self.combines_with),
        }


@dataclass(frozen=True, slots=True)
class StepEffects:
    """What one step (or an exit) writes to Shopify; each part is idempotent on its own."""

    customer_id: int
    tags_add: tuple[str, ...] = ()
    tags_remove: tuple[str, ...] = ()
    discount: DiscountSpec | None = None
    metafields: tuple[Metafield, ...] = ()
    flow_trigger: dict[str, Any] | None = None

    @property
    def customer_gid(self) -> str:
        return customer_gid(self.customer_id)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The new state (``None``: no enrolment) and the decisions that explain it.

    ``decisions`` always holds at least one entry; ``waiting`` entries describe a state that
    did not change and need not be logged.
    """

    enrolment: Enrolment | None
    decisions: tuple[Decision, ...]

    @property
    def decision(self) -> Decision:
        return self.decisions[-1]


@dataclass(frozen=True, slots=True)
class StepRun:
    """The outcome of a due enrolment: ``run`` (write ``effects``, then store ``enrolment``),
    ``deferred``, ``exited`` (write ``effects``: the tag clean-up), ``restarted`` (write the
    clean-up, store the new cycle's ``enrolment``), ``retimed`` or ``waiting``."""

    kind: str
    enrolment: Enrolment | None
    decisions: tuple[Decision, ...]
    step: Step | None = None
    effects: StepEffects | None = None


@dataclass(frozen=True, slots=True)
class PreviewRow:
    customer_id: int
    step: int | None  # the step index the customer would enter at; None: would not enter
    reason: str
    due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CycleEntry:
    """The cycle of a sequence a customer qualifies for (:func:`qualifying_cycle`): its number,
    the moment its steps count from, and why (reason and detail for the decision log)."""

    cycle: int
    anchor_at: datetime
    reason: str
    detail: dict[str, Any]


def customer_gid(customer_id: int) -> str:
    return f"gid://shopify/Customer/{customer_id}"


# -- triggers -----------------------------------------------------------------------------


def _gone(profile: ProfileLike) -> bool:
    """Deleted, redacted, or merged into another profile (which carries on instead)."""
    return profile.deleted or getattr(profile, "merged_into", None) is not None


def _live_orders(profile: ProfileLike) -> list[OrderLike]:
    live = [
        o
        for o in profile.orders.values()
        if not o.deleted and o.cancelled_at is None and o.created_at is not None
    ]
    return sorted(live, key=lambda o: (o.created_at, o.id))


def earlier_orders(profile: ProfileLike) -> int:
    """How many of the customer's orders at Shopify precede every order the profile holds.

    The profile holds the orders of the backfill window (60 days) and later; Shopify's count
    (``shopify_order_count``: ``numberOfOrders`` from the backfill and reconcile, and the
    ``customers/purchasing_summary`` webhook) covers the customer's whole life. The difference
    is the history before ours, once the count is lined up with our orders, for a count is a
    snapshot that may be

    - *stale*: taken before our newest orders (the backfill's count when the next order
      arrives; the summary of an order comes after its ``orders/create``, if at all). Orders
      newer than the snapshot are not in it and are not subtracted;
    - *ahead*: it counts an order whose ``orders/create`` has not arrived yet (webhooks come in
      any order). That order is newer than ours, not earlier.

    The snapshot is placed by the time of the count (``shopify_counted_at``, the register's
    version) and, when the profile holds it, by the newest order it counts
    (``shopify_last_order_id``), whichever covers more of our orders. A last order we do not
    hold is newer than ours if any of ours precede the snapshot, else it is earlier.

    Every held order the count may include is subtracted, whatever its state. Shopify's schema
    says ``numberOfOrders`` is the orders made "in their lifetime" and does not say whether
    cancelled ones count (the devstore leaves them out, like ``amountSpent``); a deleted order
    or a stub (known only from its deletion or fulfilment) may be in an older count too. So the
    answer errs low: without a count it is 0, and a brand-new customer gets 0. One exception:
    orders the count includes whose webhooks have not arrived, beyond the one it names as
    last (or any, for a count that names none), look earlier than ours until they arrive.
    """
    count = profile.shopify_order_count
    if not count:
        return 0
    held = list(profile.orders.values())
    at = profile.shopify_counted_at
    counted = [o for o in held if o.created_at is None or at is None or o.created_at <= at]
    last_id = profile.shopify_last_order_id
    last = profile.orders.get(last_id) if last_id is not None else None
    ours_first = any(o.created_at is not None for o in counted)
    unseen_last = int(last is None and last_id is not None and ours_first)
    estimate = count - len(counted) - unseen_last
    if last is not None and last.created_at is not None:
        # Orders created with the last one are counted too (Shopify names one of them). The
        # count and the last order are separate registers, which a tie of versions can pair
        # from two summaries: keep the lower of the two readings.
        newest = last.created_at
        counted = [o for o in held if o.created_at is None or o.created_at <= newest]
        estimate = min(estimate, count - len(counted))
    return max(0, estimate)


def _order_anchor(order: OrderLike, anchor: str) -> datetime:
    assert order.created_at is not None
    if anchor == "fulfilled":
        return order.first_fulfilled_at or order.paid_at or order.created_at
    if anchor == "paid":
        return order.paid_at or order.created_at
    return order.created_at


def _products(seq: Sequence, rules: ShopRules) -> frozenset[int]:
    ids = set(seq.trigger.product_ids)
    for cid in seq.trigger.collection_ids:
        ids |= rules.collections.get(cid, frozenset())
    return frozenset(ids)


def _quantity(order: OrderLike, products: frozenset[int]) -> int:
    return sum(li.quantity for li in order.line_items if li.product_id in products)


def _order_label(order: OrderLike) -> str:
    return order.name or f"#{order.id}"


def _yearly_source(profile: ProfileLike, seq: Sequence, tz: str) -> date | None:
    t = seq.trigger
    if t.date_source == "birthday":
        return profile.birth_date
    if t.date_source == "signup":
        return local_date(profile.created_at, tz) if profile.created_at else None
    raw = profile.metafields.get(t.metafield or "")
    if not raw:
        return None
    try:
        return date.fromisoformat(raw.strip()[:10])
    except ValueError:
        return None


def _base_day(seq: Sequence, anchor_at: datetime, tz: str) -> date:
    return local_date(anchor_at, tz)


def step_times(seq: Sequence, anchor_at: datetime, tz: str) -> list[datetime]:
    """When each step of ``seq`` is due in the cycle anchored at ``anchor_at`` (shop zone)."""
    base = _base_day(seq, anchor_at, tz)
    return [step_time(base, s.offset_days, s.send_hour, tz) for s in seq.steps]


def qualifying_cycle(
    profile: ProfileLike,
    seq: Sequence,
    now: datetime,
    rules: ShopRules,
    segments: Mapping[str, datetime],
    after_cycle: int | None,
) -> CycleEntry | None:
    """The cycle the customer qualifies for now, if any (newer than ``after_cycle``).

    ``first_order`` and ``nth_order`` count the customer's orders from before our history
    too (:func:`earlier_orders`): a returning customer has no first order here.
    """
    t = seq.trigger
    tz = rules.timezone
    live = _live_orders(profile)
    if t.kind == "first_order":
        if not live or earlier_orders(profile):
            return None  # a returning customer: their first order is older than our history
        first = live[0]
        return CycleEntry(
            1, _order_anchor(first, t.anchor), "first_order", {"order": _order_label(first)}
        )
    if t.kind == "nth_order":
        assert t.nth is not None
        earlier = earlier_orders(profile)
        index = t.nth - 1 - earlier  # the nth order among those we hold
        if not 0 <= index < len(live):
            return None
        nth = live[index]
        detail: dict[str, Any] = {"nth": t.nth, "order": _order_label(nth)}
        if earlier:
            detail["earlier"] = earlier
        return CycleEntry(t.nth, _order_anchor(nth, t.anchor), "nth_order", detail)
    if t.kind in ("replenishment", "product_bought"):
        products = _products(seq, rules)
        matching = [o for o in live if _quantity(o, products) > 0]
        if not matching:
            return None
        if t.kind == "product_bought":
            first = matching[0]
            anchor = _order_anchor(first, t.anchor)
            return CycleEntry(1, anchor, "product_ordered", {"order": _order_label(first)})
        last = matching[-1]
        quantity = _quantity(last, products)
        history = [(o.created_at, _quantity(o, products)) for o in matching if o.created_at]
        assert t.consumption_days is not None
        days = replenishment_days(t.consumption_days, quantity, history)
        anchor_day = local_date(_order_anchor(last, t.anchor), tz)
        base = anchor_day + timedelta(days=days - t.days_before)
        detail = {
            "order": _order_label(last),
            "quantity": quantity,
            "runs_out": (anchor_day + timedelta(days=days)).isoformat(),
        }
        reason = "reordered" if len(matching) > 1 else "product_ordered"
        return CycleEntry(last.id, local_midnight(base, tz), reason, detail)
    if t.kind == "yearly_date":
        source = _yearly_source(profile, seq, tz)
        if source is None:
            return None
        today = local_date(now, tz)
        last_offset = seq.steps[-1].offset_days + 1
        year, occurrence = next_yearly(
            source, today - timedelta(days=last_offset), t.yearly_mode, t.days_before
        )
        while (after_cycle is not None and year <= after_cycle) or year <= source.year:
            year += 1
            occurrence = yearly_occurrence(source, year, t.yearly_mode, t.days_before)
        detail = {"date": occurrence.isoformat(), "source": t.date_source}
        return CycleEntry(year, local_midnight(occurrence, tz), "yearly_date", detail)
    if t.kind == "segment_entered":
        entered = segments.get(t.segment or "")
        if entered is None:
            return None
        return CycleEntry(
            int(entered.timestamp()), entered, "segment_entered", {"segment": t.segment}
        )
    raise AssertionError(f"unknown trigger {t.kind}")


def before_history(profile: ProfileLike, seq: Sequence) -> tuple[str, dict[str, Any]] | None:
    """Why a first-order or nth-order trigger does not fire for a customer whose orders we
    hold: the order it wants lies in their history before ours (:func:`earlier_orders`).

    A reason code and its detail for the decision log, or ``None`` (the trigger has simply
    not happened yet).
    """
    t = seq.trigger
    if t.kind not in ("first_order", "nth_order"):
        return None
    live = _live_orders(profile)
    earlier = earlier_orders(profile) if live else 0
    if not earlier:
        return None
    if t.kind == "first_order":
        return "returning_customer", {"earlier": earlier, "order": _order_label(live[0])}
    assert t.nth is not None
    if t.nth <= earlier:
        return "milestone_before_history", {"nth": t.nth, "earlier": earlier}
    return None


# -- decisions ----------------------------------------------------------------------------


def _decision(
    kind: str,
    reason: str,
    now: datetime,
    customer_id: int,
    seq: Sequence,
    *,
    version: int | None = None,
    step: str | None = None,
    **detail: Any,
) -> Decision:
    return Decision(
        at=now,
        customer_id=customer_id,
        sequence=seq.id,
        decision=kind,
        reason=reason,
        version=seq.version if version is None else version,
        step=step,
        detail={k: _plain(v) for k, v in detail.items() if v is not None},
    )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


# -- exits --------------------------------------------------------------------------------


def _issued_codes(seq: Sequence, enr: Enrolment, rules: ShopRules) -> set[str]:
    if not rules.coupon_salt:
        return set()
    codes = set()
    for index, _ts in enr.history:
        if index < len(seq.steps) and seq.steps[index].discount:
            step = seq.steps[index]
            codes.add(coupon_code(rules.coupon_salt, enr.customer_id, seq.id, step.key, enr.cycle))
    return codes


def _exit_reason(
    profile: ProfileLike,
    seq: Sequence,
    enr: Enrolment,
    rules: ShopRules,
    segments: Mapping[str, datetime],
) -> tuple[str, dict[str, Any]] | None:
    if _gone(profile):
        return "customer_deleted", {}
    if seq.needs_consent and profile.email_marketing_state != SUBSCRIBED:
        return "unsubscribed", {"state": profile.email_marketing_state}
    if seq.exit.on_redeem:
        issued = _issued_codes(seq, enr, rules)
        for order in profile.orders.values():
            used = {c.upper() for c in order.discount_codes} & issued
            if used and not order.deleted:
                return "coupon_redeemed", {"code": sorted(used)[0], "order": _order_label(order)}
    since = enr.entered_at or enr.anchor_at
    if seq.exit.on_order:
        for order in _live_orders(profile):
            assert order.created_at is not None
            if order.created_at > since:
                return "new_order", {"order": _order_label(order)}
    if seq.exit.on_segment_left and seq.trigger.kind == "segment_entered":
        if (seq.trigger.segment or "") not in segments:
            return "segment_left", {"segment": seq.trigger.segment}
    return None


def exit_effects(seq: Sequence, customer_id: int) -> StepEffects:
    """Remove every tag of the sequence (all of its steps), whatever step the customer was at."""
    return StepEffects(customer_id=customer_id, tags_remove=seq.tags)


def exit_all(
    enrolments: Iterable[Enrolment], sequences: Mapping[str, Sequence], now: datetime, reason: str
) -> list[tuple[Enrolment, Decision]]:
    """End every active enrolment at once (``uninstalled``, ``sequence_deleted``, a redact)."""
    out = []
    for enr in enrolments:
        if not enr.active:
            continue
        seq = sequences[enr.sequence_id]
        ended = replace(enr, status="exited", due_at=None)
        out.append(
            (ended, _decision("exited", reason, now, enr.customer_id, seq, version=enr.version))
        )
    return out


# -- the state machine --------------------------------------------------------------------


def _enter(
    profile: ProfileLike, seq: Sequence, entry: CycleEntry, now: datetime, rules: ShopRules
) -> Evaluation:
    cid = profile.customer_id
    plan = step_times(seq, entry.anchor_at, rules.timezone)
    ahead = [i for i, at in enumerate(plan) if at + GRACE >= now]
    if not ahead:
        if seq.catch_up != "latest":
            d = _decision("skipped", "all_steps_missed", now, cid, seq, cycle=entry.cycle)
            return Evaluation(None, (d,))
        index, due = len(plan) - 1, now
    elif ahead[0] > 0 and seq.catch_up == "latest":
        index, due = ahead[0] - 1, now
    else:
        index, due = ahead[0], plan[ahead[0]]
    enr = Enrolment(
        customer_id=cid,
        sequence_id=seq.id,
        version=seq.version,
        cycle=entry.cycle,
        anchor_at=entry.anchor_at,
        next_step=index,
        due_at=due,
        entered_at=now,
    )
    d = _decision(
        "entered",
        entry.reason,
        now,
        cid,
        seq,
        step=seq.steps[index].key,
        cycle=entry.cycle,
        due_at=due,
        skipped_steps=index or None,
        **entry.detail,
    )
    return Evaluation(enr, (d,))


def evaluate(
    profile: ProfileLike,
    sequence: Sequence,
    enrolment: Enrolment | None,
    now: datetime,
    rules: ShopRules,
    *,
    segments: Mapping[str, datetime] | None = None,
) -> Evaluation:
    """Decide the customer's state in one sequence after their profile changed.

    ``sequence`` must be the version the enrolment was made with (for an active enrolment) or
    the current version (for a new one). ``segments``: the segments the customer is in now,
    with the time they entered each.
    """
    segs = segments or {}
    cid = profile.customer_id
    enr = enrolment
    if enr is not None and enr.active:
        exit_reason = _exit_reason(profile, sequence, enr, rules, segs)
        if exit_reason:
            reason, detail = exit_reason
            ended = replace(enr, status="exited", due_at=None)
            return Evaluation(
                ended,
                (_decision("exited", reason, now, cid, sequence, version=enr.version, **detail),),
            )
        entry = qualifying_cycle(profile, sequence, now, rules, segs, None)
        if entry is None or (sequence.trigger.kind != "yearly_date" and entry.cycle != enr.cycle):
            # the anchoring order was cancelled, or (replenishment) a newer order restarts it
            ended = replace(enr, status="exited", due_at=None)
            if entry is not None:
                reason, detail = "new_order", entry.detail
            else:
                # the anchoring order was cancelled or deleted, or Shopify's count has since
                # shown orders before our history (a returning customer, an earlier milestone)
                reason, detail = before_history(profile, sequence) or ("not_triggered", {})
            exited = _decision("exited", reason, now, cid, sequence, version=enr.version, **detail)
            if entry is None or entry.cycle == enr.cycle:
                return Evaluation(ended, (exited,))
            restarted = _enter(profile, sequence, entry, now, rules)
            return Evaluation(restarted.enrolment, (exited, *restarted.decisions))
        if sequence.trigger.kind != "yearly_date" and entry.anchor_at != enr.anchor_at:
            plan = step_times(sequence, entry.anchor_at, rules.timezone)
            due = plan[enr.next_step]
            moved = replace(enr, anchor_at=entry.anchor_at, due_at=due)
            d = _decision(
                "retimed",
                "anchor_moved",
                now,
                cid,
                sequence,
                version=enr.version,
                step=sequence.steps[enr.next_step].key,
                anchor=entry.anchor_at,
                due_at=due,
            )
            return Evaluation(moved, (d,))
        d = _decision(
            "waiting",
            "not_due",
            now,
            cid,
            sequence,
            version=enr.version,
            step=sequence.steps[enr.next_step].key,
            due_at=enr.due_at,
        )
        return Evaluation(enr, (d,))

    # not enrolled (or the last cycle is over): does a new cycle start?
    if not sequence.active:
        return Evaluation(enr, (_decision("waiting", "sequence_inactive", now, cid, sequence),))
    after = enr.cycle if enr is not None else None
    entry = qualifying_cycle(profile, sequence, now, rules, segs, after)
    if entry is None:
        history = before_history(profile, sequence) if enr is None else None
        if history is not None:
            reason, detail = history
            d = _decision("skipped", reason, now, cid, sequence, **detail)
            return Evaluation(enr, (d,))
        return Evaluation(enr, (_decision("waiting", "not_triggered", now, cid, sequence),))
    if enr is not None and entry.cycle == enr.cycle:
        return Evaluation(enr, (_decision("waiting", "already_done", now, cid, sequence),))
    if enr is not None and sequence.trigger.kind in ("first_order", "product_bought", "nth_order"):
        return Evaluation(enr, (_decision("waiting", "already_done", now, cid, sequence),))
    if (sequence.starts_at and now < sequence.starts_at) or (
        sequence.ends_at and now >= sequence.ends_at
    ):
        return Evaluation(enr, (_decision("waiting", "outside_window", now, cid, sequence),))
    if _gone(profile):
        return Evaluation(enr, (_decision("skipped", "customer_deleted", now, cid, sequence),))
    if sequence.needs_consent and profile.email_marketing_state != SUBSCRIBED:
        d = _decision(
            "skipped", "consent", now, cid, sequence, state=profile.email_marketing_state or "none"
        )
        return Evaluation(enr, (d,))
    return _enter(profile, sequence, entry, now, rules)


def step_effects(
    sequence: Sequence, enrolment: Enrolment, rules: ShopRules, issued_at: datetime
) -> StepEffects:
    """The effects of the enrolment's next step, issued at ``issued_at``.

    Deterministic for a given enrolment state: a retry computes the same tags, code and
    metafields (the code from :func:`crm.coupons.coupon_code`).
    """
    step = sequence.steps[enrolment.next_step]
    cid = enrolment.customer_id
    tag = step.tag(sequence.id)
    discount = None
    metafields = [
        Metafield(NAMESPACE, "last_step", "single_line_text_field", f"{sequence.id}:{step.key}")
    ]
    if step.discount is not None:
        if not rules.coupon_salt:
            raise ValueError("ShopRules.coupon_salt is required to issue coupons")
        d = step.discount
        code = coupon_code(rules.coupon_salt, cid, sequence.id, step.key, enrolment.cycle)
        starts = issued_at.astimezone(UTC)
        ends = validity(
            starts, rules.timezone, valid_days=d.valid_days, until_month_end=d.until_month_end
        )
        discount = DiscountSpec(
            code=code,
            title=d.title or f"Kizuna {sequence.id} {step.key} {code}",
            kind=d.kind,
            value=d.value,
            currency=rules.currency,
            starts_at=starts,
            ends_at=ends,
            customer_gid=customer_gid(cid),
            combines_with={
                "productDiscounts": d.combines_with_products,
                "orderDiscounts": d.combines_with_orders,
                "shippingDiscounts": d.combines_with_shipping,
            },
        )
        metafields += [
            Metafield(NAMESPACE, "coupon_code", "single_line_text_field", code),
            Metafield(NAMESPACE, "coupon_expires_at", "date_time", ends.isoformat()),
        ]
    flow = None
    if step.flow_trigger:
        # Shopify's flowTriggerReceive takes no idempotency key, so a call that timed out after
        # Shopify ran it is fired again on retry; ``occurrence`` names this step of this cycle
        # once and for all, for a workflow that must tell a repeat from a new step.
        flow = {
            "sequence": sequence.id,
            "version": sequence.version,
            "step": step.key,
            "cycle": enrolment.cycle,
            "occurrence": f"{cid}:{sequence.id}:{enrolment.cycle}:{step.key}",
            "customer_id": cid,
            "coupon_code": discount.code if discount else None,
            "coupon_expires_at": discount.ends_at.isoformat() if discount else None,
        }
    return StepEffects(
        customer_id=cid,
        tags_add=(tag, *step.tags),
        tags_remove=tuple(t for t in sequence.tags if t != tag),
        discount=discount,
        metafields=tuple(metafields),
        flow_trigger=flow,
    )


def advance(
    sequence: Sequence, enrolment: Enrolment, done_at: datetime, rules: ShopRules
) -> Enrolment:
    """The enrolment after its next step was written at ``done_at``."""
    done = enrolment.next_step
    history = (*enrolment.history, (done, int(done_at.timestamp())))
    following = done + 1
    if following >= len(sequence.steps):
        return replace(enrolment, next_step=following, due_at=None, status="done", history=history)
    due = step_times(sequence, enrolment.anchor_at, rules.timezone)[following]
    return replace(enrolment, next_step=following, due_at=due, history=history)


def due_step(
    profile: ProfileLike,
    sequence: Sequence,
    enrolment: Enrolment,
    now: datetime,
    rules: ShopRules,
    *,
    last_step_at: datetime | None = None,
    segments: Mapping[str, datetime] | None = None,
) -> StepRun:
    """Run the enrolment's next step if it is due and allowed.

    Exits and re-timing are checked first (so a step never goes out after the customer
    reordered or unsubscribed). ``last_step_at`` is the customer's last step in *any*
    sequence, for the frequency cap, which defers a step to the next free slot and never
    drops it. On ``run``, write ``effects`` and then store ``enrolment`` (already advanced).
    """
    checked = evaluate(profile, sequence, enrolment, now, rules, segments=segments)
    enr = checked.enrolment
    cleanup = exit_effects(sequence, profile.customer_id)
    if enr is None or not enr.active:
        return StepRun("exited", enr, checked.decisions, effects=cleanup)
    if enr.cycle != enrolment.cycle:  # a new order restarted the series
        return StepRun("restarted", enr, checked.decisions, effects=cleanup)
    if enr.due_at is None or enr.due_at > now:
        kind = "retimed" if enr.due_at != enrolment.due_at else "waiting"
        return StepRun(kind, enr, checked.decisions)
    earlier = tuple(d for d in checked.decisions if d.decision != "waiting")
    step = sequence.steps[enr.next_step]
    own_last = enr.last_step_at
    last = max((t for t in (last_step_at, own_last) if t is not None), default=None)
    slot = next_free_slot(
        now,
        rules.timezone,
        last_step_at=last,
        cap_days=rules.frequency_cap_days,
        quiet=rules.quiet_hours,
        send_hour=step.send_hour,
    )
    if slot.at > now:
        deferred = replace(enr, due_at=slot.at)
        d = _decision(
            "deferred",
            slot.reason or "frequency_cap",
            now,
            enr.customer_id,
            sequence,
            version=enr.version,
            step=step.key,
            until=slot.at,
        )
        return StepRun("deferred", deferred, (*earlier, d), step=step)
    effects = step_effects(sequence, enr, rules, issued_at=now)
    advanced = advance(sequence, enr, now, rules)
    d = _decision(
        "step_done",
        "step_written",
        now,
        enr.customer_id,
        sequence,
        version=enr.version,
        step=step.key,
        tags=list(effects.tags_add),
        coupon=effects.discount.code if effects.discount else None,
        last=advanced.status == "done" or None,
    )
    return StepRun("run", advanced, (*earlier, d), step=step, effects=effects)


def preview(
    sequence: Sequence,
    profiles: Iterable[ProfileLike],
    now: datetime,
    rules: ShopRules,
    *,
    segments: Mapping[int, Mapping[str, datetime]] | None = None,
) -> list[PreviewRow]:
    """Who would enter if the sequence were activated now, at which step, and why (not)."""
    rows = []
    for profile in profiles:
        result = evaluate(
            profile,
            replace(sequence, active=True),
            None,
            now,
            rules,
            segments=(segments or {}).get(profile.customer_id),
        )
        enr = result.enrolment
        rows.append(
            PreviewRow(
                customer_id=profile.customer_id,
                step=enr.next_step if enr else None,
                reason=result.decision.reason,
                due_at=enr.due_at if enr else None,
            )
        )
    return rows
