"""The devstore's Flask app, its control endpoints, and ``kizuna devstore``.

``create_devstore_app(conn, clock)`` registers every devstore surface: the OAuth endpoints and
the admin frame (:mod:`devstore.oauth`, :mod:`devstore.frame`), the Admin GraphQL API and the
data control endpoints (:mod:`devstore.admin_api`, :mod:`devstore.control`), and the control
endpoints kept here — install / uninstall, the clock, webhook faults, the delivery log and flush,
and ID tokens for tests:

=======================================================  ==========================================
``POST /_devstore/shops/<shop>/install``                 ``{"app_url", "api_key", "api_secret"}``
                                                         → ``{"access_token": "shpat_…"}``
``POST /_devstore/shops/<shop>/uninstall``               revoke tokens, ``app/uninstalled`` now,
                                                         ``shop/redact`` 48 h later
``POST /_devstore/shops/<shop>/revoke_tokens``           revoke every token, the app stays
                                                         installed (Admin calls get 401 until
                                                         the app trades a new ID token)
``GET|POST /_devstore/clock``                            ``{"now": ISO}`` or ``{"advance": "P30D"}``
``GET|POST /_devstore/shops/<shop>/webhook_faults``      ``{"drop_percent", "duplicates",
                                                         "out_of_order", "late_seconds"|"late"}``
``GET /_devstore/webhooks/log``                          every attempt (``?shop=&topic=``)
``POST /_devstore/webhooks/flush``                       deliver all that is due now, and wait
``POST /_devstore/shops/<shop>/id_token``                a fresh ID token (``{"user_id"}``)
=======================================================  ==========================================
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import isodate
import redis
import requests
from flask import Blueprint, Flask, current_app, jsonify, request

from plugin.appconfig import AppConfig, load_app_config
from plugin.clock import Clock, DevClock
from plugin.connections import connect
from plugin.settings import Settings

from . import idtoken, oauth, tokens, webhooks_out

log = logging.getLogger(__name__)

DEMO_SHOP = "kizuna-demo.myshopify.com"
SHOP_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-]*\.myshopify\.com$")

bp = Blueprint("devstore_edges", __name__)


@dataclass
class DevstoreResources:
    """What every devstore blueprint reads from ``app.extensions["devstore"]``.

    Read by attribute (``res.conn``) or by key (``res["conn"]``): both styles are in use.
    """

    conn: redis.Redis
    clock: Clock
    settings: Settings | None
    app_config: AppConfig

    def __getitem__(self, name: str) -> Any:
        if name not in {"conn", "clock", "settings", "app_config"}:
            raise KeyError(name)
        return getattr(self, name)


def create_devstore_app(conn: redis.Redis, clock: Clock, settings: Settings | None = None) -> Flask:
    """The devstore app. Starts no thread: deliveries go out on flush or a DeliveryThread."""
    from . import admin_api, control, frame

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 20 * 1024 * 1024
    app_config = settings.app_config if settings is not None else load_app_config()
    app.extensions["devstore"] = DevstoreResources(
        conn=conn, clock=clock, settings=settings, app_config=app_config
    )
    app.register_blueprint(bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(frame.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(control.bp)
    return app


def _res() -> DevstoreResources:
    res: DevstoreResources = current_app.extensions["devstore"]
    return res


def _error(status: int, message: str) -> Any:
    return jsonify(error=message), status


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@bp.get("/_devstore/healthz")
def healthz() -> Any:
    _res().conn.ping()
    return jsonify(ok=True, now=_res().clock.now().isoformat())


# -- installing -------------------------------------------------------------------------------


@bp.post("/_devstore/shops/<shop>/install")
def install(shop: str) -> Any:
    if not SHOP_RE.match(shop):
        return _error(400, f"not a shop domain: {shop!r}")
    body = _body()
    missing = [k for k in ("app_url", "api_key", "api_secret") if not body.get(k)]
    if missing:
        return _error(400, f"missing {', '.join(missing)}")
    app_url = str(body["app_url"])
    if not app_url.startswith(("http://", "https://")):
        return _error(400, "app_url must be an absolute http(s) URL")
    res = _res()
    try:
        grant = oauth.install(
            res.conn,
            res.clock,
            shop,
            api_key=str(body["api_key"]),
            api_secret=str(body["api_secret"]),
            app_url=app_url,
            config=res.app_config,
        )
    except LookupError:
        return _error(404, f"no such shop: {shop}")
    return jsonify(grant.body())


@bp.post("/_devstore/shops/<shop>/uninstall")
def uninstall(shop: str) -> Any:
    res = _res()
    try:
        revoked = oauth.uninstall(res.conn, res.clock, shop)
    except LookupError:
        return _error(404, f"the app is not installed on {shop}")
    return jsonify(ok=True, revoked_tokens=revoked)


@bp.post("/_devstore/shops/<shop>/revoke_tokens")
def revoke_tokens(shop: str) -> Any:
    """Revoke the shop's access and refresh tokens without uninstalling: what a merchant's
    password reset or Shopify's revocation looks like to the app."""
    res = _res()
    app = oauth.installed_app(res.conn, shop)
    if app is None or not app.installed:
        return _error(404, f"the app is not installed on {shop}")
    return jsonify(ok=True, revoked_tokens=tokens.revoke_shop(res.conn, shop))


