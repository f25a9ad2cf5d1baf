"""The enrolment state machine, driven by real profiles and moved time (no sleeping)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.coupons import coupon_code
from crm.decisions import Decision
from crm.enrolment import (
    Enrolment,
    ShopRules,
    due_step,
    earlier_orders,
    evaluate,
    exit_all,
    preview,
)
from crm.events import LineItem, PurchasingSummary
from crm.profile import OrderRecord, Profile, apply
from crm.schedule import QuietHours
from crm.sequence import Sequence, from_dict
from crm.templates import instantiate

SALT = "test-salt"
TOKYO = ShopRules(timezone="Asia/Tokyo", currency="JPY", coupon_salt=SALT)
PRODUCT = 42


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def jst(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Tokyo wall time, as UTC."""
    return utc(year, month, day, hour, minute) - timedelta(hours=9)


def order(
    order_id: int,
    at: datetime,
    *,
    qty: int = 1,
    product: int = PRODUCT,
    codes: tuple[str, ...] = (),
    fulfilled: datetime | None = None,
    cancelled: datetime | None = None,
) -> OrderRecord:
    return OrderRecord(
        id=order_id,
        name=f"#{order_id}",
        created_at=at,
        paid_at=at,
        cancelled_at=cancelled,
        updated_at=at,
        line_items=(LineItem(product_id=product, variant_id=product * 10, quantity=qty),),
        discount_codes=codes,
        first_fulfilled_at=fulfilled,
    )


def profile(*orders: OrderRecord, state: str = "SUBSCRIBED", **fields: Any) -> Profile:
    return Profile(
        customer_id=fields.pop("customer_id", 7001),
        email="hana@example.com",
        email_marketing_state=state,
        orders={o.id: o for o in orders},
        **fields,
    )


def supplement(**extra: Any) -> Sequence:
    return from_dict(
        {
            "id": "vitamin-c",
            "trigger": {
                "kind": "replenishment",
                "product_ids": [PRODUCT],
                "consumption_days": 30,
                "days_before": 5,
            },
            "steps": [
                {"key": "reminder", "offset_days": 0, "send_hour": 10},
                {"key": "runs-out", "offset_days": 5, "send_hour": 10},
            ],
            **extra,
        }
    )


def kinds(decisions: tuple[Decision, ...]) -> list[tuple[str, str]]:
    return [(d.decision, d.reason) for d in decisions]


# -- replenishment ------------------------------------------------------------------------


def test_thirty_day_supplement_steps_land_on_the_right_tokyo_days() -> None:
    """First order 1 July 12:00 JST, 30 days per unit, reminder 5 days before it runs out:
    the reminder is 26 July 10:00 JST (01:00 UTC), the run-out step 31 July 10:00 JST."""
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    p = profile(first)
    entered = evaluate(p, seq, None, jst(2026, 7, 1, 12, 1), TOKYO)
    enr = entered.enrolment
    assert enr is not None and enr.active
    assert kinds(entered.decisions) == [("entered", "product_ordered")]
    assert (enr.cycle, enr.next_step, enr.due_at) == (501, 0, utc(2026, 7, 26, 1))

    # the day before nothing is due
    early = due_step(p, seq, enr, utc(2026, 7, 25, 1), TOKYO)
    assert early.kind == "waiting" and early.effects is None

    run = due_step(p, seq, enr, utc(2026, 7, 26, 1), TOKYO)
    assert run.kind == "run" and run.effects is not None
    assert run.effects.tags_add == ("kizuna:vitamin-c:reminder",)
    assert run.effects.tags_remove == ("kizuna:vitamin-c:runs-out",)
    assert run.enrolment is not None and run.enrolment.due_at == utc(2026, 7, 31, 1)

    final = due_step(p, seq, run.enrolment, utc(2026, 7, 31, 1), TOKYO)
    assert final.kind == "run" and final.enrolment is not None
    assert final.enrolment.status == "done"
    assert final.effects is not None
    assert final.effects.tags_remove == ("kizuna:vitamin-c:reminder",)


