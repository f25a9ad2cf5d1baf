"""End to end: the app over HTTP, the devstore over HTTP, real Redis, real RQ workers, the
shared clock moved forward. A customer's orders reach the app as signed webhooks, the ingest
worker builds the profile, the evaluate job enrols, the tick queues due steps, the step job
writes tags, coupons and metafields back to the devstore, where the test reads them.

The ingest → evaluate hook is called by the test helper (:meth:`Stack.sync`) with
``worker.steps.on_profile_changed`` until the lead wires it into ``worker/ingest.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from plugin import shops
from tests.fixtures.stack import AppKeys, Installed, Stacks
from tests.fixtures.stack import ShopStack as Stack
from worker import decision_log, enrolment_store, steps
from worker.queues import STEPS
from worker.scheduler import tick

KEYS = AppKeys("kizuna-e2e-client-id", "kizuna-e2e-client-secret-0123456789abcdef")
SHOP = "e2e-shop.myshopify.com"
TZ = "Asia/Tokyo"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
INSTALLED = Installed(SHOP, shops.ShopFacts("E2E", TZ, "JPY", "Basic"), START)


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    """The app, the devstore, :data:`SHOP` installed, the clock at :data:`START`."""
    return stacks.shop(Stack, KEYS, INSTALLED)


def _tokyo(y: int, m: int, d: int, h: int = 10, minute: int = 0) -> datetime:
    return (
        datetime(y, m, d, h - 9, minute, tzinfo=UTC)
        if h >= 9
        else datetime(y, m, d, h, minute, tzinfo=UTC) - timedelta(hours=9)
    )


def test_replenishment_steps_land_on_local_days_stop_on_reorder_and_restart(stack: Stack) -> None:
    """A first order of a 30-day supplement leads to the reminder 25 days later (local 10:00),
    the next one 5 days after; a reorder stops the series (its tags removed) and restarts it
    from the new order. No step may fire early, twice, or after the reorder."""
    product = stack.ctl(
        "/products", {"title": "Vitamin C 30 days", "variants": [{"price": "3000"}]}
    )
    pid = int(product["id"])
    seq_id = stack.sequence("replenishment", trigger={"product_ids": [pid]})
    cid = stack.subscribed_customer("hana@example.com")
    stack.sync(cid)
    stack.order(cid, product)  # 1 July, 12:00 Tokyo
    stack.sync(cid)

    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.active
    assert enr.due_at == _tokyo(2026, 7, 26)  # 1 July + 30 days − 5 days before, 10:00 local

    stack.advance_to(_tokyo(2026, 7, 26, 9, 59))
    assert not any(t.startswith("kizuna:") for t in stack.tags(cid)), "fired early"

    stack.advance_to(_tokyo(2026, 7, 26, 10, 1))
    assert f"kizuna:{seq_id}:reminder" in stack.tags(cid)
    view = stack.customer_view(cid)
    assert any(m.get("key") == "last_step" for m in view["metafields"])

    stack.advance_to(_tokyo(2026, 7, 31, 10, 1))
    tags = stack.tags(cid)
    assert f"kizuna:{seq_id}:runs-out" in tags and f"kizuna:{seq_id}:reminder" not in tags

    # The customer reorders on 2 August: the series stops and restarts from the new order.
    stack.clock.set(_tokyo(2026, 8, 2, 12))
    stack.order(cid, product)
    stack.sync(cid)
    assert not any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.active and enr.next_step == 0
    assert enr.due_at is not None and enr.due_at > _tokyo(2026, 8, 20)

    # The old cycle's last step (due 7 August) never fires.
    stack.advance_to(_tokyo(2026, 8, 8, 12))
    assert not any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))

    log = stack.api("GET", f"/api/customers/{cid}/log").json()
    kinds = [(e["decision"], e["reason"]) for e in log if e["sequence"] == seq_id]
    assert ("entered", "product_ordered") in kinds
    assert kinds.count(("step_done", "step_written")) == 2
    assert ("exited", "new_order") in kinds and ("entered", "reordered") in kinds
    assert all({"at", "sequence", "decision", "reason"} <= e.keys() for e in log)


def test_birthday_coupon_once_in_the_birth_month_restricted_and_in_metafields(
    stack: Stack,
) -> None:
    """A customer born in August gets one coupon on 1 August (local), valid to the month's
    end, restricted to them, with its code and expiry in metafields. Running the tick and
    the workers again, or re-running the step, must not create a second code."""
    seq_id = stack.sequence("birthday_coupon")
    cid = stack.subscribed_customer("kei@example.com")
    stack.emit_birth_date(cid, "1990-08-15")
    stack.sync(cid)
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.due_at == _tokyo(2026, 8, 1)

    stack.advance_to(_tokyo(2026, 8, 1, 10, 5))
    view = stack.customer_view(cid)
    codes = view["discount_codes"]
    assert len(codes) == 1
    code = codes[0]
    assert code["usage_limit"] == 1
    assert code["ends_at"].startswith("2026-08-31T15:00:00")  # 1 Sept 00:00 in Tokyo
    fields = {m["key"]: m["value"] for m in view["metafields"] if m.get("namespace") == "kizuna"}
    assert fields["coupon_code"] == code["code"]
    assert fields["coupon_expires_at"].startswith("2026-08-31T15:00:00")

    # A rerun of the same step (a crash after the write-back) issues no second code.
    enr_after = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr_after is not None and enr_after.status == "done"
    raw_after = enrolment_store.load_raw(stack.conn, SHOP, seq_id, cid)
    assert raw_after is not None
    enrolment_store.commit(stack.conn, SHOP, cid, seq_id, raw_after, enr)  # back to "due"
    stack.sync(cid)
    assert len(stack.customer_view(cid)["discount_codes"]) == 1
    log = decision_log.read(stack.conn, SHOP, cid)
    done = [e for e in log if e["decision"] == "step_done"]
    assert len(done) == 2 and done[-1]["detail"]["written"]["coupon_created"] is False


def test_unsubscribed_customer_gets_nothing(stack: Stack) -> None:
    """A customer who never consented orders the product: no enrolment, no tag, and the log
    says why (consent). Moving past every due date must not write anything."""
    product = stack.ctl("/products", {"title": "Green tea", "variants": [{"price": "1500"}]})
    seq_id = stack.sequence("replenishment", trigger={"product_ids": [int(product["id"])]})
    c = stack.ctl("/customers", {"email": "quiet@example.com", "first_name": "Q"})
    cid = int(c["id"])
    stack.order(cid, product)
    stack.sync(cid)
    assert enrolment_store.load(stack.conn, SHOP, seq_id, cid) is None
    stack.advance_to(_tokyo(2026, 8, 20))
    assert not any(t.startswith("kizuna:") for t in stack.tags(cid))
    assert stack.customer_view(cid)["discount_codes"] == []
    log = decision_log.read(stack.conn, SHOP, cid)
    assert [(e["decision"], e["reason"]) for e in log] == [("skipped", "consent")]


def test_third_order_earns_the_milestone_gift(stack: Stack) -> None:
    """Two orders earn nothing; the third enrols the customer and the gift coupon is issued."""
    product = stack.ctl("/products", {"title": "Soap", "variants": [{"price": "800"}]})
    seq_id = stack.sequence("milestone_gift")
    cid = stack.subscribed_customer("third@example.com")
    for _ in range(2):
        stack.order(cid, product)
    stack.sync(cid)
    assert enrolment_store.load(stack.conn, SHOP, seq_id, cid) is None
    stack.order(cid, product)
    stack.sync(cid)
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None
    stack.advance_to(enr.due_at + timedelta(minutes=1) if enr.due_at else START)
    assert len(stack.customer_view(cid)["discount_codes"]) == 1
    assert any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))


def test_step_job_for_a_paused_shop_reschedules_instead_of_failing(stack: Stack) -> None:
    """An uninstalled shop: the step job raises nothing and leaves the step for later; the
    tick postpones the shop without claiming. Nothing is written to Shopify."""
    seq_id = stack.sequence("birthday_coupon")
    cid = stack.subscribed_customer("pause@example.com")
    stack.emit_birth_date(cid, "1990-08-15")
    stack.sync(cid)
    shops.mark_uninstalled(stack.conn, SHOP, stack.clock.now())
    stack.clock.set(_tokyo(2026, 8, 1, 10, 5))
    result = tick(stack.conn, stack.clock.now())
    assert result.postponed == [SHOP] and result.claimed == 0
    from worker.app_events import job_context

    assert steps.handle_step(job_context(), SHOP, cid, seq_id) == "paused"
    score = stack.conn.zscore(enrolment_store.due_key(SHOP), f"{cid}:{seq_id}")
    assert score is not None and score > stack.clock.now().timestamp()
    assert stack.customer_view(cid)["discount_codes"] == []
    assert not stack.conn.exists(f"rq:queue:{STEPS}") or stack.conn.llen(f"rq:queue:{STEPS}") == 0


def test_redeemed_coupon_ends_the_sequence_and_removes_its_tags(stack: Stack) -> None:
    """A first order enrols the customer; the coupon step issues their code; the customer
    orders again with that code (the ``orders/create`` webhook carries ``discount_codes``).
    The enrolment must exit with reason ``coupon_redeemed``, the sequence's tags must be gone
    from the customer in Shopify, and moving the clock past the next step's time must fire
    nothing more (no tag, no second code)."""
    product = stack.ctl("/products", {"title": "Hand cream", "variants": [{"price": "2000"}]})
    definition = {
        "id": "thanks",
        "title": "Thanks, then a reminder",
        "trigger": {"kind": "first_order"},
        "steps": [
            {"key": "coupon", "offset_days": 1, "send_hour": 10,
             "discount": {"kind": "percentage", "value": 10, "valid_days": 30}},
            {"key": "reminder", "offset_days": 20, "send_hour": 10},
        ],
        "exit": {"on_redeem": True},
    }  # fmt: skip
    r = stack.api("POST", "/api/sequences", {"definition": definition})
    assert r.status_code == 201, r.text
    seq_id = str(r.json()["id"])
    assert stack.api("POST", f"/api/sequences/{seq_id}/activate").status_code == 200
    stack.work()
    cid = stack.subscribed_customer("redeem@example.com")
    stack.order(cid, product)  # 1 July, 12:00 Tokyo
    stack.sync(cid)
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.active and enr.due_at == _tokyo(2026, 7, 2)

    stack.advance_to(_tokyo(2026, 7, 2, 10, 5))
    codes = stack.customer_view(cid)["discount_codes"]
    assert len(codes) == 1
    code = codes[0]["code"]
    assert f"kizuna:{seq_id}:coupon" in stack.tags(cid)
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.active and enr.next_step == 1

    # The customer uses the code on 5 July (the shop's checkout accepts it lower-case too).
    stack.clock.set(_tokyo(2026, 7, 5, 15))
    stack.order(cid, product, discount_codes=[{"code": code.lower(), "amount": "200"}])
    stack.sync(cid)

    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.status == "exited" and enr.due_at is None
    assert not any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))
    exits = [
        e
        for e in decision_log.read(stack.conn, SHOP, cid)
        if e["sequence"] == seq_id and e["decision"] == "exited"
    ]
    assert [e["reason"] for e in exits] == ["coupon_redeemed"]
    assert exits[0]["detail"]["code"] == code
    assert stack.conn.zscore(enrolment_store.due_key(SHOP), f"{cid}:{seq_id}") is None

    # The reminder's time (21 July) passes: nothing fires.
    stack.advance_to(_tokyo(2026, 7, 22, 12))
    assert not any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))
    assert len(stack.customer_view(cid)["discount_codes"]) == 1
    done = [
        e
        for e in decision_log.read(stack.conn, SHOP, cid)
        if e["sequence"] == seq_id and e["decision"] == "step_done"
    ]
    assert [e["step"] for e in done] == ["coupon"]


def test_chunk_job_runs_each_step_alone_and_one_permanent_failure_spares_the_others(
    stack: Stack,
) -> None:
    """Three birthday steps are due together and go in one chunk job; one customer was deleted
    in Shopify meanwhile (tagsAdd answers "Resource not found"). Must not happen: the other two
    customers' coupons missing, the chunk job failing as a whole, or the deleted customer's
    failure invisible (it must be in the shop's failures and their decision log)."""
    from devstore.state import Store

    seq_id = stack.sequence("birthday_coupon")
    ids = [stack.subscribed_customer(f"chunk{i}@example.com") for i in range(3)]
    for cid in ids:
        stack.emit_birth_date(cid, "1990-08-20")
    stack.sync(*ids)
    Store(stack.conn, stack.clock).delete(SHOP, "customers", ids[1])
    stack.clock.set(_tokyo(2026, 8, 1, 10, 5))
    result = tick(stack.conn, stack.clock.now(), chunk_min=2, chunk_size=10)
    assert result.enqueued == 3 and result.jobs == 1
    stack.work()
    for cid in (ids[0], ids[2]):
        assert len(stack.customer_view(cid)["discount_codes"]) == 1
        enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
        assert enr is not None and enr.status == "done"
    failures = enrolment_store.failures(stack.conn, SHOP)
    assert list(failures) == [f"{ids[1]}:{seq_id}"]
    log = decision_log.read(stack.conn, SHOP, ids[1])
    assert [e["decision"] for e in log if e["sequence"] == seq_id][-1] == "failed"
    queue = Queue(STEPS, connection=stack.conn, serializer=JSONSerializer)
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    finished = FinishedJobRegistry(queue=queue).get_job_ids()
    assert any(j.startswith("steps-") for j in finished)
