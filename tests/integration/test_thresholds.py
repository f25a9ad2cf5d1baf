"""Threshold changes: the settings API, the re-save job on a real RQ worker, and the lists that
follow; the loyal spend default in the shop's currency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.serializers import JSONSerializer

from devstore import idtoken
from plugin import shops
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.settings import Settings
from tests.integration.test_segment_refresh import make_profile, work
from tests.integration.webhook_helpers import SHOP, install_shop
from worker import profile_store
from worker.ingest import thresholds_for
from worker.queues import BULK

T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)


@pytest.fixture()
def client(
    conn: redis.Redis,
    settings: Settings,
    test_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FlaskClient]:
    """The app for a USD shop on the shared dev clock (the jobs read the same clock)."""
    for name, value in (test_env | {"KIZUNA_DEV_CLOCK": "1"}).items():
        monkeypatch.setenv(name, value)
    install_shop(conn)
    shops.set_facts(conn, SHOP, shops.ShopFacts("Vita", "America/New_York", "USD", "Basic"))
    clock = DevClock(conn)
    clock.set(T0)
    yield create_app(settings, conn=conn, clock=clock).test_client()


def _headers(settings: Settings, now: datetime = T0) -> dict[str, str]:
    token = idtoken.mint(SHOP, api_key=settings.api_key, api_secret=settings.api_secret, now=now)
    return {"Authorization": f"Bearer {token}"}


def _resave_jobs(conn: redis.Redis) -> list[str]:
    ids = Queue(BULK, connection=conn, serializer=JSONSerializer).get_job_ids()
    return [i for i in ids if i.startswith("resave-")]


def _seed(conn: redis.Redis) -> None:
    """Customers filed with the thresholds in force (as ingest does)."""
    limits = thresholds_for(conn, SHOP)
    spend = [T0 - timedelta(days=d) for d in (100, 60, 40)]
    for cid, orders, total in ((1, spend, "100"), (2, spend, "50"), (3, spend[2:], "90")):
        p = make_profile(cid, orders, total=total)
        profile_store.save(conn, SHOP, p, now=T0, thresholds=limits)


def test_loyal_spend_default_follows_the_shop_currency(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """With nothing saved, a USD shop's loyal spend is $200 (not ¥30,000 read as dollars), in
    the settings API and in the lists: three orders of $100 make a loyal customer."""
    body = client.get("/api/settings", headers=_headers(settings)).get_json()
    assert body["settings"]["loyal_min_spent"] == "200"
    assert body["defaults"]["loyal_min_spent"] == "200"
    assert thresholds_for(conn, SHOP).loyal_min_spent == 200
    _seed(conn)
    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts.get("segment:loyal") == 1 and counts.get("segment:repeat") == 1


def test_changed_thresholds_move_every_profile(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """Saving new thresholds queues one re-save job; after it ran, ``count_by_segment`` and
    ``/api/segments`` reflect them (loyal needs $1,000 now; dormant after 50 days). Saving
    only the holdout percentage, or an invalid value (422), must queue no re-save."""
    _seed(conn)
    headers = _headers(settings)
    saved = client.put("/api/settings", headers=headers,
                       json={"loyal_min_spent": "1000", "dormant_days": 50})  # fmt: skip
    assert saved.status_code == 200, saved.get_data(as_text=True)
    assert len(_resave_jobs(conn)) == 1
    assert profile_store.count_by_segment(conn, SHOP).get("segment:loyal") == 1  # not yet
    work(conn)

    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts.get("segment:loyal", 0) == 0
    assert counts.get("segment:repeat") == 2 and counts.get("segment:new") == 1
    segments: dict[str, Any] = client.get("/api/segments", headers=headers).get_json()
    assert (segments["loyal"], segments["repeat"], segments["new"]) == (0, 2, 1)

    clock = DevClock(conn)
    clock.set(T0 + timedelta(days=15))  # the last orders turn 55 days old
    headers = _headers(settings, clock.now())
    assert (
        client.put("/api/settings", headers=headers, json={"dormant_days": 40}).status_code == 200
    )
    work(conn)
    assert profile_store.count_by_segment(conn, SHOP).get("segment:dormant") == 3

    assert (
        client.put("/api/settings", headers=headers, json={"holdout_percent": 10}).status_code
        == 200
    )
    bad = client.put("/api/settings", headers=headers, json={"dormant_days": 900})
    assert bad.status_code == 422
    assert _resave_jobs(conn) == []
