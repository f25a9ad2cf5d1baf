"""The embedded page's documents: home, sequences, customers, analytics, settings.

Each page is a server-rendered shell (layout, navigation, every string in the admin's
language) that small vanilla JavaScript (``static/app.js``) fills from the JSON API, calling it
with ``Authorization: Bearer <shopify.idToken()>``.

A document load is authenticated like ``GET /app`` (``plugin.auth``): it must carry a valid
``id_token``. The page's own links therefore navigate through ``app.js``, which asks App
Bridge for a fresh token and puts it on the URL; a load without one goes to Shopify's bounce
page, which reloads it with a token.

``GET /app`` itself is served by ``plugin.auth`` (it may have to trade the token first) and
renders ``app_home.html``, which extends this blueprint's ``app/home.html``; the context
processor below gives every template the translator, the locale and the navigation.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, g, render_template, request
from markupsafe import Markup

from crm.decisions import REASONS
from crm.templates import TEMPLATES

from . import shops
from .i18n import Translator, negotiate
from .session_token import InvalidSessionToken, verify_session_token

bp = Blueprint("embedded", __name__, static_folder="static", static_url_path="/app-static")

#: (endpoint suffix, path, catalog key) of the navigation, in order.
NAV = (
    ("home", "/app", "nav.home"),
    ("sequences", "/app/sequences", "nav.sequences"),
    ("customers", "/app/customers", "nav.customers"),
    ("analytics", "/app/analytics", "nav.analytics"),
    ("settings", "/app/settings", "nav.settings"),
)

#: Query parameters a page passes on to the next (never the ID token: each load gets its own).
CARRIED = ("shop", "host", "locale", "embedded")


def _res() -> Any:
    return current_app.extensions["kizuna"]


@bp.app_context_processor
def page_context() -> dict[str, Any]:
    """Every template: ``t`` (translator), ``locale``, ``nav``, ``carried`` query, ``page_json``."""
    translator = Translator(negotiate(request.args.get("locale")))
    carried = {k: request.args[k] for k in CARRIED if k in request.args}
    carried["locale"] = translator.locale  # what the admin asked, as we understood it
    return {
        "t": translator,
        "locale": translator.locale,
        "nav": NAV,
        "carried": carried,
        "i18n_json": _script_json(dict(translator.messages)),
    }


def _script_json(value: Any) -> Markup:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def _page(template: str, active: str, **context: Any) -> Any:
    """Render one page for the shop named by the document's ID token, or bounce for one."""
    from .auth import app_bridge_src, bounce_or_refuse

    res = _res()
    settings = res.settings
    try:
        session = verify_session_token(
            request.args.get("id_token", ""),
            api_key=settings.api_key,
            api_secret=settings.api_secret,
            now=res.clock.now(),
        )
    except InvalidSessionToken:
        return bounce_or_refuse(request.args.get("shop"))
    g.csp_shop = session.shop
    record = shops.load(res.redis, session.shop)
    return render_template(
        template,
        active=active,
        shop=session.shop,
        record=record,
        api_key=settings.api_key,
        app_bridge_src=app_bridge_src(settings, session.shop),
        **context,
    )


@bp.get("/app/sequences")
def sequences() -> Any:
    return _page("app/sequences.html", "sequences")


def _templates_json(locale: str) -> Markup:
    """The sequence templates (:mod:`crm.templates`) in the page's language, for the editor."""
    return _script_json(
        [
            {
                "handle": tpl.handle,
                "title": tpl.title(locale),
                "description": tpl.description(locale),
                "definition": tpl.definition,
            }
            for tpl in TEMPLATES.values()
        ]
    )


@bp.get("/app/sequences/new")
def sequence_new() -> Any:
    locale = negotiate(request.args.get("locale"))
    return _page(
        "app/sequence_edit.html",
        "sequences",
        sequence_id=None,
        templates_json=_templates_json(locale),
    )


@bp.get("/app/sequences/<sequence_id>")
def sequence_edit(sequence_id: str) -> Any:
    return _page("app/sequence_edit.html", "sequences", sequence_id=sequence_id)


@bp.get("/app/customers")
def customers() -> Any:
    return _page("app/customers.html", "customers")


@bp.get("/app/customers/<int:customer_id>")
def customer(customer_id: int) -> Any:
    locale = negotiate(request.args.get("locale"))
    reasons = {code: text[1] if locale == "ja" else text[0] for code, text in REASONS.items()}
    return _page(
        "app/customer.html",
        "customers",
        customer_id=customer_id,
        reasons_json=_script_json(reasons),
    )


@bp.get("/app/analytics")
def analytics() -> Any:
    return _page("app/analytics.html", "analytics")


@bp.get("/app/settings")
def settings_page() -> Any:
    return _page("app/settings.html", "settings")