def test_three_units_last_three_times_as_long() -> None:
    seq = supplement()
    p = profile(order(501, jst(2026, 7, 1, 12), qty=3))
    enr = evaluate(p, seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None and enr.due_at == jst(2026, 9, 24, 10)  # 1 Jul + 90 − 5 days


def test_a_reorder_stops_the_series_and_restarts_from_the_new_order() -> None:
    """Reordering on 28 July must end the running cycle (no 'runs-out' step for the old
    order) and start a new one timed from the new order and the customer's own rhythm."""
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None
    enr = due_step(profile(first), seq, enr, utc(2026, 7, 26, 1), TOKYO).enrolment
    assert enr is not None and enr.next_step == 1

    second = order(502, jst(2026, 7, 28, 9))
    now = jst(2026, 7, 28, 9, 5)
    result = evaluate(profile(first, second), seq, enr, now, TOKYO)
    assert kinds(result.decisions) == [("exited", "new_order"), ("entered", "reordered")]
    new = result.enrolment
    assert new is not None and new.cycle == 502 and new.next_step == 0
    # 27 days for one unit refines 30 → (30 + 27) / 2 = 28.5 → 28 days; minus 5: 20 August
    assert new.due_at == jst(2026, 8, 20, 10)

    # the scheduler still holding the old enrolment gets the restart, not the old step
    stale = due_step(profile(first, second), seq, enr, utc(2026, 7, 31, 1), TOKYO)
    assert stale.kind == "restarted"
    assert stale.effects is not None and stale.effects.tags_add == ()
    assert set(stale.effects.tags_remove) == set(seq.tags)
    assert stale.enrolment is not None and stale.enrolment.cycle == 502


def test_an_order_of_another_product_does_not_restart() -> None:
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    other = order(502, jst(2026, 7, 10, 9), product=99)
    again = evaluate(profile(first, other), seq, enr, jst(2026, 7, 10, 10), TOKYO)
    assert again.enrolment == enr and again.decision.decision == "waiting"


def test_us_shop_replenishment_keeps_ten_am_local_across_the_november_shift() -> None:
    rules = ShopRules(timezone="America/New_York", currency="USD", coupon_salt=SALT)
    seq = supplement()
    # 15 October 2026, 12:00 EDT; due 30 − 5 = 25 days later: 9 November, 10:00 EST
    p = profile(order(501, utc(2026, 10, 15, 16)))
    enr = evaluate(p, seq, None, utc(2026, 10, 15, 17), rules).enrolment
    assert enr is not None and enr.due_at == utc(2026, 11, 9, 15)


# -- first order: anchor and re-timing ----------------------------------------------------


def test_a_later_shipment_retimes_the_steps_still_ahead() -> None:
    seq = instantiate("four_walls")  # anchored on the first fulfilment
    placed = order(601, jst(2026, 7, 1, 12))
    enr = evaluate(profile(placed), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None and enr.due_at == jst(2026, 7, 2, 10)  # provisional: order day

    shipped = replace(placed, first_fulfilled_at=jst(2026, 7, 4, 16))
    moved = evaluate(profile(shipped), seq, enr, jst(2026, 7, 4, 16, 5), TOKYO)
    assert kinds(moved.decisions) == [("retimed", "anchor_moved")]
    assert moved.enrolment is not None and moved.enrolment.due_at == jst(2026, 7, 5, 10)

    # after the first step ran, the following steps count from the shipment day
    run = due_step(profile(shipped), seq, moved.enrolment, jst(2026, 7, 5, 10), TOKYO)
    assert run.enrolment is not None and run.enrolment.due_at == jst(2026, 7, 8, 10)
    # evaluating again changes nothing (idempotent)
    same = evaluate(profile(shipped), seq, run.enrolment, jst(2026, 7, 6, 0), TOKYO)
    assert same.enrolment == run.enrolment and same.decision.decision == "waiting"


# -- birthday -----------------------------------------------------------------------------


def test_birthday_coupon_in_the_birthday_month_with_the_right_expiry() -> None:
    """Born 17 August: the coupon goes out 1 August 10:00 JST, expires 1 September 00:00
    JST, is the deterministic code for (customer, sequence, step, year), and next year's
    cycle gets a different code."""
    seq = instantiate("birthday_coupon")
    p = profile(birth_date=date(1990, 8, 17))
    entered = evaluate(p, seq, None, jst(2026, 7, 1, 9), TOKYO)
    enr = entered.enrolment
    assert enr is not None and (enr.cycle, enr.due_at) == (2026, jst(2026, 8, 1, 10))

    run = due_step(p, seq, enr, jst(2026, 8, 1, 10), TOKYO)
    assert run.kind == "run" and run.effects is not None
    discount = run.effects.discount
    assert discount is not None
    assert discount.code == coupon_code(SALT, 7001, "birthday", "coupon", 2026)
    assert discount.starts_at == jst(2026, 8, 1, 10)
    assert discount.ends_at == jst(2026, 9, 1, 0)
    gql = discount.graphql_input()
    assert gql["customerGets"]["value"] == {"percentage": 0.15}
    assert gql["context"] == {"customers": {"add": ["gid://shopify/Customer/7001"]}}
    assert gql["usageLimit"] == 1 and gql["appliesOncePerCustomer"] is True
    fields = {(m.namespace, m.key): m.value for m in run.effects.metafields}
    assert fields[("kizuna", "coupon_code")] == discount.code
    assert fields[("kizuna", "coupon_expires_at")] == discount.ends_at.isoformat()
    assert run.effects.flow_trigger is not None
    assert run.effects.flow_trigger["coupon_code"] == discount.code
    # the key a workflow can tell a repeated trigger by: this customer, sequence, year and step
    step_key = seq.steps[0].key
    assert run.effects.flow_trigger["occurrence"] == f"7001:{seq.id}:2026:{step_key}"

    done = run.enrolment
    assert done is not None and done.status == "done"
    # the same year is not entered twice; the next one is
    again = evaluate(p, seq, done, jst(2026, 8, 2, 0), TOKYO)
    assert again.enrolment is not None and again.enrolment.cycle == 2027
    assert again.enrolment.due_at == jst(2027, 8, 1, 10)
    next_year = due_step(p, seq, again.enrolment, jst(2027, 8, 1, 10), TOKYO)
    assert next_year.effects is not None and next_year.effects.discount is not None
    assert next_year.effects.discount.code != discount.code


@pytest.mark.parametrize(
    ("today", "expected"),
    [(jst(2027, 1, 10, 0), jst(2027, 2, 28, 10)), (jst(2028, 1, 10, 0), jst(2028, 2, 29, 10))],
)
def test_february_29_birthday_on_the_day(today: datetime, expected: datetime) -> None:
    seq = from_dict(
        {
            "id": "birthday-day",
            "trigger": {"kind": "yearly_date", "date_source": "birthday"},
            "steps": [{"key": "wish", "offset_days": 0, "send_hour": 10}],
        }
    )
    enr = evaluate(profile(birth_date=date(2000, 2, 29)), seq, None, today, TOKYO).enrolment
    assert enr is not None and enr.due_at == expected


def test_signup_anniversary_skips_the_signup_year() -> None:
    seq = from_dict(
        {
            "id": "anniversary",
            "trigger": {"kind": "yearly_date", "date_source": "signup"},
            "steps": [{"key": "thanks", "offset_days": 0}],
        }
    )
    p = profile(created_at=jst(2026, 3, 10, 12))
    enr = evaluate(p, seq, None, jst(2026, 3, 10, 13), TOKYO).enrolment
    assert enr is not None and (enr.cycle, enr.due_at) == (2027, jst(2027, 3, 10, 10))


def test_date_metafield_trigger() -> None:
    seq = from_dict(
        {
            "id": "school",
            "trigger": {
                "kind": "yearly_date",
                "date_source": "metafield",
                "metafield": "custom.child_school_entry",
                "yearly_mode": "days_before",
                "days_before": 30,
            },
            "steps": [{"key": "bag", "offset_days": 0}],
        }
    )
    p = profile(metafields={"custom.child_school_entry": "2024-04-06"})
    enr = evaluate(p, seq, None, jst(2026, 1, 1, 0), TOKYO).enrolment
    assert enr is not None and enr.due_at == jst(2026, 3, 7, 10)
    garbage = profile(metafields={"custom.child_school_entry": "soon"})
    result = evaluate(garbage, seq, None, jst(2026, 1, 1, 0), TOKYO)
    assert result.enrolment is None and result.decision.reason == "not_triggered"


# -- milestone ----------------------------------------------------------------------------


def test_third_order_earns_the_gift_once_not_again_on_the_fourth() -> None:
    seq = instantiate("milestone_gift")
    orders = [order(700 + i, jst(2026, 1 + i, 5, 12)) for i in range(4)]
    two = evaluate(profile(*orders[:2]), seq, None, jst(2026, 2, 6, 0), TOKYO)
    assert two.enrolment is None and two.decision.reason == "not_triggered"

    three = evaluate(profile(*orders[:3]), seq, None, jst(2026, 3, 5, 13), TOKYO)
    enr = three.enrolment
    assert enr is not None and kinds(three.decisions) == [("entered", "nth_order")]
    run = due_step(profile(*orders[:3]), seq, enr, jst(2026, 3, 6, 10), TOKYO)
    assert run.effects is not None and run.effects.discount is not None
    assert run.effects.discount.kind == "amount"
    assert run.effects.discount.graphql_input()["customerGets"]["value"] == {
        "discountAmount": {"amount": "500", "appliesOnEachItem": False}
    }
    assert run.enrolment is not None and run.enrolment.status == "done"

    four = evaluate(profile(*orders), seq, run.enrolment, jst(2026, 4, 5, 13), TOKYO)
    assert four.enrolment == run.enrolment
    assert four.decision.reason == "already_done"


def test_cancelled_orders_do_not_count_towards_a_milestone() -> None:
    seq = instantiate("milestone_gift")
    orders = [order(700 + i, jst(2026, 1 + i, 5, 12)) for i in range(3)]
    orders[1] = replace(orders[1], cancelled_at=jst(2026, 2, 6, 0))
    result = evaluate(profile(*orders), seq, None, jst(2026, 3, 6, 0), TOKYO)
    assert result.enrolment is None


# -- consent and exits --------------------------------------------------------------------


@pytest.mark.parametrize("state", ["NOT_SUBSCRIBED", "UNSUBSCRIBED", "PENDING", "REDACTED", None])
def test_customers_without_consent_get_nothing(state: str | None) -> None:
    """A first order from a customer not SUBSCRIBED must not create an enrolment; the
    decision is skipped/consent."""
    seq = supplement()
    p = profile(order(501, jst(2026, 7, 1, 12)), state=state)  # type: ignore[arg-type]
    result = evaluate(p, seq, None, jst(2026, 7, 1, 13), TOKYO)
    assert result.enrolment is None
    assert kinds(result.decisions) == [("skipped", "consent")]
    assert "email marketing" in result.decision.text("en")
    assert "同意" in result.decision.text("ja")


def test_unsubscribing_mid_sequence_exits_and_removes_the_tags() -> None:
    """An unsubscribe after entering must stop the next step from running at all."""
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None
    run = due_step(profile(first, state="UNSUBSCRIBED"), seq, enr, utc(2026, 7, 26, 1), TOKYO)
    assert run.kind == "exited"
    assert run.enrolment is not None and run.enrolment.status == "exited"
    assert kinds(run.decisions) == [("exited", "unsubscribed")]
    assert run.effects is not None and run.effects.discount is None
    assert run.effects.tags_add == () and set(run.effects.tags_remove) == set(seq.tags)


def test_a_redeemed_coupon_ends_the_sequence() -> None:
    seq = from_dict(
        {
            "id": "welcome",
            "trigger": {"kind": "first_order"},
            "steps": [
                {
                    "key": "coupon",
                    "offset_days": 1,
                    "discount": {"kind": "percentage", "value": 10, "valid_days": 7},
                },
                {"key": "reminder", "offset_days": 5},
            ],
        }
    )
    first = order(801, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None
    run = due_step(profile(first), seq, enr, jst(2026, 7, 2, 10), TOKYO)
    assert run.effects is not None and run.effects.discount is not None
    code = run.effects.discount.code
    assert run.enrolment is not None
    # a second order that does not use the code leaves the series running
    other = order(802, jst(2026, 7, 3, 12), codes=("SUMMER",))
    still = evaluate(profile(first, other), seq, run.enrolment, jst(2026, 7, 3, 13), TOKYO)
    assert still.enrolment == run.enrolment
    # using the code ends it before the reminder
    redeemed = order(803, jst(2026, 7, 4, 12), codes=(code.lower(),))
    ended = due_step(profile(first, redeemed), seq, run.enrolment, jst(2026, 7, 6, 10), TOKYO)
    assert ended.kind == "exited"
    assert kinds(ended.decisions) == [("exited", "coupon_redeemed")]
    assert ended.decisions[0].detail["code"] == code


def test_deleted_customer_exits_and_uninstall_ends_everything() -> None:
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None
    gone = evaluate(profile(first, deleted=True), seq, enr, jst(2026, 7, 2, 0), TOKYO)
    assert kinds(gone.decisions) == [("exited", "customer_deleted")]
    merged = evaluate(profile(first, merged_into=9), seq, enr, jst(2026, 7, 2, 0), TOKYO)
    assert merged.decision.reason == "customer_deleted"

    other = replace(enr, customer_id=7002)
    finished = replace(enr, customer_id=7003, status="done")
    ended = exit_all([enr, other, finished], {seq.id: seq}, jst(2026, 7, 3, 0), "uninstalled")
    assert [e.customer_id for e, _ in ended] == [7001, 7002]
    assert all(e.status == "exited" and e.due_at is None for e, _ in ended)
    assert all(d.reason == "uninstalled" for _, d in ended)


def test_winback_enters_on_the_segment_and_any_order_ends_it() -> None:
    seq = instantiate("winback")
    old = order(901, jst(2025, 1, 5, 12), product=5)
    entered_at = jst(2026, 7, 1, 3)
    segs = {"dormant": entered_at}
    result = evaluate(profile(old), seq, None, jst(2026, 7, 1, 4), TOKYO, segments=segs)
    enr = result.enrolment
    assert enr is not None and result.decision.reason == "segment_entered"
    back = order(902, jst(2026, 7, 3, 12), product=5)
    ended = evaluate(profile(old, back), seq, enr, jst(2026, 7, 3, 13), TOKYO, segments=segs)
    assert kinds(ended.decisions) == [("exited", "new_order")]
    left = evaluate(profile(old), seq, enr, jst(2026, 7, 3, 13), TOKYO, segments={})
    assert kinds(left.decisions) == [("exited", "segment_left")]


# -- frequency cap and quiet hours ----------------------------------------------------------


def test_frequency_cap_defers_the_step_and_never_drops_it() -> None:
    """Another sequence wrote a step 1 day ago and the cap is one step per 3 days: the due
    step must be deferred to 10:00 on the first free day, then run there."""
    rules = replace(TOKYO, frequency_cap_days=3)
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), rules).enrolment
    assert enr is not None
    other_step = jst(2026, 7, 25, 10)
    deferred = due_step(
        profile(first), seq, enr, jst(2026, 7, 26, 10), rules, last_step_at=other_step
    )
    assert deferred.kind == "deferred" and deferred.effects is None
    assert kinds(deferred.decisions) == [("deferred", "frequency_cap")]
    assert deferred.enrolment is not None
    assert deferred.enrolment.due_at == jst(2026, 7, 28, 10)
    assert deferred.enrolment.next_step == 0  # still the same step

    ran = due_step(
        profile(first),
        seq,
        deferred.enrolment,
        jst(2026, 7, 28, 10),
        rules,
        last_step_at=other_step,
    )
    assert ran.kind == "run" and ran.step is not None and ran.step.key == "reminder"
    # the enrolment's own last step counts too: the run-out step (31 July) waits until 31 July
    assert ran.enrolment is not None
    later = due_step(profile(first), seq, ran.enrolment, jst(2026, 7, 31, 10), rules)
    assert later.kind == "run"


def test_quiet_hours_defer_a_late_catch_up_step() -> None:
    rules = replace(TOKYO, quiet_hours=QuietHours(21, 8))
    seq = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), seq, None, jst(2026, 7, 1, 13), rules).enrolment
    assert enr is not None
    late = due_step(profile(first), seq, enr, jst(2026, 7, 26, 23), rules)
    assert kinds(late.decisions) == [("deferred", "quiet_hours")]
    assert late.enrolment is not None and late.enrolment.due_at == jst(2026, 7, 27, 8)


