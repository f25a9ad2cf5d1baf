"""The one Shopify Admin GraphQL client of the app.

Every call names its shop and its access token; the client keeps no per-shop session, so one
shop's token can never ride along on another shop's request. What it does for every call:

- sends a named document from :mod:`plugin.graphql` over a pooled ``requests.Session`` with a
  connect and a read timeout, no redirects followed (a redirect would carry the token along)
  and no cookies kept;
- **paces** itself per shop with a :class:`CostBudget` fed by ``extensions.cost.throttleStatus``:
  before sending, it waits until the shop's leaky bucket holds the query's expected cost, so
  Shopify rarely has to answer ``THROTTLED``;
- **retries** a bounded number of times on ``THROTTLED`` (waiting for the points it needs), on
  429 (honouring a possibly fractional ``Retry-After``), on 5xx and on connection failures and
  timeouts (exponential backoff with full jitter, :func:`crm.backoff.compute_backoff`);
- **reads every 200**: top-level ``errors`` raise :class:`GraphQLErrors`, a non-empty
  ``userErrors`` in any mutation payload raises :class:`UserErrors` (never retried), 401/403
  raise :class:`Unauthorized`, 402/404/423 raise :class:`ShopUnavailable`.

Two budgets: :class:`LocalBudget` (threads of one process) and :class:`RedisBudget` (every
process and machine pacing one shop together, state under ``kizuna:{shop}:budget``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Protocol

import redis
import requests
from requests.adapters import HTTPAdapter

from crm.backoff import compute_backoff
from crm.errors import (
    GraphQLErrors,
    PermanentShopifyError,
    ServerError,
    ShopifyError,
    ShopUnavailable,
    Throttled,
    Unauthorized,
    UserErrors,
)

from .graphql import DOCUMENTS, Document
from .settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "kizuna/0.1 (+admin_client)"
#: Assumed cost of a document never sent before (Shopify's requested costs for our documents
#: run from 1 to about 900; most mutations cost 10-20).
DEFAULT_COST = 50.0
#: Until a shop's first answer shows its real bucket, one request goes at a time: the budget
#: starts as a bucket holding just that request's cost and refilling at this many points/s.
PROBE_RESTORE_RATE = 50.0
#: A reservation not settled within this many seconds (a crashed worker) stops counting.
RESERVATION_TTL = 60.0

# --- the cost budget ------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleStatus:
    """``extensions.cost.throttleStatus`` of one response."""

    maximum: float
    available: float
    restore_rate: float

    @classmethod
    def from_extensions(cls, body: Mapping[str, Any]) -> ThrottleStatus | None:
        try:
            status = body["extensions"]["cost"]["throttleStatus"]
            return cls(
                maximum=float(status["maximumAvailable"]),
                available=float(status["currentlyAvailable"]),
                restore_rate=float(status["restoreRate"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class CostBudget(Protocol):
    """What the client knows of each shop's leaky bucket.

    ``reserve`` either takes ``cost`` points from the estimated bucket for reservation ``rid``
    and answers 0, or takes nothing and answers how many seconds to wait before asking again.
    ``observe`` settles reservation ``rid`` with the status Shopify reported; ``release``
    drops a reservation whose request got no cost report (429, 5xx, a network error) and gives
    its points back: Shopify most likely did not count it, and if it did, the next report
    corrects the estimate.
    ``now`` is a wall-clock time in seconds, shared by all processes pacing one shop.
    """

    def reserve(self, shop: str, rid: str, cost: float, now: float) -> float: ...

    def observe(self, shop: str, rid: str, status: ThrottleStatus, now: float) -> None: ...

    def release(self, shop: str, rid: str, now: float) -> None: ...


@dataclass
class _Bucket:
    available: float
    maximum: float
    rate: float
    at: float
    pending: dict[str, tuple[float, float]]  # rid -> (cost, expires)


class LocalBudget:
    """The budget of one process (any number of threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def reserve(self, shop: str, rid: str, cost: float, now: float) -> float:
        with self._lock:
            b = self._buckets.get(shop)
            if b is None:
                b = self._buckets[shop] = _Bucket(cost, cost, PROBE_RESTORE_RATE, now, {})
            b.pending = {k: v for k, v in b.pending.items() if v[1] > now}
            estimate = min(b.maximum, b.available + max(0.0, now - b.at) * b.rate)
            need = min(cost, b.maximum)
            if estimate >= need:
                b.available, b.at = estimate - need, now
                b.pending[rid] = (need, now + RESERVATION_TTL)
                return 0.0
            return (need - estimate) / b.rate

    def observe(self, shop: str, rid: str, status: ThrottleStatus, now: float) -> None:
        with self._lock:
            b = self._buckets.get(shop)
            if b is None:
                b = self._buckets[shop] = _Bucket(0.0, 0.0, 1.0, now, {})
            b.pending.pop(rid, None)
            b.pending = {k: v for k, v in b.pending.items() if v[1] > now}
            # Requests still in flight may not be counted in Shopify's figure yet: keep them
            # reserved (an overestimate of what is spent when they were counted already).
            in_flight = sum(c for c, _ in b.pending.values())
            b.available = status.available - in_flight
            b.maximum, b.rate, b.at = status.maximum, max(status.restore_rate, 1e-6), now

    def release(self, shop: str, rid: str, now: float) -> None:
        with self._lock:
            b = self._buckets.get(shop)
            if b is not None and rid in b.pending:
                cost, _ = b.pending.pop(rid)
                b.available = min(b.maximum, b.available + cost)


# The same algorithm as LocalBudget, atomically in Redis. Numbers come back as strings: Redis
# would truncate a Lua number to an integer.
_RESERVE = """
local key, pend = KEYS[1], KEYS[2]
local rid, cost, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, probe_rate = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', pend, '-inf', now)
local s = redis.call('HMGET', key, 'available', 'maximum', 'rate', 'at')
local available, maximum, rate, at = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
if not available then
  available, maximum, rate, at = cost, cost, probe_rate, now
end
local elapsed = now - at
if elapsed < 0 then elapsed = 0 end
local estimate = math.min(maximum, available + elapsed * rate)
local need = math.min(cost, maximum)
if estimate >= need then
  redis.call('HSET', key, 'available', tostring(estimate - need), 'maximum', tostring(maximum),
             'rate', tostring(rate), 'at', tostring(now))
  redis.call('ZADD', pend, now + ttl, rid .. '|' .. tostring(need))
  redis.call('EXPIRE', key, 3600)
  redis.call('EXPIRE', pend, 3600)
  return '0'
end
return tostring((need - estimate) / rate)
"""

_OBSERVE = """
local key, pend = KEYS[1], KEYS[2]
local rid, now = ARGV[1], tonumber(ARGV[2])
local available, maximum, rate = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', pend, '-inf', now)
local in_flight = 0
for _, member in ipairs(redis.call('ZRANGE', pend, 0, -1)) do
  local id, c = string.match(member, '^(.*)|([^|]+)$')
  if id == rid then
    redis.call('ZREM', pend, member)
  else
    in_flight = in_flight + tonumber(c)
  end
end
if rate < 0.000001 then rate = 0.000001 end
redis.call('HSET', key, 'available', tostring(available - in_flight), 'maximum',
           tostring(maximum), 'rate', tostring(rate), 'at', tostring(now))
redis.call('EXPIRE', key, 3600)
return 'ok'
"""

_RELEASE = """
local key, pend, rid = KEYS[1], KEYS[2], ARGV[1]
for _, member in ipairs(redis.call('ZRANGE', pend, 0, -1)) do
  local id, c = string.match(member, '^(.*)|([^|]+)$')
  if id == rid then
    redis.call('ZREM', pend, member)
    local s = redis.call('HMGET', key, 'available', 'maximum')
    if s[1] then
      local available = math.min(tonumber(s[2]), tonumber(s[1]) + tonumber(c))
      redis.call('HSET', key, 'available', tostring(available))
    end
  end
end
return 'ok'
"""


class RedisBudget:
    """The budget shared by every process using one Redis (web, workers, on any machine).

    Per shop: a hash ``kizuna:{shop}:budget`` (available, maximum, rate, at) and a sorted set
    ``kizuna:{shop}:budget:pending`` of reservations in flight. Times are the callers' wall
    clocks, so the machines must keep them in step (NTP is plenty: a restore rate of 100
    points/s makes 10 ms of skew worth one point).
    """

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self._reserve = conn.register_script(_RESERVE)
        self._observe = conn.register_script(_OBSERVE)
        self._release = conn.register_script(_RELEASE)

    @staticmethod
    def keys(shop: str) -> list[str]:
        return [f"kizuna:{shop}:budget", f"kizuna:{shop}:budget:pending"]

    def reserve(self, shop: str, rid: str, cost: float, now: float) -> float:
        args = [rid, repr(cost), repr(now), repr(RESERVATION_TTL), repr(PROBE_RESTORE_RATE)]
        return float(self._reserve(keys=self.keys(shop), args=args))

    def observe(self, shop: str, rid: str, status: ThrottleStatus, now: float) -> None:
        args = [rid, repr(now), repr(status.available), repr(status.maximum)]
        self._observe(keys=self.keys(shop), args=[*args, repr(status.restore_rate)])

    def release(self, shop: str, rid: str, now: float) -> None:
        self._release(keys=self.keys(shop), args=[rid])


# --- the client -------------------------------------------------------------------------------


@dataclass
class CallStats:
    """Counters for one client (read by tests and by the logs)."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    paced_seconds: float = 0.0


class AdminClient:
    """Calls the Admin GraphQL API of any shop; thread-safe, one per process.

    ``settings`` gives the endpoint (``settings.admin_graphql_url(shop)``); a plain callable
    ``shop -> url`` works too. ``sleep``, ``timer`` (wall seconds, for the budget) and ``rand``
    (for jitter) are injected so tests can watch them; the budget deliberately does not use the
    app's movable :class:`~plugin.clock.Clock`, because Shopify's bucket leaks in real time.
    """

    def __init__(
        self,
        settings: Settings | Callable[[str], str],
        *,
        session: requests.Session | None = None,
        budget: CostBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timer: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        connect_timeout: float = 3.0,
        read_timeout: float = 20.0,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_pacing_wait: float = 120.0,
        pool_size: int = 20,
    ) -> None:
        self._url = settings.admin_graphql_url if isinstance(settings, Settings) else settings
        self.session = session or _new_session(pool_size)
        self.budget: CostBudget = budget if budget is not None else LocalBudget()
        self.sleep, self.timer, self.rand = sleep, timer, rand
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.max_pacing_wait = max_pacing_wait
        self.stats = CallStats()
        self._costs: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AdminClient(attempts={self.max_attempts}, timeout={self.timeout})"

    # -- public API --

    def execute(
        self,
        shop: str,
        token: str,
        document: Document | str,
        variables: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run ``document`` for ``shop`` with ``token``; answer ``data``, or raise a
        :class:`~crm.errors.ShopifyError` (or :class:`~crm.errors.ShopUnavailable`)."""
        doc = _resolve(document)
        if not shop or not token:
            raise ValueError("shop and token are required")
        body = json.dumps(
            {"query": doc.text, "operationName": doc.name, "variables": dict(variables or {})}
        )
        url = self._url(shop)
        last: ShopifyError | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            rid = self._pace(shop, doc)
            try:
                response = self.session.post(
                    url,
                    data=body.encode(),
                    headers={
                        "X-Shopify-Access-Token": token,
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                        "User-Agent": USER_AGENT,
                    },
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                self.budget.release(shop, rid, self.timer())
                last = ServerError(
                    f"{doc.name}: {type(exc).__name__} talking to Shopify", shop=shop
                )
                self._backoff(shop, doc, attempt, last)
                continue
            finally:
                with self._lock:
                    self.stats.requests += 1
            outcome = self._read(shop, rid, doc, response)
            if isinstance(outcome, dict):
                return outcome
            last, wait = outcome
            if attempt + 1 >= self.max_attempts:
                break
            if wait is None:
                self._backoff(shop, doc, attempt, last)
            elif wait > 0:
                log.info("%s: %s, waiting %.2fs", doc.name, last, wait, extra={"shop": shop})
                self.sleep(wait)
        assert last is not None
        raise last

    def execute_mutation(
        self,
        shop: str,
        token: str,
        document: Document | str,
        variables: Mapping[str, Any] | None = None,
        payload_field: str | None = None,
    ) -> dict[str, Any]:
        """Run a mutation and answer its payload (``data[payload_field]``, or the only field).

        ``userErrors`` have been checked already (they raise :class:`UserErrors`); a null
        payload without errors is refused too.
        """
        doc = _resolve(document)
        data = self.execute(shop, token, doc, variables)
        if payload_field is None:
            if len(data) != 1:
                raise ValueError(f"{doc.name}: name the payload field, the answer has {list(data)}")
            payload_field = next(iter(data))
        payload = data.get(payload_field)
        if not isinstance(payload, dict):
            raise PermanentShopifyError(f"{doc.name}: no {payload_field} payload", shop=shop)
        return payload

    # -- internals --

    def _pace(self, shop: str, doc: Document) -> str:
        """Wait until the shop's budget covers the document's expected cost; answer the
        reservation id."""
        with self._lock:
            cost = self._costs.get(doc.name, DEFAULT_COST)
        rid = uuid.uuid4().hex
        waited = 0.0
        while True:
            wait = self.budget.reserve(shop, rid, cost, self.timer())
            if wait <= 0:
                break
            if waited >= self.max_pacing_wait:
                raise Throttled(
                    f"{doc.name}: cost budget still short after {waited:.0f}s", shop=shop
                )
            # A little slack (the bucket refills continuously); short slices, because another
            # request's answer may show more points than estimated (the first one does).
            wait = min(wait + 0.005, 0.25)
            self.sleep(wait)
            waited += wait
        if waited:
            with self._lock:
                self.stats.paced_seconds += waited
        return rid

    def _read(
        self, shop: str, rid: str, doc: Document, response: requests.Response
    ) -> dict[str, Any] | tuple[ShopifyError, float | None]:
        """Judge one HTTP answer: the data, or the error and how long to wait before the next
        attempt (``None``: back off exponentially). Permanent failures raise."""
        status = response.status_code
        if status != 200:
            self.budget.release(shop, rid, self.timer())
            if status in (401, 403):
                raise Unauthorized(
                    f"{doc.name}: Shopify refused the access token ({status})", shop=shop
                )
            if status in (402, 404, 423):
                raise ShopUnavailable(f"{shop}: shop unavailable (HTTP {status})")
            if status == 429:
                after = _retry_after(response.headers.get("Retry-After"), self.timer())
                with self._lock:
                    self.stats.throttled += 1
                return Throttled(f"{doc.name}: HTTP 429", shop=shop, retry_after=after), after
            if status >= 500:
                return ServerError(f"{doc.name}: HTTP {status}", shop=shop), None
            raise PermanentShopifyError(f"{doc.name}: unexpected HTTP {status}", shop=shop)
        try:
            body = response.json()
        except ValueError:
            self.budget.release(shop, rid, self.timer())
            return ServerError(f"{doc.name}: a 200 without JSON", shop=shop), None
        if not isinstance(body, dict):
            self.budget.release(shop, rid, self.timer())
            return ServerError(f"{doc.name}: a 200 without a JSON object", shop=shop), None
        self._note_cost(shop, rid, doc, body)
        errors = body.get("errors")
        if errors:
            errors = errors if isinstance(errors, list) else [{"message": str(errors)}]
            codes = {
                str((e.get("extensions") or {}).get("code")) for e in errors if isinstance(e, dict)
            }
            if "THROTTLED" in codes:
                with self._lock:
                    self.stats.throttled += 1
                # The budget now holds Shopify's figures: the next reserve waits for the points.
                known = ThrottleStatus.from_extensions(body) is not None
                return Throttled(f"{doc.name}: THROTTLED", shop=shop), 0.0 if known else None
            if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"}:
                return ServerError(f"{doc.name}: {_messages(errors)}", shop=shop), None
            raise GraphQLErrors(f"{doc.name}: {_messages(errors)}", shop=shop, errors=errors)
        data = body.get("data")
        if not isinstance(data, dict):
            raise GraphQLErrors(f"{doc.name}: the answer has no data", shop=shop)
        for field, payload in data.items():
            if isinstance(payload, dict) and payload.get("userErrors"):
                user_errors = list(payload["userErrors"])
                raise UserErrors(
                    f"{doc.name}: {field}: {_messages(user_errors)}",
                    shop=shop,
                    user_errors=user_errors,
                )
        return data

    def _note_cost(self, shop: str, rid: str, doc: Document, body: Mapping[str, Any]) -> None:
        status = ThrottleStatus.from_extensions(body)
        if status is None:
            self.budget.release(shop, rid, self.timer())
        else:
            self.budget.observe(shop, rid, status, self.timer())
        try:
            requested = float(body["extensions"]["cost"]["requestedQueryCost"])
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            self._costs[doc.name] = requested

    def _backoff(self, shop: str, doc: Document, attempt: int, error: ShopifyError) -> None:
        if attempt + 1 >= self.max_attempts:
            return
        delay = compute_backoff(
            attempt, base=self.backoff_base, cap=self.backoff_cap, jitter=1.0, rand=self.rand
        )
        log.warning("%s: %s, retry in %.2fs", doc.name, error, delay, extra={"shop": shop})
        self.sleep(delay)


def _new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # No client state across shops: Shopify's cookies are not kept.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = False  # no .netrc credentials, no proxy picked up by surprise
    return session


def _resolve(document: Document | str) -> Document:
    if isinstance(document, Document):
        return document
    try:
        return DOCUMENTS[document]
    except KeyError:
        raise ValueError(f"unknown GraphQL document {document!r} (see plugin/graphql/)") from None


def _retry_after(header: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: a (possibly fractional) number or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _messages(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        if isinstance(e, dict):
            field = e.get("field")
            where = ".".join(str(f) for f in field) + ": " if isinstance(field, list) else ""
            code = f" ({e['code']})" if e.get("code") else ""
            parts.append(f"{where}{e.get('message', '?')}{code}")
        else:
            parts.append(str(e))
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
