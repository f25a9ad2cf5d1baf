"""One error tree for the whole app.

Transient failures (worth a retry) and permanent ones (a retry would fail the same way) are
told apart by class, so that retry policy lives in one place (the Admin client and RQ's
``Retry``) and never in a bare ``except Exception``.
"""

from __future__ import annotations

from typing import Any


class KizunaError(Exception):
    """Base of every error Kizuna raises on purpose."""

    transient: bool = False


class ConfigError(KizunaError):
    """A setting is missing or malformed; the message names it in one line."""


class ValidationError(KizunaError):
    """Input from a merchant, a webhook or an API caller was refused; nothing was changed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ShopifyError(KizunaError):
    """A call to Shopify failed."""

    def __init__(self, message: str, *, shop: str | None = None) -> None:
        super().__init__(message)
        self.shop = shop


class TransientShopifyError(ShopifyError):
    """Shopify or the network failed in a way that a later retry can fix."""

    transient = True


class Throttled(TransientShopifyError):
    """The cost bucket is empty (GraphQL ``THROTTLED``) or Shopify answered 429."""

    def __init__(
        self, message: str, *, shop: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, shop=shop)
        self.retry_after = retry_after


class ServerError(TransientShopifyError):
    """Shopify answered 5xx, or the connection failed or timed out."""


class PermanentShopifyError(ShopifyError):
    """A retry would fail the same way."""


class GraphQLErrors(PermanentShopifyError):
    """The response carried top-level GraphQL ``errors`` (a bad document, access denied…)."""

    def __init__(
        self, message: str, *, shop: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message, shop=shop)
        self.errors = errors or []


class UserErrors(PermanentShopifyError):
    """A mutation answered with ``userErrors``: Shopify refused the input."""

    def __init__(
        self,
        message: str,
        *,
        shop: str | None = None,
        user_errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, shop=shop)
        self.user_errors = user_errors or []

    @property
    def codes(self) -> list[str]:
        return [str(e.get("code")) for e in self.user_errors if e.get("code")]


class Unauthorized(PermanentShopifyError):
    """Shopify refused the access token (401/403): the shop must re-authenticate."""


class ShopUnavailable(KizunaError):
    """The shop is uninstalled or waits for re-authentication: no Admin call may be made."""
