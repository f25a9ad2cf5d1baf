"""Redis connection factory, production durability check, RQ JSON + Retry, the dev clock."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq.serializers import JSONSerializer

from crm.errors import ConfigError
from plugin.clock import DevClock
from plugin.connections import check_durable, connect
from worker.queues import enqueue, get_queue


def test_connect_uses_the_given_url(conn: redis.Redis, redis_url: str) -> None:
    other = connect(redis_url)
    other.set("k", "v")
    assert conn.get("k") == b"v"


def test_durability_check_refuses_an_evicting_or_volatile_redis(conn: redis.Redis) -> None:
    """Tried: the check against this Redis as configured. Must not: pass unless it is durable."""
    memory, persistence = conn.info("memory"), conn.info("persistence")
    durable = memory["maxmemory_policy"] == "noeviction" and persistence["aof_enabled"]
    if durable:
        check_durable(conn)
    else:
        with pytest.raises(ConfigError, match="REDIS_URL"):
            check_durable(conn)


def test_enqueue_uses_json_and_always_retries(conn: redis.Redis) -> None:
    job = enqueue(conn, "worker.queues.default_retry", 1, "a", queue="default", x=2)
    assert job.retries_left and job.retries_left > 0
    assert get_queue(conn).serializer is JSONSerializer
    raw = conn.hget(job.key, "data")
    assert raw is not None
    assert json.loads(zlib.decompress(raw)) == [
        "worker.queues.default_retry",
        None,
        [1, "a"],
        {"x": 2},
    ]


def test_enqueue_refuses_function_objects(conn: redis.Redis) -> None:
    with pytest.raises(TypeError):
        enqueue(conn, print)  # type: ignore[arg-type]


def test_dev_clock_is_shared_through_redis(conn: redis.Redis) -> None:
    a, b = DevClock(conn), DevClock(conn)
    a.set(datetime(2027, 1, 1, tzinfo=UTC))
    assert abs(b.now() - datetime(2027, 1, 1, tzinfo=UTC)) < timedelta(seconds=5)
    b.advance(timedelta(days=30))
    assert abs(a.now() - datetime(2027, 1, 31, tzinfo=UTC)) < timedelta(seconds=5)


def test_cli_stops_on_a_bad_setting_with_one_line() -> None:
    """Tried: `kizuna worker` with a malformed key. Must not: start; one line names it."""
    out = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "worker", "--burst"],
        env={"KIZUNA_ENCRYPTION_KEY": "nope", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "KIZUNA_ENCRYPTION_KEY" in lines[0]


def test_the_base_url_lands_on_the_embedded_page(settings, conn) -> None:
    """An admin that frames SHOPIFY_APP_URL itself must reach /app with its query intact."""
    from plugin.app import create_app

    client = create_app(settings, conn=conn).test_client()
    response = client.get("/?embedded=1&shop=a.myshopify.com")
    assert response.status_code == 302
    assert response.headers["Location"] == "/app?embedded=1&shop=a.myshopify.com"
