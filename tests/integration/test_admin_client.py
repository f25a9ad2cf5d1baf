"""The Admin client against a real local HTTP server answering like Shopify.

The server (``admin_shopify_server``) answers with bodies from the real captures in
``../shared/shopify/captures/``, keeps a real leaky bucket per shop (50 points, 100 points/s)
and plays injected faults. Where ``../shared`` is absent these tests skip and say so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from crm.errors import GraphQLErrors, ServerError, Throttled, Unauthorized, UserErrors
from plugin.admin_client import AdminClient, LocalBudget, RedisBudget, ThrottleStatus
from plugin.graphql import CUSTOMER_TAGS_ADD, DISCOUNT_CODE_BASIC_CREATE, SHOP_FACTS, Document
from plugin.settings import Settings
from tests.conftest import SHOPIFY_SHARED, shared_or_skip
from tests.integration.admin_shopify_server import Fault, ShopifyStandIn, load_canned

ALPHA, BETA = "alpha.myshopify.com", "beta.myshopify.com"
TOKENS = {ALPHA: "shpat_alpha_0123456789", BETA: "shpat_beta_9876543210"}
CUSTOMER = "gid://shopify/Customer/1001"


class Sleeps:
    """A real sleep that remembers every wait the client asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture()
def stand_in() -> Iterator[ShopifyStandIn]:
    captures = shared_or_skip(SHOPIFY_SHARED / "captures")
    server = ShopifyStandIn(canned=load_canned(captures), tokens=dict(TOKENS))
    yield server
    server.stop()


@pytest.fixture()
def origin_settings(stand_in: ShopifyStandIn, test_env: dict[str, str]) -> Settings:
    return Settings.from_env({**test_env, "KIZUNA_SHOPIFY_ORIGIN": stand_in.start()})


@pytest.fixture()
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(settings: Settings, sleeps: Sleeps, **kwargs: Any) -> AdminClient:
    options: dict[str, Any] = {
        "sleep": sleeps,
        "rand": lambda: 0.0,  # full jitter at rand()=0 waits the whole exponential delay
        "backoff_base": 0.01,
        "read_timeout": 2.0,
        **kwargs,
    }
    return AdminClient(settings, **options)


def tags_add(client: AdminClient, shop: str = ALPHA) -> dict[str, Any]:
    variables = {"id": CUSTOMER, "tags": ["kizuna:replenish:1"]}
    return client.execute(shop, TOKENS[shop], CUSTOMER_TAGS_ADD, variables)


# --- the happy path ---------------------------------------------------------------------------


