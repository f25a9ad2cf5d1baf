"""The devstore's webhook sender, over real HTTP: signatures, headers, retries, faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from shopify_app import ShopifyApp

from devstore import webhooks_out
from tests.conftest import SHOPIFY_SHARED, shared_or_skip

API_KEY = "edge-test-client-id"
SECRET = "shpss_" + "5ec7e7" * 6  # as long as a real client secret


@pytest.fixture()
def shop(devstore, webhook_sink):
    shop = devstore.create_shop("edges.myshopify.com", currency="JPY", timezone="Asia/Tokyo")
    devstore.install(shop, webhook_sink.url, API_KEY, SECRET)
    return shop


def published_hmac(body: bytes, secret: str) -> str:
    """Shopify's documented algorithm: base64(HMAC-SHA256(secret, raw body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def test_shop_redact_verifies_and_has_the_keys_of_shopifys_sample(devstore, webhook_sink, shop):
    """Uninstall fires app/uninstalled now and shop/redact 48 h later (on the clock); both
    verify with the published HMAC algorithm and with shopify_app's verifier, and shop/redact's
    body has exactly the keys of Shopify's sample payload."""
    sample = json.loads(
        shared_or_skip(SHOPIFY_SHARED / "webhooks" / "shop_redact.json").read_text()
    )
    devstore.uninstall(shop)
    devstore.flush_webhooks()
    assert webhook_sink.topics() == ["app/uninstalled"]
    devstore.advance("P1DT23H")
    devstore.flush_webhooks()
    assert webhook_sink.topics() == ["app/uninstalled"], "shop/redact came before 48 hours"
    devstore.advance("PT1H1S")
    devstore.flush_webhooks()
    assert webhook_sink.topics() == ["app/uninstalled", "shop/redact"]
    app = ShopifyApp(client_id=API_KEY, client_secret=SECRET)
    for received in webhook_sink.received:
        assert received.headers["X-Shopify-Hmac-Sha256"] == published_hmac(received.body, SECRET)
        result = app.verify_webhook_req(
            {
                "method": "POST",
                "headers": received.headers,
                "url": webhook_sink.url + received.path,
                "body": received.body.decode(),
            }
        )
        assert result.ok, result.log
    redact = webhook_sink.received[1]
    assert redact.path == "/webhooks/compliance"
    assert set(redact.json()) == set(sample)
    assert redact.json()["shop_domain"] == shop
    uninstalled = webhook_sink.received[0]
    assert uninstalled.path == "/webhooks/app"
    assert uninstalled.json()["myshopify_domain"] == shop


def test_every_shopify_header_is_sent(devstore, webhook_sink, shop):
    """One event to a topic: the delivery carries every header Shopify sends, the triggered-at
    time is the devstore clock's, and the body is the raw UTF-8 JSON the HMAC was made over."""
    devstore.emit(shop, "customers/update", {"id": 1, "first_name": "花子"})
    devstore.flush_webhooks()
    (received,) = webhook_sink.received
    headers = received.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Shopify-Topic"] == "customers/update"
    assert headers["X-Shopify-Shop-Domain"] == shop
    assert headers["X-Shopify-Api-Version"] == "2026-07"
    assert headers["X-Shopify-Webhook-Id"] and headers["X-Shopify-Event-Id"]
    assert headers["X-Shopify-Triggered-At"].endswith("Z")
    assert "花子".encode() in received.body
    assert headers["X-Shopify-Hmac-Sha256"] == published_hmac(received.body, SECRET)
    assert headers["X-Shopify-Hmac-Sha256"] != published_hmac(received.body, "another-secret")


