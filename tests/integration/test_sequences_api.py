"""The sequences API over HTTP: guarded, scoped to the token's shop, bad input changes nothing."""

from __future__ import annotations

import requests

from tests.integration.test_e2e_sequences import SHOP, Stack, stack  # noqa: F401 (fixture)
from worker import sequence_store


def test_create_edit_and_list_sequences(stack: Stack) -> None:  # noqa: F811
    """Create from a template (inactive), edit into version 2, list, activate, read back."""
    r = stack.api("POST", "/api/sequences", {"template": "winback"})
    assert r.status_code == 201 and r.json()["active"] is False
    seq_id = r.json()["id"]
    again = stack.api("POST", "/api/sequences", {"template": "winback"}).json()["id"]
    assert again != seq_id  # a second sequence, never an overwrite
    definition = stack.api("GET", f"/api/sequences/{seq_id}").json()["definition"]
    definition["steps"][1]["offset_days"] = 21
    r = stack.api("PUT", f"/api/sequences/{seq_id}", definition)
    assert r.status_code == 200 and r.json()["version"] == 2
    assert stack.api("POST", f"/api/sequences/{seq_id}/activate").json()["changed"] is True
    body = stack.api("GET", f"/api/sequences/{seq_id}").json()
    assert body["versions"] == [1, 2] and body["active"] is True
    listed = {s["id"] for s in stack.api("GET", "/api/sequences").json()["sequences"]}
    assert listed == {seq_id, again}


def test_bad_definition_gets_422_with_field_and_changes_nothing(stack: Stack) -> None:  # noqa: F811
    """Steps out of time order and an unknown template: 422 naming the field; the stored
    sequence keeps its version and definition."""
    seq_id = stack.api("POST", "/api/sequences", {"template": "four_walls"}).json()["id"]
    before = sequence_store.load(stack.conn, SHOP, seq_id)
    definition = stack.api("GET", f"/api/sequences/{seq_id}").json()["definition"]
    definition["steps"][2]["offset_days"] = 0
    r = stack.api("PUT", f"/api/sequences/{seq_id}", definition)
    assert r.status_code == 422 and r.json()["field"] == "steps[2].offset_days"
    assert sequence_store.load(stack.conn, SHOP, seq_id) == before
    r = stack.api("POST", "/api/sequences", {"template": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "template"
    assert len(sequence_store.metas(stack.conn, SHOP)) == 1


def test_api_requires_a_session_token_and_ignores_other_shops(stack: Stack) -> None:  # noqa: F811
    """No token: 401 and nothing created. A body naming another shop: refused (403)."""
    r = requests.post(stack.base + "/api/sequences", json={"template": "winback"}, timeout=10)
    assert r.status_code == 401
    r = stack.api("POST", "/api/sequences", {"template": "winback", "shop": "x.myshopify.com"})
    assert r.status_code == 403
    assert sequence_store.metas(stack.conn, SHOP) == []
    assert stack.api("GET", "/api/sequences/nope").status_code == 404


def test_version_history_carries_the_save_time_of_each_version(stack: Stack) -> None:  # noqa: F811
    """Each version is served with the time it was saved (the injected clock) and its step
    count. A refused edit and an edit that changes nothing must add no version and must not
    move the save time of the current one."""
    from datetime import datetime, timedelta

    start = stack.clock.now()
    seq_id = stack.api("POST", "/api/sequences", {"template": "four_walls"}).json()["id"]
    definition = stack.api("GET", f"/api/sequences/{seq_id}").json()["definition"]
    stack.clock.set(start + timedelta(days=1, hours=2))
    definition["steps"] = definition["steps"][:3]
    assert stack.api("PUT", f"/api/sequences/{seq_id}", definition).json()["version"] == 2

    stack.clock.set(start + timedelta(days=2))
    bad = dict(definition, steps=[dict(s) for s in definition["steps"]])
    bad["steps"][2]["offset_days"] = 0
    assert stack.api("PUT", f"/api/sequences/{seq_id}", bad).status_code == 422
    same = stack.api("GET", f"/api/sequences/{seq_id}").json()["definition"]
    assert stack.api("PUT", f"/api/sequences/{seq_id}", same).json()["version"] == 2

    history = stack.api("GET", f"/api/sequences/{seq_id}").json()["history"]
    assert [(v["version"], v["steps"]) for v in history] == [(1, 5), (2, 3)]
    saved = [datetime.fromisoformat(v["saved_at"]) for v in history]
    expected = [start, start + timedelta(days=1, hours=2)]
    # The dev clock keeps ticking after it is set: the save is within seconds of that time.
    assert all(
        timedelta(0) <= s - e < timedelta(seconds=10) for s, e in zip(saved, expected, strict=True)
    )


def test_preview_sample_names_the_customers(stack: Stack) -> None:  # noqa: F811
    """The preview's sample gives each customer's id, first and last name and email (the
    page shows them as text with a link), not only an id; a customer who would not enter is
    not in the sample."""
    product = stack.ctl("/products", {"title": "Tea", "variants": [{"price": "1200"}]})
    cid = stack.subscribed_customer("yui@example.com", first_name="Yui", last_name="Mori")
    stack.order(cid, product)
    quiet = int(stack.ctl("/customers", {"email": "no@example.com", "first_name": "No"})["id"])
    stack.order(quiet, product)
    stack.sync(cid, quiet)
    seq_id = stack.api("POST", "/api/sequences", {"template": "four_walls"}).json()["id"]
    body = stack.api("POST", f"/api/sequences/{seq_id}/preview", {}).json()
    assert body["would_enter"] == 1
    [row] = body["sample"]
    assert row["customer_id"] == cid
    assert (row["first_name"], row["last_name"], row["email"]) == ("Yui", "Mori", "yui@example.com")