def test_a_call_answers_data_and_learns_the_cost(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """A tagsAdd answers the captured payload; the requested cost (10 in the capture) is
    remembered for the next estimate."""
    client = make_client(origin_settings, sleeps)
    data = tags_add(client)
    assert data["tagsAdd"]["userErrors"] == []
    assert data["tagsAdd"]["node"]["id"].startswith("gid://shopify/")
    assert client._costs["CustomerTagsAdd"] == 10
    payload = client.execute_mutation(
        ALPHA, TOKENS[ALPHA], "CustomerTagsRemove", {"id": CUSTOMER, "tags": ["x"]}
    )
    assert payload["userErrors"] == [] and "node" in payload
    assert stand_in.outcomes() == ["ok", "ok"]


def test_an_unknown_document_name_is_refused_before_any_request(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """A document name that is no file in plugin/graphql raises ValueError; nothing is sent."""
    client = make_client(origin_settings, sleeps)
    with pytest.raises(ValueError, match="unknown GraphQL document"):
        client.execute(ALPHA, TOKENS[ALPHA], "DropAllCustomers", {})
    assert stand_in.outcomes() == []


# --- pacing -------------------------------------------------------------------------------------


def test_paces_under_a_small_bucket_without_a_single_throttle(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """40 tagsAdd (10 points each) from 4 threads against a 50-point bucket restoring 100/s:
    the client must wait for the points itself, so Shopify never answers THROTTLED and the run
    takes at least the (400 - 50) / 100 = 3.5 s the bucket imposes."""
    client = make_client(origin_settings, sleeps)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: tags_add(client), range(40)))
    elapsed = time.monotonic() - started
    assert len(results) == 40 and all(r["tagsAdd"]["userErrors"] == [] for r in results)
    assert stand_in.outcomes().count("throttled") == 0, stand_in.outcomes()
    assert stand_in.outcomes() == ["ok"] * 40
    assert client.stats.throttled == 0 and client.stats.paced_seconds > 0
    assert 3.5 * 0.95 <= elapsed < 10, elapsed


def test_the_redis_budget_paces_separate_clients_together(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps, conn: redis.Redis
) -> None:
    """Two clients (as in two worker processes: no memory shared, one Redis) send 15 tagsAdd
    each at once for one shop: with the shared budget neither overdraws the bucket, so the
    server never throttles; the state sits under kizuna:{shop}:budget."""
    clients = [make_client(origin_settings, sleeps, budget=RedisBudget(conn)) for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: tags_add(clients[i % 2]), range(30)))
    assert stand_in.outcomes() == ["ok"] * 30
    state = conn.hgetall(f"kizuna:{ALPHA}:budget")
    assert float(state[b"maximum"]) == 50.0 and float(state[b"rate"]) == 100.0
    assert conn.zcard(f"kizuna:{ALPHA}:budget:pending") == 0  # every reservation settled


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_both_budgets_do_the_same_arithmetic(kind: str, conn: redis.Redis) -> None:
    """The in-process and the Redis budget give the same answers for the same story: a first
    request goes alone (a probe), Shopify's figures replace the guess, in-flight reservations
    are kept, a released reservation gives its points back."""
    budget = LocalBudget() if kind == "local" else RedisBudget(conn)
    shop = "gamma.myshopify.com"
    assert budget.reserve(shop, "a", 10, now=100.0) == 0.0  # probe: goes
    assert budget.reserve(shop, "b", 10, now=100.0) == pytest.approx(10 / 50)  # waits
    budget.observe(shop, "a", ThrottleStatus(maximum=50, available=40, restore_rate=100), 100.0)
    assert budget.reserve(shop, "b", 30, now=100.0) == 0.0  # 40 available
    assert budget.reserve(shop, "c", 20, now=100.0) == pytest.approx(10 / 100)  # 10 left
    assert budget.reserve(shop, "c", 20, now=100.2) == 0.0  # 10 + 0.2 s x 100, 10 left
    # Shopify reports 40 after "b"; "c" (20) is still in flight, so 20 remain.
    budget.observe(shop, "b", ThrottleStatus(maximum=50, available=40, restore_rate=100), 100.2)
    assert budget.reserve(shop, "d", 25, now=100.2) == pytest.approx(5 / 100)
    budget.release(shop, "c", now=100.2)  # "c" failed before Shopify counted it: 40 again
    assert budget.reserve(shop, "d", 25, now=100.2) == 0.0
    assert budget.reserve(shop, "e", 500, now=100.2) == pytest.approx((50 - 15) / 100)