def test_one_event_to_two_subscriptions_shares_the_event_id(devstore, webhook_sink, shop):
    """Two subscriptions to one topic: two deliveries, one event id, two webhook ids."""
    from devstore.state import Store

    Store(devstore.conn, devstore.clock).add_webhook_subscription(
        shop, "orders/create", webhook_sink.url + "/second"
    )
    devstore.emit(shop, "orders/create", {"id": 5})
    devstore.flush_webhooks()
    assert sorted(r.path for r in webhook_sink.received) == ["/second", "/webhooks/orders"]
    events = {r.headers["X-Shopify-Event-Id"] for r in webhook_sink.received}
    ids = {r.headers["X-Shopify-Webhook-Id"] for r in webhook_sink.received}
    assert len(events) == 1 and len(ids) == 2


def test_non_2xx_is_retried_on_the_clock(devstore, webhook_sink, shop):
    """The app answers 500 then 503 then 200: nothing is retried until the clock passes the
    backoff; each retry keeps the webhook id; the log records every attempt with its status."""
    webhook_sink.statuses = [500, 503, 200]
    devstore.emit(shop, "orders/paid", {"id": 9})
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 1
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 1, "retried before the backoff had passed"
    devstore.advance(webhooks_out.RETRY_DELAYS[0] + timedelta(seconds=1))
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 2
    devstore.advance(webhooks_out.RETRY_DELAYS[1] + timedelta(seconds=1))
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 3
    assert len({r.headers["X-Shopify-Webhook-Id"] for r in webhook_sink.received}) == 1
    log = devstore.webhook_log(shop=shop, topic="orders/paid")
    assert [(a["attempt"], a["status"], a["outcome"]) for a in log] == [
        (1, 500, "retrying"),
        (2, 503, "retrying"),
        (3, 200, "delivered"),
    ]


def test_eight_retries_over_about_four_hours_then_failed(devstore, webhook_sink, shop):
    """An app that always answers 500 gets the first attempt plus 8 retries, spread over
    about four hours of clock time, and then no more."""
    webhook_sink.statuses = [500]
    devstore.emit(shop, "orders/create", {"id": 1})
    start = devstore.now()
    devstore.flush_webhooks()
    for delay in webhooks_out.RETRY_DELAYS:
        devstore.advance(delay + timedelta(seconds=1))
        devstore.flush_webhooks()
    devstore.advance("P1D")
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 9
    log = devstore.webhook_log(shop=shop)
    assert log[-1]["outcome"] == "failed"
    assert timedelta(hours=3.5) < devstore.now() - start - timedelta(days=1) < timedelta(hours=4.5)


def test_unreachable_app_is_retried(devstore, shop):
    """A subscription whose address refuses connections: the attempt is logged with no status
    and an error name, and it is scheduled again rather than lost."""
    from devstore.state import Store

    Store(devstore.conn, devstore.clock).add_webhook_subscription(
        shop, "customers/delete", "http://127.0.0.1:9/refused"
    )
    devstore.emit(shop, "customers/delete", {"id": 3})
    devstore.flush_webhooks()
    refused = [a for a in devstore.webhook_log(topic="customers/delete") if "/refused" in a["uri"]]
    assert refused[0]["status"] is None and refused[0]["error"]
    assert refused[0]["outcome"] == "retrying"


def test_drop_fault_drops_exactly_that_share(devstore, webhook_sink, shop):
    """drop_percent=50 over 10 events: exactly 5 arrive, 5 are logged as dropped."""
    devstore.set_webhook_faults(shop, drop_percent=50)
    for i in range(10):
        devstore.emit(shop, "orders/updated", {"id": i})
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 5
    outcomes = [a["outcome"] for a in devstore.webhook_log(shop=shop)]
    assert outcomes.count("dropped") == 5 and outcomes.count("delivered") == 5


def test_duplicate_fault_repeats_the_webhook_id(devstore, webhook_sink, shop):
    """duplicates=true: each delivery arrives twice with the same X-Shopify-Webhook-Id."""
    devstore.set_webhook_faults(shop, duplicates=True)
    devstore.emit(shop, "orders/create", {"id": 1})
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 2
    a, b = webhook_sink.received
    assert a.headers["X-Shopify-Webhook-Id"] == b.headers["X-Shopify-Webhook-Id"]
    assert a.body == b.body


