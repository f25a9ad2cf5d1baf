"""Flaky Shopify: 30 % of Admin calls fail for the whole run — 429 with Retry-After, 5xx,
timeouts (some after Shopify committed the write) and THROTTLED — and every step still
completes exactly once; retries stay under a cap; a step that cannot get through ends in RQ's
failed registry (a dead letter), visibly, instead of retrying forever."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.fault import procs
from tests.fault.harness import (
    BIRTHDAY_DUE,
    SHOP,
    FaultStack,
    failed_jobs,
    promote_retries,
    queued,
    report,
)
from worker import enrolment_store
from worker.app_events import Context
from worker.queues import DEFAULT_RETRY_INTERVALS
from worker.scheduler import tick

FAULT_KINDS = ["429", "500", "502", "503", "timeout", "timeout_after_commit", "throttled"]
CUSTOMERS = 16


def _shared_short_client(monkeypatch: pytest.MonkeyPatch, read_timeout: float) -> dict[str, Any]:
    """Every job's Context gets one shared real AdminClient (short timeouts) so the test can
    read its call statistics."""
    holder: dict[str, Any] = {}
    build = procs.admin_client_method(read_timeout)

    def admin_client(self: Context) -> Any:
        if "client" not in holder:
            holder["client"] = build(self)
        self.admin = holder["client"]
        return self.admin

    monkeypatch.setattr(Context, "admin_client", admin_client)
    return holder


def _drain(stack: FaultStack, rounds: int) -> int:
    """Run workers, let RQ's retries come due (time compressed), tick; until nothing is left."""
    for n in range(rounds):
        stack.work()
        promote_retries(stack.conn)
        stack.clock.advance(timedelta(minutes=1))
        tick(stack.conn, stack.clock.now())
        if queued(stack.conn) == 0:
            return n + 1
    return rounds


def test_thirty_percent_failing_admin_calls_every_step_once(
    fstack: FaultStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: 30 % of all Admin calls during the steps fail (429, 500/502/503, read timeouts,
    timeouts after the write was committed, THROTTLED). Must not happen: a step lost, a
    second coupon or a second step_done for a customer, a failed enrolment, or more requests
    than the retry caps allow."""
    seq_id, ids = fstack.birthday_cohort(CUSTOMERS)
    holder = _shared_short_client(monkeypatch, read_timeout=0.3)
    fstack.admin_faults({"rate": 0.3, "kinds": FAULT_KINDS, "seed": 7, "timeout_s": 0.6})
    fstack.clock.set(BIRTHDAY_DUE + timedelta(minutes=1))
    tick(fstack.conn, fstack.clock.now())
    rounds = _drain(fstack, rounds=len(DEFAULT_RETRY_INTERVALS) + 3)
    injected = int(fstack.conn.get(f"devstore:{SHOP}:admin_faults:n") or 0)
    fstack.admin_faults({})

    audit = fstack.audit(seq_id, ids, due=BIRTHDAY_DUE)
    client = holder["client"]
    # Per step: tagsAdd, coupon lookup, create, metafieldsSet, Flow = 5 calls when nothing
    # fails. The client makes at most max_attempts per call, RQ at most 1 + 5 runs per step.
    cap = CUSTOMERS * 5 * client.max_attempts * (1 + len(DEFAULT_RETRY_INTERVALS))
    over_cap = int(client.stats.requests > cap)
    print(f"FAULT-STATS flaky_shopify requests={client.stats.requests} "
          f"retries={client.stats.retries} throttled={client.stats.throttled} "
          f"devstore_calls={injected} rounds={rounds} flow_repeats={audit.flow_repeats} "
          f"dead={len(failed_jobs(fstack.conn))}", flush=True)  # fmt: skip
    assert client.stats.retries > 0, "no fault was injected: the test tested nothing"
    audit.unexpected += [f"dead letter {j.id}" for j in failed_jobs(fstack.conn)]
    audit.unexpected += ["over the retry cap"] * over_cap
    audit.line("flaky_shopify")


def test_a_step_that_never_gets_through_is_dead_lettered_after_bounded_retries(
    fstack: FaultStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: every Admin call answers 503 for one customer's step. Must not happen: more than
    (1 + RQ retries) × client attempts requests, a step marked done, a coupon, or the failure
    staying invisible (the job must end in RQ's failed registry and the step in the shop's
    failures)."""
    seq_id, ids = fstack.birthday_cohort(1)
    holder = _shared_short_client(monkeypatch, read_timeout=0.3)
    fstack.admin_faults({"rate": 1.0, "kinds": ["503"], "seed": 1})
    fstack.clock.set(BIRTHDAY_DUE + timedelta(minutes=1))
    tick(fstack.conn, fstack.clock.now())
    _drain(fstack, rounds=len(DEFAULT_RETRY_INTERVALS) + 3)
    client = holder["client"]
    runs = 1 + len(DEFAULT_RETRY_INTERVALS)
    dead = failed_jobs(fstack.conn)
    failures = enrolment_store.failures(fstack.conn, SHOP)
    view = fstack.customer_view(ids[0])
    ok = int(len(dead) == 1)
    unexpected = 0
    unexpected += client.stats.requests > runs * client.max_attempts
    unexpected += bool(view.get("discount_codes"))
    unexpected += not failures
    # The step was given up: a later tick (the lease long past) claims nothing again.
    fstack.clock.advance(timedelta(hours=1))
    again = tick(fstack.conn, fstack.clock.now())
    unexpected += again.claimed
    print(f"FAULT-STATS dead_letter reclaimed={again.claimed} requests={client.stats.requests} "
          f"dead={len(dead)} failures={failures}", flush=True)  # fmt: skip
    report("dead_letter", ok, lost=1 - ok, duplicated=0, unexpected=unexpected)
