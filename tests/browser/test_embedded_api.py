"""The embedded page's own JSON routes and documents over plain HTTP (no browser).

Settings and analytics are answered for the ID token's shop only; a missing, expired or
foreign token gets 401; bad settings get 422 naming the field and change nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import jwt
import pytest

from crm.profile import OrderRecord, Profile
from tests.browser.conftest import API_KEY, OTHER_SHOP, SHOP, Kizuna, install
from tests.fixtures.devstore import Devstore
from worker import profile_store, sequence_store

NOW = datetime(2026, 7, 15, 3, tzinfo=UTC)

#: Every route this part serves under /api/ (method, path).
ROUTES = [
    ("GET", "/api/settings"),
    ("PUT", "/api/settings"),
    ("GET", "/api/settings/export.csv"),
    ("POST", "/api/settings/erase"),
    ("GET", "/api/analytics"),
    ("GET", "/api/analytics/summary"),
    ("GET", "/api/analytics/calculator?ad_spend=1&new_customers=1&first_order_value=1&ltv=1"),
]


@pytest.fixture()
def shop(devstore: Devstore, kizuna: Kizuna) -> str:
    devstore.set_time(NOW)
    install(devstore, kizuna)
    install(devstore, kizuna, OTHER_SHOP, name="Other")
    from plugin import shops

    for name in (SHOP, OTHER_SHOP):  # the app's side of the install, without a browser
        record_facts = shops.ShopFacts(name.split(".")[0], "Asia/Tokyo", "JPY", "Basic")
        from plugin.crypto import TokenCipher

        cipher = TokenCipher.from_settings(kizuna.settings)
        grant = shops.Grant(access_token="unused", scopes=("read_customers",))
        shops.install(kizuna.conn, cipher, name, grant, NOW)
        shops.set_facts(kizuna.conn, name, record_facts)
    return SHOP


def customer(cid: int, *orders: tuple[datetime, str], name: str = "Hana") -> Profile:
    records = {
        cid * 10 + i: OrderRecord(id=cid * 10 + i, name=f"#{1000 + cid * 10 + i}", created_at=at,
                                  total=Decimal(total), currency="JPY")
        for i, (at, total) in enumerate(orders)
    }  # fmt: skip
    return Profile(customer_id=cid, first_name=name, email=f"c{cid}@example.com", orders=records)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_refuses_missing_expired_and_foreign_tokens(
    devstore: Devstore, kizuna: Kizuna, shop: str, method: str, path: str
) -> None:
    """No token, a token signed with another secret, and a token past its minute: each gets
    401 with Shopify's retry header, and no route runs (the settings stay unwritten)."""
    forged = jwt.encode(
        {"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": API_KEY,
         "sub": "1", "exp": int(NOW.timestamp()) + 60, "nbf": int(NOW.timestamp()) - 5,
         "iat": int(NOW.timestamp()), "jti": "x", "sid": "y"},
        "not-the-secret-0123456789abcdef-0123456789", algorithm="HS256",
    )  # fmt: skip
    expired = devstore.id_token(shop)
    devstore.advance(timedelta(minutes=3))
    body = {"loyal_min_orders": 9, "confirm": shop}
    for token in (None, forged, expired):
        response = kizuna.api(method, path, token, json=body)
        assert response.status_code == 401, (token, response.text)
        assert response.headers.get("X-Shopify-Retry-Invalid-Session-Request") == "1"
    assert kizuna.conn.get(f"kizuna:{shop}:settings") is None