# -- catch-up and preview -----------------------------------------------------------------


def test_preview_shows_who_enters_at_which_step_for_each_catch_up_policy() -> None:
    now = jst(2026, 7, 1, 12)
    definition = {
        "id": "onboarding",
        "trigger": {"kind": "first_order"},
        "steps": [
            {"key": "a", "offset_days": 0},
            {"key": "b", "offset_days": 10},
            {"key": "c", "offset_days": 20},
        ],
    }
    people = [
        profile(order(1, now - timedelta(days=2)), customer_id=1),
        profile(order(2, now - timedelta(days=15)), customer_id=2),
        profile(order(3, now - timedelta(days=40)), customer_id=3),
        profile(order(4, now - timedelta(days=2)), customer_id=4, state="UNSUBSCRIBED"),
        profile(customer_id=5),
    ]
    skip = from_dict({**definition, "catch_up": "skip", "active": False})
    rows = {r.customer_id: (r.step, r.reason) for r in preview(skip, people, now, TOKYO)}
    assert rows == {
        1: (1, "first_order"),
        2: (2, "first_order"),
        3: (None, "all_steps_missed"),
        4: (None, "consent"),
        5: (None, "not_triggered"),
    }
    latest = from_dict({**definition, "catch_up": "latest"})
    rows_latest = {r.customer_id: (r.step, r.due_at) for r in preview(latest, people, now, TOKYO)}
    assert rows_latest[1] == (0, now)  # missed 'a' two days ago: runs now
    assert rows_latest[2] == (1, now)
    assert rows_latest[3] == (2, now)
    # an inactive sequence enrols nobody, whatever the preview says
    assert evaluate(people[0], skip, None, now, TOKYO).enrolment is None