def test_a_throttled_answer_is_waited_out_not_surfaced(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """When Shopify's bucket is emptier than the client believes (another app of the same
    shop spent it), the THROTTLED answer is not raised: the client waits the points it needs
    at the reported restore rate and retries once."""
    client = make_client(origin_settings, sleeps)
    tags_add(client)
    stand_in.buckets[ALPHA].available = 0.0  # spent behind the client's back
    stand_in.buckets[ALPHA].at = time.monotonic()
    data = tags_add(client)
    assert data["tagsAdd"]["userErrors"] == []
    assert stand_in.outcomes() == ["ok", "throttled", "ok"]
    assert client.stats.throttled == 1
    assert 0.05 <= sum(sleeps.waits) < 1.0, sleeps.waits  # about 10 points / 100 per s


# --- transient failures -------------------------------------------------------------------------


def test_a_429_is_retried_after_its_fractional_retry_after(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """A 429 with Retry-After: 0.35 is waited 0.35 s (not rounded, not the backoff), then
    retried; the caller sees the data."""
    stand_in.inject(ALPHA, Fault("status", 429, (("Retry-After", "0.35"),)))
    client = make_client(origin_settings, sleeps)
    tags_add(client)
    assert stand_in.outcomes() == ["status:429", "ok"]
    assert sleeps.waits == [0.35]


def test_5xx_answers_are_retried_with_exponential_backoff(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """500, 502 and 503 in a row are retried after 0.01, 0.02, 0.04 s (base 0.01, doubling);
    the fourth request succeeds."""
    stand_in.inject(ALPHA, Fault("status", 500), Fault("status", 502), Fault("status", 503))
    client = make_client(origin_settings, sleeps)
    assert tags_add(client)["tagsAdd"]["userErrors"] == []
    assert stand_in.outcomes() == ["status:500", "status:502", "status:503", "ok"]
    assert sleeps.waits == [0.01, 0.02, 0.04]


def test_timeouts_and_dropped_connections_are_retried(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """An answer slower than the read timeout and a connection closed without an answer are
    both retried; the third request succeeds and the slow one does not block the caller
    for its full second."""
    stand_in.inject(ALPHA, Fault("slow", seconds=1.0), Fault("drop"))
    client = make_client(origin_settings, sleeps, read_timeout=0.3)
    started = time.monotonic()
    assert tags_add(client)["tagsAdd"]["userErrors"] == []
    assert time.monotonic() - started < 0.9
    assert client.stats.requests == 3
    assert stand_in.outcomes()[1:] == ["drop:0", "ok"]


def test_persistent_5xx_gives_up_after_the_bounded_attempts(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """Ten 503s in a row with max_attempts=4: exactly 4 requests, then ServerError (transient,
    so RQ may retry the job later); no endless loop."""
    stand_in.inject(ALPHA, *[Fault("status", 503)] * 10)
    client = make_client(origin_settings, sleeps, max_attempts=4)
    with pytest.raises(ServerError) as caught:
        tags_add(client)
    assert caught.value.transient and caught.value.shop == ALPHA
    assert stand_in.outcomes() == ["status:503"] * 4


def test_persistent_429_raises_throttled_with_retry_after(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """429s every time: after 3 attempts, Throttled carrying the last Retry-After."""
    stand_in.inject(ALPHA, *[Fault("status", 429, (("Retry-After", "0.05"),))] * 5)
    client = make_client(origin_settings, sleeps, max_attempts=3)
    with pytest.raises(Throttled) as caught:
        tags_add(client)
    assert caught.value.retry_after == 0.05
    assert stand_in.outcomes() == ["status:429"] * 3


# --- permanent failures ------------------------------------------------------------------------


def test_user_errors_are_raised_and_never_retried(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """A discount with a blank code gets Shopify's userErrors (BLANK) inside a 200: UserErrors
    is raised after exactly one request; a retry would only fail the same way."""
    client = make_client(origin_settings, sleeps)
    discount = {"title": "Birthday", "code": "", "startsAt": "2026-07-01T00:00:00Z"}
    with pytest.raises(UserErrors) as caught:
        client.execute_mutation(
            ALPHA, TOKENS[ALPHA], DISCOUNT_CODE_BASIC_CREATE, {"basicCodeDiscount": discount}
        )
    assert caught.value.codes == ["BLANK"]
    assert "Code can't be blank" in str(caught.value)
    assert not caught.value.transient
    assert stand_in.outcomes() == ["user_errors"]
    assert sleeps.waits == []


def test_graphql_errors_are_permanent(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """A document Shopify rejects (undefinedField) raises GraphQLErrors with the errors
    attached, after one request."""
    broken = Document(name="Broken", kind="query", text="query Broken { shop { nmae } }")
    client = make_client(origin_settings, sleeps)
    with pytest.raises(GraphQLErrors) as caught:
        client.execute(ALPHA, TOKENS[ALPHA], broken, {})
    assert caught.value.errors[0]["extensions"]["code"] == "undefinedField"
    assert stand_in.outcomes() == ["errors"]


def test_a_refused_token_is_unauthorized_and_never_shown(
    origin_settings: Settings,
    stand_in: ShopifyStandIn,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong token gets 401: Unauthorized after one request, and the token appears neither
    in the exception nor in any log record."""
    secret = "shpat_wrong_secret_value"
    client = make_client(origin_settings, sleeps)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unauthorized) as caught:
        client.execute(ALPHA, secret, SHOP_FACTS)
    assert stand_in.outcomes() == ["unauthorized"]
    assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert secret not in caplog.text and secret not in repr(client)


# --- two shops ----------------------------------------------------------------------------------


def test_two_shops_at_once_never_cross_tokens(
    origin_settings: Settings, stand_in: ShopifyStandIn, sleeps: Sleeps
) -> None:
    """8 threads share one client and call alpha and beta at once (with retries on alpha):
    every request for a shop carries that shop's token, and each answer is that shop's data."""
    stand_in.inject(ALPHA, Fault("status", 503), Fault("status", 502))
    client = make_client(origin_settings, sleeps)

    def facts(i: int) -> tuple[str, str]:
        shop = (ALPHA, BETA)[i % 2]
        return shop, client.execute(shop, TOKENS[shop], SHOP_FACTS)["shop"]["myshopifyDomain"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(facts, range(60)))
    assert all(asked == answered for asked, answered in answers)
    assert len(stand_in.seen) == 62
    assert {(s.shop, s.token) for s in stand_in.seen} == set(TOKENS.items())
    assert "unauthorized" not in stand_in.outcomes()
