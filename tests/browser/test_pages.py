"""Every page of the embedded app in Chromium, in English and Japanese, with screenshots.

The shop's data is stored directly (profiles, a sequence): the ingest path is covered by
``test_sequence_flow``; here the pages are under test. Screenshots at 1280×800 go to
``docs/screenshots/`` (linked from the README).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from crm.profile import OrderRecord, Profile
from tests.browser.conftest import SHOP, Kizuna, app_frame, install, navigate, open_app, screenshot
from tests.fixtures.devstore import Devstore
from worker import profile_store, search_index, sequence_store

NOW = datetime(2026, 7, 15, 3, tzinfo=UTC)
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
PAGES = ("home", "sequences", "customers", "analytics", "settings")


def order(oid: int, at: datetime, total: str) -> OrderRecord:
    return OrderRecord(id=oid, name=f"#{oid}", created_at=at, total=Decimal(total), currency="JPY")


def seed(kizuna: Kizuna) -> list[Profile]:
    """Twelve customers over six months, some repeat buyers; one with a hostile name."""
    people = []
    for i in range(12):
        first = NOW - timedelta(days=30 * (i % 6) + 3)
        orders = {1000 + i * 10: order(1000 + i * 10, first, str(3000 + 500 * i))}
        if i % 3 == 0:
            orders[1001 + i * 10] = order(1001 + i * 10, first + timedelta(days=25), "3800")
        people.append(
            Profile(
                customer_id=7000 + i,
                first_name=HOSTILE if i == 5 else f"花子{i}",
                last_name="佐藤",
                email=f"hanako{i}@example.jp",
                email_marketing_state="SUBSCRIBED",
                orders=orders,
            )
        )
    for p in people:
        profile_store.save(kizuna.conn, SHOP, p, now=NOW)
    search_index.reindex(kizuna.conn, SHOP, people)
    from crm.sequence import from_dict

    sequence_store.create(
        kizuna.conn,
        SHOP,
        from_dict(
            {
                "id": "aojiru",
                "title": "青汁のリピート",
                "trigger": {"kind": "first_order", "anchor": "order"},
                "steps": [
                    {"key": "thanks", "offset_days": 1, "title": "お礼"},
                    {"key": "howto", "offset_days": 7, "title": "飲み方"},
                ],
            }
        ),
        NOW,
    )
    return people


def visible_english(frame: Any, allowed: set[str]) -> list[str]:
    """Latin words left on the page, leaving out the shop's own data (``data-raw``), code,
    the language switch's "English", e-mail addresses, and the ``allowed`` brand words."""
    text: str = frame.evaluate(
        """() => {
            const copy = document.body.cloneNode(true);
            copy.querySelectorAll("[data-raw], code, [lang='en'], script, [hidden]")
                .forEach(n => n.remove());
            copy.querySelectorAll("input, select, textarea").forEach(n => n.remove());
            return copy.innerText;
        }"""
    )
    text = re.sub(r"[\w.+-]+@[\w.-]+", " ", text)
    return [w for w in re.findall(r"[A-Za-z]{2,}", text) if w not in allowed]


def test_japanese_pages_have_no_english_left(devstore: Devstore, kizuna: Kizuna, page: Any) -> None:
    """With the admin in Japanese every page, once its data has loaded, shows no English word
    (brand names aside); placeholders and labels of the forms are Japanese too."""
    devstore.set_time(NOW)
    install(devstore, kizuna)
    frame = open_app(page, devstore, SHOP, locale="ja")  # installs the app
    seed(kizuna)
    page.reload()
    frame = app_frame(page)
    for name in PAGES:
        if name != "home":
            frame = navigate(page, frame, name)
        page.wait_for_load_state("networkidle")
        frame.wait_for_timeout(150)  # the last renders after the last response
        assert frame.evaluate("document.documentElement.lang") == "ja"
        left = visible_english(frame, allowed={"Shopify"})
        assert left == [], (name, left)
        placeholders = frame.evaluate(
            "[...document.querySelectorAll('[placeholder]')].map(n => n.placeholder).join(' ')"
        )
        assert not re.search(r"[A-Za-z]{3,}", placeholders), (name, placeholders)
        screenshot(page, f"ja-{name}", frame)

    # The editor's version history: save times in Japanese, in the shop's time zone.
    frame = navigate(page, frame, "sequences")
    with page.expect_event("framenavigated"):
        frame.click("tr[data-sequence='aojiru'] a")
    frame = app_frame(page)
    saved = frame.locator("#version-list tr[data-version='1'] td.saved-at")
    saved.wait_for()
    assert saved.inner_text() == "2026年7月15日 12:00"
    assert "現在の版" in frame.inner_text("#version-list tr[data-version='1']")
    page.wait_for_load_state("networkidle")
    assert visible_english(frame, allowed={"Shopify"}) == []
    assert page.js_errors == []


