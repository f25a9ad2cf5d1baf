"""Helpers that sign and post webhooks the way Shopify does, and run the webhook worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from werkzeug.test import TestResponse

from plugin import shops
from plugin.appconfig import load_app_config
from plugin.crypto import TokenCipher
from plugin.settings import DEV_API_SECRET, DEV_ENCRYPTION_KEY
from plugin.shops import Grant
from tests.conftest import SHOPIFY_SHARED, shared_or_skip
from webhooks.verify import sign
from worker.queues import WEBHOOKS

SHOP = "kizuna-test.myshopify.com"
OTHER_SHOP = "other-test.myshopify.com"


def sample(topic: str) -> dict[str, Any]:
    """Shopify's sample payload for ``topic`` (skips when ../shared is absent)."""
    name = topic.replace("/", "_").replace(".", "_") + ".json"
    path = shared_or_skip(SHOPIFY_SHARED / "webhooks" / name)
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def uri_for(topic: str) -> str:
    return load_app_config().uri_for(topic)


def install_shop(conn: redis.Redis, shop: str = SHOP) -> None:
    """Install ``shop`` the way the app does (a shop record with an encrypted token)."""
    cipher = TokenCipher([DEV_ENCRYPTION_KEY])
    grant = Grant(access_token="shpat-test", scopes=("read_customers", "read_orders"))
    shops.install(conn, cipher, shop, grant, datetime(2026, 7, 1, tzinfo=UTC))


def post_webhook(
    client: FlaskClient,
    topic: str,
    payload: Mapping[str, Any] | bytes | str,
    *,
    shop: str = SHOP,
    webhook_id: str | None = None,
    secret: str = DEV_API_SECRET,
    uri: str | None = None,
    hmac: str | None = None,
    headers: Mapping[str, str] | None = None,
    omit: tuple[str, ...] = (),
) -> TestResponse:
    """POST ``payload`` to the route for ``topic`` signed with ``secret`` (or ``hmac`` as given).

    ``omit`` drops named headers, ``headers`` adds or overrides some.
    """
    if isinstance(payload, bytes):
        body = payload
    elif isinstance(payload, str):
        body = payload.encode("utf-8")
    else:
        body = json.dumps(payload).encode("utf-8")
    all_headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(secret, body) if hmac is None else hmac,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-API-Version": "2026-07",
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": "2026-07-01T00:00:00Z",
    }
    all_headers.update(headers or {})
    for name in omit:
        all_headers.pop(name, None)
    return client.post(uri or uri_for(topic), data=body, headers=all_headers)


def run_worker(conn: redis.Redis) -> None:
    """Process everything on the webhooks queue with a real RQ worker, then return."""
    queue = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer)
    SimpleWorker([queue], connection=conn, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False
    )


def key_dump(conn: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and value (to show that nothing changed)."""
    out: dict[bytes, Any] = {}
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key)
        if kind == b"string":
            out[key] = conn.get(key)
        elif kind == b"hash":
            out[key] = conn.hgetall(key)
        elif kind == b"set":
            out[key] = conn.smembers(key)
        elif kind == b"list":
            out[key] = conn.lrange(key, 0, -1)
        elif kind == b"zset":
            out[key] = conn.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


def sample_path(name: str) -> Path:
    return shared_or_skip(SHOPIFY_SHARED / "webhooks" / name)
