"""A small Flask app with the devstore's data blueprints, for in-process tests."""

from __future__ import annotations

from typing import Any

from flask import Flask

from devstore import admin_api, control, tokens
from plugin.clock import FixedClock

SHOP = "kizuna-test.myshopify.com"
URL = f"/store/{SHOP}/admin/api/2026-07/graphql.json"


def devstore_app(conn: Any, clock: FixedClock) -> Flask:
    app = Flask("devstore-test")
    app.extensions["devstore"] = {"conn": conn, "clock": clock}
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(control.bp)
    return app


class Admin:
    """Posts GraphQL documents to one shop with a real access token."""

    def __init__(self, client: Any, conn: Any, clock: FixedClock, shop: str = SHOP) -> None:
        self.client = client
        self.shop = shop
        self.token = tokens.mint_offline(
            conn, shop, scope="read_customers", now=clock.now()
        ).access_token

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.client.post(
            f"/store/{self.shop}/admin/api/2026-07/graphql.json",
            json={"query": query, "variables": variables or {}},
            headers={"X-Shopify-Access-Token": self.token},
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body: dict[str, Any] = resp.get_json()
        return body
