"""The soak's load: signed webhooks built from Shopify's samples, page views, the moving clock.

Every request is made over HTTP against the running processes, as Shopify and the admin make
them. :class:`Tally` counts what was sent and how it was answered; :class:`Sent` remembers
every order and fulfilment answered 200, so the soak can check at the end that each one is in
the profiles.

Webhooks (:class:`WebhookLoad`) come at a steady rate from a pacing thread feeding a thread
pool, each with a fresh ``X-Shopify-Webhook-Id``:

- ``orders/create`` — Shopify's sample order (cancelled and a test order in the sample: made a
  paid, live one) for a customer the devstore holds, with a fresh order id and line item ids;
- ``fulfillments/create`` — the sample fulfilment of an order sent a few seconds earlier (every
  newcomer's first order, a share of the others);
- ``orders/updated`` — a recent order again, later;
- ``customers/update`` — the sample customer as one of the shop's customers, a new note.

Newcomers (customers created on the devstore, which sends its own ``customers/create``) place
a first order that is then fulfilled: that starts the first-order series, whose steps fall due
as :class:`ClockMover` moves the development clock a day at a time.
"""

from __future__ import annotations

import copy
import json
import random
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.harness import ROOT

SAMPLES = ROOT.parent / "shared" / "shopify" / "webhooks"
API_VERSION = "2026-07"
#: Order and fulfilment ids the soak makes up: far above the devstore's own counter.
FIRST_ORDER_ID = 8_800_000_000_000
FIRST_FULFILLMENT_ID = 8_900_000_000_000
#: An order is fulfilled no sooner than this after it was sent (real seconds).
FULFIL_AFTER = 3.0
MAX_IN_FLIGHT = 32
TIMEOUT = (5, 30)


@dataclass(frozen=True)
class Customer:
    id: int
    email: str
    first_name: str
    last_name: str


def load_samples(folder: Path = SAMPLES) -> dict[str, dict[str, Any]]:
    """Shopify's sample payloads the soak sends (a clear error when they are absent)."""
    names = {
        "orders/create": "orders_create.json",
        "customers/update": "customers_update.json",
        "fulfillments/create": "fulfillments_create.json",
    }
    out = {}
    for topic, name in names.items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"the soak sends Shopify's sample webhooks: {path} is missing")
        out[topic] = json.loads(path.read_text(encoding="utf-8"))
    return out


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def order_body(
    sample: dict[str, Any],
    shop: str,
    order_id: int,
    customer: Customer,
    created: datetime,
    updated: datetime | None = None,
) -> dict[str, Any]:
    """The sample order as a live, paid order of ``customer`` on ``shop``."""
    o = copy.deepcopy(sample)
    stamp = iso(created)
    number = order_id - FIRST_ORDER_ID + 1
    token = secrets.token_hex(16)
    o.update(
        id=order_id,
        admin_graphql_api_id=f"gid://shopify/Order/{order_id}",
        name=f"#S{number}",
        number=number,
        order_number=1000 + number,
        confirmation_number=token[:9].upper(),
        token=token,
        created_at=stamp,
        updated_at=iso(updated or created),
        processed_at=stamp,
        cancelled_at=None,
        cancel_reason=None,
        closed_at=None,
        financial_status="paid",
        fulfillment_status=None,
        test=False,
        email=customer.email,
        contact_email=customer.email,
        order_status_url=f"https://{shop}/548380009/orders/{token}/authenticate?key={token[:7]}",
    )
    o["customer"] = as_customer(o.get("customer") or {}, customer)
    for i, line in enumerate(o.get("line_items") or []):
        line["id"] = order_id * 10 + i
        line["admin_graphql_api_id"] = f"gid://shopify/LineItem/{order_id * 10 + i}"
    return o


def customer_body(
    sample: dict[str, Any], customer: Customer, at: datetime, n: int
) -> dict[str, Any]:
    """The sample ``customers/update`` as ``customer`` (consent left out: unchanged)."""
    c = as_customer(copy.deepcopy(sample), customer)
    c.update(note=f"soak note {n}", updated_at=iso(at))
    return c


