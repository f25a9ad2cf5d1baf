"""Hostile but correctly signed bodies: never a 500, never a failed job, never a corrupt profile.

Bodies are Shopify's samples with one or two values replaced by arbitrary JSON (or removed),
arbitrary JSON objects, and arbitrary bytes. They go through the Flask test client (the real
receiver), then a real RQ worker processes the queue in one burst at the end.
``KIZUNA_FUZZ_BODIES`` sets how many (default 10,000).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.serializers import JSONSerializer

from crm.profile import Profile
from plugin.app import create_app
from plugin.clock import DevClock, FixedClock
from plugin.settings import Settings
from tests.integration.webhook_helpers import SHOP, install_shop, post_webhook, run_worker, sample
from worker import deliveries, profile_store
from worker.ingest import thresholds_for
from worker.queues import WEBHOOKS

BODIES = int(os.environ.get("KIZUNA_FUZZ_BODIES", "10000"))
PER_EXAMPLE = 100
NOW = datetime(2022, 2, 1, tzinfo=UTC)

SAMPLE_TOPICS = (
    "orders/create",
    "fulfillments/create",
    "customers/create",
    "customers/delete",
    "customers_email_marketing_consent/update",
    "customers/purchasing_summary",
    "customer.tags_added",
    "orders/delete",
)
ALL_TOPICS = (
    *SAMPLE_TOPICS,
    "orders/updated",
    "orders/paid",
    "orders/cancelled",
    "customers/update",
    "customers/merge",
    "customer.tags_removed",
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "2026-01-01T00:00:00Z", "gid://shopify/Customer/7", "1e999", "-1"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


def _set(doc: Any, path: tuple[Any, ...], new: Any, remove: bool) -> None:
    for step in path[:-1]:
        doc = doc[step]
    if remove:
        del doc[path[-1]]
    else:
        doc[path[-1]] = new


_SAMPLES: dict[str, tuple[str, list[tuple[Any, ...]]]] = {}


def _sample_doc(topic: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """A fresh copy of the sample and its value paths (computed once per topic)."""
    if topic not in _SAMPLES:
        doc = sample(topic)
        _SAMPLES[topic] = (json.dumps(doc), _paths(doc))
    text, paths = _SAMPLES[topic]
    return json.loads(text), paths


@st.composite
def mutated_sample(draw: Callable[..., Any]) -> tuple[str, bytes]:
    source = draw(st.sampled_from(SAMPLE_TOPICS))
    doc, paths = _sample_doc(source)
    if source == "orders/create":
        doc["order_status_url"] = None
        doc["cancelled_at"] = draw(st.sampled_from([None, doc["cancelled_at"]]))
        # Spread the orders and customers over a few ids so profiles accumulate.
        doc["id"] = draw(st.integers(1, 40))
        if isinstance(doc.get("customer"), dict):
            doc["customer"]["id"] = draw(st.sampled_from([1, 2, 3, None]))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(paths))
        try:
            _set(doc, path, draw(json_values), draw(st.booleans()))
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier change
    # The topic is usually the sample's own, sometimes another of the same route.
    topic = draw(st.sampled_from([source, source, source, *ALL_TOPICS]))
    return topic, json.dumps(doc).encode()


any_object = st.tuples(
    st.sampled_from(ALL_TOPICS),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
)
any_bytes = st.tuples(st.sampled_from(ALL_TOPICS), st.binary(max_size=64))
bodies = st.one_of(mutated_sample(), mutated_sample(), mutated_sample(), any_object, any_bytes)


@pytest.mark.slow
def test_fuzzed_bodies_never_500_nor_corrupt_a_profile(
    settings: Settings, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: 10,000 signed bodies, mutated samples and garbage, on every ingest topic.
    Must not: answer 500 (or anything but 200), fail a job, leave a raw delivery behind, or
    store a profile that does not load, round-trip or match its lists."""
    install_shop(conn)
    monkeypatch.setenv("KIZUNA_DEV_CLOCK", "1")
    DevClock(conn).set(NOW)
    client = create_app(settings, conn=conn, clock=FixedClock(NOW)).test_client()
    statuses: dict[int, int] = {}
    counter = iter(range(10**9))
    started = time.monotonic()

    @settings_for_examples()
    @given(st.lists(bodies, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def post_all(batch: list[tuple[str, bytes]]) -> None:
        for topic, body in batch:
            resp = post_webhook(client, topic, body, webhook_id=f"f{next(counter)}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

    post_all()
    posted = time.monotonic()
    run_worker(conn)
    worked = time.monotonic()

    assert sum(statuses.values()) >= BODIES
    assert set(statuses) == {200}, statuses
    queue = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer)
    failed = queue.failed_job_registry
    if failed.count:
        from rq.job import Job

        job = Job.fetch(failed.get_job_ids()[0], connection=conn, serializer=JSONSerializer)
        pytest.fail(f"{failed.count} jobs failed; first: {job.args}\n{job.latest_result()}")
    assert not list(conn.scan_iter(f"kizuna:{SHOP}:delivery:*"))

    thresholds = thresholds_for(conn, SHOP)
    profiles = 0
    for key in conn.scan_iter(f"kizuna:{SHOP}:profile:*"):
        blob = conn.get(key)
        assert blob is not None
        profile, keys = profile_store.decode(blob)
        profiles += 1
        assert Profile.from_dict(profile.to_dict()).to_dict() == profile.to_dict()
        assert keys == profile_store.keys_for(profile, NOW, thresholds)
        assert all(profile_store.in_lists(conn, SHOP, [k], [profile.customer_id])[0] for k in keys)
    for name in profile_store.count_by_segment(conn, SHOP):
        for cid in profile_store.iter_members(conn, SHOP, name):
            loaded = profile_store.load(conn, SHOP, cid)
            assert loaded is not None and name in profile_store.keys_for(loaded, NOW, thresholds)
    assert profiles > 0
    letters = sum(1 for _ in conn.scan_iter(deliveries.dead_letter_key(SHOP, "*"), count=1000))
    print(
        f"\nfuzz: {sum(statuses.values())} bodies posted in {posted - started:.1f}s, "
        f"worker burst {worked - posted:.1f}s; {profiles} profiles, {letters} dead letters"
    )


def settings_for_examples() -> Any:
    return settings(
        max_examples=max(1, BODIES // PER_EXAMPLE),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