def test_pages_render_data_export_csv_and_escape_names(
    devstore: Devstore, kizuna: Kizuna, page: Any
) -> None:
    """English pages with data. The "new" segment exported as CSV holds exactly the customers
    the API lists for that segment. A customer whose name is HTML is shown as text: no element
    or script from it may reach the page. A bad quiet hour gets its message next to the field."""
    devstore.set_time(NOW)
    install(devstore, kizuna)
    frame = open_app(page, devstore, SHOP)
    people = seed(kizuna)
    page.reload()
    frame = app_frame(page)
    page.wait_for_load_state("networkidle")
    assert frame.inner_text("#segment-counts tr[data-segment='repeat'] td.num") == "4"
    assert frame.inner_text("[data-stat='birthdays_this_month']") == "0"
    screenshot(page, "home", frame)

    frame = navigate(page, frame, "customers")
    frame.locator("#customer-list tr[data-customer]").first.wait_for()
    hostile_row = frame.locator("tr[data-customer='7005'] a")
    assert "<img" in hostile_row.inner_text()
    assert frame.evaluate("window.__pwned") is None
    assert frame.locator("#customer-list img").count() == 0
    screenshot(page, "customers", frame)

    frame.select_option("select[name='segment']", "new")
    frame.click("#customer-filters button[type='submit']")
    frame.locator("#customer-list tr[data-customer]").first.wait_for()
    with page.expect_download() as download_info:
        frame.click("#export-csv")
    exported = download_info.value.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(exported)))
    token = devstore.id_token(SHOP)
    listed = kizuna.api("GET", "/api/customers?segment=new", token).json()["customers"]
    assert sorted(int(r["customer_id"]) for r in rows) == sorted(c["id"] for c in listed)
    assert len(rows) == 8 and all(p.customer_id for p in people)
    hostile = next(r for r in rows if r["customer_id"] == "7005")
    assert hostile["first_name"].startswith("'<img") or hostile["first_name"].startswith("<img")

    with page.expect_event("framenavigated"):
        frame.click("tr[data-customer='7001'] a")
    frame = app_frame(page)
    frame.locator("#orders tbody tr td.num").first.wait_for()
    assert "¥3,500" in frame.inner_text("#orders")  # JPY: no decimals
    assert "Sato" not in frame.inner_text("#customer-name")
    assert "佐藤" in frame.inner_text("#customer-name")
    screenshot(page, "customer", frame)

    kizuna.work()  # the rebuild the home page queued after seeding (the first view had none)
    frame = navigate(page, frame, "analytics")
    frame.locator("#f2-chart svg rect[data-month]").first.wait_for(state="attached")
    assert "being computed" not in frame.inner_text("#analytics-as-of")
    assert frame.locator("#f2-chart svg rect[data-month]").count() == 6
    assert frame.locator("#cohort-table tbody tr[data-month]").count() == 6
    frame.locator("#calculator-result dd").first.wait_for()
    frame.fill("#c-spend", "200000")
    frame.wait_for_function(
        "document.querySelector('#calculator-result dd').textContent === '¥4,000'"
    )
    screenshot(page, "analytics", frame)

    frame = navigate(page, frame, "sequences")
    frame.locator("tr[data-sequence='aojiru']").wait_for()
    screenshot(page, "sequences", frame)

    frame = navigate(page, frame, "settings")
    frame.locator("#s-lmo[value], #s-lmo").first.wait_for()
    frame.wait_for_function("document.querySelector('#s-lmo').value === '3'")
    frame.fill("#s-qs", "25")
    frame.fill("#s-qe", "8")
    frame.click("#save-settings")
    error = frame.locator("[data-field='quiet_start'] .field-error")
    error.wait_for()
    assert "between 0 and 23" in error.inner_text()
    assert kizuna.conn.hget(f"kizuna:{SHOP}:rules", "quiet") is None
    screenshot(page, "settings")
    frame.fill("#s-qs", "21")
    with page.expect_response(
        lambda r: r.url.endswith("/api/settings") and r.request.method == "PUT"
    ) as saved:
        frame.click("#save-settings")
    assert saved.value.status == 200
    frame.wait_for_function("!document.querySelector('[data-field=\"quiet_start\"].invalid')")
    assert kizuna.conn.hget(f"kizuna:{SHOP}:rules", "quiet") == b"21-8"
    assert page.js_errors == []
