"""Admin API fault injection over real HTTP: timeouts before and after the commit, a seeded
random fault rate, added latency, and refused switches."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from devstore.state import Store

SHOP = "faults.myshopify.com"
TAGS_ADD = """mutation($id: ID!) { tagsAdd(id: $id, tags: ["kizuna:test"]) {
  node { id } userErrors { message } } }"""


class World:
    def __init__(self, devstore: Any, token: str, customer_id: int) -> None:
        self.devstore, self.token, self.customer_id = devstore, token, customer_id
        self.store = Store(devstore.conn, devstore.clock)

    def faults(self, **spec: Any) -> requests.Response:
        return self.devstore.session.post(
            self.devstore.url(f"/_devstore/shops/{SHOP}/faults"), json=spec, timeout=10
        )

    def post(self, query: str, *, timeout: float = 10, **variables: Any) -> requests.Response:
        return self.devstore.session.post(
            self.devstore.graphql_url(SHOP),
            json={"query": query, "variables": variables},
            headers={"X-Shopify-Access-Token": self.token},
            timeout=timeout,
        )

    def tag(self, *, timeout: float = 10) -> requests.Response:
        return self.post(TAGS_ADD, id=f"gid://shopify/Customer/{self.customer_id}", timeout=timeout)

    def tags(self) -> list[str]:
        record = self.store.get(SHOP, "customers", self.customer_id)
        assert record is not None
        return list(record["tags"])


@pytest.fixture()
def world(devstore: Any, webhook_sink: Any) -> World:
    devstore.create_shop(SHOP)
    token = devstore.install(SHOP, webhook_sink.url, "faults-key", "faults-secret")
    store = Store(devstore.conn, devstore.clock, webhooks=False)
    customer = store.create_customer(SHOP, {"first_name": "花子", "email": "f@example.jp"})
    return World(devstore, token, customer["id"])


def test_timeout_holds_the_answer_and_changes_nothing(world: World) -> None:
    """Tried: a mutation while a `timeout` fault is armed, with a 0.3 s read timeout. Must not:
    answer in time, or apply the mutation (the fault comes before execution); the next call
    works."""
    assert world.faults(next=["timeout"], timeout_s=1).status_code == 200
    with pytest.raises(requests.ReadTimeout):
        world.tag(timeout=0.3)
    time.sleep(0.8)  # the held answer (a 504) is sent and dropped
    assert world.tags() == []
    answer = world.tag()
    assert answer.status_code == 200 and answer.json()["data"]["tagsAdd"]["userErrors"] == []
    assert world.tags() == ["kizuna:test"]


def test_timeout_after_commit_applies_then_times_out(world: World) -> None:
    """`timeout_after_commit`: the client sees a read timeout although the mutation was
    applied — the case that makes a client's retry meet its own earlier write. The retry is
    answered normally and the tag is not doubled."""
    world.faults(next=["timeout_after_commit"], timeout_s=1)
    with pytest.raises(requests.ReadTimeout):
        world.tag(timeout=0.3)
    assert world.tags() == ["kizuna:test"], "applied before the answer was held"
    retry = world.tag()
    assert retry.status_code == 200 and retry.json()["data"]["tagsAdd"]["userErrors"] == []
    assert world.tags() == ["kizuna:test"]


def test_rate_mode_is_seeded_and_repeatable(world: World) -> None:
    """`rate` 0.4 over kinds 500/429 with a seed: about 40 % of 40 calls fail, only with those
    kinds; setting the same spec again replays the same sequence; another seed differs."""

    def run(seed: int) -> list[int]:
        assert world.faults(rate=0.4, kinds=["500", "429"], seed=seed).status_code == 200
        return [world.post("{ shop { name } }").status_code for _ in range(40)]

    first = run(3)
    assert set(first) <= {200, 500, 429}
    assert 8 <= sum(s != 200 for s in first) <= 24
    assert {500, 429} <= set(first)
    assert run(3) == first
    assert run(4) != first
    assert world.faults(rate=0, kinds=["500"]).status_code == 200
    assert all(world.post("{ shop { name } }").status_code == 200 for _ in range(5))


def test_latency_slows_every_answer(world: World) -> None:
    """`latency_ms` 250: each answer takes at least that long and is otherwise normal."""
    world.faults(latency_ms=250)
    for _ in range(2):
        started = time.perf_counter()
        answer = world.post("{ shop { name } }")
        assert time.perf_counter() - started >= 0.25
        assert answer.status_code == 200 and answer.json()["data"]["shop"]["name"]
    world.faults()
    started = time.perf_counter()
    world.post("{ shop { name } }")
    assert time.perf_counter() - started < 0.25


@pytest.mark.parametrize(
    "spec",
    [
        {"next": ["teapot"]},
        {"rate": 1.5, "kinds": ["500"]},
        {"rate": "often", "kinds": ["500"]},
        {"rate": 0.5},
        {"latency_ms": -1},
        {"timeout_s": 1e6, "next": ["timeout"]},
    ],
)
def test_bad_fault_switches_are_refused(world: World, spec: dict[str, Any]) -> None:
    """Tried: an unknown kind, a rate out of range or not a number, a rate with no kinds, a
    negative latency, an hour-long timeout. Must not: arm anything; calls keep working."""
    answer = world.faults(**spec)
    assert answer.status_code == 422 and answer.json()
    assert world.post("{ shop { name } }").status_code == 200