def as_customer(c: dict[str, Any], customer: Customer) -> dict[str, Any]:
    """A sample's customer object ``c`` made into ``customer`` (ids, email, names), in place."""
    c.update(
        id=customer.id,
        admin_graphql_api_id=f"gid://shopify/Customer/{customer.id}",
        email=customer.email,
        first_name=customer.first_name,
        last_name=customer.last_name,
    )
    if isinstance(c.get("default_address"), dict):
        c["default_address"]["customer_id"] = customer.id
    return c


def fulfillment_body(
    sample: dict[str, Any], fulfillment_id: int, order_id: int, email: str, at: datetime
) -> dict[str, Any]:
    f = copy.deepcopy(sample)
    f.update(
        id=fulfillment_id,
        admin_graphql_api_id=f"gid://shopify/Fulfillment/{fulfillment_id}",
        order_id=order_id,
        status="success",
        created_at=iso(at),
        updated_at=iso(at),
        email=email,
    )
    return f


@dataclass
class Tally:
    """What was sent and how it was answered, by kind (thread-safe)."""

    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, ok: bool, error: str | None, ms: float) -> None:
        with self.lock:
            self.sent[kind] += 1
            if ok:
                self.ok[kind] += 1
            else:
                self.errors[f"{kind}: {error}"] += 1
            self.latencies.setdefault(kind, []).append(ms)

    def failed(self) -> int:
        with self.lock:
            return sum(self.errors.values())

    def total(self) -> int:
        with self.lock:
            return sum(self.sent.values())


@dataclass
class Sent:
    """Every order and fulfilment the app answered 200 for: checked against the profiles."""

    orders: dict[int, int] = field(default_factory=dict)  # order id → customer id
    fulfilled: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def timed_request(
    session: requests.Session, tally: Tally, kind: str, method: str, url: str, **kw: Any
) -> requests.Response | None:
    """One request, counted: ``None`` when it failed (any non-2xx answer or no answer)."""
    started = time.perf_counter()
    try:
        response = session.request(method, url, timeout=TIMEOUT, **kw)
    except requests.RequestException as exc:
        # The innermost cause names what happened (a reset, a refused connection, a timeout).
        cause: BaseException = exc
        for _ in range(10):  # bounded: a chain may loop
            if cause.__context__ is None:
                break
            cause = cause.__context__
        error = f"{type(exc).__name__} ({type(cause).__name__}: {str(cause)[:80]})"
        tally.record(kind, False, error, (time.perf_counter() - started) * 1000)
        return None
    ms = (time.perf_counter() - started) * 1000
    good = 200 <= response.status_code < 300
    tally.record(kind, good, None if good else f"HTTP {response.status_code}", ms)
    return response if good else None


