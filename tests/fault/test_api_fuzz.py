"""Fuzzing the sequences API: hypothesis bodies to ``POST /api/sequences`` and
``PUT /api/sequences/<id>`` through the whole app (the ID-token guard included). Only
200/201/4xx come back, never a 500, and a refused body leaves the stored state as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.templates import TEMPLATES
from plugin.app import create_app
from tests.fault.harness import SHOP, FaultStack, report

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
KEYS = ["id", "title", "trigger", "steps", "catch_up", "exit", "active_from", "active_until",
        "template", "definition", "shop", "version"]  # fmt: skip


def _mutated_definition() -> st.SearchStrategy[dict[str, Any]]:
    """A real template's definition with some fields replaced by arbitrary JSON."""

    def mutate(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(base))
        out.update(changes)
        return out

    bases = st.sampled_from([t.definition for t in TEMPLATES.values()])
    changes = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=3)
    return st.builds(mutate, bases, changes)


def _step_mutation() -> st.SearchStrategy[dict[str, Any]]:
    """A template's definition whose first step has a field replaced."""

    def mutate(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
        out = json.loads(json.dumps(base))
        out["steps"][0][field] = value
        return out

    fields = st.sampled_from(["key", "offset_days", "send_hour", "discount", "tags", "title",
                              "flow_trigger", "metafields", "kind"])  # fmt: skip
    bases = st.sampled_from([t.definition for t in TEMPLATES.values()])
    return st.builds(mutate, bases, fields, JSON)


BODIES = (
    JSON
    | st.builds(lambda t, o: {"template": t, **o}, st.sampled_from(sorted(TEMPLATES)) | JSON,
                st.dictionaries(st.sampled_from(KEYS), JSON, max_size=3))
    | st.builds(lambda d: {"definition": d}, _mutated_definition() | _step_mutation())
    | _mutated_definition()
    | _step_mutation()
)  # fmt: skip
RAW = st.binary(max_size=200)


def _state(conn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in conn.scan_iter(f"kizuna:{SHOP}:seq*"):
        kind = conn.type(key).decode()
        out[key.decode()] = conn.hgetall(key) if kind == "hash" else conn.dump(key)
    return out


@pytest.fixture()
def api(fstack: FaultStack) -> Any:
    app = create_app(fstack.settings, conn=fstack.conn, clock=fstack.clock)
    client = app.test_client()
    r = fstack.api("POST", "/api/sequences", {"template": "winback"})
    assert r.status_code == 201, r.text
    return client, str(r.json()["id"])


def test_sequences_api_answers_4xx_and_changes_nothing_for_any_bad_body(
    fstack: FaultStack, api: Any
) -> None:
    """Tried: arbitrary JSON, templates with arbitrary overrides, real definitions with fields
    or a step's fields replaced by arbitrary JSON, and raw bytes, to POST /api/sequences and
    PUT /api/sequences/<id>. Must not happen: a 500 (or any status but 200/201/4xx), or a
    refused request changing a stored sequence."""
    client, seq_id = api
    counts = {"ok": 0, "refused": 0, "unexpected": 0}

    def check(method: str, path: str, data: bytes, token: str) -> None:
        before = _state(fstack.conn)
        r = client.open(path, method=method, data=data, content_type="application/json",
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        if r.status_code in (200, 201):
            counts["ok"] += 1
        elif 400 <= r.status_code < 500:
            counts["refused"] += 1
            if _state(fstack.conn) != before:
                counts["unexpected"] += 1
                print(f"state changed on {r.status_code}: {data[:200]!r}", flush=True)
        else:
            counts["unexpected"] += 1
            print(f"{method} {path} -> {r.status_code}: {data[:200]!r}", flush=True)

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=BODIES, raw=RAW)
    def run(body: Any, raw: bytes) -> None:
        data = json.dumps(body).encode()
        token = fstack.devstore.id_token(SHOP)
        check("POST", "/api/sequences", data, token)
        check("PUT", f"/api/sequences/{seq_id}", data, token)
        check("PUT", f"/api/sequences/{seq_id}", raw, token)

    run()
    print(f"FAULT-STATS api_fuzz {counts}", flush=True)
    report("api_fuzz", counts["ok"] + counts["refused"], lost=0, duplicated=0,
           unexpected=counts["unexpected"])  # fmt: skip
