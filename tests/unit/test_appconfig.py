"""app.toml: the shopify.app.toml format, every topic the app needs, one place for routes."""

from __future__ import annotations

import re

import pytest

from crm.errors import ConfigError
from plugin.appconfig import load_app_config
from tests.conftest import SHARED, shared_or_skip

COMPLIANCE = {"customers/data_request", "customers/redact", "shop/redact"}


def test_scopes_and_version() -> None:
    cfg = load_app_config()
    assert cfg.name == "Kizuna"
    assert cfg.embedded
    assert cfg.application_url.endswith("/app")
    assert set(cfg.scopes) == {
        "read_customers", "write_customers", "read_orders", "write_discounts", "read_products",
    }  # fmt: skip
    assert cfg.api_version == "2026-07"


def test_every_topic_of_shopify_md_is_subscribed() -> None:
    text = shared_or_skip(SHARED / "SHOPIFY.md").read_text()
    section = text.split("Topics for this app:", 1)[1].split("\n- ", 1)[0]
    wanted = set(re.findall(r"`([a-z_]+/[a-z_]+)`", section))
    assert len(wanted) >= 15
    cfg = load_app_config()
    assert wanted | COMPLIANCE <= set(cfg.topics)


def test_compliance_topics_and_relative_uris() -> None:
    cfg = load_app_config()
    compliance = [s for s in cfg.subscriptions if s.compliance]
    assert {t for s in compliance for t in s.topics} == COMPLIANCE
    assert all(s.uri.startswith("/webhooks/") for s in cfg.subscriptions)
    assert cfg.topics_for(cfg.uri_for("orders/create")) == cfg.topics_for("/webhooks/orders")


def test_malformed_file_is_refused(tmp_path) -> None:
    """Tried: an app.toml without client_id, and one that is not TOML. Must not: load."""
    bad = tmp_path / "app.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="client_id|webhooks"):
        load_app_config(bad)
    bad.write_text("client_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_app_config(bad)
