"""The merchant's main path, in Chromium through the devstore's admin frame (real ID tokens).

A subscribed customer has placed a first order (a webhook the app ingested). The merchant
creates a sequence from the "four walls" template, gets a validation message next to a bad
offset, fixes it, previews who would enter, activates it; the clock moves three days; the
customer's page explains the step that was written and the devstore holds the step's tag.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.browser.conftest import (
    SHOP,
    Kizuna,
    app_frame,
    install,
    navigate,
    open_app,
    screenshot,
)
from tests.fixtures.devstore import Devstore

START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
HOSTILE = '<img src=x onerror="window.__pwned=1">'


def ctl(devstore: Devstore, path: str, body: Any) -> dict[str, Any]:
    response = devstore.session.post(
        devstore.url(f"/_devstore/shops/{SHOP}{path}"), json=body, timeout=10
    )
    assert response.status_code in (200, 201), response.text
    data: dict[str, Any] = response.json()
    return data


def tags(devstore: Devstore, cid: int) -> set[str]:
    response = devstore.session.get(
        devstore.url(f"/_devstore/shops/{SHOP}/customers/{cid}"), timeout=10
    )
    raw = response.json()["tags"]
    items = raw.split(",") if isinstance(raw, str) else raw
    return {t.strip() for t in items if t.strip()}


def sync(devstore: Devstore, kizuna: Kizuna, *customer_ids: int) -> None:
    """Deliver webhooks, ingest, evaluate the customers, run the steps due now."""
    from worker import steps
    from worker.scheduler import tick

    devstore.flush_webhooks()
    kizuna.work()
    for cid in customer_ids:
        steps.on_profile_changed(kizuna.conn, SHOP, cid)
    kizuna.work()
    tick(kizuna.conn, kizuna.clock.now())
    kizuna.work()


def first_order_customer(devstore: Devstore, kizuna: Kizuna) -> int:
    product = ctl(
        devstore, "/products", {"title": "Aojiru 30 sachets", "variants": [{"price": "3800"}]}
    )
    customer = ctl(
        devstore,
        "/customers",
        {
            "email": "hana@example.com",
            "first_name": "Hana",
            "last_name": "Sato",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        },
    )
    cid = int(customer["id"])
    ctl(
        devstore,
        "/orders",
        {
            "customer": {"id": cid},
            "line_items": [{"variant_id": product["variants"][0]["id"], "quantity": 1}],
            "financial_status": "paid",
        },
    )
    sync(devstore, kizuna, cid)
    return cid


def hostile_customer(devstore: Devstore, kizuna: Kizuna) -> int:
    """A second first-order customer whose name is HTML (it must reach the page as text)."""
    product = ctl(devstore, "/products", {"title": "Mugicha", "variants": [{"price": "900"}]})
    customer = ctl(
        devstore,
        "/customers",
        {
            "email": "odd@example.com",
            "first_name": HOSTILE,
            "last_name": "Kato",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
        },
    )
    cid = int(customer["id"])
    ctl(
        devstore,
        "/orders",
        {
            "customer": {"id": cid},
            "line_items": [{"variant_id": product["variants"][0]["id"], "quantity": 1}],
            "financial_status": "paid",
        },
    )
    sync(devstore, kizuna, cid)
    return cid


def test_create_preview_activate_and_see_the_step(
    devstore: Devstore, kizuna: Kizuna, page: Any
) -> None:
    """The full editor path. A bad offset (a step before the previous one) must be refused
    with the message next to that step's offset and nothing stored; the preview's sample names
    the customers (name, email, a link to their page; an HTML name stays text); the version
    history shows when each version was saved; after activation and three days the step's tag
    must be in the devstore and the customer's log must say why."""
    devstore.set_time(START)
    install(devstore, kizuna)
    frame = open_app(page, devstore, SHOP)  # the first load installs (token exchange)
    cid = first_order_customer(devstore, kizuna)
    odd = hostile_customer(devstore, kizuna)

    frame = navigate(page, frame, "sequences")
    with page.expect_event("framenavigated"):
        frame.click("[data-testid='new-sequence']")
    frame = app_frame(page)
    frame.click("[data-template='four_walls']")
    assert frame.input_value("#f-id") == "four-walls"
    frame.select_option("#f-anchor", "order")  # count from the order: no shipment in this store

    offsets = frame.locator("#steps tbody tr [name='offset_days']")
    offsets.nth(1).fill("0")  # before step 1 (day 1): invalid
    frame.click("#save")
    error = frame.locator("#steps tbody tr").nth(1).locator(".field-error")
    error.wait_for()
    assert "time order" in error.inner_text()
    invalid = frame.locator("#steps tbody tr").nth(1).locator("td.invalid [name='offset_days']")
    assert invalid.count() == 1, "the message is not next to the offset"
    assert kizuna.conn.hlen(f"kizuna:{SHOP}:seqs") == 0, "a refused sequence was stored"
    screenshot(page, "sequence-editor-validation")

    offsets.nth(1).fill("4")
    frame.click("#preview-button")
    frame.locator("#preview:not([hidden])").wait_for()
    assert frame.inner_text("#preview-summary").startswith("2 ")
    sample = frame.locator(f"#preview-sample a[data-nav='/app/customers/{cid}']")
    assert sample.count() == 1
    assert sample.inner_text() == "Hana Sato"
    hana = frame.locator(f"#preview-sample tr[data-customer='{cid}'] td.email")
    assert hana.inner_text() == "hana@example.com"
    odd_link = frame.locator(f"#preview-sample a[data-nav='/app/customers/{odd}']")
    assert odd_link.inner_text() == f"{HOSTILE} Kato"
    assert frame.locator("#preview-sample img").count() == 0
    assert frame.evaluate("window.__pwned") is None
    saved = frame.locator("#version-list tr[data-version='1'] td.saved-at")
    saved.wait_for()
    assert saved.inner_text() == "Jul 1, 2026 12:00"  # the shop's time (Tokyo)
    frame.locator("#preview").scroll_into_view_if_needed()
    screenshot(page, "sequence-preview")

    frame.click("#activate")
    frame.locator("#activate[hidden]").wait_for(state="attached")
    kizuna.work()  # the activation's evaluation job
    assert not any(t.startswith("kizuna:four-walls:") for t in tags(devstore, cid))

    kizuna.clock.set(START + timedelta(days=3))
    sync(devstore, kizuna)
    assert "kizuna:four-walls:trust" in tags(devstore, cid)

    frame.fill("#f-title", "Four walls, retitled")
    frame.click("#save")
    newest = frame.locator("#version-list tbody tr").first
    frame.locator("#version-list tr[data-version='2']").wait_for()
    assert newest.get_attribute("data-version") == "2"
    assert newest.locator("td.saved-at").inner_text() == "Jul 4, 2026 12:00"
    assert "Current" in newest.inner_text()
    older = frame.locator("#version-list tr[data-version='1'] td.saved-at")
    assert older.inner_text() == "Jul 1, 2026 12:00"
    frame.locator("#versions").scroll_into_view_if_needed()
    screenshot(page, "sequence-versions")

    with page.expect_event("framenavigated"):
        frame.click(f"#preview-sample a[data-nav='/app/customers/{cid}']")
    frame = app_frame(page)
    row = frame.locator("#decision-log tr[data-reason='step_written'][data-step='trust']")
    row.wait_for()
    assert re.search(r"trust", row.inner_text())
    enrolled = frame.locator("#enrolments tr[data-sequence='four-walls'][data-status='active']")
    enrolled.wait_for()
    assert "How it is made" in enrolled.inner_text()  # the next step, by its title
    assert "Sato" in frame.inner_text("#customer-name")
    screenshot(page, "customer-log", frame)

    frame = navigate(page, frame, "sequences")
    listed = frame.locator("tr[data-sequence='four-walls']")
    listed.wait_for()
    assert frame.locator("[data-testid='toggle-four-walls']").is_checked()
    screenshot(page, "sequences-active", frame)
    assert page.js_errors == []
