"""Settings: defaults for development, refusals for production, one-line errors."""

from __future__ import annotations

import pytest

from crm.errors import ConfigError
from plugin.settings import DEV_ENCRYPTION_KEY, Settings

PROD = {
    "KIZUNA_ENV": "production",
    "SHOPIFY_API_KEY": "abc",
    "SHOPIFY_API_SECRET": "s3cret",
    "SHOPIFY_APP_URL": "https://kizuna.example.com",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "KIZUNA_ENCRYPTION_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
}


def test_development_defaults_need_nothing() -> None:
    s = Settings.from_env({})
    assert not s.production
    assert s.redis_url is None  # embedded Redis
    assert "{shop}" in s.shopify_origin
    assert s.api_key == s.app_config.client_id


def test_production_with_everything_set() -> None:
    s = Settings.from_env(PROD)
    assert s.production
    assert s.shop_origin("a.myshopify.com") == "https://a.myshopify.com"
    assert (
        s.admin_graphql_url("a.myshopify.com")
        == "https://a.myshopify.com/admin/api/2026-07/graphql.json"
    )


@pytest.mark.parametrize(
    "name", ["SHOPIFY_API_KEY", "SHOPIFY_API_SECRET", "SHOPIFY_APP_URL", "REDIS_URL",
             "KIZUNA_ENCRYPTION_KEY"],
)  # fmt: skip
def test_production_refuses_missing_value(name: str) -> None:
    """Tried: production mode with one variable absent. Must not: start with a default."""
    env = {k: v for k, v in PROD.items() if k != name}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KIZUNA_ENCRYPTION_KEY", "not-a-key"),
        ("KIZUNA_ENCRYPTION_KEY", DEV_ENCRYPTION_KEY),
        ("SHOPIFY_APP_URL", "http://kizuna.example.com"),
        ("SHOPIFY_APP_URL", "kizuna.example.com"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("KIZUNA_SHOPIFY_ORIGIN", "https://example.com"),
        ("KIZUNA_ENV", "staging"),
        ("KIZUNA_DEV_CLOCK", "1"),
    ],
)
def test_production_refuses_malformed_value(name: str, value: str) -> None:
    """Tried: one malformed value. Must not: start; the error names the variable."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**PROD, name: value})
    assert str(err.value).startswith(name)


def test_key_rotation_list() -> None:
    second = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    s = Settings.from_env({"KIZUNA_ENCRYPTION_KEY": f"{DEV_ENCRYPTION_KEY}, {second}"})
    assert s.encryption_keys == (DEV_ENCRYPTION_KEY, second)


def test_repr_hides_secrets() -> None:
    s = Settings.from_env(PROD)
    assert "s3cret" not in repr(s)
    assert PROD["KIZUNA_ENCRYPTION_KEY"] not in repr(s)