def test_todays_step_still_runs_for_an_order_placed_after_the_send_hour() -> None:
    seq = from_dict(
        {
            "id": "thanks",
            "trigger": {"kind": "first_order"},
            "steps": [{"key": "t", "offset_days": 0}],
        }
    )
    enr = evaluate(profile(order(1, jst(2026, 7, 1, 15))), seq, None, jst(2026, 7, 1, 15), TOKYO)
    assert enr.enrolment is not None and enr.enrolment.due_at == jst(2026, 7, 1, 10)


def test_active_window_limits_new_entries() -> None:
    seq = supplement(ends_at="2026-07-01T00:00:00+09:00")
    result = evaluate(profile(order(1, jst(2026, 7, 1, 12))), seq, None, jst(2026, 7, 1, 13), TOKYO)
    assert result.enrolment is None and result.decision.reason == "outside_window"


# -- versions and storage -----------------------------------------------------------------


def test_enrolled_customers_keep_their_version() -> None:
    v1 = supplement()
    first = order(501, jst(2026, 7, 1, 12))
    enr = evaluate(profile(first), v1, None, jst(2026, 7, 1, 13), TOKYO).enrolment
    assert enr is not None and enr.version == 1
    v2 = replace(v1, version=2)
    newcomer = evaluate(profile(first, customer_id=2), v2, None, jst(2026, 7, 1, 13), TOKYO)
    assert newcomer.enrolment is not None and newcomer.enrolment.version == 2
    assert enr.version == 1