@bp.post("/_devstore/shops/<shop>/id_token")
def id_token(shop: str) -> Any:
    res = _res()
    app = oauth.installed_app(res.conn, shop)
    if app is None:
        return _error(404, f"the app is not installed on {shop}")
    body = _body()
    token = idtoken.mint(
        shop,
        api_key=app.api_key,
        api_secret=app.api_secret,
        now=res.clock.now(),
        user_id=int(body.get("user_id", idtoken.DEFAULT_USER_ID)),
    )
    return jsonify(id_token=token)


# -- the clock --------------------------------------------------------------------------------


def parse_duration(text: str, now: datetime) -> timedelta:
    """An ISO 8601 duration as a timedelta from ``now`` (``P1M`` is a calendar month)."""
    value = isodate.parse_duration(text)
    if isinstance(value, timedelta):
        return value
    moved: datetime = now + value
    return moved - now


@bp.route("/_devstore/clock", methods=["GET", "POST"])
def clock_control() -> Any:
    res = _res()
    clock = res.clock
    if request.method == "POST":
        body = _body()
        try:
            if "now" in body:
                at = datetime.fromisoformat(str(body["now"]).replace("Z", "+00:00"))
                if at.tzinfo is None:
                    return _error(400, "now: give a time with a UTC offset")
                _set_clock(clock, at)
            elif "advance" in body:
                delta = parse_duration(str(body["advance"]), clock.now())
                if delta < timedelta(0):
                    return _error(400, "advance: the clock only moves forward")
                _advance_clock(clock, delta)
            else:
                return _error(400, 'give {"now": ISO time} or {"advance": ISO duration}')
        except (ValueError, isodate.ISO8601Error) as exc:
            return _error(400, f"not understood: {exc}")
    return jsonify(now=clock.now().isoformat())


def _set_clock(clock: Clock, at: datetime) -> None:
    if isinstance(clock, DevClock):
        clock.set(at)
    elif hasattr(clock, "at"):
        clock.at = at
    else:
        raise ValueError("this devstore's clock cannot be moved")


def _advance_clock(clock: Clock, delta: timedelta) -> None:
    advance = getattr(clock, "advance", None)
    if advance is None:
        raise ValueError("this devstore's clock cannot be moved")
    advance(delta)


# -- webhooks ---------------------------------------------------------------------------------


