"""Holdout: the evaluate job keeps the merchant's control group out of a sequence and records
it, and the analytics compare the two groups' orders (real Redis, the real evaluate job)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from crm.analytics import is_held_out
from crm.templates import instantiate
from plugin.api_analytics import build_snapshot
from plugin.api_settings import ShopSettings, save_settings
from plugin.clock import FixedClock
from plugin.settings import Settings
from tests.integration.test_segment_refresh import make_profile, store
from tests.integration.webhook_helpers import SHOP, install_shop
from worker import decision_log, enrolment_store, profile_store, sequence_store, steps
from worker.app_events import Context

T0 = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)
CUSTOMERS = range(1, 61)


def _setup(conn: redis.Redis, percent: int) -> tuple[str, str]:
    install_shop(conn)
    save_settings(conn, SHOP, ShopSettings(holdout_percent=percent))
    seq = sequence_store.create(conn, SHOP, instantiate("winback"), T0)
    sequence_store.set_active(conn, SHOP, seq.id, True)
    for cid in CUSTOMERS:  # dormant since a few hours: the win-back's first step is ahead
        store(conn, make_profile(cid, [T0 - timedelta(days=180, hours=6)]), T0)
    return seq.id, sequence_store.coupon_salt(conn, SHOP)


def _evaluate_all(ctx: Context) -> None:
    for cid in CUSTOMERS:
        steps.handle_evaluate(ctx, SHOP, cid)


def test_held_out_customers_get_no_step_but_are_recorded(
    conn: redis.Redis, settings: Settings
) -> None:
    """With a 30 % holdout, the customers of the stable draw must get no enrolment and no due
    step, but a holdout record and one ``skipped``/``holdout`` log entry (not one per
    evaluation); every other customer enters as usual. Evaluating again changes nothing."""
    seq_id, salt = _setup(conn, 30)
    ctx = Context(conn=conn, settings=settings, clock=FixedClock(T0))
    _evaluate_all(ctx)
    _evaluate_all(ctx)  # a second look (another webhook) must not re-enter or re-log

    held = {cid for cid in CUSTOMERS if is_held_out(cid, seq_id, 30, salt)}
    assert 5 < len(held) < 35
    recorded = steps.held_out_since(conn, SHOP, seq_id)
    assert set(recorded) == held and all(at == T0 for at in recorded.values())
    for cid in CUSTOMERS:
        enr = enrolment_store.load(conn, SHOP, seq_id, cid)
        log = [e for e in decision_log.read(conn, SHOP, cid) if e["sequence"] == seq_id]
        if cid in held:
            assert enr is None or not enr.active, cid
            assert [(e["decision"], e["reason"]) for e in log] == [("skipped", "holdout")]
            member = enrolment_store.member(cid, seq_id)
            assert conn.zscore(enrolment_store.due_key(SHOP), member) is None
        else:
            assert enr is not None and enr.active, cid
            assert [(e["decision"], e["reason"]) for e in log] == [("entered", "segment_entered")]


def test_no_holdout_by_default(conn: redis.Redis, settings: Settings) -> None:
    """With the default 0 %, nobody may be held out: every customer enters."""
    seq_id, _ = _setup(conn, 0)
    _evaluate_all(Context(conn=conn, settings=settings, clock=FixedClock(T0)))
    assert steps.held_out_since(conn, SHOP, seq_id) == {}
    assert enrolment_store.counts(conn, SHOP, seq_id)["active"] == len(CUSTOMERS)


def test_analytics_compare_the_held_out_group(conn: redis.Redis, settings: Settings) -> None:
    """The analytics' holdout table must count the recorded control group (not zero, not
    inside the funnel) and their orders after the would-be entry: here every held-out customer
    and no treated one orders again, so the lift is negative and exact."""
    seq_id, salt = _setup(conn, 30)
    _evaluate_all(Context(conn=conn, settings=settings, clock=FixedClock(T0)))
    held = {cid for cid in CUSTOMERS if is_held_out(cid, seq_id, 30, salt)}
    later = T0 + timedelta(days=3)
    for cid in held:  # the control group orders again; profiles are re-stored, not re-evaluated
        store(conn, make_profile(cid, [T0 - timedelta(days=180, hours=6), later]), later)

    snapshot = build_snapshot(conn, SHOP, T0 + timedelta(days=10))
    figures = snapshot["sequences"][seq_id]
    assert figures["funnel"]["entered"] == len(CUSTOMERS) - len(held)
    table = figures["holdout"]
    assert table["holdout"]["customers"] == len(held) and table["holdout"]["ordered"] == len(held)
    assert table["treated"]["customers"] == len(CUSTOMERS) - len(held)
    assert table["treated"]["ordered"] == 0
    assert table["lift"] == -1.0
    assert profile_store.count(conn, SHOP) == len(CUSTOMERS)