def test_enrolment_encoding_round_trips_and_stays_small() -> None:
    enr = Enrolment(
        customer_id=7001,
        sequence_id="vitamin-c",
        version=3,
        cycle=5_000_000_123,
        anchor_at=utc(2026, 7, 26, 15),
        next_step=2,
        due_at=utc(2026, 8, 1, 1),
        entered_at=utc(2026, 7, 1, 4),
        history=((0, 1_785_000_000), (1, 1_785_400_000)),
    )
    raw = enr.encode()
    assert len(raw) < 100
    assert Enrolment.decode(7001, "vitamin-c", raw) == enr
    done = replace(enr, status="done", due_at=None, history=())
    assert Enrolment.decode(7001, "vitamin-c", done.encode()) == done


def test_decisions_serialise_and_explain_in_two_languages() -> None:
    d = Decision(
        at=utc(2026, 7, 1),
        customer_id=1,
        sequence="birthday",
        decision="deferred",
        reason="frequency_cap",
        version=2,
        step="coupon",
        detail={"until": "2026-07-04T01:00:00+00:00"},
    )
    assert Decision.from_dict(d.to_dict()) == d
    assert "2026-07-04" in d.text("en") and "延期" in d.text("ja")
    with pytest.raises(ValueError):
        Decision(
            at=utc(2026, 7, 1), customer_id=1, sequence="x", decision="maybe", reason="consent"
        )


