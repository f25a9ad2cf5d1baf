"""A step job's commit lost after it created the step's coupon (the soak's orphan code).

The step job writes to Shopify (the devstore over HTTP) first and commits the enrolment
after. Here the enrolment is changed by "someone else" right after the job's
``discountCodeBasicCreate`` reached the devstore, so the job's compare-and-set loses, exactly
as when an evaluation exits the customer or turns a yearly cycle over in that window. The
hook is a real Admin client that runs the change once the create has returned; every call
still goes to the devstore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plugin import shops
from plugin.admin_client import AdminClient, RedisBudget
from tests.fixtures.stack import AppKeys, Installed, Stacks
from tests.fixtures.stack import ShopStack as Stack
from worker import decision_log, enrolment_store, steps
from worker.app_events import Context, job_context

KEYS = AppKeys("kizuna-race-client-id", "kizuna-race-client-secret-0123456789abcdef")
SHOP = "race-shop.myshopify.com"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)
INSTALLED = Installed(SHOP, shops.ShopFacts("Race", "Asia/Tokyo", "JPY", "Basic"), START)
BIRTHDAY_STEP_AT = datetime(2026, 8, 1, 1, 5, tzinfo=UTC)  # 1 August, 10:05 in Tokyo


class RacingAdmin(AdminClient):
    """The real Admin client; ``after_create`` runs once, right after a coupon was created."""

    after_create: Callable[[], None] | None = None

    def execute_mutation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        payload = super().execute_mutation(*args, **kwargs)
        hook, field = self.after_create, args[4] if len(args) > 4 else None
        if hook is not None and field == "discountCodeBasicCreate":
            self.after_create = None
            hook()
        return payload


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    return stacks.shop(Stack, KEYS, INSTALLED)


def _due_birthday(stack: Stack, email: str) -> tuple[int, str]:
    """A subscribed customer born in August, their birthday step due now (not yet run)."""
    seq_id = stack.sequence("birthday_coupon")
    cid = stack.subscribed_customer(email)
    stack.emit_birth_date(cid, "1990-08-15")
    stack.sync(cid)
    stack.clock.set(BIRTHDAY_STEP_AT)
    return cid, seq_id


def _racing_context(hook: Callable[[], None]) -> Context:
    ctx = job_context()
    admin = RacingAdmin(ctx.settings, budget=RedisBudget(ctx.conn))
    admin.after_create = hook
    ctx.admin = admin
    return ctx


def _change(stack: Stack, cid: int, seq_id: str, **fields: Any) -> Callable[[], None]:
    """A hook committing the enrolment with ``fields`` changed (what an evaluation does)."""

    def hook() -> None:
        raw = enrolment_store.load_raw(stack.conn, SHOP, seq_id, cid)
        assert raw is not None
        enr = enrolment_store.decode(cid, seq_id, raw)
        assert enrolment_store.commit(stack.conn, SHOP, cid, seq_id, raw, replace(enr, **fields))

    return hook


def _codes(stack: Stack, cid: int) -> list[str]:
    return [c["code"] for c in stack.customer_view(cid)["discount_codes"]]


def _step_done_codes(stack: Stack, cid: int) -> list[str]:
    return [
        e["detail"]["written"]["coupon"]
        for e in decision_log.read(stack.conn, SHOP, cid)
        if e["decision"] == "step_done"
    ]


def test_exit_during_the_write_deletes_the_created_code(stack: Stack) -> None:
    """The customer exits between the coupon's create and the commit: the job must not leave
    the code in Shopify, must record no step, and must log why the code disappeared."""
    cid, seq_id = _due_birthday(stack, "exit@example.com")
    ctx = _racing_context(_change(stack, cid, seq_id, status="exited", due_at=None))

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "ended"

    assert _codes(stack, cid) == []
    assert _step_done_codes(stack, cid) == []
    withdrawn = [e for e in decision_log.read(stack.conn, SHOP, cid)
                 if e["decision"] == "coupon_deleted"]  # fmt: skip
    assert len(withdrawn) == 1 and withdrawn[0]["detail"]["deleted_now"] is True
    assert withdrawn[0]["sequence"] == seq_id and withdrawn[0]["reason"] == "step_not_committed"


def test_cycle_turnover_during_the_write_leaves_only_the_new_cycles_code(stack: Stack) -> None:
    """The cycle turns over between the create and the commit: the old cycle's code is
    deleted and the new cycle's step runs with its own code, the only one in Shopify."""
    cid, seq_id = _due_birthday(stack, "cycle@example.com")
    before = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert before is not None
    ctx = _racing_context(_change(stack, cid, seq_id, cycle=before.cycle + 1))

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "run"

    codes = _codes(stack, cid)
    assert len(codes) == 1
    assert _step_done_codes(stack, cid) == codes
    after = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert after is not None and after.cycle == before.cycle + 1
    log = decision_log.read(stack.conn, SHOP, cid)
    withdrawn = [e["detail"]["code"] for e in log if e["decision"] == "coupon_deleted"]
    assert len(withdrawn) == 1 and withdrawn[0] not in codes


def test_lost_commit_followed_by_the_same_step_keeps_the_code(stack: Stack) -> None:
    """The enrolment changes without changing the step (re-timed a minute): the loop runs the
    same step with the same code, finds the coupon and commits it. Nothing is deleted."""
    cid, seq_id = _due_birthday(stack, "same@example.com")
    before = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert before is not None and before.due_at is not None
    earlier = before.due_at - timedelta(minutes=1)
    ctx = _racing_context(_change(stack, cid, seq_id, due_at=earlier))

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "run"

    codes = _codes(stack, cid)
    assert len(codes) == 1 and _step_done_codes(stack, cid) == codes
    log = decision_log.read(stack.conn, SHOP, cid)
    assert not [e for e in log if e["decision"] == "coupon_deleted"]
    done = [e for e in log if e["decision"] == "step_done"]
    assert done[-1]["detail"]["written"]["coupon_created"] is False


def test_a_duplicate_job_that_committed_the_code_keeps_it(stack: Stack) -> None:
    """A second job for the same step runs inside the first one's window: it finds the code
    the first created and commits the step. The first job loses and sees the step done: the
    code belongs to a committed step and must stay (exactly one code, exactly one step)."""
    cid, seq_id = _due_birthday(stack, "twice@example.com")

    def duplicate_job() -> None:
        assert steps.handle_step(job_context(), SHOP, cid, seq_id) == "run"

    ctx = _racing_context(duplicate_job)

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "ended"

    codes = _codes(stack, cid)
    assert len(codes) == 1 and _step_done_codes(stack, cid) == codes
    log = decision_log.read(stack.conn, SHOP, cid)
    assert not [e for e in log if e["decision"] == "coupon_deleted"]


def test_deleting_a_code_twice_is_no_error(stack: Stack) -> None:
    """``delete_coupon`` of a code deleted already answers False and raises nothing."""
    from plugin.tokens import fresh_access_token
    from worker import writeback

    cid, seq_id = _due_birthday(stack, "again@example.com")
    ctx = job_context()
    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "run"
    token = fresh_access_token(ctx.conn, ctx.settings, SHOP, ctx.clock)
    node = writeback.lookup_coupon(ctx.admin_client(), SHOP, token, _codes(stack, cid)[0])
    assert node is not None
    coupon = writeback.Coupon(_codes(stack, cid)[0], str(node["id"]), None, created=True)

    assert writeback.delete_coupon(ctx.admin_client(), SHOP, token, coupon) is True
    assert writeback.delete_coupon(ctx.admin_client(), SHOP, token, coupon) is False
    assert _codes(stack, cid) == []
