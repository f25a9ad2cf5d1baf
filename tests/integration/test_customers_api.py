"""The customer API through the real app and its ID-token guard, on profiles in real Redis."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import redis
from flask.testing import FlaskClient

from crm import events
from crm.profile import fold
from devstore import idtoken
from plugin.settings import Settings
from tests.integration.webhook_helpers import OTHER_SHOP, SHOP
from worker import backfill, privacy, profile_store, search_index

NOW = datetime(2026, 7, 1, tzinfo=UTC)


def auth(settings: Settings, shop: str = SHOP) -> dict[str, str]:
    token = idtoken.mint(shop, api_key=settings.api_key, api_secret=settings.api_secret, now=NOW)
    return {"Authorization": f"Bearer {token}"}


def put(conn: redis.Redis, cid: int, *, shop: str = SHOP, orders: int = 0, **fields: Any) -> None:
    """Store a profile built from webhook events (customer + ``orders`` orders)."""
    body = {"id": cid, "email": f"c{cid}@example.com", "first_name": "Aoi", "last_name": "Kato",
            "updated_at": "2026-06-01T00:00:00Z", "created_at": "2026-01-01T00:00:00Z",
            "email_marketing_consent": {"state": "subscribed"}, **fields}  # fmt: skip
    evs: list[events.Event] = [events.parse("customers/create", body)]
    for n in range(orders):
        evs.append(events.parse("orders/create", {
            "id": cid * 10 + n, "name": f"#{cid}{n}", "created_at": f"2026-06-1{n}T00:00:00Z",
            "financial_status": "paid", "currency": "JPY", "total_price": "12000",
            "customer": {"id": cid}, "line_items": [{"product_id": 55, "quantity": 1}],
        }))  # fmt: skip
    profile = fold(evs)
    assert profile is not None
    profile_store.save(conn, shop, profile, now=NOW)
    search_index.update(conn, shop, None, profile)


def test_one_customer_has_the_documented_fields(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """GET /api/customers/<id> answers every documented field with its documented type."""
    put(conn, 501, orders=3, metafields=[{"namespace": "facts", "key": "birth_date",
                                          "value": "1991-02-03"}])  # fmt: skip
    response = client.get("/api/customers/501", headers=auth(settings))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == 501 and body["email"] == "c501@example.com"
    assert (body["first_name"], body["last_name"]) == ("Aoi", "Kato")
    assert body["orders_count"] == 3 and body["total_spent"] == "36000.00"
    assert body["currency"] == "JPY" and body["segment"] == "loyal"
    assert body["first_order_at"] == "2026-06-10T00:00:00+00:00"
    assert body["last_order_at"] == "2026-06-12T00:00:00+00:00"
    assert body["birthday"] == "1991-02-03" and body["email_marketing_state"] == "SUBSCRIBED"
    assert body["tags"] == []


def test_another_shops_customer_is_not_found(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """A token of shop A asking for a customer that only shop B has gets 404, not B's data;
    a request naming shop B in the query string is refused; no token gets 401."""
    put(conn, 777, shop=OTHER_SHOP)
    assert client.get("/api/customers/777", headers=auth(settings)).status_code == 404
    named = client.get(f"/api/customers/777?shop={OTHER_SHOP}", headers=auth(settings))
    assert named.status_code == 403
    assert client.get("/api/customers/777").status_code == 401
    assert client.get("/api/customers/777", headers=auth(settings, OTHER_SHOP)).status_code == 200


def test_segments_and_filtered_lists(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """Segment counts add up; a list filtered by segment and birthday month holds exactly the
    customers in both; a bad filter value gets 400 naming the field."""
    put(conn, 1, orders=1)
    put(conn, 2, orders=3)
    put(conn, 3, metafields=[{"namespace": "facts", "key": "birth_date", "value": "1990-03-01"}])
    put(conn, 4, orders=1, metafields=[{"namespace": "facts", "key": "birth_date",
                                        "value": "1990-03-09"}])  # fmt: skip
    counts = client.get("/api/segments", headers=auth(settings)).get_json()
    assert counts == {"prospect": 1, "new": 2, "repeat": 0, "loyal": 1, "dormant": 0,
                      "churned": 0}  # fmt: skip
    page = client.get("/api/customers?segment=new&birthday_month=3", headers=auth(settings))
    assert [c["id"] for c in page.get_json()["customers"]] == [4]
    bad = client.get("/api/customers?segment=vip", headers=auth(settings))
    assert bad.status_code == 400 and bad.get_json()["field"] == "segment"


def test_search_by_name_email_and_order_number(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """``q`` finds customers by email prefix, by name and by order number, from the search
    index; an unknown term finds nobody."""
    put(conn, 11, orders=1)
    put(conn, 12, first_name="Ren", last_name="Mori")

    def ids(q: str) -> list[int]:
        body = client.get(f"/api/customers?q={q}", headers=auth(settings)).get_json()
        return sorted(c["id"] for c in body["customers"])

    assert ids("c12@") == [12]
    assert ids("ren") == [12]
    assert ids("aoi") == [11]
    assert ids("%23110") == [11]  # "#110", the order name
    assert ids("zzz") == []


def test_csv_export_neutralises_formulas(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """A name starting with '=', '+', '-' or '@' is exported with a leading quote, so a
    spreadsheet shows it instead of running it; every filtered customer is a row."""
    put(conn, 21, first_name='=HYPERLINK("http://x")', last_name="+1")
    put(conn, 22, first_name="@SUM(A1)", last_name="-2")
    response = client.get("/api/customers.csv?consent=subscribed", headers=auth(settings))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(r["customer_id"] for r in rows) == ["21", "22"]
    for row in rows:
        for cell in (row["first_name"], row["last_name"]):
            assert cell[0] == "'", cell


def test_backfill_progress_and_data_export(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """Progress reads the backfill hash; the data export is the stored data-request JSON of
    that customer, and 404 for a customer the shop does not have."""
    conn.hset(backfill.progress_key(SHOP), mapping={
        "status": "running", "customers_line": 40, "orders_line": 2, "customers_total": 50,
        "started_at": NOW.isoformat(),
    })  # fmt: skip
    body = client.get("/api/backfill", headers=auth(settings)).get_json()
    assert body["status"] == "running" and body["rows_done"] == 42 and body["rows_total"] is None
    put(conn, 31, orders=1)
    privacy.store_export(conn, SHOP, 31, now=NOW, request_id=5)
    export = client.get("/api/customers/31/data_export", headers=auth(settings)).get_json()
    assert export["profile"]["email"] == "c31@example.com" and export["data_request_id"] == 5
    assert client.get("/api/customers/99/data_export", headers=auth(settings)).status_code == 404


def test_one_customer_carries_orders_and_enrolments(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """GET /api/customers/<id> adds the orders (newest first, a cancelled one flagged and still
    listed, line items summarised) and where the customer stands in each sequence: the active
    enrolment's version, next step and due time, and ``held_out`` for a sequence whose control
    group holds the customer. Another customer's enrolments must not show up."""
    from crm.enrolment import Enrolment
    from crm.templates import instantiate
    from worker import enrolment_store, sequence_store, steps

    put(conn, 601, orders=2)
    cancelled = events.parse("orders/cancelled", {
        "id": 6019, "name": "#6019", "created_at": "2026-06-20T00:00:00Z",
        "cancelled_at": "2026-06-21T00:00:00Z", "updated_at": "2026-06-21T00:00:00Z",
        "financial_status": "refunded", "currency": "JPY", "total_price": "800",
        "customer": {"id": 601},
        "line_items": [{"product_id": 77, "title": "Tea", "quantity": 2}],
    })  # fmt: skip
    profile = fold([cancelled], profile_store.load(conn, SHOP, 601))
    assert profile is not None
    profile_store.save(conn, SHOP, profile, now=NOW)
    walls = sequence_store.create(conn, SHOP, instantiate("four_walls"), NOW)
    winback = sequence_store.create(conn, SHOP, instantiate("winback"), NOW)
    due = datetime(2026, 7, 5, 1, tzinfo=UTC)
    for cid in (601, 602):
        enr = Enrolment(customer_id=cid, sequence_id=walls.id, version=1, cycle=1,
                        anchor_at=NOW, next_step=1, due_at=due, entered_at=NOW,
                        history=((0, int(NOW.timestamp())),))  # fmt: skip
        assert enrolment_store.commit(conn, SHOP, cid, walls.id, None, enr)
    conn.hset(steps.holdout_key(SHOP, winback.id), "601", f"1:{int(NOW.timestamp())}")

    body = client.get("/api/customers/601", headers=auth(settings)).get_json()
    assert body["orders_count"] == 2 and body["segment"] == "repeat"
    assert [o["name"] for o in body["orders"]] == ["#6019", "#6011", "#6010"]
    first = body["orders"][0]
    assert first["cancelled"] is True and first["total"] == "800.00" and first["items"] == 2
    assert first["line_items"] == [{"product_id": 77, "title": "Tea", "quantity": 2}]
    assert [o["cancelled"] for o in body["orders"][1:]] == [False, False]
    by_seq = {e["sequence_id"]: e for e in body["enrolments"]}
    assert set(by_seq) == {walls.id, winback.id}
    active = by_seq[walls.id]
    assert (active["status"], active["version"], active["step"]) == ("active", 1, "safety")
    assert active["steps_done"] == ["trust"] and active["due_at"] == due.isoformat()
    held = by_seq[winback.id]
    assert held["status"] == "held_out" and held["step"] is None and held["due_at"] is None

    other = client.get("/api/customers/501", headers=auth(settings))
    assert other.status_code == 404  # no such customer in this shop
    put(conn, 603)
    assert client.get("/api/customers/603", headers=auth(settings)).get_json()["enrolments"] == []
