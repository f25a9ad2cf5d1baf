"""Lists that move with time: the segment refresh on real Redis, the shared dev clock and a real
RQ worker. A customer turns dormant without any webhook; the lists, ``/api/segments`` and a
win-back sequence follow; only the customers who move are read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from crm import events
from crm.profile import Profile, fold
from crm.segments import DEFAULT_THRESHOLDS
from crm.templates import instantiate
from devstore import idtoken
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.settings import Settings
from tests.integration.webhook_helpers import SHOP, install_shop
from worker import decision_log, enrolment_store, profile_store, segment_refresh, sequence_store
from worker.queues import ALL_QUEUES, BULK
from worker.scheduler import run_forever

T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)


def make_profile(
    cid: int,
    order_days: list[datetime],
    *,
    subscribed: bool = True,
    birth_date: str | None = None,
    total: str = "5000",
) -> Profile:
    """A profile folded from webhook events: the customer, then one order per date."""
    body: dict[str, Any] = {
        "id": cid, "email": f"c{cid}@example.com", "first_name": "Aoi", "last_name": "Kato",
        "updated_at": "2025-01-01T00:00:00Z", "created_at": "2025-01-01T00:00:00Z",
        "email_marketing_consent": {"state": "subscribed" if subscribed else "not_subscribed"},
    }  # fmt: skip
    if birth_date:
        body["metafields"] = [{"namespace": "facts", "key": "birth_date", "value": birth_date}]
    evs: list[events.Event] = [events.parse("customers/create", body)]
    for n, at in enumerate(order_days):
        evs.append(events.parse("orders/create", {
            "id": cid * 100 + n, "name": f"#{cid}-{n}", "created_at": at.isoformat(),
            "financial_status": "paid", "currency": "JPY", "total_price": total,
            "customer": {"id": cid}, "line_items": [{"product_id": 55, "quantity": 1}],
        }))  # fmt: skip
    profile = fold(evs)
    assert profile is not None
    return profile


def store(conn: redis.Redis, profile: Profile, now: datetime, shop: str = SHOP) -> None:
    profile_store.save(conn, shop, profile, now=now, thresholds=DEFAULT_THRESHOLDS)


def work(conn: redis.Redis) -> None:
    queues = [Queue(n, connection=conn, serializer=JSONSerializer) for n in ALL_QUEUES]
    SimpleWorker(queues, connection=conn, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False
    )


@pytest.fixture()
def env(
    conn: redis.Redis, test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[DevClock]:
    """An installed shop, the RQ jobs' environment (dev clock shared through Redis)."""
    for name, value in (test_env | {"KIZUNA_DEV_CLOCK": "1"}).items():
        monkeypatch.setenv(name, value)
    install_shop(conn)
    clock = DevClock(conn)
    clock.set(T0)
    yield clock


def test_customer_turns_dormant_and_the_win_back_sequence_enrols_them(
    conn: redis.Redis, env: DevClock, settings: Settings
) -> None:
    """A customer whose last order was 177 days ago is ``new``; four days later, with no
    webhook at all, the scheduled refresh moves them to ``dormant``: the list, the count from
    ``/api/segments`` and an active win-back sequence (segment entered) all follow. A customer
    who ordered recently must not move, and the refresh must not be queued twice per period."""
    winback = sequence_store.create(conn, SHOP, instantiate("winback"), T0)
    sequence_store.set_active(conn, SHOP, winback.id, True)
    store(conn, make_profile(1, [datetime(2026, 1, 5, 12, tzinfo=UTC)]), T0)
    store(conn, make_profile(2, [datetime(2026, 6, 10, tzinfo=UTC)]), T0)
    store(conn, make_profile(3, []), T0)  # a subscriber who never bought

    first = segment_refresh.refresh_shop(conn, SHOP, T0)
    assert first.full and first.moved == 3 and first.segment_changed == []
    assert profile_store.count_by_segment(conn, SHOP).get("segment:new") == 2

    env.set(T0 + timedelta(days=4))  # customer 1: 181.5 days since the last order
    assert segment_refresh.schedule_all(conn, env.now()) == [SHOP]
    assert segment_refresh.schedule_all(conn, env.now()) == []  # once per period
    work(conn)  # the refresh job, then the evaluate job it queued

    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts.get("segment:dormant") == 1 and counts.get("segment:new") == 1
    assert profile_store.members(conn, SHOP, "segment:dormant")[1] == [1]
    state: dict[bytes, bytes] = conn.hgetall(segment_refresh.state_key(SHOP))  # type: ignore[assignment]
    assert state[b"moved"] == b"1"
    last_run = datetime.fromisoformat(state[b"last_run"].decode())
    assert abs((env.now() - last_run).total_seconds()) < 60

    app = create_app(settings, conn=conn, clock=env)
    token = idtoken.mint(SHOP, api_key=settings.api_key, api_secret=settings.api_secret,
                         now=env.now())  # fmt: skip
    seen = app.test_client().get("/api/segments", headers={"Authorization": f"Bearer {token}"})
    assert seen.status_code == 200
    assert seen.get_json()["dormant"] == 1 and seen.get_json()["new"] == 1

    enr = enrolment_store.load(conn, SHOP, winback.id, 1)
    assert enr is not None and enr.active and enr.next_step == 0
    log = decision_log.read(conn, SHOP, 1)
    assert any(e["decision"] == "entered" and e["reason"] == "segment_entered" for e in log)
    assert enrolment_store.load(conn, SHOP, winback.id, 2) is None