def test_out_of_order_fault_reverses_deliveries(devstore, webhook_sink, shop):
    """out_of_order=true: three events emitted 1, 2, 3 arrive 3, 2, 1 at the next flush."""
    devstore.set_webhook_faults(shop, out_of_order=True)
    for i in (1, 2, 3):
        devstore.emit(shop, "orders/updated", {"id": i})
    devstore.flush_webhooks()
    assert [r.json()["id"] for r in webhook_sink.received] == [3, 2, 1]


def test_late_fault_holds_until_the_clock_passes(devstore, webhook_sink, shop):
    """late=P1D: nothing arrives until the clock has moved a day."""
    devstore.set_webhook_faults(shop, late="P1D")
    devstore.emit(shop, "orders/create", {"id": 1})
    devstore.flush_webhooks()
    devstore.advance("PT23H")
    devstore.flush_webhooks()
    assert webhook_sink.received == []
    devstore.advance("PT1H1S")
    devstore.flush_webhooks()
    assert len(webhook_sink.received) == 1


def test_bad_fault_switches_are_refused(devstore, shop):
    """drop_percent=150 and a negative delay are refused with 400 and the switches stay off."""
    for body in ({"drop_percent": 150}, {"late_seconds": -5}, {"late": "soon"}):
        r = devstore.session.post(
            devstore.url(f"/_devstore/shops/{shop}/webhook_faults"), json=body, timeout=5
        )
        assert r.status_code == 400, body
    r = devstore.session.get(devstore.url(f"/_devstore/shops/{shop}/webhook_faults"), timeout=5)
    assert r.json() == {
        "drop_percent": 0,
        "duplicates": False,
        "out_of_order": False,
        "late_seconds": 0,
    }


def test_background_delivery_sends_without_flush(devstore, webhook_sink, shop):
    """With the delivery thread running (as `kizuna devstore` does), an event arrives without
    an explicit flush."""
    import time

    devstore.start_delivery(interval=0.02)
    devstore.emit(shop, "orders/create", {"id": 1})
    deadline = time.monotonic() + 5
    while not webhook_sink.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(webhook_sink.received) == 1


def test_retry_schedule_is_eight_steps_over_four_hours():
    """The pure backoff: 8 retries, none after, about four hours in all."""
    assert webhooks_out.retry_delay(0) is None
    assert webhooks_out.retry_delay(9) is None
    total = sum((webhooks_out.retry_delay(i) or timedelta(0) for i in range(1, 9)), timedelta())
    assert timedelta(hours=3.5) < total < timedelta(hours=4.5)


def _missing_keys(sample, ours, path=""):
    """Key paths of ``sample`` absent from ``ours``, into nested objects and the first element
    of lists both have."""
    if isinstance(sample, dict) and isinstance(ours, dict):
        for key, value in sample.items():
            if key not in ours:
                yield f"{path}{key}"
            else:
                yield from _missing_keys(value, ours[key], f"{path}{key}.")
    elif isinstance(sample, list) and isinstance(ours, list) and sample and ours:
        yield from _missing_keys(sample[0], ours[0], f"{path}[].")


