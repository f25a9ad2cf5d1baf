"""The app configuration file, ``app.toml`` (the format of ``shopify.app.toml``).

Scopes and webhook routes are read from here and nowhere else, so the file the Shopify CLI
deploys and the routes the app serves cannot drift apart.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from crm.errors import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "app.toml"


@dataclass(frozen=True)
class Subscription:
    topics: tuple[str, ...]
    uri: str
    compliance: bool = False


@dataclass(frozen=True)
class AppConfig:
    client_id: str
    name: str
    application_url: str
    embedded: bool
    scopes: tuple[str, ...]
    api_version: str
    subscriptions: tuple[Subscription, ...]

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the app subscribes to, compliance topics included."""
        return tuple(t for s in self.subscriptions for t in s.topics)

    def uri_for(self, topic: str) -> str:
        for sub in self.subscriptions:
            if topic in sub.topics:
                return sub.uri
        raise KeyError(topic)

    def topics_for(self, uri: str) -> tuple[str, ...]:
        return tuple(t for s in self.subscriptions if s.uri == uri for t in s.topics)

    @property
    def uris(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.uri for s in self.subscriptions))


def load_app_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    """Read and check ``app.toml``; a malformed file raises :class:`ConfigError`."""
    path = Path(path or os.environ.get("KIZUNA_APP_TOML") or DEFAULT_PATH)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"app.toml: not found at {path.name}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"app.toml: not valid TOML ({exc})") from exc
    try:
        webhooks = raw["webhooks"]
        subs = []
        for entry in webhooks.get("subscriptions", []):
            compliance = "compliance_topics" in entry
            topics = tuple(entry.get("compliance_topics") or entry["topics"])
            uri = entry["uri"]
            if not uri.startswith("/"):
                raise ConfigError(f"app.toml: webhook uri {uri!r} must be a relative path")
            subs.append(Subscription(topics=topics, uri=uri, compliance=compliance))
        return AppConfig(
            client_id=str(raw["client_id"]),
            name=str(raw["name"]),
            application_url=str(raw["application_url"]),
            embedded=bool(raw.get("embedded", True)),
            scopes=tuple(s.strip() for s in raw["access_scopes"]["scopes"].split(",") if s.strip()),
            api_version=str(webhooks["api_version"]),
            subscriptions=tuple(subs),
        )
    except KeyError as exc:
        raise ConfigError(f"app.toml: missing {exc.args[0]!r}") from exc
