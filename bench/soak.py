"""Soak (``make soak``, ``python -m bench.soak``): mixed load for ``SOAK_MINUTES`` (20).

The stack, as deployed: a private durable ``redis-server`` (:func:`bench.harness.private_redis`),
``kizuna devstore``, ``kizuna web`` in production mode (gunicorn, its default 2 workers × 4
threads), two ``kizuna worker`` (RQ's forking worker) and one ``kizuna scheduler``. Workers and
scheduler run on the development clock (``KIZUNA_DEV_CLOCK=1``, which production mode refuses)
so that steps fall due while the clock moves; the web app runs on the machine's clock, as in
production, and the page views carry ID tokens minted at real time.

Setup: a devstore shop seeded with :data:`BASE_CUSTOMERS` demo customers and their history;
the app installed on it; the merchant's first visit (token exchange, after-install job,
backfill) and three sequences switched on through the app's API (:data:`TEMPLATES`).

Load (:mod:`bench.soak_load`), all over HTTP: signed webhooks from Shopify's samples at
``SOAK_WEBHOOK_RATE`` per second, newcomers whose first order starts the first-order series,
page views of the embedded page's APIs at ``SOAK_PAGE_RATE`` per second, and the development
clock moved one day every ``SOAK_DAY_EVERY`` seconds so that steps fall due; the scheduler runs
them against the devstore.

Every ``SOAK_SAMPLE_EVERY`` seconds: web and worker memory (:mod:`bench.soak_procs`), queue
depths, the load average. Warm-up value: the median of the samples within one and a half
sampling periods of 20 % of the run; end value: the median of the last three samples.

After the load: wait for the queues to drain, then check that every order and fulfilment
answered 200 is in its customer's profile, that no raw delivery is left, no dead letter, no
failed job, no step failed or overdue, and that no step ran twice (the decision logs, against
the discount codes the devstore holds).

Figures: ``soak_web_rss_growth`` and ``soak_worker_rss_growth`` (end against warm-up, goal
ratio < 1.10), ``soak_failed_requests`` (against all requests made, goal 0) and
``soak_lost_or_duplicated`` (what the end checks found, goal 0).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import requests
from cryptography.fernet import Fernet

from bench.figures import Figure
from bench.harness import free_port, note, percentile, private_redis, python, wait_http
from bench.soak_load import (
    ClockMover,
    Customer,
    DevTime,
    PageLoad,
    Sent,
    Tally,
    Target,
    WebhookLoad,
)
from bench.soak_procs import Processes, load_average, proc_table, rss_kb, web_kb, worker_kb

FIGURES = (
    "soak_web_rss_growth",
    "soak_worker_rss_growth",
    "soak_failed_requests",
    "soak_lost_or_duplicated",
)

SHOP = "soak-shop.myshopify.com"
WITHDRAWN = "coupons withdrawn (created, step not recorded)"
BASE_CUSTOMERS = 1_000
WORKERS = 2
TEMPLATES = ("four_walls", "milestone_gift", "birthday_coupon")
GROWTH_GOAL = 1.10
SETUP_TIMEOUT = 300.0
DRAIN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Plan:
    """The run's knobs, from the environment (``SOAK_*``)."""

    minutes: float = 20.0
    webhook_rate: float = 50.0
    page_rate: float = 3.0
    new_rate: float = 0.5
    day_every: float = 5.0
    sample_every: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Plan:
        values: dict[str, float] = {}
        for name in ("minutes", "webhook_rate", "page_rate", "new_rate", "day_every",
                     "sample_every"):  # fmt: skip
            key = f"SOAK_{name.upper()}"
            raw = env.get(key, "").strip()
            if not raw:
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise SystemExit(f"{key}: not a number: {raw!r}") from None
            if not 0 < values[name] <= 10_000:
                raise SystemExit(f"{key}: must be above 0 and at most 10000, not {raw}")
        return cls(**values)

    @property
    def seconds(self) -> float:
        return self.minutes * 60


@dataclass
class Sample:
    t: float
    web_kb: int
    worker_kb: int
    queued: dict[str, int]
    load: float
    redis_mb: float
    worker_parents_kb: int = 0  # the two worker processes alone, without their children
    scheduler_kb: int = 0


