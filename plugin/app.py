"""The Flask app factory.

Resources (settings, Redis, the clock) are made once here and kept on ``app.extensions``;
blueprints read them from there, never from module globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Flask, current_app, jsonify, redirect, request

from .clock import Clock, DevClock, SystemClock
from .connections import connect
from .settings import Settings


@dataclass
class Resources:
    settings: Settings
    redis: redis.Redis
    clock: Clock


def create_app(
    settings: Settings | None = None,
    *,
    conn: redis.Redis | None = None,
    clock: Clock | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.api_secret
    app.config["MAX_CONTENT_LENGTH"] = 5 * 1024 * 1024
    conn = conn or connect(settings.redis_url)
    if clock is None:
        clock = DevClock(conn) if settings.dev_clock else SystemClock()
    app.extensions["kizuna"] = Resources(settings=settings, redis=conn, clock=clock)

    # Blueprints: one per surface. Each engineer adds their own line here.
    from webhooks.receiver import bp as webhooks_bp

    app.register_blueprint(webhooks_bp)
    # app.toml's webhook URIs are relative to application_url, which ends in /app: answer
    # under that prefix too, whichever way the relative URI is joined.
    prefix = urlsplit(settings.app_config.application_url).path.rstrip("/")
    if prefix:
        app.register_blueprint(webhooks_bp, url_prefix=prefix, name="webhooks_under_app")
    from .auth import api as shop_api_bp
    from .auth import bp as auth_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(shop_api_bp)
    from .api_customers import bp as api_customers_bp

    app.register_blueprint(api_customers_bp)
    from .api_sequences import bp as sequences_api_bp

    app.register_blueprint(sequences_api_bp)
    from .api_analytics import bp as analytics_api_bp
    from .api_settings import bp as settings_api_bp
    from .embedded import bp as embedded_bp

    app.register_blueprint(embedded_bp)
    app.register_blueprint(analytics_api_bp)
    app.register_blueprint(settings_api_bp)

    home = urlsplit(settings.app_config.application_url).path.rstrip("/")
    if home:

        @app.get("/")
        def root() -> Any:
            """An admin that opens the app's base URL lands on the embedded page, query kept."""
            query = request.query_string.decode()
            return redirect(f"{home}?{query}" if query else home)

    @app.get("/healthz")
    def healthz() -> Any:
        resources().redis.ping()
        return jsonify(ok=True)

    # Last, once every route is known: webhook POSTs are answered without Flask's request
    # handling (see webhooks/receiver.py).
    from webhooks.receiver import install_shortcut

    install_shortcut(app)
    return app


def resources() -> Resources:
    """The current app's resources (inside a request or app context)."""
    res: Resources = current_app.extensions["kizuna"]
    return res