# -- returning customers: Shopify's count of orders older than our history ---------------

INSTALL = jst(2026, 7, 1, 9)  # the backfill reads numberOfOrders here; orders before
#                               1 May (60 days) are not in the profile


def counted(p: Profile, number: int, at: datetime, last: int | None = None) -> Profile:
    """``p`` after Shopify's count arrived: the backfill's ``numberOfOrders`` (no last order)
    or a ``customers/purchasing_summary`` (with ``lastOrderId``), taken at ``at``."""
    summary = PurchasingSummary(
        topic="customers/purchasing_summary",
        customer_ids=(p.customer_id,),
        updated_at=at,
        customer_id=p.customer_id,
        number_of_orders=number,
        amount_spent=None,
        currency=None,
        last_order_id=last,
    )
    return apply(p, summary)


def nth(n: int) -> Sequence:
    return instantiate("milestone_gift", id=f"order-{n}", trigger={"nth": n})


def test_a_returning_customer_is_not_welcomed_and_reaches_the_right_milestone() -> None:
    """Two orders placed before the backfill window, one new order: the welcome series must
    not start (the merchant reads why, in English and Japanese) and the new order must count
    as the third, not the first."""
    new = order(801, jst(2026, 7, 10, 12))
    p = profile(new, customer_id=7101)
    backfilled = counted(p, 2, INSTALL)  # stale: taken before order 801
    now = jst(2026, 7, 10, 13)

    welcome = evaluate(backfilled, instantiate("four_walls"), None, now, TOKYO)
    assert welcome.enrolment is None
    assert kinds(welcome.decisions) == [("skipped", "returning_customer")]
    assert welcome.decision.detail["earlier"] == 2
    assert "2 earlier" in welcome.decision.text("en")
    assert "2 件" in welcome.decision.text("ja")

    third = evaluate(backfilled, nth(3), None, now, TOKYO)
    assert third.enrolment is not None and third.enrolment.cycle == 3
    assert kinds(third.decisions) == [("entered", "nth_order")]
    assert third.decision.detail["order"] == "#801" and third.decision.detail["earlier"] == 2
    assert evaluate(backfilled, nth(2), None, now, TOKYO).enrolment is None

    # without the count the cache alone would have called it a first order (the old bug)
    assert evaluate(p, instantiate("four_walls"), None, now, TOKYO).enrolment is not None

    # the purchasing summary of order 801 arrives later: the same answers, now aligned on it
    summed = counted(backfilled, 3, jst(2026, 7, 10, 12, 1), last=801)
    assert evaluate(summed, instantiate("four_walls"), None, now, TOKYO).enrolment is None
    assert evaluate(summed, nth(3), None, now, TOKYO).enrolment == third.enrolment