class DevTime:
    """The development clock as the devstore reports it (offset kept locally, updated on
    every move), so payload timestamps follow the time the workers see."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def seen(self, devstore_now: str) -> None:
        self.offset = datetime.fromisoformat(devstore_now) - datetime.now(UTC)


@dataclass
class Target:
    """Where the load goes and how it signs."""

    app: str  # the web app's base URL
    devstore: str  # the devstore's base URL
    shop: str
    secret: str
    routes: dict[str, str]  # topic → path


class WebhookLoad(threading.Thread):
    """Signed webhooks at ``rate`` per second until ``stop``; newcomers at ``new_rate``."""

    MIX = (("orders/create", 0.45), ("fulfillments/create", 0.15), ("orders/updated", 0.10),
           ("customers/update", 0.30))  # fmt: skip

    def __init__(
        self, target: Target, known: list[Customer], clock: DevTime, tally: Tally, sent: Sent,
        *, rate: float, new_rate: float, stop: threading.Event, seed: int = 7,
    ) -> None:  # fmt: skip
        super().__init__(name="soak-webhooks", daemon=True)
        from webhooks.verify import sign

        self.sign: Callable[[str, bytes], str] = sign
        self.target, self.known, self.clock = target, known, clock
        self.tally, self.sent, self.stop_event = tally, sent, stop
        self.rate, self.new_rate = rate, new_rate
        self.samples = load_samples()
        self.rng = random.Random(seed)
        self.next_order = FIRST_ORDER_ID
        self.next_fulfillment = FIRST_FULFILLMENT_ID
        self.newcomers = 0
        self.first_orders: deque[tuple[float, int, str]] = deque()  # (sent at, order, email)
        self.to_fulfil: deque[tuple[float, int, str]] = deque(maxlen=5_000)
        self.recent: deque[tuple[int, Customer, datetime]] = deque(maxlen=2_000)
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.local = threading.local()
        self.ids_lock = threading.Lock()
        self.stalled = 0.0  # seconds the pacer waited for a free slot (server slower than rate)
        self.reset = 0  # times the pacer fell more than a second behind and started again

    # -- pacing -------------------------------------------------------------------------------

    def run(self) -> None:
        interval, new_interval = 1 / self.rate, 1 / self.new_rate if self.new_rate else 0.0
        with ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="soak-post") as pool:
            next_at = next_new = time.monotonic()
            while not self.stop_event.is_set():
                now = time.monotonic()
                if new_interval and now >= next_new:
                    next_new += new_interval
                    self._submit(pool, self._newcomer)
                    continue
                if now < next_at:
                    self.stop_event.wait(min(next_at, next_new if new_interval else next_at) - now)
                    continue
                if now - next_at > 1.0:
                    next_at, self.reset = now, self.reset + 1
                next_at += interval
                self._submit(pool, self._one)
            pool.shutdown(wait=True)

    def _submit(self, pool: ThreadPoolExecutor, task: Callable[[], None]) -> None:
        started = time.monotonic()
        self.slots.acquire()
        self.stalled += time.monotonic() - started

        def run() -> None:
            try:
                task()
            finally:
                self.slots.release()

        pool.submit(run)

    # -- what each slot sends -----------------------------------------------------------------

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        session: requests.Session = self.local.session
        return session

    def _order_id(self) -> int:
        with self.ids_lock:
            self.next_order += 1
            return self.next_order

    def _fulfillment_id(self) -> int:
        with self.ids_lock:
            self.next_fulfillment += 1
            return self.next_fulfillment

    def _one(self) -> None:
        r, topic = self.rng.random(), self.MIX[-1][0]
        for name, share in self.MIX:
            r -= share
            if r < 0:
                topic = name
                break
        if topic == "fulfillments/create" and self._fulfil():
            return
        if topic == "orders/updated" and self.recent:
            order_id, customer, created = self.rng.choice(list(self.recent)[-500:])
            self._order(customer, order_id, created, topic="orders/updated")
            return
        customer = self.rng.choice(self.known)
        if topic == "customers/update":
            body = customer_body(
                self.samples["customers/update"],
                customer,
                self.clock.now(),
                self.rng.randrange(10**9),
            )
            self.post("customers/update", body)
            return
        self._order(customer, self._order_id())

    def _order(
        self,
        customer: Customer,
        order_id: int,
        created: datetime | None = None,
        topic: str = "orders/create",
    ) -> bool:
        now = self.clock.now()
        body = order_body(
            self.samples["orders/create"], self.target.shop, order_id, customer, created or now, now
        )
        if not self.post(topic, body):
            return False
        with self.sent.lock:
            self.sent.orders[order_id] = customer.id
        if topic == "orders/create":
            self.recent.append((order_id, customer, now))
            if self.rng.random() < 0.4:
                self.to_fulfil.append((time.monotonic(), order_id, customer.email))
        return True

    def _fulfil(self) -> bool:
        """Fulfil a first order (always) or another one sent a few seconds ago; False if none
        is old enough."""
        now = time.monotonic()
        for pending in (self.first_orders, self.to_fulfil):
            try:
                at, order_id, email = pending.popleft()
            except IndexError:
                continue
            if now - at < FULFIL_AFTER:
                pending.appendleft((at, order_id, email))
                continue
            body = fulfillment_body(
                self.samples["fulfillments/create"], self._fulfillment_id(), order_id, email,
                self.clock.now(),
            )  # fmt: skip
            if self.post("fulfillments/create", body):
                with self.sent.lock:
                    self.sent.fulfilled.add(order_id)
            return True
        return False

    def _newcomer(self) -> None:
        """A new customer on Shopify's side (the devstore sends its ``customers/create``), then
        their first order."""
        with self.ids_lock:
            self.newcomers += 1
            n = self.newcomers
        answer = timed_request(
            self._session(), self.tally, "devstore customer", "POST",
            f"{self.target.devstore}/_devstore/shops/{self.target.shop}/customers",
            json={"email": f"soak{n}@example.com", "first_name": "新規", "last_name": f"客{n}",
                  "email_marketing_consent": {"state": "subscribed",
                                              "opt_in_level": "single_opt_in"}},
        )  # fmt: skip
        if answer is None:
            return
        customer = Customer(int(answer.json()["id"]), f"soak{n}@example.com", "新規", f"客{n}")
        order_id = self._order_id()
        if self._order(customer, order_id):
            self.first_orders.append((time.monotonic(), order_id, customer.email))
            self.known.append(customer)

    def post(self, topic: str, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": self.sign(self.target.secret, body),
            "X-Shopify-Shop-Domain": self.target.shop,
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": iso(self.clock.now()),
        }
        url = self.target.app + self.target.routes[topic]
        kind = f"webhook {topic}"
        return timed_request(self._session(), self.tally, kind, "POST", url, data=body,
                             headers=headers) is not None  # fmt: skip


class PageLoad(threading.Thread):
    """The embedded page's API calls, each with a fresh ID token, ``rate`` per second."""

    def __init__(
        self, target: Target, api_key: str, known: list[Customer], tally: Tally,
        *, rate: float, stop: threading.Event,
    ) -> None:  # fmt: skip
        super().__init__(name="soak-pages", daemon=True)
        self.target, self.api_key, self.known, self.tally = target, api_key, known, tally
        self.rate, self.stop_event = rate, stop
        self.rng = random.Random(11)

    def pick(self) -> Customer:
        return self.rng.choice(self.known)

    def token(self) -> str:
        from devstore.idtoken import mint

        # The web app runs in production mode on the machine's clock, as App Bridge's is.
        return mint(self.target.shop, api_key=self.api_key, api_secret=self.target.secret,
                    now=datetime.now(UTC))  # fmt: skip

    def run(self) -> None:
        paths: list[tuple[str, Callable[[], str]]] = [
            ("page /api/customers", lambda: "/api/customers"),
            (
                "page /api/customers/<id>",
                lambda: f"/api/customers/{self.rng.choice(self.known).id}",
            ),
            ("page /api/analytics", lambda: "/api/analytics"),
            ("page /api/sequences", lambda: "/api/sequences"),
            ("page /api/customers?segment", lambda: "/api/customers?segment=repeat"),
        ]
        session = requests.Session()
        next_at, n = time.monotonic(), 0
        while not self.stop_event.is_set():
            wait = next_at - time.monotonic()
            if wait > 0:
                self.stop_event.wait(wait)
                continue
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1.0)
            kind, path = paths[n % len(paths)]
            n += 1
            headers = {"Authorization": f"Bearer {self.token()}"}
            timed_request(session, self.tally, kind, "GET", self.target.app + path(),
                          headers=headers)  # fmt: skip


class ClockMover(threading.Thread):
    """Moves the development clock by ``step`` every ``every`` seconds through the devstore."""

    def __init__(
        self, target: Target, clock: DevTime, tally: Tally,
        *, every: float, step: str, stop: threading.Event,
    ) -> None:  # fmt: skip
        super().__init__(name="soak-clock", daemon=True)
        self.target, self.clock, self.tally = target, clock, tally
        self.every, self.step, self.stop_event = every, step, stop
        self.moves = 0

    def run(self) -> None:
        session = requests.Session()
        while not self.stop_event.wait(self.every):
            answer = timed_request(session, self.tally, "devstore clock", "POST",
                                   f"{self.target.devstore}/_devstore/clock",
                                   json={"advance": self.step})  # fmt: skip
            if answer is not None:
                self.clock.seen(answer.json()["now"])
                self.moves += 1
