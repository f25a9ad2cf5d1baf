"""Installing the app and the OAuth endpoints under ``/store/<shop>/admin/oauth/``.

- ``GET /admin/oauth/authorize`` shows a consent page; confirming it (``POST``) redirects to the
  app's ``redirect_uri`` with ``code``, ``hmac``, ``host``, ``shop``, ``state``, ``timestamp``,
  signed as Shopify signs them (:func:`query_hmac`).
- ``POST /admin/oauth/access_token`` answers the authorization-code grant, token exchange (ID
  token → offline token; ``expiring=1`` adds ``expires_in`` and a single-use refresh token) and
  ``grant_type=refresh_token``, with Shopify's error bodies
  (``{"error": ..., "error_description": ...}``).

The installed app (client id, secret, URL, scopes) is kept per shop in Redis; the webhook
sender signs with that secret, so the uninstall record keeps it until a reinstall replaces it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import redis
from flask import Blueprint, Response, current_app, jsonify, render_template, request

from plugin.appconfig import AppConfig, load_app_config
from plugin.clock import Clock

from . import idtoken, tokens

bp = Blueprint("devstore_oauth", __name__)

CODE_TTL = timedelta(minutes=10)
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"
ONLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:online-access-token"


def _s(value: Any) -> str:
    """A Redis reply as text (the connection does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _h(raw: Any) -> dict[str, str]:
    """An HGETALL reply as a ``str → str`` dict."""
    return {_s(k): _s(v) for k, v in raw.items()}


def _app_key(shop: str) -> str:
    return f"devstore:app:{shop}"


def _code_key(code: str) -> str:
    return "devstore:oauth:code:" + hashlib.sha256(code.encode()).hexdigest()


@dataclass(frozen=True)
class InstalledApp:
    api_key: str
    api_secret: str
    app_url: str
    scope: str
    installed: bool


def save_app(conn: redis.Redis, shop: str, app: InstalledApp) -> None:
    data: dict[Any, Any] = asdict(app)
    data["installed"] = int(app.installed)
    conn.hset(_app_key(shop), mapping=data)


def installed_app(conn: redis.Redis, shop: str) -> InstalledApp | None:
    """The app record of ``shop`` (also after an uninstall: ``installed`` is then False)."""
    raw = _h(conn.hgetall(_app_key(shop)))
    if not raw:
        return None
    return InstalledApp(
        api_key=raw["api_key"],
        api_secret=raw["api_secret"],
        app_url=raw["app_url"],
        scope=raw.get("scope", ""),
        installed=raw.get("installed") == "1",
    )


def query_hmac(params: Mapping[str, Any], secret: str) -> str:
    """Shopify's query-string HMAC: hex HMAC-SHA256 over the sorted ``k=v`` pairs, ``&``-joined.

    ``hmac`` itself is left out; ``%``, ``=`` and ``&`` inside keys and values are escaped, and an
    array parameter ``ids[]`` is signed as ``ids=["1", "2"]`` — the rules of Shopify's published
    algorithm (and of ``shopify.Session.calculate_hmac``).
    """

    def pairs() -> Any:
        for key, value in params.items():
            if key == "hmac":
                continue
            if key.endswith("[]"):
                key = key[:-2]
                value = json.dumps([str(v) for v in value])
            k = str(key).replace("%", "%25").replace("=", "%3D")
            v = str(value).replace("%", "%25")
            yield f"{k}={v}".replace("&", "%26")

    message = "&".join(sorted(pairs()))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


# -- installing -------------------------------------------------------------------------------


def install(
    conn: redis.Redis,
    clock: Clock,
    shop: str,
    *,
    api_key: str,
    api_secret: str,
    app_url: str,
    config: AppConfig | None = None,
) -> tokens.Grant:
    """Install the app on ``shop`` as managed installation does; answer an offline token.

    Webhook subscriptions come from ``app.toml`` (compliance topics included), each relative
    ``uri`` joined to ``app_url``. Installing again replaces the app record and adds only the
    subscriptions that are missing.
    """
    from .state import Store

    config = config or load_app_config()
    store = Store(conn, clock)
    if store.get_shop(shop) is None:
        raise LookupError(shop)
    scope = ",".join(config.scopes)
    base = app_url.rstrip("/")
    save_app(
        conn,
        shop,
        InstalledApp(
            api_key=api_key, api_secret=api_secret, app_url=base, scope=scope, installed=True
        ),
    )
    for sub in config.subscriptions:
        for topic in sub.topics:
            uri = base + sub.uri
            store.add_webhook_subscription(shop, topic, uri)  # idempotent per (topic, uri)
    return tokens.mint_offline(conn, shop, scope=scope, now=clock.now())


def uninstall(conn: redis.Redis, clock: Clock, shop: str) -> int:
    """Uninstall as Shopify does; answer the number of tokens revoked.

    Tokens are revoked at once, ``app/uninstalled`` goes out now and ``shop/redact`` is
    scheduled 48 hours later on the clock; then the app's webhook subscriptions are deleted
    (the two deliveries already know their addresses).
    """
    from . import webhooks_out
    from .state import Store

    store = Store(conn, clock)
    app = installed_app(conn, shop)
    record = store.get_shop(shop)
    if app is None or not app.installed or record is None:
        raise LookupError(shop)
    now = clock.now()
    revoked = tokens.revoke_shop(conn, shop)
    save_app(conn, shop, replace(app, installed=False))
    webhooks_out.emit(conn, shop, "app/uninstalled", shop_payload(record), now=now)
    webhooks_out.emit(
        conn,
        shop,
        "shop/redact",
        {"shop_id": int(record["id"]), "shop_domain": shop},
        now=now,
        delay=timedelta(hours=48),
    )
    for sub in store.webhook_subscriptions(shop):
        store.delete_webhook_subscription(shop, sub["id"])
    return revoked


def shop_payload(record: dict[str, Any]) -> dict[str, Any]:
    """The REST shop object that ``app/uninstalled`` carries (its main fields)."""
    shop = str(record["shop"])
    return {
        "id": int(record["id"]),
        "name": record.get("name", shop.split(".")[0]),
        "email": record.get("email", f"owner@{shop}"),
        "domain": shop,
        "province": None,
        "country": "JP" if record.get("currency") == "JPY" else "US",
        "address1": None,
        "zip": None,
        "city": None,
        "source": None,
        "phone": None,
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
        "customer_email": record.get("email"),
        "currency": record.get("currency"),
        "timezone": f"(GMT) {record.get('timezone', 'UTC')}",
        "iana_timezone": record.get("timezone", "UTC"),
        "shop_owner": record.get("name"),
        "money_format": (
            "¥{{amount_no_decimals}}" if record.get("currency") == "JPY" else "${{amount}}"
        ),
        "plan_name": record.get("plan", "basic"),
        "myshopify_domain": shop,
        "primary_locale": "ja" if record.get("currency") == "JPY" else "en",
    }


# -- the authorization-code grant ---------------------------------------------------------------


def _res() -> Any:
    return current_app.extensions["devstore"]


def _oauth_error(status: int, error: str, description: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    return response


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("oauth_error.html", message=message), status


def _check_authorize(shop: str, params: Mapping[str, str]) -> InstalledApp | str:
    """The app asking for consent, or the reason the request is refused."""
    app = installed_app(_res().conn, shop)
    client_id = params.get("client_id", "")
    if app is None or not client_id or not hmac.compare_digest(client_id, app.api_key):
        return "Oauth error invalid_request: Invalid client_id for this shop"
    redirect_uri = params.get("redirect_uri", "")
    target, base = urlsplit(redirect_uri), urlsplit(app.app_url)
    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
        return "Oauth error invalid_request: The redirect_uri is not whitelisted"
    return app


@bp.get("/store/<shop>/admin/oauth/authorize")
def authorize(shop: str) -> Any:
    checked = _check_authorize(shop, request.args)
    if isinstance(checked, str):
        return _page_error(400, checked)
    scopes = [s for s in request.args.get("scope", checked.scope).split(",") if s]
    return render_template(
        "consent.html", shop=shop, scopes=scopes, params=dict(request.args.items())
    )


@bp.post("/store/<shop>/admin/oauth/authorize")
def approve(shop: str) -> Any:
    """The merchant clicked Install: mint a code and redirect back to the app."""
    params = request.form
    checked = _check_authorize(shop, params)
    if isinstance(checked, str):
        return _page_error(400, checked)
    res = _res()
    now = res.clock.now()
    code = secrets.token_hex(16)
    scope = params.get("scope") or checked.scope
    res.conn.hset(
        _code_key(code),
        mapping={
            "shop": shop,
            "client_id": checked.api_key,
            "scope": scope,
            "expires_at": (now + CODE_TTL).isoformat(),
        },
    )
    host_path = f"{request.host}/store/{shop}/admin"
    back = {
        "code": code,
        "host": idtoken.host_param(host_path),
        "shop": shop,
        "state": params.get("state", ""),
        "timestamp": str(int(now.timestamp())),
    }
    back["hmac"] = query_hmac(back, checked.api_secret)
    location = params["redirect_uri"] + ("&" if "?" in params["redirect_uri"] else "?")
    return Response(status=302, headers={"Location": location + urlencode(back)})


# -- the token endpoint -----------------------------------------------------------------------


def _params() -> dict[str, str]:
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            return {str(k): str(v) for k, v in body.items() if v is not None}
        return {}
    return {k: v for k, v in request.values.items()}


@bp.post("/store/<shop>/admin/oauth/access_token")
def access_token(shop: str) -> Any:
    res = _res()
    params = _params()
    app = installed_app(res.conn, shop)
    client_id = params.get("client_id", "")
    client_secret = params.get("client_secret", "")
    if not client_id or not client_secret:
        return _oauth_error(400, "invalid_request", "client_id and client_secret are required.")
    if (
        app is None
        or not hmac.compare_digest(client_id, app.api_key)
        or not hmac.compare_digest(client_secret, app.api_secret)
    ):
        return _oauth_error(
            401, "invalid_client", "Client authentication failed: unknown client or bad secret."
        )
    now = res.clock.now()
    expiring = params.get("expiring", "0").lower() in {"1", "true"}
    grant_type = params.get("grant_type", "authorization_code")
    try:
        if grant_type == "authorization_code" or (grant_type == "" and "code" in params):
            grant = _code_grant(res.conn, shop, params, app, now=now, expiring=expiring)
        elif grant_type == TOKEN_EXCHANGE:
            grant = _token_exchange(res.conn, shop, params, app, now=now, expiring=expiring)
        elif grant_type == "refresh_token":
            if "refresh_token" not in params:
                raise tokens.TokenError("invalid_request", "refresh_token is required.")
            grant = tokens.refresh(res.conn, params["refresh_token"], shop=shop, now=now)
        else:
            raise tokens.TokenError(
                "unsupported_grant_type", f"The grant type {grant_type!r} is not supported."
            )
    except tokens.TokenError as exc:
        return _oauth_error(exc.status, exc.error, exc.description)
    if not app.installed:
        save_app(res.conn, shop, replace(app, installed=True))
    return jsonify(grant.body())


def _issue(
    conn: redis.Redis, shop: str, scope: str, *, now: datetime, expiring: bool
) -> tokens.Grant:
    if expiring:
        return tokens.mint_expiring(conn, shop, scope=scope, now=now)
    return tokens.mint_offline(conn, shop, scope=scope, now=now)


def _code_grant(
    conn: redis.Redis,
    shop: str,
    params: Mapping[str, str],
    app: InstalledApp,
    *,
    now: datetime,
    expiring: bool,
) -> tokens.Grant:
    code = params.get("code", "")
    if not code:
        raise tokens.TokenError("invalid_request", "code is required.")
    key = _code_key(code)
    with conn.pipeline() as pipe:  # read and consume at once: a code works a single time
        pipe.hgetall(key)
        pipe.delete(key)
        raw_bytes, _ = pipe.execute()
    raw = _h(raw_bytes)
    if (
        not raw
        or raw["shop"] != shop
        or raw["client_id"] != app.api_key
        or now >= datetime.fromisoformat(raw["expires_at"])
    ):
        raise tokens.TokenError(
            "invalid_request", "The authorization code was not found or was already used."
        )
    return _issue(conn, shop, raw["scope"], now=now, expiring=expiring)


def _token_exchange(
    conn: redis.Redis,
    shop: str,
    params: Mapping[str, str],
    app: InstalledApp,
    *,
    now: datetime,
    expiring: bool,
) -> tokens.Grant:
    subject = params.get("subject_token", "")
    if not subject:
        raise tokens.TokenError("missing_subject_token", "subject_token is required.")
    if params.get("subject_token_type") != ID_TOKEN_TYPE:
        raise tokens.TokenError("invalid_request", f"subject_token_type must be {ID_TOKEN_TYPE}.")
    requested = params.get("requested_token_type", OFFLINE_TOKEN_TYPE)
    if requested != OFFLINE_TOKEN_TYPE:
        raise tokens.TokenError(
            "invalid_request",
            "The devstore issues offline access tokens only "
            f"(requested_token_type={OFFLINE_TOKEN_TYPE}).",
        )
    try:
        idtoken.verify(subject, api_key=app.api_key, api_secret=app.api_secret, now=now, shop=shop)
    except idtoken.IdTokenError as exc:
        raise tokens.TokenError("invalid_subject_token", f"Invalid subject token: {exc}.") from exc
    return _issue(conn, shop, app.scope, now=now, expiring=expiring)
