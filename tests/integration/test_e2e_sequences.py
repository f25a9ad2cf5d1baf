"""End to end: the app over HTTP, the devstore over HTTP, real Redis, real RQ workers, the
shared clock moved forward. A customer's orders reach the app as signed webhooks, the ingest
worker builds the profile, the evaluate job enrols, the tick queues due steps, the step job
writes tags, coupons and metafields back to the devstore, where the test reads them.

The ingest → evaluate hook is called by the test helper (:meth:`Stack.sync`) with
``worker.steps.on_profile_changed`` until the lead wires it into ``worker/ingest.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from werkzeug.serving import make_server

from plugin import shops
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from tests.fixtures.devstore import Devstore
from worker import decision_log, enrolment_store, steps
from worker.queues import ALL_QUEUES, STEPS
from worker.scheduler import tick

API_KEY = "kizuna-e2e-client-id"
API_SECRET = "kizuna-e2e-client-secret-0123456789abcdef"
SHOP = "e2e-shop.myshopify.com"
TZ = "Asia/Tokyo"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo


@dataclass
class Stack:
    base: str
    devstore: Devstore
    conn: redis.Redis
    clock: DevClock
    settings: Settings

    # -- the merchant's page ----------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        token = self.devstore.id_token(SHOP)
        return requests.request(
            method,
            self.base + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    # -- Shopify's side ---------------------------------------------------------------------

    def ctl(self, path: str, body: Any) -> dict[str, Any]:
        r = self.devstore.session.post(self.devstore.url(f"/_devstore/shops/{SHOP}{path}"),
                                       json=body, timeout=10)  # fmt: skip
        assert r.status_code in (200, 201), r.text
        data: dict[str, Any] = r.json()
        return data

    def customer_view(self, cid: int) -> dict[str, Any]:
        r = self.devstore.session.get(
            self.devstore.url(f"/_devstore/shops/{SHOP}/customers/{cid}"), timeout=10
        )
        assert r.status_code == 200
        data: dict[str, Any] = r.json()
        return data

    def tags(self, cid: int) -> set[str]:
        raw = self.customer_view(cid)["tags"]
        items = raw.split(",") if isinstance(raw, str) else raw
        return {t.strip() for t in items if t.strip()}

    def order(self, cid: int, product: dict[str, Any], quantity: int = 1, **extra: Any) -> int:
        variant = product["variants"][0]["id"]
        o = self.ctl(
            "/orders",
            {
                "customer": {"id": cid},
                "line_items": [{"variant_id": variant, "quantity": quantity}],
                "financial_status": "paid",
                **extra,
            },
        )
        return int(o["id"])

    # -- the app's workers ------------------------------------------------------------------

    def work(self) -> None:
        queues = [Queue(n, connection=self.conn, serializer=JSONSerializer) for n in ALL_QUEUES]
        SimpleWorker(queues, connection=self.conn, serializer=JSONSerializer).work(
            burst=True, with_scheduler=False
        )

    def sync(self, *customer_ids: int) -> None:
        """Deliver Shopify's webhooks, ingest them, evaluate the customers, run what is due."""
        self.devstore.flush_webhooks()
        self.work()
        for cid in customer_ids:
            steps.on_profile_changed(self.conn, SHOP, cid)
        self.work()
        tick(self.conn, self.clock.now())
        self.work()

    def advance_to(self, at: datetime) -> None:
        self.clock.set(at)
        self.sync()


@contextmanager
def running_stack(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    """The app on an ephemeral port, the devstore, the shop installed (other test modules
    build their own fixture on it)."""
    devstore.set_time(START)
    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda e, s: holder["app"](e, s), threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    env = (
        test_env
        | devstore.env()
        | {
            "SHOPIFY_APP_URL": base,
            "SHOPIFY_API_KEY": API_KEY,
            "SHOPIFY_API_SECRET": API_SECRET,
            "KIZUNA_DEV_CLOCK": "1",
        }
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the RQ jobs build their settings from the environment
    settings = Settings.from_env(env)
    clock = DevClock(conn)
    holder["app"] = create_app(settings, conn=conn, clock=clock)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    devstore.create_shop(SHOP, name="E2E", timezone=TZ, currency="JPY")
    token = devstore.install(SHOP, base, API_KEY, API_SECRET)
    cipher = TokenCipher.from_settings(settings)
    grant = shops.Grant(access_token=token, scopes=("read_customers", "write_customers"))
    shops.install(conn, cipher, SHOP, grant, clock.now())
    shops.set_facts(conn, SHOP, shops.ShopFacts("E2E", TZ, "JPY", "Basic"))
    try:
        yield Stack(base, devstore, conn, clock, settings)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def stack(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    with running_stack(conn, test_env, devstore, monkeypatch) as s:
        yield s


def _subscribed_customer(stack: Stack, email: str, **extra: Any) -> int:
    c = stack.ctl(
        "/customers",
        {
            "email": email,
            "first_name": "Hana",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
            **extra,
        },
    )
    return int(c["id"])


def _with_birthday(stack: Stack, cid: int, birth_date: str) -> None:
    """Shopify sends ``facts.birth_date`` in ``customers/update`` when the subscription asks
    for the ``facts`` namespace; the devstore's own payloads carry no metafields, so the test
    emits that delivery itself (signed and sent by the devstore like any other)."""
    from devstore import payloads
    from devstore.state import Store

    store = Store(stack.conn, stack.clock)
    customer = store.get(SHOP, "customers", cid)
    assert customer is not None
    body = payloads.customer(store, SHOP, customer)
    body["updated_at"] = stack.clock.now().isoformat()
    body["metafields"] = [
        {"namespace": "facts", "key": "birth_date", "type": "date", "value": birth_date,
         "updated_at": stack.clock.now().isoformat()}
    ]  # fmt: skip
    stack.devstore.emit(SHOP, "customers/update", body)


def _sequence(stack: Stack, template: str, **overrides: Any) -> str:
    r = stack.api("POST", "/api/sequences", {"template": template, **overrides})
    assert r.status_code == 201, r.text
    seq_id = str(r.json()["id"])
    r = stack.api("POST", f"/api/sequences/{seq_id}/activate")
    assert r.status_code == 200, r.text
    stack.work()
    return seq_id


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
    seq_id = _sequence(stack, "replenishment", trigger={"product_ids": [pid]})
    cid = _subscribed_customer(stack, "hana@example.com")
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
    seq_id = _sequence(stack, "birthday_coupon")
    cid = _subscribed_customer(stack, "kei@example.com")
    _with_birthday(stack, cid, "1990-08-15")
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
    seq_id = _sequence(stack, "replenishment", trigger={"product_ids": [int(product["id"])]})
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
    seq_id = _sequence(stack, "milestone_gift")
    cid = _subscribed_customer(stack, "third@example.com")
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
    seq_id = _sequence(stack, "birthday_coupon")
    cid = _subscribed_customer(stack, "pause@example.com")
    _with_birthday(stack, cid, "1990-08-15")
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
    cid = _subscribed_customer(stack, "redeem@example.com")
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

    seq_id = _sequence(stack, "birthday_coupon")
    ids = [_subscribed_customer(stack, f"chunk{i}@example.com") for i in range(3)]
    for cid in ids:
        _with_birthday(stack, cid, "1990-08-20")
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