def test_delivered_bodies_have_the_keys_of_shopifys_samples(devstore, webhook_sink, shop):
    """A customer's life in the devstore's data model (create with consent and tags, an order
    paid, fulfilled, cancelled, deleted): every delivered topic that has a Shopify sample
    carries at least the sample's keys, nested ones included (line items, addresses, the
    order's customer), and every delivery verifies."""
    from devstore.state import Store

    webhooks = SHOPIFY_SHARED / "webhooks"
    shared_or_skip(webhooks)
    store = Store(devstore.conn, devstore.clock)
    customer = store.create_customer(
        shop,
        {
            "first_name": "花子",
            "last_name": "山田",
            "email": "hanako@example.jp",
            "tags": ["vip"],
            "addresses": [{"city": "渋谷区", "province": "東京都", "country_code": "JP"}],
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        },
    )
    order = store.create_order(
        shop,
        {
            "customer": {"id": customer["id"]},
            "line_items": [{"title": "青汁 30包", "price": "3980", "quantity": 1}],
            "financial_status": "paid",
            "shipping_address": {"city": "渋谷区", "country_code": "JP"},
            "billing_address": {"city": "渋谷区", "country_code": "JP"},
        },
    )
    store.create_fulfillment(shop, {"order_id": order["id"]})
    store.update_customer(shop, customer["id"], {"tags": ["vip", "repeat"]})
    store.delete_order(shop, order["id"])
    store.delete_customer(shop, customer["id"])
    devstore.flush_webhooks()
    seen: dict[str, set[str]] = {}
    gaps: dict[str, list[str]] = {}
    for received in webhook_sink.received:
        assert received.headers["X-Shopify-Hmac-Sha256"] == published_hmac(received.body, SECRET)
        topic = received.headers["X-Shopify-Topic"]
        sample = webhooks / (topic.replace("/", "_").replace(".", "_") + ".json")
        if sample.exists():
            missing = set(_missing_keys(json.loads(sample.read_text()), received.json()))
            if missing:
                gaps[topic] = sorted(missing)
            seen[topic] = set(received.json())
    assert not gaps, f"payloads lack keys of Shopify's samples: {gaps}"
    assert {
        "customers/create",
        "customers/update",
        "customers/delete",
        "customer.tags_added",
        "customers_email_marketing_consent/update",
        "orders/create",
        "orders/delete",
        "fulfillments/create",
    } <= set(seen)


def test_consent_mutation_fires_the_consent_topic(devstore, webhook_sink):
    """customerEmailMarketingConsentUpdate over the Admin API: the change is delivered as
    customers_email_marketing_consent/update (with the sample's keys) and customers/update;
    repeating the same values fires nothing more."""
    from devstore.state import Store

    shop = devstore.create_shop("consent.myshopify.com")
    token = devstore.install(shop, webhook_sink.url, API_KEY, SECRET)
    quiet = Store(devstore.conn, devstore.clock, webhooks=False)
    customer = quiet.create_customer(shop, {"first_name": "花子", "email": "c@example.jp"})
    mutation = """mutation($input: CustomerEmailMarketingConsentUpdateInput!) {
      customerEmailMarketingConsentUpdate(input: $input) { userErrors { message } } }"""
    variables = {
        "input": {
            "customerId": f"gid://shopify/Customer/{customer['id']}",
            "emailMarketingConsent": {
                "marketingState": "SUBSCRIBED",
                "marketingOptInLevel": "CONFIRMED_OPT_IN",
            },
        }
    }
    for _ in range(2):
        answer = devstore.session.post(
            devstore.graphql_url(shop),
            json={"query": mutation, "variables": variables},
            headers={"X-Shopify-Access-Token": token},
            timeout=10,
        ).json()
        assert answer["data"]["customerEmailMarketingConsentUpdate"]["userErrors"] == []
    devstore.flush_webhooks()
    assert sorted(webhook_sink.topics()) == [
        "customers/update",
        "customers_email_marketing_consent/update",
    ]
    body = next(
        r.json()
        for r in webhook_sink.received
        if r.headers["X-Shopify-Topic"] == "customers_email_marketing_consent/update"
    )
    assert body["customer_id"] == customer["id"] and body["email_address"] == "c@example.jp"
    assert body["email_marketing_consent"]["state"] == "subscribed"
    assert body["email_marketing_consent"]["opt_in_level"] == "confirmed_opt_in"
    sample = SHOPIFY_SHARED / "webhooks" / "customers_email_marketing_consent_update.json"
    if sample.exists():
        assert set(json.loads(sample.read_text())) <= set(body)