@bp.route("/_devstore/shops/<shop>/webhook_faults", methods=["GET", "POST"])
def webhook_faults(shop: str) -> Any:
    res = _res()
    if request.method == "POST":
        body = _body()
        try:
            late = int(body.get("late_seconds", 0))
            if body.get("late"):
                late = int(parse_duration(str(body["late"]), res.clock.now()).total_seconds())
            faults = webhooks_out.Faults(
                drop_percent=int(body.get("drop_percent", 0)),
                duplicates=bool(body.get("duplicates", False)),
                out_of_order=bool(body.get("out_of_order", False)),
                late_seconds=late,
            )
            webhooks_out.set_faults(res.conn, shop, faults)
        except (TypeError, ValueError, isodate.ISO8601Error) as exc:
            return _error(400, f"bad fault switches: {exc}")
    return jsonify(asdict(webhooks_out.get_faults(res.conn, shop)))


@bp.get("/_devstore/webhooks/log")
def webhook_log() -> Any:
    entries = webhooks_out.attempts(
        _res().conn, shop=request.args.get("shop"), topic=request.args.get("topic")
    )
    return jsonify(attempts=[asdict(a) for a in entries])


@bp.post("/_devstore/webhooks/flush")
def webhook_flush() -> Any:
    res = _res()
    made = webhooks_out.flush(res.conn, now=res.clock.now())
    return jsonify(attempts=made, pending=webhooks_out.pending(res.conn))


# -- running it -------------------------------------------------------------------------------


def main(settings: Settings, args: argparse.Namespace) -> int:
    """``kizuna devstore [--host H] [--port P] [serve|seed]``."""
    from werkzeug.serving import run_simple

    conn = connect(settings.redis_url)
    clock = DevClock(conn)
    if getattr(args, "action", "serve") == "seed":
        print(seed_demo(conn, clock, settings, app_url=settings.app_url))
        return 0
    app = create_devstore_app(conn, clock, settings)
    sender = webhooks_out.DeliveryThread(conn, clock)
    sender.start()
    host = getattr(args, "host", "127.0.0.1")
    try:
        run_simple(host, args.port, app, threaded=True, use_reloader=False)
    finally:
        sender.stop()
    return 0


def seed_demo(
    conn: redis.Redis,
    clock: Clock,
    settings: Settings,
    *,
    app_url: str,
    shop: str = DEMO_SHOP,
    customers: int = 300,
) -> str:
    """Create and seed the demo shop if absent, (re)install the app; answer the shop."""
    from .seed import seed
    from .state import Store

    store = Store(conn, clock)
    if store.get_shop(shop) is None:
        store.create_shop(shop, name="Kizuna Demo", timezone="Asia/Tokyo", currency="JPY")
        seed(store, shop, customers=customers, now=clock.now())
    store.ensure_customer_order_index(shop)
    app = oauth.installed_app(conn, shop)
    if app is None or not app.installed or app.app_url != app_url.rstrip("/"):
        oauth.install(
            conn,
            clock,
            shop,
            api_key=settings.api_key,
            api_secret=settings.api_secret,
            app_url=app_url,
            config=settings.app_config,
        )
    return shop


def wait_and_seed(env: dict[str, str], port: int, timeout: float) -> str:
    """Wait for the devstore on ``port``, seed the demo shop, install the app; answer the admin URL.

    Used by ``kizuna run``: ``env`` is the environment the app runs with (its
    ``SHOPIFY_APP_URL``, secrets and Redis), so the devstore installs exactly that app.
    """
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base}/_devstore/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the devstore did not answer on port {port} within {timeout}s")
        time.sleep(0.1)
    settings = Settings.from_env(env)
    conn = connect(settings.redis_url)
    try:
        shop = seed_demo(conn, DevClock(conn), settings, app_url=settings.app_url)
    finally:
        conn.close()
    return f"{base}/store/{shop}/admin/apps/{_handle()}"


def _handle() -> str:
    from .frame import APP_HANDLE

    return APP_HANDLE
