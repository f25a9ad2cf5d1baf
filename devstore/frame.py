"""The admin frame: an admin-like page that embeds the app, and the App Bridge stand-in.

``/store/<shop>/admin/apps/kizuna`` renders a Polaris-ish top bar and side nav around an
iframe that loads the app the way Shopify's admin does: ``embedded=1``, ``shop``, ``host``,
``id_token``, ``locale``, ``session``, ``timestamp`` and an ``hmac`` over them. The page also
shows the devstore's clock with buttons to move it, and an en/ja locale switch.

``/store/<shop>/admin/app-bridge.js`` is the App Bridge stand-in the app loads instead of the
CDN script in development: it exposes ``shopify.idToken()`` (a fresh token from
``/store/<shop>/admin/apps/kizuna/id_token``) and wraps ``window.fetch`` to add
``Authorization: Bearer <id token>`` to the app's own requests.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, current_app, jsonify, render_template, request, send_from_directory

from . import idtoken
from .oauth import installed_app, query_hmac

bp = Blueprint("devstore_frame", __name__)

APP_HANDLE = "kizuna"
LOCALES = ("en", "ja")


def _res() -> Any:
    return current_app.extensions["devstore"]


def app_src(shop: str, *, host_path: str, locale: str) -> str | None:
    """The iframe's URL for ``shop``'s installed app, or None when the app is not installed."""
    res = _res()
    app = installed_app(res.conn, shop)
    if app is None or not app.installed:
        return None
    now = res.clock.now()
    params = {
        "embedded": "1",
        "host": idtoken.host_param(host_path),
        "id_token": idtoken.mint(shop, api_key=app.api_key, api_secret=app.api_secret, now=now),
        "locale": locale,
        "session": hashlib.sha256(f"{shop}:{idtoken.DEFAULT_USER_ID}".encode()).hexdigest(),
        "shop": shop,
        "timestamp": str(int(now.timestamp())),
    }
    params["hmac"] = query_hmac(params, app.api_secret)
    return f"{app.app_url}?{urlencode(sorted(params.items()))}"


@bp.get("/store/<shop>/admin")
def admin_home(shop: str) -> Any:
    return render_template("frame.html", **_page(shop, src=None))


@bp.get(f"/store/<shop>/admin/apps/{APP_HANDLE}")
def app_page(shop: str) -> Any:
    locale = request.args.get("locale") or request.cookies.get("devstore_locale") or "en"
    if locale not in LOCALES:
        locale = "en"
    src = app_src(shop, host_path=f"{request.host}/store/{shop}/admin", locale=locale)
    status = 200 if src else 404
    response = current_app.make_response(
        (render_template("frame.html", **_page(shop, src=src, locale=locale)), status)
    )
    response.set_cookie("devstore_locale", locale, samesite="Lax")
    return response


@bp.get(f"/store/<shop>/admin/apps/{APP_HANDLE}/id_token")
def fresh_id_token(shop: str) -> Any:
    """A fresh ID token for the embedded app (what ``shopify.idToken()`` resolves to)."""
    res = _res()
    app = installed_app(res.conn, shop)
    if app is None or not app.installed:
        return jsonify(error="app not installed on this shop"), 404
    token = idtoken.mint(shop, api_key=app.api_key, api_secret=app.api_secret, now=res.clock.now())
    response = jsonify(id_token=token)
    response.headers["Cache-Control"] = "no-store"
    # The app's own page (another origin) calls this from the App Bridge stand-in.
    parts = urlsplit(app.app_url)
    response.headers["Access-Control-Allow-Origin"] = f"{parts.scheme}://{parts.netloc}"
    return response


@bp.get("/store/<shop>/admin/app-bridge.js")
def app_bridge(shop: str) -> Any:
    response = send_from_directory(current_app.static_folder or "static", "app-bridge.js")
    response.headers["Content-Type"] = "text/javascript; charset=utf-8"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _page(shop: str, *, src: str | None, locale: str = "en") -> dict[str, Any]:
    res = _res()
    return {
        "shop": shop,
        "shop_name": shop.split(".")[0],
        "src": src,
        "locale": locale,
        "locales": LOCALES,
        "now": res.clock.now().isoformat(timespec="seconds"),
        "handle": APP_HANDLE,
    }
