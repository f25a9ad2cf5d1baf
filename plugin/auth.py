"""Install and authentication: the embedded page's document load, the bounce page, and the
authorization-code grant.

- ``GET /app`` — the admin loads the embedded page with an ``id_token``. A valid one for a shop
  without a usable token is traded for an expiring offline token (managed install); an invalid
  or missing one gets Shopify's bounce page, which makes App Bridge reload the page with a
  fresh token (``shopify-reload``).
- ``GET /auth/session-token`` — the bounce page itself.
- ``GET /auth`` and ``GET /auth/callback`` — the legacy, non-embedded install: ``state`` nonce
  (signed, single use, in a cookie too), Shopify's query HMAC, timestamp freshness, the code
  traded, the granted scopes checked against ``app.toml``.
- ``GET /api/shop`` — the first guarded API route: the shop's record minus secrets.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import redis
import shopify
from flask import Blueprint, Response, current_app, g, jsonify, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeSerializer

from crm.errors import ShopifyError, ShopUnavailable, TransientShopifyError, ValidationError

from . import shops, tokens
from .crypto import TokenCipher
from .guard import add_frame_ancestors, authenticate_api_request, require_session
from .session_token import InvalidSessionToken, SessionToken, verify_session_token
from .settings import Settings
from .shops import Grant, ShopRecord, Status

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
api = Blueprint("shop_api", __name__, url_prefix="/api")
bp.before_app_request(authenticate_api_request)
bp.after_app_request(add_frame_ancestors)

APP_BRIDGE_CDN = "https://cdn.shopify.com/shopifycloud/app-bridge.js"
APP_HANDLE = "kizuna"  # app.toml's ``handle``: the app's path in the admin
STATE_COOKIE = "kizuna_oauth_state"
STATE_TTL = 600  # seconds a code-grant round trip may take
CALLBACK_MAX_AGE = 600  # seconds: older callback timestamps are stale
CALLBACK_MAX_SKEW = 60  # seconds a callback timestamp may lie in the future


def _kizuna() -> Any:
    return current_app.extensions["kizuna"]


def app_bridge_src(settings: Settings, shop: str) -> str:
    """Shopify's CDN script; against the devstore, its stand-in for that shop."""
    if settings.against_shopify:
        return APP_BRIDGE_CDN
    return f"{settings.shop_origin(shop)}/admin/app-bridge.js"


def admin_app_url(settings: Settings, shop: str) -> str:
    return f"{settings.shop_origin(shop)}/admin/apps/{APP_HANDLE}"


def _error_page(status: int, message: str) -> tuple[str, int]:
    return render_template("auth_error.html", message=message), status


# -- the embedded page's document load (managed install) ----------------------------------------


@bp.get("/app")
def app_home() -> Any:
    res = _kizuna()
    settings: Settings = res.settings
    shop_param = request.args.get("shop")
    raw_token = request.args.get("id_token", "")
    try:
        session = verify_session_token(
            raw_token, api_key=settings.api_key, api_secret=settings.api_secret, now=res.clock.now()
        )
    except InvalidSessionToken:
        return bounce_or_refuse(shop_param)
    if shop_param is not None and _normalized(shop_param) != session.shop:
        return _error_page(400, "The shop parameter does not match the session.")
    g.csp_shop = session.shop
    try:
        record = _ensure_installed(res.redis, settings, session, res.clock.now())
    except tokens.TokenRejected:
        # Shopify refused the ID token at exchange (expired on the way…): fetch a fresh one.
        return bounce_or_refuse(session.shop)
    except TransientShopifyError:
        return _error_page(503, "Shopify could not be reached. Please reload in a moment.")
    return render_template(
        "app_home.html",
        shop=session.shop,
        record=record,
        api_key=settings.api_key,
        app_bridge_src=app_bridge_src(settings, session.shop),
    )


def _normalized(value: str) -> str | None:
    try:
        return shops.normalize_shop(value)
    except ValidationError:
        return None