@dataclass
class Run:
    """Everything one soak run learns."""

    samples: list[Sample] = field(default_factory=list)
    web_pids: list[frozenset[int]] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)
    checked: int = 0
    dead_letters: int = 0  # at the last sample


# -- the stack ----------------------------------------------------------------------------------


def environments(redis_url: str, devstore_port: int) -> tuple[dict[str, str], dict[str, str]]:
    """(web in production mode, workers/scheduler/devstore on the development clock)."""
    common = {
        "REDIS_URL": redis_url,
        "SHOPIFY_API_KEY": "soak-client-id",
        "SHOPIFY_API_SECRET": secrets.token_hex(32),
        "SHOPIFY_APP_URL": "https://kizuna.example.com",
        "KIZUNA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "KIZUNA_SHOPIFY_ORIGIN": f"http://127.0.0.1:{devstore_port}/store/{{shop}}",
    }
    web = common | {"KIZUNA_ENV": "production", "WEB_CONCURRENCY": "2"}
    dev = common | {"KIZUNA_ENV": "development", "KIZUNA_DEV_CLOCK": "1"}
    return web, dev


def seed_shop(redis_url: str) -> None:
    """The devstore shop with its demo history, written as ``kizuna devstore seed`` does."""
    from devstore.seed import seed
    from devstore.state import Store
    from plugin.clock import DevClock

    conn = redis.Redis.from_url(redis_url)
    clock = DevClock(conn)
    store = Store(conn, clock)
    store.create_shop(SHOP, name="Kizuna Soak", timezone="Asia/Tokyo", currency="JPY")
    seed(store, SHOP, customers=BASE_CUSTOMERS, now=clock.now())
    store.ensure_customer_order_index(SHOP)
    conn.close()


def known_customers(conn: redis.Redis) -> list[Customer]:
    from devstore.state import Store
    from plugin.clock import DevClock

    return [
        Customer(int(c["id"]), c.get("email") or f"c{c['id']}@example.com",
                 c.get("first_name") or "", c.get("last_name") or "")
        for c in Store(conn, DevClock(conn)).all(SHOP, "customers")
    ]  # fmt: skip


def first_visit(target: Target, api_key: str) -> list[str]:
    """Open the app as the admin does (token exchange), switch the sequences on."""
    from devstore.idtoken import mint

    def token() -> str:
        return mint(SHOP, api_key=api_key, api_secret=target.secret, now=datetime.now(UTC))

    page = requests.get(
        f"{target.app}/app", params={"embedded": "1", "shop": SHOP, "id_token": token()},
        timeout=60,
    )  # fmt: skip
    page.raise_for_status()
    made = []
    for name in TEMPLATES:
        auth = {"Authorization": f"Bearer {token()}"}
        created = requests.post(f"{target.app}/api/sequences", json={"template": name},
                                headers=auth, timeout=60)  # fmt: skip
        if created.status_code != 201:
            raise RuntimeError(f"sequence {name}: {created.status_code} {created.text[:200]}")
        seq_id = str(created.json()["id"])
        requests.post(f"{target.app}/api/sequences/{seq_id}/activate", headers=auth,
                      timeout=60).raise_for_status()  # fmt: skip
        made.append(seq_id)
    return made