def test_settings_are_per_shop_and_validated(devstore: Devstore, kizuna: Kizuna, shop: str) -> None:
    """A valid save lands in this shop's settings and in the scheduler's rules; the other
    shop keeps its defaults; naming the other shop in the body is refused."""
    token = devstore.id_token(shop)
    saved = kizuna.api(
        "PUT", "/api/settings", token,
        json={"loyal_min_orders": 4, "frequency_cap_days": 3, "quiet_start": 21, "quiet_end": 8,
              "holdout_percent": 10, "loyal_min_spent": "20000"},
    )  # fmt: skip
    assert saved.status_code == 200, saved.text
    assert saved.json()["settings"]["loyal_min_orders"] == 4
    assert saved.json()["timezone"] == "Asia/Tokyo"
    rules = sequence_store.shop_rules(kizuna.conn, shop)
    assert rules.frequency_cap_days == 3.0
    assert rules.quiet_hours is not None and (rules.quiet_hours.start, rules.quiet_hours.end) == (
        21,
        8,
    )
    again = kizuna.api("GET", "/api/settings", devstore.id_token(shop)).json()["settings"]
    assert again["holdout_percent"] == 10 and again["loyal_min_spent"] == "20000.00"

    other = kizuna.api("GET", "/api/settings", devstore.id_token(OTHER_SHOP)).json()["settings"]
    assert other["loyal_min_orders"] == 3 and other["frequency_cap_days"] is None
    cross = kizuna.api(
        "PUT",
        "/api/settings",
        devstore.id_token(OTHER_SHOP),
        json={"shop": shop, "dormant_days": 9},
    )
    assert cross.status_code == 403
    assert kizuna.api("GET", "/api/settings", devstore.id_token(shop)).json()["settings"] == again


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dormant_days": "abc"}, "dormant_days"),
        ({"dormant_days": 400}, "dormant_days"),  # not below churned_days (365)
        ({"quiet_start": 25, "quiet_end": 8}, "quiet_start"),
        ({"quiet_start": 22}, "quiet_end"),
        ({"frequency_cap_days": -1}, "frequency_cap_days"),
        ({"frequency_cap_days": True}, "frequency_cap_days"),
        ({"holdout_percent": 80}, "holdout_percent"),
        ({"loyal_min_spent": "-5"}, "loyal_min_spent"),
        ({"loyal_min_spent": "<script>"}, "loyal_min_spent"),
        ({"cost_per_message": "NaN"}, "cost_per_message"),
        ({"is_admin": True}, "is_admin"),
        ([1, 2], "settings"),
    ],
)
def test_bad_settings_get_422_and_change_nothing(
    devstore: Devstore, kizuna: Kizuna, shop: str, body: Any, field: str
) -> None:
    """Each bad value is answered 422 naming its field; the stored document and the
    scheduler's rules are byte-for-byte what they were."""
    token = devstore.id_token(shop)
    assert kizuna.api("PUT", "/api/settings", token, json={"frequency_cap_days": 2}).ok
    before = (
        kizuna.conn.get(f"kizuna:{shop}:settings"),
        kizuna.conn.hgetall(f"kizuna:{shop}:rules"),
    )
    response = kizuna.api("PUT", "/api/settings", devstore.id_token(shop), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    after = (
        kizuna.conn.get(f"kizuna:{shop}:settings"),
        kizuna.conn.hgetall(f"kizuna:{shop}:rules"),
    )
    assert after == before


def test_analytics_report_and_summary_from_stored_profiles(
    devstore: Devstore, kizuna: Kizuna, shop: str
) -> None:
    """Three customers of this shop (two first orders in May, one reorder), one of the other
    shop: the report shows this shop's cohorts only, and the snapshot is reused until stale."""
    may = datetime(2026, 5, 3, 3, tzinfo=UTC)
    for p in (
        customer(1, (may, "4000"), (may + timedelta(days=20), "4000")),
        customer(2, (may + timedelta(days=2), "3000")),
        customer(3, (datetime(2026, 6, 9, 3, tzinfo=UTC), "5000")),
    ):
        profile_store.save(kizuna.conn, shop, p, now=NOW)
    profile_store.save(kizuna.conn, OTHER_SHOP, customer(9, (may, "99999")), now=NOW)

    report = kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()
    assert report["pending"] is False and report["customers"] == 3
    f2 = {r["month"]: r for r in report["f2"]}
    assert f2["2026-05"]["customers"] == 2 and f2["2026-05"]["second_buyers"] == 1
    assert f2["2026-06"]["second_buyers"] == 0
    assert report["cohorts"]["rows"][0]["ltv"][0] == "5500.00"  # (8000 + 3000) / 2 in month 0
    assert "99999" not in json.dumps(report)

    changed = customer(2, (may + timedelta(days=2), "3000"), (may + timedelta(days=9), "700"))
    profile_store.save(kizuna.conn, shop, changed, now=NOW)  # same customers, one more order
    cached = kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()
    assert cached["f2"] == report["f2"], "the snapshot was rebuilt on every request"
    assert cached["refreshing"] is False and rebuilds_queued(kizuna) == 0
    profile_store.save(kizuna.conn, shop, customer(4, (may, "1000")), now=NOW)
    assert kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()["refreshing"]
    kizuna.work()
    fresh = kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()
    assert fresh["customers"] == 4, "a new customer did not make the snapshot out of date"
    assert {r["month"]: r for r in fresh["f2"]}["2026-05"]["second_buyers"] == 2

    summary = kizuna.api("GET", "/api/analytics/summary", devstore.id_token(shop)).json()
    assert summary["customers"] == 4
    assert summary["segments"].get("new") == 2 and summary["segments"].get("repeat") == 2
    assert summary["attention"] == []


def rebuilds_queued(kizuna: Kizuna) -> int:
    """How many analytics rebuild jobs wait in the queue."""
    from worker.queues import get_queue

    jobs = get_queue(kizuna.conn).jobs
    return sum(1 for job in jobs if job.func_name == "plugin.api_analytics.rebuild")


def test_small_shop_answers_the_stored_snapshot_and_rebuilds_in_a_job(
    devstore: Devstore, kizuna: Kizuna, shop: str
) -> None:
    """A small shop with a snapshot gets a new customer: the next views answer the old
    snapshot at once, marked refreshing, and queue exactly one rebuild (not one per view, and
    no rebuild inside the request); once the job has run, the new count shows, not refreshing."""
    may = datetime(2026, 5, 3, 3, tzinfo=UTC)
    for cid in (1, 2):
        profile_store.save(kizuna.conn, shop, customer(cid, (may, "4000")), now=NOW)
    first = kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()
    assert first["customers"] == 2 and first["refreshing"] is False  # first view: built inline
    assert rebuilds_queued(kizuna) == 0

    profile_store.save(kizuna.conn, shop, customer(3, (may, "2500")), now=NOW)
    views = [kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json() for _ in "ab"]
    for view in views:
        assert view["customers"] == 2, "the snapshot was rebuilt inside the request"
        assert view["computed_at"] == first["computed_at"] and view["refreshing"] is True
    summary = kizuna.api("GET", "/api/analytics/summary", devstore.id_token(shop)).json()
    assert summary["activity_at"] == first["computed_at"]
    assert rebuilds_queued(kizuna) == 1

    kizuna.work()
    assert rebuilds_queued(kizuna) == 0
    after = kizuna.api("GET", "/api/analytics", devstore.id_token(shop)).json()
    assert after["customers"] == 3 and after["refreshing"] is False
    assert rebuilds_queued(kizuna) == 0


def test_calculator_answers_and_refuses(devstore: Devstore, kizuna: Kizuna, shop: str) -> None:
    """Good numbers give the ratios; zero customers is a 422 naming ``new_customers``."""
    token = devstore.id_token(shop)
    ok = kizuna.api(
        "GET", "/api/analytics/calculator?ad_spend=100000&new_customers=50&first_order_value=1500"
        "&ltv=6000", token,
    )  # fmt: skip
    assert ok.json()["ltv_ratio"] == 3.0
    bad = kizuna.api(
        "GET",
        "/api/analytics/calculator?ad_spend=1&new_customers=0&first_order_value=1&ltv=1",
        devstore.id_token(shop),
    )
    assert bad.status_code == 422 and bad.json()["field"] == "new_customers"


def test_erase_needs_the_domain_and_keeps_sequences(
    devstore: Devstore, kizuna: Kizuna, shop: str
) -> None:
    """Without the shop's domain typed back nothing is erased; with it, profiles and lists go,
    the shop record, settings and sequence definitions stay, and the other shop is untouched."""
    from crm.templates import instantiate

    profile_store.save(kizuna.conn, shop, customer(1, (NOW, "100")), now=NOW)
    profile_store.save(kizuna.conn, OTHER_SHOP, customer(2, (NOW, "100")), now=NOW)
    sequence_store.create(kizuna.conn, shop, instantiate("four_walls"), NOW)
    refused = kizuna.api(
        "POST", "/api/settings/erase", devstore.id_token(shop), json={"confirm": "x"}
    )
    assert refused.status_code == 422
    assert profile_store.load(kizuna.conn, shop, 1) is not None

    done = kizuna.api(
        "POST", "/api/settings/erase", devstore.id_token(shop), json={"confirm": shop}
    )
    assert done.status_code == 200 and done.json()["erased"] > 0
    assert profile_store.load(kizuna.conn, shop, 1) is None
    assert profile_store.count(kizuna.conn, shop) == 0
    assert sequence_store.load(kizuna.conn, shop, "four-walls") is not None
    assert kizuna.conn.exists(f"kizuna:{shop}:shop")
    assert profile_store.load(kizuna.conn, OTHER_SHOP, 2) is not None


def test_pages_need_an_id_token_and_name_their_framer(
    devstore: Devstore, kizuna: Kizuna, shop: str
) -> None:
    """A page load without an ID token goes to the bounce page (never renders); with one it
    renders in the admin's language, with the CSP naming this shop's admin; a hostile locale
    falls back to English and is never echoed."""
    bare = kizuna.api("GET", f"/app/settings?shop={shop}", None, allow_redirects=False)
    assert bare.status_code == 302 and "/auth/session-token" in bare.headers["Location"]
    for path in ("/app/sequences", "/app/sequences/new", "/app/customers", "/app/customers/1",
                 "/app/analytics", "/app/settings"):  # fmt: skip
        token = devstore.id_token(shop)
        page = kizuna.api("GET", f"{path}?shop={shop}&locale=ja&id_token={token}", None)
        assert page.status_code == 200, path
        assert "frame-ancestors" in page.headers["Content-Security-Policy"]
        assert '<html lang="ja">' in page.text
    token = devstore.id_token(shop)
    locale = "%3Cscript%3Ealert(1)%3C/script%3E"
    hostile = kizuna.api("GET", f"/app/settings?shop={shop}&locale={locale}&id_token={token}", None)
    assert '<html lang="en">' in hostile.text and "alert(1)" not in hostile.text
