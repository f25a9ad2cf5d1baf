"""The two catalogs and the locale-aware formats of the embedded page."""

from __future__ import annotations

import re
import string
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from plugin.i18n import LOCALES, Translator, catalog, format_date, format_money, negotiate

TEMPLATES = Path(__file__).resolve().parents[2] / "plugin" / "templates"
STATIC_JS = Path(__file__).resolve().parents[2] / "plugin" / "static" / "app.js"


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_catalogs_have_the_same_keys_and_placeholders() -> None:
    """A key missing in one language would show English (or the key) to a Japanese merchant;
    a placeholder renamed in one language would raise or print ``{count}``."""
    en, ja = catalog("en"), catalog("ja")
    assert set(en) == set(ja)
    for key in en:
        assert _placeholders(en[key]) == _placeholders(ja[key]), key
        assert ja[key].strip(), key


def test_japanese_strings_are_japanese() -> None:
    """Every Japanese message has Japanese in it: a copy of the English text left in ja.json
    must fail here, not in front of a merchant."""
    ja = catalog("ja")
    japanese = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff01-\uff60]")
    left = [key for key, text in ja.items() if not japanese.search(text)]
    assert left == []


def test_every_key_used_by_templates_and_script_exists() -> None:
    """Templates call ``t('key')`` and app.js calls ``t("key")``; a key in neither catalog
    would show as the raw key. Dynamic keys (``'segment.' ~ s``, ``"home.attention_" + kind``)
    are checked by prefix."""
    en = catalog("en")
    used: set[str] = set()
    for path in TEMPLATES.rglob("*.html"):
        used |= set(re.findall(r"""t\(\s*'([a-z0-9_.]+)'""", path.read_text()))
    script = STATIC_JS.read_text()
    used |= set(re.findall(r'\bt\(\s*"([a-z0-9_.]+)"', script))
    prefixes = {k for k in used if k.endswith((".", "_"))}
    assert sorted(used - prefixes - set(en)) == []
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in en), prefix


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ja", "ja"),
        ("ja-JP", "ja"),
        ("JA_jp", "ja"),
        ("en-US", "en"),
        ("fr", "en"),
        ("", "en"),
        (None, "en"),
        ("<script>", "en"),
    ],
)
def test_negotiate_maps_admin_locales(value: str | None, expected: str) -> None:
    """Unknown or hostile ``locale`` values fall back to English, never to an error."""
    assert negotiate(value) == expected


def test_money_jpy_has_no_decimals_and_others_do() -> None:
    assert format_money(Decimal("12800"), "JPY", "ja") == "¥12,800"
    assert format_money("12800.4", "jpy", "en") == "¥12,800"
    assert format_money(Decimal("1234.5"), "USD", "en") == "$1,234.50"
    assert format_money(Decimal("-5"), "EUR", "ja") == "-€5.00"
    assert format_money(Decimal("10"), "CHF", "en") == "10.00 CHF"


def test_dates_follow_the_locale() -> None:
    assert format_date(date(2026, 7, 1), "ja") == "2026年7月1日"
    assert format_date(datetime(2026, 12, 24, 9), "en") == "Dec 24, 2026"
    assert format_date(None, "en") == "—"


def test_translator_fills_placeholders_in_both_languages() -> None:
    assert Translator("en").t("customers.total_count", count="3") == "3 customers"
    assert Translator("ja-JP").t("customers.total_count", count="3") == "3 人"
    assert Translator("ja").month("2026-07") == "2026年7月"
    assert set(LOCALES) == {"en", "ja"}
