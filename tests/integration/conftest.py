"""The Flask app most integration tests post to: the two test shops installed, the test clock."""

from __future__ import annotations

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.clock import FixedClock
from plugin.settings import Settings
from tests.integration.webhook_helpers import OTHER_SHOP, SHOP, install_shop


@pytest.fixture()
def app(settings: Settings, conn: redis.Redis, clock: FixedClock) -> Flask:
    install_shop(conn, SHOP)
    install_shop(conn, OTHER_SHOP)
    return create_app(settings, conn=conn, clock=clock)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()