def wait_backfill(target: Target, api_key: str, timeout: float) -> str:
    """Wait until the page's backfill progress says done (or failed); answer the status."""
    from devstore.idtoken import mint

    deadline = time.monotonic() + timeout
    status = "none"
    while time.monotonic() < deadline:
        token = mint(SHOP, api_key=api_key, api_secret=target.secret, now=datetime.now(UTC))
        answer = requests.get(f"{target.app}/api/backfill", timeout=30,
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        answer.raise_for_status()
        status = str(answer.json().get("status"))
        if status in {"done", "failed"}:
            return status
        time.sleep(1.0)
    return status


# -- queues ---------------------------------------------------------------------------------------


def backlog(conn: redis.Redis) -> dict[str, int]:
    """Jobs queued, running and waiting for a retry per queue, and raw deliveries left."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from worker.queues import ALL_QUEUES, get_queue

    out = {}
    for name in ALL_QUEUES:
        q = get_queue(conn, name)
        out[name] = (
            q.count + StartedJobRegistry(queue=q).count + ScheduledJobRegistry(queue=q).count
        )
    try:  # the receiver's pending list, where it has one (worker.drain)
        from worker.drain import PENDING

        out["pending"] = int(conn.llen(PENDING))
    except ImportError:
        pass
    out["deliveries"] = sum(1 for _ in conn.scan_iter(f"kizuna:{SHOP}:delivery:*", count=1000))
    return out


def wait_idle(conn: redis.Redis, timeout: float, procs: Processes) -> tuple[bool, float]:
    """Wait until nothing is queued, running or left undelivered three checks running."""
    started = time.monotonic()
    calm = 0
    while time.monotonic() - started < timeout:
        if procs.dead():
            raise RuntimeError(f"processes exited: {procs.dead()}")
        calm = calm + 1 if not any(backlog(conn).values()) else 0
        if calm >= 3:
            return True, time.monotonic() - started
        time.sleep(1.0)
    return False, time.monotonic() - started


# -- sampling ---------------------------------------------------------------------------------


def sample(t: float, procs: Processes, conn: redis.Redis, run: Run) -> Sample:
    table = proc_table()
    web, pids = web_kb(procs.pid("web"), table)
    workers = sum(worker_kb(procs.pid(f"worker-{i}"), table) for i in range(WORKERS))
    parents = sum(rss_kb(procs.pid(f"worker-{i}")) for i in range(WORKERS))
    from worker.deliveries import dead_letters_key

    redis_mb = int(conn.info("memory")["used_memory"]) / 2**20
    run.dead_letters = int(conn.llen(dead_letters_key(SHOP)))
    s = Sample(t, web, workers, backlog(conn), load_average(), redis_mb, parents,
               rss_kb(procs.pid("scheduler")))  # fmt: skip
    run.samples.append(s)
    run.web_pids.append(pids)
    return s


def growth(samples: list[Sample], total: float, every: float, what: str) -> tuple[float, float]:
    """(warm-up, end) in MB: the median of the samples around 20 % of the run (within 1.5
    sampling periods or 2.5 % of the run, whichever is longer) and of the last ones (the last
    three sampling periods or 5 % of the run). A median, so that one sample taken while a
    work-horse happened to hold a large job does not decide the figure."""
    at, half = 0.2 * total, max(1.5 * every, 0.025 * total)
    warm = [getattr(s, what) for s in samples if abs(s.t - at) <= half]
    last = samples[-1].t if samples else 0.0
    end = [getattr(s, what) for s in samples if s.t >= last - max(2.5 * every, 0.05 * total)]
    if not warm or not end:
        return 0.0, 0.0
    return statistics.median(warm) / 1024, statistics.median(end) / 1024


# -- the end checks ---------------------------------------------------------------------------


def _show_orphan(conn: redis.Redis, discount: dict[str, Any]) -> None:
    """A discount code no step_done names: its customer's decision log and enrolments, for
    whoever looks into it (what created it, and what the step did next)."""
    from worker import decision_log, enrolment_store

    note(f"orphan code {discount['code']}: {json.dumps(discount, default=str)[:400]}")
    for cid in discount.get("customer_ids") or []:
        for entry in decision_log.read(conn, SHOP, int(cid), limit=40):
            note(f"  log {cid}: {json.dumps(entry, default=str)[:300]}")
        for seq_id in ("four-walls", "milestone-3", "birthday"):
            raw = enrolment_store.load_raw(conn, SHOP, seq_id, int(cid))
            note(f"  enrolment {cid} {seq_id}: {raw!r}"[:300])


def check(
    conn: redis.Redis, sent: Sent, customers: list[Customer], installed_at: datetime, run: Run
) -> dict[str, int]:
    """Count what was lost, left, failed or done twice (``run.problems``); answer step counts.

    Orders checked: every one answered 200, and every one of Shopify's (the devstore's) that
    the backfill at ``installed_at`` reads.
    """
    from rq.registry import FailedJobRegistry

    from devstore.state import Store
    from plugin.clock import DevClock
    from worker import coupon_ledger, decision_log, deliveries, enrolment_store, profile_store
    from worker.backfill import ORDER_DAYS
    from worker.queues import ALL_QUEUES, get_queue

    ids = sorted({c.id for c in customers} | set(sent.orders.values()))
    store = Store(conn, DevClock(conn))
    profiles = {p.customer_id: p for p in profile_store.load_many(conn, SHOP, ids)}
    for order_id, cid in sent.orders.items():
        profile = profiles.get(cid)
        if profile is None or order_id not in profile.orders:
            run.problems["order answered 200, not in the profile"] += 1
        elif order_id in sent.fulfilled and profile.orders[order_id].first_fulfilled_at is None:
            run.problems["fulfilment answered 200, not in the profile"] += 1
    # The backfill reads the orders of the last ORDER_DAYS days (no read_all_orders scope).
    window = installed_at - timedelta(days=ORDER_DAYS - 1)
    shopify_orders = [
        (int(o["id"]), int(o["customer_id"]))
        for o in store.all(SHOP, "orders")
        if o.get("customer_id") and datetime.fromisoformat(o["created_at"]) >= window
    ]
    for order_id, cid in shopify_orders:
        profile = profiles.get(cid)
        if profile is None or order_id not in profile.orders:
            run.problems["Shopify's order not in the profile"] += 1
    run.checked = len(sent.orders) + len(sent.fulfilled) + len(shopify_orders)
    left = backlog(conn)
    if left["deliveries"]:
        run.problems["raw delivery never applied"] += left["deliveries"]
    run.problems["dead letter"] += int(conn.llen(deliveries.dead_letters_key(SHOP)))
    for name in ALL_QUEUES:
        run.problems[f"failed job ({name})"] += FailedJobRegistry(queue=get_queue(conn, name)).count
    run.problems["step failed for good"] += len(enrolment_store.failures(conn, SHOP))
    run.problems["step overdue at the end"] += enrolment_store.due_count(
        conn, SHOP, DevClock(conn).now()
    )

    counts: Counter[str] = Counter({WITHDRAWN: 0})
    coupons: set[str] = set()
    for cid in ids:
        log = decision_log.read(conn, SHOP, cid)
        if len(log) >= decision_log.CAP:
            counts["decision logs full (oldest entries dropped)"] += 1
        done: Counter[tuple[object, object, object]] = Counter()
        for e in log:
            if e.get("decision") == "failed":
                run.problems["failed decision"] += 1
            if e.get("decision") == "coupon_deleted":
                counts[WITHDRAWN] += 1
            if e.get("decision") != "step_done":
                continue
            coupon = (e.get("detail") or {}).get("coupon")
            # Each sequence here runs a step once per cycle, and only the yearly one has
            # cycles, each with its own coupon: (sequence, step, coupon) must be unique.
            done[(e.get("sequence"), e.get("step"), coupon)] += 1
            counts[f"steps done ({e.get('sequence')})"] += 1
            if coupon:
                coupons.add(str(coupon).upper())
        run.problems["step done twice"] += sum(n - 1 for n in done.values() if n > 1)
    discounts = store.all(SHOP, "discounts")
    codes = [str(d["code"]).upper() for d in discounts]
    counts["discount codes on the devstore"] = len(codes)
    counts["coupons in step_done entries"] = len(coupons)
    run.problems["discount code with no step_done"] += len(set(codes) - coupons)
    for d in discounts:
        if str(d["code"]).upper() not in coupons:
            _show_orphan(conn, d)
    run.problems["coupon logged but not on the devstore"] += len(coupons - set(codes))
    counts["coupon codes still in the ledger"] = int(conn.hlen(coupon_ledger.ledger_key(SHOP)))
    counts["Flow triggers on the devstore"] = int(conn.llen(f"devstore:{SHOP}:flow_triggers"))
    return dict(counts)


# -- the run ------------------------------------------------------------------------------------


def soak(plan: Plan, logs: Path, run: Run, tally: Tally) -> dict[str, int]:
    """Start the stack, load it for ``plan.minutes``, drain and check."""
    sent = Sent()
    with private_redis(durable=True) as redis_url:
        conn = redis.Redis.from_url(redis_url)
        devstore_port, web_port = free_port(), free_port()
        web_env, dev_env = environments(redis_url, devstore_port)
        procs = Processes(logs)
        try:
            kizuna = python("-m", "plugin.cli")
            procs.start("devstore", [*kizuna, "devstore", "--port", str(devstore_port)], dev_env)
            devstore = f"http://127.0.0.1:{devstore_port}"
            wait_http(f"{devstore}/_devstore/healthz", procs.procs["devstore"])
            started = time.monotonic()
            seed_shop(redis_url)
            procs.start("web", [*kizuna, "web", "--port", str(web_port)], web_env)
            app = f"http://127.0.0.1:{web_port}"
            wait_http(f"{app}/healthz", procs.procs["web"], timeout=60)
            for i in range(WORKERS):
                procs.start(f"worker-{i}", [*kizuna, "worker"], dev_env)
            procs.start("scheduler", [*kizuna, "scheduler", "--interval", "2"], dev_env)
            secret, api_key = web_env["SHOPIFY_API_SECRET"], web_env["SHOPIFY_API_KEY"]
            requests.post(
                f"{devstore}/_devstore/shops/{SHOP}/install",
                json={"app_url": app, "api_key": api_key, "api_secret": secret}, timeout=30,
            ).raise_for_status()  # fmt: skip
            from plugin.appconfig import load_app_config

            config = load_app_config()
            topics = ("orders/create", "orders/updated", "fulfillments/create", "customers/update")
            target = Target(app, devstore, SHOP, secret, {t: config.uri_for(t) for t in topics})
            installed_at = datetime.fromisoformat(
                requests.get(f"{devstore}/_devstore/clock", timeout=10).json()["now"]
            )
            sequences = first_visit(target, api_key)
            backfill = wait_backfill(target, api_key, SETUP_TIMEOUT)
            idle, _ = wait_idle(conn, SETUP_TIMEOUT, procs)
            if backfill != "done" or not idle:
                raise RuntimeError(f"setup did not settle: backfill {backfill}, idle {idle}")
            customers = known_customers(conn)
            note(f"setup: {len(customers)} customers seeded and backfilled, sequences "
                 f"{', '.join(sequences)} on, in {time.monotonic() - started:.0f} s")  # fmt: skip
            dev_time = DevTime()
            dev_time.seen(requests.get(f"{devstore}/_devstore/clock", timeout=10).json()["now"])
            stop = threading.Event()
            hooks = WebhookLoad(target, customers, dev_time, tally, sent, rate=plan.webhook_rate,
                                new_rate=plan.new_rate, stop=stop)  # fmt: skip
            pages = PageLoad(target, api_key, customers, tally, rate=plan.page_rate, stop=stop)
            mover = ClockMover(target, dev_time, tally, every=plan.day_every, step="P1D",
                               stop=stop)  # fmt: skip
            begin = time.monotonic()
            for t in (hooks, pages, mover):
                t.start()
            try:
                while (elapsed := time.monotonic() - begin) < plan.seconds:
                    if procs.dead():
                        run.problems[f"process exited: {', '.join(procs.dead())}"] += 1
                        break
                    s = sample(elapsed, procs, conn, run)
                    note(f"t={s.t:4.0f}s web {s.web_kb / 1024:.1f} MB workers "
                         f"{s.worker_kb / 1024:.1f} MB redis {s.redis_mb:.0f} MB queued "
                         f"{s.queued} load {s.load:.1f} "
                         f"sent {tally.total()} failed {tally.failed()} dead letters "
                         f"{run.dead_letters}")  # fmt: skip
                    if run.dead_letters > max(50, tally.total() // 100):
                        # A broken stack (a half-made change in the tree): stop, don't soak it.
                        run.problems["stopped early: deliveries dead-lettered"] += 1
                        break
                    time.sleep(max(0.0, min(plan.sample_every, plan.seconds - elapsed)))
                sample(time.monotonic() - begin, procs, conn, run)
            finally:
                stop.set()
                for t in (hooks, pages, mover):
                    t.join(timeout=60)
            note(f"load: {time.monotonic() - begin:.0f} s; {mover.moves} days moved; "
                 f"{hooks.newcomers} newcomers; pacer stalled {hooks.stalled:.1f} s waiting "
                 f"for answers, restarted {hooks.reset} times after falling a second "
                 "behind")  # fmt: skip
            idle, waited = wait_idle(conn, DRAIN_TIMEOUT, procs)
            note(f"drain: {'done' if idle else 'NOT done'} in {waited:.0f} s")
            if not idle:
                run.problems["queues not drained"] += 1
            counts = check(conn, sent, customers, installed_at, run)
            for name in procs.procs:
                for what, n in procs.exceptions(name).items():
                    counts[f"logged exception in {name}: {what}"] = n
        finally:
            procs.stop_all()
            conn.close()
    return counts


def report(plan: Plan, run: Run, tally: Tally, counts: dict[str, int]) -> Iterator[Figure]:
    loads = [s.load for s in run.samples]
    if loads:
        note(f"load average during the run: {min(loads):.1f}–{max(loads):.1f} "
             f"(median {statistics.median(loads):.1f}), {os.cpu_count()} cores")  # fmt: skip
    for kind in sorted(tally.sent):
        ms = tally.latencies.get(kind, [])
        note(f"{kind}: sent {tally.sent[kind]}, answered 2xx {tally.ok[kind]}, "
             f"p50 {percentile(ms, 50):.0f} ms p99 {percentile(ms, 99):.0f} ms")  # fmt: skip
    for what, n in sorted(tally.errors.items()):
        note(f"error: {what} × {n}")
    for what, n in sorted(counts.items()):
        note(f"{what}: {n}")
    if run.samples:
        note(f"redis used_memory: {run.samples[0].redis_mb:.0f} MB at the start of the load, "
             f"{run.samples[-1].redis_mb:.0f} MB at its end")  # fmt: skip
    peak_queue = max((sum(v for k, v in s.queued.items() if k != "deliveries")
                      for s in run.samples), default=0)  # fmt: skip
    note(f"deepest backlog (jobs queued + running + retrying): {peak_queue}")
    replaced = (
        len({p for pids in run.web_pids for p in pids}) - len(run.web_pids[0])
        if run.web_pids
        else 0
    )
    if replaced:
        run.problems["web worker replaced"] += replaced
    problems = {k: v for k, v in run.problems.items() if v}
    note(
        f"end checks over {run.checked} orders and fulfilments: "
        + (", ".join(f"{k} × {v}" for k, v in problems.items()) if problems else "all good")
    )
    for label, what in (("worker processes alone", "worker_parents_kb"),
                        ("scheduler", "scheduler_kb")):  # fmt: skip
        warm, end = growth(run.samples, plan.seconds, plan.sample_every, what)
        note(f"{label}: warm-up {warm:.1f} MB, end {end:.1f} MB "
             f"({end / warm if warm else 0:.3f})")  # fmt: skip
    for name, what in (("soak_web_rss_growth", "web_kb"), ("soak_worker_rss_growth", "worker_kb")):
        warm, end = growth(run.samples, plan.seconds, plan.sample_every, what)
        note(f"{name}: warm-up {warm:.1f} MB, end {end:.1f} MB, peak "
             f"{max(getattr(s, what) for s in run.samples) / 1024:.1f} MB")  # fmt: skip
        yield Figure(name, end, "MB", warm, f"ratio<{GROWTH_GOAL}",
                     bool(warm) and end / warm < GROWTH_GOAL)  # fmt: skip
    failed = tally.failed()
    yield Figure("soak_failed_requests", failed, "requests", tally.total(), "0", failed == 0)
    bad = sum(problems.values())
    yield Figure("soak_lost_or_duplicated", bad, "items", run.checked, "0", bad == 0)


def run() -> Iterator[Figure]:
    plan = Plan.from_env(os.environ)
    note(f"soak: {plan.minutes:g} min, {plan.webhook_rate:g} webhooks/s, {plan.page_rate:g} page "
         f"views/s, {plan.new_rate:g} newcomers/s, one day every {plan.day_every:g} s, load "
         f"average {load_average():.1f} at start")  # fmt: skip
    logs = Path(tempfile.mkdtemp(prefix="kizuna-soak-"))
    state, tally = Run(), Tally()
    try:
        counts = soak(plan, logs, state, tally)
    except BaseException:
        for what, n in sorted(tally.errors.items()):
            note(f"error: {what} × {n}")
        note(f"the soak stopped; process logs kept in {logs}")
        raise
    figures = list(report(plan, state, tally, counts))
    if all(f.ok for f in figures) and not any("logged exception" in k for k in counts):
        shutil.rmtree(logs, ignore_errors=True)
    else:
        note(f"process logs kept in {logs}")
    yield from figures


def main() -> int:
    for figure in run():
        print(figure.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
