"""One typed settings object, read from the environment and checked at start.

Development works with nothing set: the app talks to the local devstore, starts an embedded
Redis and uses fixed development secrets. Production mode (``KIZUNA_ENV=production``) refuses
every such default, so a forgotten variable stops the process instead of running insecurely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from crm.errors import ConfigError

from .appconfig import AppConfig, load_app_config

# Development defaults. They are public, so production mode refuses them.
DEV_API_SECRET = "kizuna-development-secret-not-for-production"
DEV_ENCRYPTION_KEY = "a2l6dW5hLWRldmVsb3BtZW50LWtleS0wMDAwMDAwMDA="
DEV_APP_URL = "http://127.0.0.1:8080"
DEV_SHOPIFY_ORIGIN = "http://127.0.0.1:8081/store/{shop}"
SHOPIFY_ORIGIN = "https://{shop}"


@dataclass(frozen=True)
class Settings:
    api_key: str
    api_secret: str
    app_url: str
    redis_url: str | None
    encryption_keys: tuple[str, ...]
    shopify_origin: str
    production: bool = False
    dev_clock: bool = False
    cache_redis_url: str | None = None
    app_config: AppConfig = field(default_factory=load_app_config, repr=False)

    @property
    def api_version(self) -> str:
        return self.app_config.api_version

    @property
    def against_shopify(self) -> bool:
        """True when the origin is Shopify itself (not the devstore)."""
        return self.shopify_origin == SHOPIFY_ORIGIN

    def shop_origin(self, shop: str) -> str:
        """The base URL for one shop's Admin API and OAuth endpoints.

        ``shop`` must be a ``name.myshopify.com`` domain (else ``ValidationError``): with the
        production origin ``https://{shop}`` the shop is the host, and no caller may turn it
        into another host (``evil.example``, ``x.myshopify.com@evil.example``…).
        """
        from .shops import normalize_shop

        return self.shopify_origin.replace("{shop}", normalize_shop(shop))

    def admin_graphql_url(self, shop: str) -> str:
        return f"{self.shop_origin(shop)}/admin/api/{self.api_version}/graphql.json"

    def __repr__(self) -> str:  # never print the secret or the keys
        return (
            f"Settings(api_key={self.api_key!r}, app_url={self.app_url!r}, "
            f"shopify_origin={self.shopify_origin!r}, production={self.production})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build and check the settings; raise :class:`ConfigError` naming the bad value."""
        env = dict(os.environ if environ is None else environ)
        mode = env.get("KIZUNA_ENV", "development").strip().lower()
        if mode not in {"development", "production"}:
            raise ConfigError(f"KIZUNA_ENV: must be 'development' or 'production', not {mode!r}")
        production = mode == "production"
        app_config = load_app_config(env.get("KIZUNA_APP_TOML"))

        def get(name: str, default: str | None) -> str | None:
            value = env.get(name, "").strip()
            if value:
                return value
            if production and default is not None:
                raise ConfigError(f"{name}: required in production mode")
            return default

        api_key = get("SHOPIFY_API_KEY", app_config.client_id) or ""
        api_secret = get("SHOPIFY_API_SECRET", DEV_API_SECRET) or ""
        app_url = (get("SHOPIFY_APP_URL", DEV_APP_URL) or "").rstrip("/")
        _check_url("SHOPIFY_APP_URL", app_url, https=production)
        # Shopify itself is the production default, so this one is not refused.
        origin = env.get("KIZUNA_SHOPIFY_ORIGIN", "").strip() or (
            SHOPIFY_ORIGIN if production else DEV_SHOPIFY_ORIGIN
        )
        origin = origin.rstrip("/")
        if "{shop}" not in origin:
            raise ConfigError("KIZUNA_SHOPIFY_ORIGIN: must contain '{shop}'")
        _check_url("KIZUNA_SHOPIFY_ORIGIN", origin.replace("{shop}", "shop.myshopify.com"))
        redis_url = env.get("REDIS_URL", "").strip() or None
        if production and redis_url is None:
            raise ConfigError("REDIS_URL: required in production mode (no embedded Redis)")
        if redis_url is not None:
            _check_redis_url("REDIS_URL", redis_url)
        cache_url = env.get("KIZUNA_CACHE_REDIS_URL", "").strip() or None
        if cache_url is not None:
            _check_redis_url("KIZUNA_CACHE_REDIS_URL", cache_url)
        keys = tuple(
            k.strip()
            for k in (get("KIZUNA_ENCRYPTION_KEY", DEV_ENCRYPTION_KEY) or "").split(",")
            if k.strip()
        )
        for i, key in enumerate(keys):
            try:
                Fernet(key.encode())
            except ValueError as exc:
                raise ConfigError(
                    f"KIZUNA_ENCRYPTION_KEY: key {i + 1} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from exc
        if not keys:
            raise ConfigError("KIZUNA_ENCRYPTION_KEY: no key given")
        if production and DEV_ENCRYPTION_KEY in keys:
            raise ConfigError("KIZUNA_ENCRYPTION_KEY: the development key is refused in production")
        dev_clock = env.get("KIZUNA_DEV_CLOCK", "").strip() in {"1", "true", "yes"}
        if production and dev_clock:
            raise ConfigError("KIZUNA_DEV_CLOCK: the development clock is refused in production")
        return cls(
            api_key=api_key,
            api_secret=api_secret,
            app_url=app_url,
            redis_url=redis_url,
            encryption_keys=keys,
            shopify_origin=origin,
            production=production,
            dev_clock=dev_clock,
            cache_redis_url=cache_url,
            app_config=app_config,
        )


def _check_url(name: str, value: str, *, https: bool = False) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{name}: not an http(s) URL: {value!r}")
    if https and parts.scheme != "https":
        raise ConfigError(f"{name}: must use https in production mode")


def _check_redis_url(name: str, value: str) -> None:
    if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"{name}: must start with redis://, rediss:// or unix://")