def bounce_or_refuse(shop_param: str | None) -> Any:
    shop = _normalized(shop_param) if shop_param else None
    if shop is None:
        return _error_page(400, "Open Kizuna from your Shopify admin.")
    settings: Settings = _kizuna().settings
    query = [(k, v) for k, v in request.args.items(multi=True) if k != "id_token"]
    reload_url = f"{settings.app_url}{request.path}?{urlencode(query)}"
    bounce = [("shop", shop), ("shopify-reload", reload_url)]
    if request.args.get("host"):
        bounce.insert(1, ("host", request.args["host"]))
    return redirect(f"/auth/session-token?{urlencode(bounce)}", code=302)


@bp.get("/auth/session-token")
def session_token_bounce() -> Any:
    """Shopify's bounce page: App Bridge loads, takes a fresh ID token and reloads
    ``shopify-reload`` with it."""
    shop = _normalized(request.args.get("shop", ""))
    if shop is None:
        return _error_page(400, "Open Kizuna from your Shopify admin.")
    settings: Settings = _kizuna().settings
    g.csp_shop = shop
    return render_template(
        "bounce.html", api_key=settings.api_key, app_bridge_src=app_bridge_src(settings, shop)
    )


def _ensure_installed(
    conn: redis.Redis, settings: Settings, session: SessionToken, now: datetime
) -> ShopRecord:
    """Trade the ID token when the shop has no usable token; otherwise change nothing."""
    record = shops.load(conn, session.shop)
    if (
        record is not None
        and record.status is Status.INSTALLED
        and record.encrypted_access_token is not None
        and not shops.missing_scopes(settings.app_config.scopes, record.scopes)
    ):
        return record
    grant = tokens.exchange_id_token(settings, session.shop, session.token, now)
    return _store_install(conn, settings, session.shop, grant, now, via="token_exchange")


def _store_install(
    conn: redis.Redis, settings: Settings, shop: str, grant: Grant, now: datetime, *, via: str
) -> ShopRecord:
    from worker.app_events import fetch_shop_facts, schedule_after_install
    from worker.reauth import schedule_resume

    cipher = TokenCipher.from_settings(settings)
    done = shops.install_grant(conn, cipher, shop, grant, now)
    record = done.record
    what = "installed" if done.fresh else "re-authorised"
    log.info("shop %s (%s)", what, via, extra={"shop": shop})
    if done.resumed is not None:
        # The shop was paused for re-auth: its paused and failed work resumes in a worker.
        schedule_resume(conn, shop, record.generation, done.resumed)
    if record.facts is None:
        try:  # the page shows the shop's name; the after-install job retries if this fails
            fetch_shop_facts(conn, settings, shop, grant.access_token)
        except (ShopifyError, ShopUnavailable) as exc:
            reason = type(exc).__name__
            log.warning("shop facts not read at install (%s)", reason, extra={"shop": shop})
    schedule_after_install(conn, shop, record.generation)
    loaded = shops.load(conn, shop)
    assert loaded is not None
    return loaded


# -- the authorization-code grant ---------------------------------------------------------------


def _state_serializer(settings: Settings) -> URLSafeSerializer:
    return URLSafeSerializer(settings.api_secret, salt="kizuna-oauth-state")


def _state_key(nonce: str) -> str:
    return f"kizuna:oauth-state:{nonce}"


@bp.get("/auth")
def auth_start() -> Any:
    res = _kizuna()
    settings: Settings = res.settings
    shop = _normalized(request.args.get("shop", ""))
    if shop is None:
        return _error_page(400, "Enter your shop's domain: name.myshopify.com.")
    nonce = secrets.token_urlsafe(24)
    issued = int(res.clock.now().timestamp())
    state = _state_serializer(settings).dumps({"n": nonce, "s": shop, "t": issued})
    res.redis.set(_state_key(nonce), shop, ex=STATE_TTL)
    params = {
        "client_id": settings.api_key,
        "scope": ",".join(settings.app_config.scopes),
        "redirect_uri": f"{settings.app_url}/auth/callback",
        "state": state,
    }
    response = redirect(
        f"{settings.shop_origin(shop)}/admin/oauth/authorize?{urlencode(params)}", code=302
    )
    response.set_cookie(
        STATE_COOKIE,
        state,
        max_age=STATE_TTL,
        httponly=True,
        secure=settings.app_url.startswith("https://"),
        samesite="Lax",
        path="/auth",
    )
    return response