def test_refresh_reads_only_the_customers_who_move(conn: redis.Redis, env: DevClock) -> None:
    """400 customers with last orders one day apart: a refresh one day later must re-save
    exactly the customers whose lists changed (checked against a full recomputation of every
    profile), a small fraction of all; afterwards every stored list equals the recomputed one.
    A birthday list must not move with the calendar month."""
    profiles = []
    for cid in range(1, 401):
        last = T0 - timedelta(days=cid, hours=7)
        p = make_profile(cid, [last], birth_date="1990-03-09" if cid % 50 == 0 else None)
        profiles.append(p)
        store(conn, p, T0)
    assert segment_refresh.refresh_shop(conn, SHOP, T0).full

    t1 = T0 + timedelta(days=1)
    result = segment_refresh.refresh_shop(conn, SHOP, t1)
    expected_movers = {
        p.customer_id
        for p in profiles
        if profile_store.keys_for(p, T0, DEFAULT_THRESHOLDS)
        != profile_store.keys_for(p, t1, DEFAULT_THRESHOLDS)
    }
    assert not result.full
    assert result.moved == len(expected_movers) and 0 < result.moved < 20
    assert sorted(result.segment_changed) == sorted(
        p.customer_id
        for p in profiles
        if {k for k in profile_store.keys_for(p, T0) if k.startswith("segment:")}
        != {k for k in profile_store.keys_for(p, t1) if k.startswith("segment:")}
    )
    for p in profiles:
        _, keys = profile_store.load_entry(conn, SHOP, p.customer_id)
        assert keys == profile_store.keys_for(p, t1, DEFAULT_THRESHOLDS), p.customer_id
    assert profile_store.count(conn, SHOP, "bday:03") == 8
    # Nothing crossed between t1 and t1: a second run at the same moment re-saves no one.
    assert segment_refresh.refresh_shop(conn, SHOP, t1).moved == 0


def test_deleted_customer_leaves_the_last_order_set(conn: redis.Redis, env: DevClock) -> None:
    """A redacted customer must not stay in the last-order set (nor be re-saved by a refresh),
    and a customer with no live order is never in it."""
    store(conn, make_profile(7, [T0 - timedelta(days=179)]), T0)
    store(conn, make_profile(8, []), T0)
    key = profile_store.last_order_key(SHOP)
    assert conn.zscore(key, "7") is not None and conn.zscore(key, "8") is None
    segment_refresh.refresh_shop(conn, SHOP, T0)
    assert profile_store.delete(conn, SHOP, 7)
    assert conn.zscore(key, "7") is None
    result = segment_refresh.refresh_shop(conn, SHOP, T0 + timedelta(days=2))
    assert result.moved == 0 and profile_store.load(conn, SHOP, 7) is None


def test_scheduler_loop_queues_the_refresh(conn: redis.Redis, env: DevClock) -> None:
    """One pass of the ``kizuna scheduler`` loop queues the shop's segment refresh on the bulk
    queue beside reconcile; an uninstalled shop gets none."""
    install_shop(conn, "gone-shop.myshopify.com")
    from plugin import shops

    shops.mark_uninstalled(conn, "gone-shop.myshopify.com", T0)
    passes = iter([False, True])
    run_forever(conn, env.now, interval=0, sleep=lambda _s: None, stop=lambda: next(passes))
    ids = Queue(BULK, connection=conn, serializer=JSONSerializer).get_job_ids()
    assert any(i.startswith("segrefresh-") for i in ids)
    assert not any("gone-shop" in i for i in ids if i.startswith("segrefresh-"))