def test_a_stale_count_of_one_still_marks_the_customer_as_returning() -> None:
    """One order long ago: the backfill's count (1) was taken before the new order, so
    count − cached orders (0) must not be read as "no earlier order"."""
    p = counted(profile(order(811, jst(2026, 7, 20, 12))), 1, INSTALL)
    now = jst(2026, 7, 20, 13)
    result = evaluate(p, instantiate("four_walls"), None, now, TOKYO)
    assert result.enrolment is None and result.decision.reason == "returning_customer"
    second = evaluate(p, nth(2), None, now, TOKYO)
    assert second.enrolment is not None and second.decision.detail["order"] == "#811"


def test_orders_inside_the_window_are_not_counted_twice() -> None:
    """One order before the window and one inside it (backfilled, in the count): the next
    order is the third."""
    recent = order(821, jst(2026, 6, 10, 12))  # 21 days before the install
    new = order(822, jst(2026, 7, 10, 12))
    p = counted(profile(recent, new), 2, INSTALL)
    now = jst(2026, 7, 10, 13)
    third = evaluate(p, nth(3), None, now, TOKYO)
    assert third.enrolment is not None and third.decision.detail["order"] == "#822"
    assert evaluate(p, nth(2), None, now, TOKYO).enrolment is None  # order 821: before now
    summed = counted(p, 3, jst(2026, 7, 10, 12, 1), last=822)
    assert evaluate(summed, nth(3), None, now, TOKYO).enrolment == third.enrolment


def test_a_milestone_reached_before_our_history_is_skipped_with_a_reason() -> None:
    p = counted(profile(order(831, jst(2026, 7, 10, 12))), 5, INSTALL)
    now = jst(2026, 7, 10, 13)
    result = evaluate(p, nth(3), None, now, TOKYO)
    assert result.enrolment is None
    assert kinds(result.decisions) == [("skipped", "milestone_before_history")]
    assert "3" in result.decision.text("en") and "3 回目" in result.decision.text("ja")
    sixth = evaluate(p, nth(6), None, now, TOKYO)
    assert sixth.enrolment is not None and sixth.decision.detail["order"] == "#831"


FIRST = order(841, jst(2026, 7, 10, 12))


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(lambda p: p, id="no count at all"),
        pytest.param(lambda p: counted(p, 0, INSTALL), id="backfilled with no orders"),
        pytest.param(
            lambda p: counted(p, 1, jst(2026, 7, 10, 12, 1), last=841), id="its own summary"
        ),
        pytest.param(
            lambda p: counted(p, 2, jst(2026, 7, 11, 9), last=842),
            id="a summary ahead of the next order's webhook",
        ),
        pytest.param(
            lambda p: counted(p, 1, jst(2026, 7, 10, 12, 1)), id="a count without a last order"
        ),
    ],
)
def test_a_brand_new_customer_still_gets_the_first_order_series(history: Any) -> None:
    """Whatever Shopify's count says and whenever it arrived, a customer whose first order
    is in the cache enters the first-order series and is not counted as further along."""
    p = history(profile(FIRST))
    now = jst(2026, 7, 10, 13)
    result = evaluate(p, instantiate("four_walls"), None, now, TOKYO)
    assert result.enrolment is not None, result.decision
    assert kinds(result.decisions) == [("entered", "first_order")]
    assert evaluate(p, nth(2), None, now, TOKYO).enrolment is None