def valid_query_hmac(params: Mapping[str, str], secret: str) -> bool:
    """ShopifyAPI's ``Session.validate_hmac`` over the callback's query parameters.

    ShopifyAPI keeps the secret on the ``shopify.Session`` class (``Session.setup``), global to
    the process. Setting it there could leak between settings (and threads), so the check runs
    on a throwaway subclass that carries this secret as its own class attribute; the global
    class is never touched. Its ``validate_params`` is not used because its freshness check
    reads the wall clock with a one-day window; freshness is checked against Kizuna's clock.
    """
    session_class: Any = type("KizunaOAuthSession", (shopify.Session,), {"secret": secret})
    return bool(session_class.validate_hmac(dict(params)))


@bp.get("/auth/callback")
def auth_callback() -> Any:
    res = _kizuna()
    settings: Settings = res.settings
    if any(len(values) > 1 for values in request.args.listvalues()):
        return _error_page(400, "A parameter is repeated.")
    params = request.args.to_dict()
    shop = _normalized(params.get("shop", ""))
    if shop is None:
        return _error_page(400, "Not a valid shop domain.")
    state = params.get("state", "")
    cookie = request.cookies.get(STATE_COOKIE, "")
    if not state or not cookie or not hmac.compare_digest(state, cookie):
        return _error_page(403, "The sign-in request is missing or does not match. Start again.")
    try:
        claims = _state_serializer(settings).loads(state)
    except BadSignature:
        return _error_page(403, "The sign-in request was not issued by Kizuna. Start again.")
    now = res.clock.now()
    if (
        not isinstance(claims, dict)
        or claims.get("s") != shop
        or not isinstance(claims.get("t"), int)
        or now.timestamp() - claims["t"] > STATE_TTL
    ):
        return _error_page(403, "The sign-in request has expired or names another shop.")
    if not valid_query_hmac(params, settings.api_secret):
        return _error_page(403, "The request's signature does not verify.")
    try:
        stamp = int(params.get("timestamp", ""))
    except ValueError:
        return _error_page(403, "The request carries no valid timestamp.")
    age = now.timestamp() - stamp
    if age > CALLBACK_MAX_AGE or age < -CALLBACK_MAX_SKEW:
        return _error_page(403, "The request is stale. Start again.")
    # Single use: the nonce is consumed before the code is traded.
    if res.redis.getdel(_state_key(str(claims.get("n")))) != shop.encode():
        return _error_page(403, "The sign-in request was already used. Start again.")
    code = params.get("code", "")
    if not code:
        return _error_page(400, "The request carries no authorization code.")
    try:
        grant = tokens.exchange_code(settings, shop, code, now)
    except tokens.TokenRejected:
        return _error_page(403, "Shopify refused the authorization code. Start again.")
    except TransientShopifyError:
        return _error_page(503, "Shopify could not be reached. Start again in a moment.")
    missing = shops.missing_scopes(settings.app_config.scopes, grant.scopes)
    if missing:
        return _error_page(
            403, "Kizuna needs these permissions to work: " + ", ".join(missing) + "."
        )
    _store_install(res.redis, settings, shop, grant, now, via="code_grant")
    response = redirect(admin_app_url(settings, shop), code=302)
    response.delete_cookie(STATE_COOKIE, path="/auth")
    return response


# -- the JSON API's first route -----------------------------------------------------------------


@api.get("/shop")
@require_session
def shop_record() -> Response:
    record = shops.load(_kizuna().redis, g.shop)
    if record is None:
        response = jsonify(error="not_installed", shop=g.shop)
        response.status_code = 404
        return response
    return jsonify(record.public())
