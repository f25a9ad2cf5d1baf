"""The ``fstack`` fixture: see :mod:`tests.fault.harness`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from plugin import shops
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from tests.fault.harness import API_KEY, API_SECRET, SHOP, START, TZ, FaultStack
from tests.fixtures.devstore import Devstore


@pytest.fixture()
def fstack(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FaultStack]:
    """The app (HTTP, ephemeral port) + the devstore + one Redis + the dev clock at START, the
    shop installed (offline token stored encrypted) with its facts."""
    devstore.set_time(START)
    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda e, s: holder["app"](e, s), threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    env = (
        test_env
        | devstore.env()
        | {
            "SHOPIFY_APP_URL": base,
            "SHOPIFY_API_KEY": API_KEY,
            "SHOPIFY_API_SECRET": API_SECRET,
            "KIZUNA_DEV_CLOCK": "1",
        }
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the RQ jobs build their settings from the environment
    settings = Settings.from_env(env)
    clock = DevClock(conn)
    holder["app"] = create_app(settings, conn=conn, clock=clock)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    devstore.create_shop(SHOP, name="Fault", timezone=TZ, currency="JPY")
    token = devstore.install(SHOP, base, API_KEY, API_SECRET)
    cipher = TokenCipher.from_settings(settings)
    grant = shops.Grant(access_token=token, scopes=("read_customers", "write_customers"))
    shops.install(conn, cipher, SHOP, grant, clock.now())
    shops.set_facts(conn, SHOP, shops.ShopFacts("Fault", TZ, "JPY", "Basic"))
    stack = FaultStack(base, devstore, conn, clock, settings, env, server, thread)
    try:
        yield stack
    finally:
        stack.stop_procs()
        server.shutdown()
        server.server_close()
        thread.join(5)
