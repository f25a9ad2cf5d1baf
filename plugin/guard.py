"""The session-token guard of the embedded page's JSON API, and the frame-ancestors CSP.

Every ``/api/…`` request must carry ``Authorization: Bearer <ID token>``; the guard verifies it
(:mod:`plugin.session_token`) and exposes the shop it speaks for as ``flask.g.shop``. Views
read and write that shop only: a ``shop`` named in the query string or the JSON body that
differs from the token's is refused, so a token of shop A can never reach shop B's data.

The check runs for every ``/api/`` path before the view (``authenticate_api_request``,
registered app-wide by the auth blueprint), so a route that forgets the decorator is still
guarded; :func:`require_session` makes the requirement visible on the view and guards routes
outside ``/api/``.

Every HTML response gets ``Content-Security-Policy: frame-ancestors …`` naming the
authenticated shop's admin (``g.csp_shop``) and ``https://admin.shopify.com``; with no
authenticated shop, ``frame-ancestors 'none'``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Response, current_app, g, jsonify, request

from crm.errors import ValidationError

from .session_token import InvalidSessionToken, SessionToken, bearer_token, verify_session_token
from .settings import Settings
from .shops import normalize_shop

F = TypeVar("F", bound=Callable[..., Any])

RETRY_HEADER = "X-Shopify-Retry-Invalid-Session-Request"
API_PREFIX = "/api/"
SHOPIFY_ADMIN = "https://admin.shopify.com"


def _kizuna() -> Any:
    return current_app.extensions["kizuna"]


class Refused(Exception):
    """A guarded request was refused; carries the response to send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def invalid_session(message: str) -> Response:
    """401 with the header that makes App Bridge retry once with a fresh ID token."""
    response = jsonify(error="invalid_session", message=message)
    response.status_code = 401
    response.headers[RETRY_HEADER] = "1"
    return response


def authenticate() -> SessionToken:
    """Verify the request's bearer ID token and scope the request to its shop."""
    existing = g.get("session_token")
    if existing is not None:
        return cast(SessionToken, existing)
    res = _kizuna()
    settings: Settings = res.settings
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Refused(invalid_session("missing bearer ID token"))
    try:
        session = verify_session_token(
            token, api_key=settings.api_key, api_secret=settings.api_secret, now=res.clock.now()
        )
    except InvalidSessionToken as exc:
        raise Refused(invalid_session(str(exc))) from None
    named = _named_shops()
    if any(shop != session.shop for shop in named):
        response = jsonify(error="forbidden", message="the request names another shop")
        response.status_code = 403
        raise Refused(response)
    g.session_token = session
    g.shop = session.shop
    g.csp_shop = session.shop
    return session


def _named_shops() -> list[str]:
    """Shops named by the request itself (query ``shop``, JSON ``shop``), normalised."""
    values: list[Any] = request.args.getlist("shop")
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict) and "shop" in body:
            values.append(body["shop"])
    out = []
    for value in values:
        try:
            out.append(normalize_shop(value))
        except ValidationError:
            out.append(f"invalid:{value!r}")
    return out


def require_session(view: F) -> F:
    """Decorator: the view runs only with a valid ID token; ``g.shop`` is its shop."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            authenticate()
        except Refused as refused:
            return refused.response
        return view(*args, **kwargs)

    guarded.kizuna_guarded = True  # type: ignore[attr-defined]
    return cast(F, guarded)


def authenticate_api_request() -> Response | None:
    """``before_app_request`` hook: every ``/api/`` path is guarded, decorated or not."""
    if not request.path.startswith(API_PREFIX):
        return None
    if request.method == "OPTIONS":
        return None
    try:
        authenticate()
    except Refused as refused:
        return refused.response
    return None


def frame_ancestors(settings: Settings, shop: str | None) -> str:
    """The CSP ``frame-ancestors`` directive for pages shown to ``shop``'s admin."""
    if shop is None:
        return "frame-ancestors 'none';"
    if settings.against_shopify:
        return f"frame-ancestors https://{shop} {SHOPIFY_ADMIN};"
    parts = urlsplit(settings.shop_origin(shop))  # the devstore's admin for this shop
    return f"frame-ancestors {parts.scheme}://{parts.netloc} {SHOPIFY_ADMIN};"


def add_frame_ancestors(response: Response) -> Response:
    """``after_app_request`` hook: every HTML response names who may frame it."""
    if response.mimetype == "text/html":
        settings: Settings = _kizuna().settings
        response.headers["Content-Security-Policy"] = frame_ancestors(settings, g.get("csp_shop"))
    return response