@pytest.mark.parametrize("count", [1, 2], ids=["cancelled not counted", "cancelled counted"])
def test_a_cancelled_first_order_does_not_make_a_new_customer_returning(count: int) -> None:
    """Shopify may or may not count a cancelled order in numberOfOrders: either way a
    customer whose only earlier order we hold (cancelled) is new."""
    cancelled = order(851, jst(2026, 7, 5, 12), cancelled=jst(2026, 7, 5, 18))
    p = counted(profile(cancelled, FIRST), count, jst(2026, 7, 10, 12, 1), last=841)
    result = evaluate(p, instantiate("four_walls"), None, jst(2026, 7, 10, 13), TOKYO)
    assert result.enrolment is not None and result.decision.detail["order"] == "#841"


def test_orders_placed_at_the_same_instant_are_all_in_the_count() -> None:
    """Two orders with one timestamp: Shopify's summary names either as the last order (and a
    tie of summary versions can pair the count of one with the last order of the other);
    neither reading may invent an earlier order."""
    at = jst(2026, 7, 10, 12)
    p = counted(profile(order(861, at), order(862, at)), 2, at, last=861)
    now = jst(2026, 7, 10, 13)
    assert earlier_orders(p) == 0
    assert evaluate(p, instantiate("four_walls"), None, now, TOKYO).enrolment is not None
    second = evaluate(p, nth(2), None, now, TOKYO)
    assert second.enrolment is not None and second.decision.detail["order"] == "#862"


def test_an_enrolment_made_before_the_count_arrived_ends_as_returning() -> None:
    """The order's webhook was evaluated before any count (the backfill still running): the
    customer entered; Shopify's count then shows two older orders. The series ends with the
    reason, and the customer does not enter again."""
    seq = instantiate("four_walls")
    p = profile(FIRST)
    entered = evaluate(p, seq, None, jst(2026, 7, 10, 13), TOKYO)
    assert entered.enrolment is not None
    later = counted(p, 3, jst(2026, 7, 10, 12, 1), last=841)
    ended = evaluate(later, seq, entered.enrolment, jst(2026, 7, 10, 14), TOKYO)
    assert ended.enrolment is not None and ended.enrolment.status == "exited"
    assert kinds(ended.decisions) == [("exited", "returning_customer")]
    again = evaluate(later, seq, ended.enrolment, jst(2026, 7, 11, 9), TOKYO)
    assert again.enrolment == ended.enrolment and again.decision.decision == "waiting"


@st.composite
def _timelines(draw: st.DrawFn) -> tuple[Profile, int, bool]:
    """A customer's orders, a day apart; the first ``window`` predate our history; we hold
    at least one of those after it, in order (the newest may be missing). Shopify's count is
    a snapshot after any order, counting cancelled orders or not: a summary names its last
    order (cancelled or not) and may be one order ahead of us; a count without a last order
    (backfill, reconcile) is read with the orders, so never ahead. Answers the profile and the
    true number of earlier orders."""
    total = draw(st.integers(1, 8))
    window = draw(st.integers(0, total - 1))
    held_to = draw(st.integers(window + 1, total))  # orders [window, held_to) arrived
    with_last = draw(st.booleans())
    newest = min(total - 1, held_to if with_last else held_to - 1)
    snapshot = draw(st.integers(0, newest))
    cancelled = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    with_cancelled = draw(st.booleans())
    last_any = draw(st.booleans())  # lastOrder may be a cancelled order the count leaves out
    start = jst(2026, 1, 1, 12)
    orders = [
        order(900 + i, start + timedelta(days=i), cancelled=start if cancelled[i] else None)
        for i in range(total)
    ]
    counts = [with_cancelled or not cancelled[i] for i in range(total)]
    p = profile(*orders[window:held_to])
    in_count = [i for i in range(snapshot + 1) if counts[i]]
    named = range(snapshot + 1) if last_any else in_count
    last = 900 + named[-1] if with_last and named else None
    at = start + timedelta(days=snapshot, hours=1)
    p = counted(p, len(in_count), at, last=last)
    knowable = with_cancelled and snapshot >= window  # the count saw one of our orders
    return p, sum(counts[:window]), knowable


@given(_timelines())
@settings(max_examples=300, deadline=None)
def test_earlier_orders_is_never_too_high_and_exact_when_it_can_be(
    case: tuple[Profile, int, bool],
) -> None:
    """However stale the count, whether it counts cancelled orders, and whether it names its
    last order, the estimate of orders before our history is never too high (so a new
    customer never loses the first-order series to it); when the count covers one of our
    orders and counts every order, it is exact."""
    p, truth, knowable = case
    assert earlier_orders(p) <= truth
    if knowable:
        assert earlier_orders(p) == truth
