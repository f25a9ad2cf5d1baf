"""A step job that created the step's coupon and did not record the step (the soak's orphan).

The step job writes to Shopify (the devstore over HTTP) first and commits the enrolment
after. Here something happens right after the job's ``discountCodeBasicCreate`` reached the
devstore: the enrolment is changed by "someone else", so the job's compare-and-set loses,
exactly as when an evaluation exits the customer or turns a yearly cycle over in that window;
or Shopify answers the next call with a 503 or a 401, so the job stops before its commit. The
hook is a real Admin client that runs the change once the create has returned; every call
still goes to the devstore. What must not happen: a code left in Shopify that no
``step_done`` names, or a code of a recorded step deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm.errors import PermanentShopifyError, ServerError
from plugin import shops
from plugin.admin_client import AdminClient, RedisBudget
from tests.fixtures.stack import AppKeys, Installed, Stacks
from tests.fixtures.stack import ShopStack as Stack
from worker import coupon_ledger, coupon_withdrawal, decision_log, enrolment_store, steps
from worker.app_events import Context, job_context

KEYS = AppKeys("kizuna-race-client-id", "kizuna-race-client-secret-0123456789abcdef")
SHOP = "race-shop.myshopify.com"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)
INSTALLED = Installed(SHOP, shops.ShopFacts("Race", "Asia/Tokyo", "JPY", "Basic"), START)
BIRTHDAY_STEP_AT = datetime(2026, 8, 1, 1, 5, tzinfo=UTC)  # 1 August, 10:05 in Tokyo


class RacingAdmin(AdminClient):
    """The real Admin client; ``after_create`` runs once, right after a coupon was created;
    the mutation named ``refuse`` is answered as Shopify refusing it for good."""

    after_create: Callable[[], object] | None = None
    refuse: str | None = None

    def execute_mutation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        field = args[4] if len(args) > 4 else None
        if field is not None and field == self.refuse:
            raise PermanentShopifyError(f"{field}: refused", shop=str(args[0]))
        payload = super().execute_mutation(*args, **kwargs)
        hook = self.after_create
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


def _racing_context(hook: Callable[[], object], **options: Any) -> Context:
    ctx = job_context()
    admin = RacingAdmin(ctx.settings, budget=RedisBudget(ctx.conn), **options)
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


# -- a job that stops after the create ----------------------------------------------------------


def _withdrawn(stack: Stack, cid: int) -> list[dict[str, Any]]:
    log = decision_log.read(stack.conn, SHOP, cid)
    return [e for e in log if e["decision"] == "coupon_deleted"]


def _exit(stack: Stack, cid: int, seq_id: str) -> None:
    """End the enrolment as an evaluation does when the customer ordered."""
    _change(stack, cid, seq_id, status="exited", due_at=None)()


def _stopped_after_create(stack: Stack, email: str) -> tuple[int, str, str]:
    """A birthday step whose job created the coupon and then met a 503 on ``metafieldsSet``
    (one attempt, so the job stops there as after its last retry); answer the customer, the
    sequence and the code, which is in Shopify and in the ledger, the step not recorded."""
    cid, seq_id = _due_birthday(stack, email)
    ctx = _racing_context(lambda: stack.ctl("/faults", {"next": ["503"]}), max_attempts=1)
    with pytest.raises(ServerError):
        steps.handle_step(ctx, SHOP, cid, seq_id)
    codes = _codes(stack, cid)
    held = coupon_ledger.pending(stack.conn, SHOP, cid, seq_id)
    assert len(codes) == 1 and held is not None and held.code == codes[0]
    assert _step_done_codes(stack, cid) == []
    return cid, seq_id, codes[0]


def test_a_stopped_job_whose_step_runs_again_keeps_its_code(stack: Stack) -> None:
    """RQ's retry runs the same step: it finds the code and records it; the commit takes the
    code out of the ledger, and nothing is deleted."""
    cid, seq_id, code = _stopped_after_create(stack, "retry@example.com")

    assert steps.handle_step(job_context(), SHOP, cid, seq_id) == "run"

    assert _codes(stack, cid) == [code] and _step_done_codes(stack, cid) == [code]
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None
    assert _withdrawn(stack, cid) == []


def test_a_stopped_job_whose_customer_exited_withdraws_the_code_on_its_retry(stack: Stack) -> None:
    """The customer exits before RQ's retry (they ordered): the retry finds the enrolment
    ended and deletes the code the first attempt created — the soak's orphan — and logs it."""
    cid, seq_id, code = _stopped_after_create(stack, "exited@example.com")
    _exit(stack, cid, seq_id)

    assert steps.handle_step(job_context(), SHOP, cid, seq_id) == "ended"

    assert _codes(stack, cid) == [] and _step_done_codes(stack, cid) == []
    withdrawn = _withdrawn(stack, cid)
    assert [(e["detail"]["code"], e["detail"]["deleted_now"]) for e in withdrawn] == [(code, True)]
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None


def test_the_sweep_withdraws_a_code_no_job_comes_back_for(stack: Stack) -> None:
    """No job runs the step again (the work-horse was killed, its job lost): the periodic
    sweep, enqueued by the scheduler loop's ``schedule_all`` and run by a worker, deletes the
    code — but not while the step may still run, and not within the grace period."""
    cid, seq_id, code = _stopped_after_create(stack, "sweep@example.com")
    later = stack.clock.now() + coupon_withdrawal.GRACE + timedelta(minutes=1)
    ctx = job_context()

    assert coupon_withdrawal.sweep_shop(ctx, SHOP)["withdrawn"] == 0  # the step is still due
    _exit(stack, cid, seq_id)
    assert coupon_withdrawal.sweep_shop(ctx, SHOP) == {"held": 1, "withdrawn": 0, "kept": 0}
    assert _codes(stack, cid) == [code]  # within the grace period: a job may still hold it

    stack.clock.set(later)
    assert coupon_withdrawal.schedule_all(stack.conn, later) == [SHOP]
    stack.work()

    assert _codes(stack, cid) == [] and _step_done_codes(stack, cid) == []
    assert [e["detail"]["code"] for e in _withdrawn(stack, cid)] == [code]
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None
    assert coupon_withdrawal.schedule_all(stack.conn, later) == []  # once per period


def test_a_step_given_up_after_its_retries_withdraws_its_code(stack: Stack) -> None:
    """The step's last retry failed too: the enrolment ends as ``failed`` and the code its
    first attempt created does not stay behind."""
    cid, seq_id, code = _stopped_after_create(stack, "giveup@example.com")

    assert steps.give_up(job_context(), SHOP, cid, seq_id, ServerError("503", shop=SHOP))

    assert _codes(stack, cid) == []
    assert [e["detail"]["code"] for e in _withdrawn(stack, cid)] == [code]
    log = decision_log.read(stack.conn, SHOP, cid)
    assert [e["decision"] for e in log if e["decision"] in ("failed", "step_done")] == ["failed"]


def test_a_step_refused_for_good_after_the_create_withdraws_its_code(stack: Stack) -> None:
    """Shopify refuses the step's metafields for good, after the create: the step fails
    visibly (a ``failed`` entry) and its coupon is deleted."""
    cid, seq_id = _due_birthday(stack, "refused@example.com")
    ctx = _racing_context(lambda: setattr(ctx.admin, "refuse", "metafieldsSet"))

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "failed"

    assert _codes(stack, cid) == [] and _step_done_codes(stack, cid) == []
    assert len(_withdrawn(stack, cid)) == 1
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None


def test_a_401_after_the_create_runs_the_step_again_with_the_new_token(stack: Stack) -> None:
    """The access token expires between the create and the metafields (the dev clock moves
    two hours): the 401 is answered by a refresh and the same job runs the step again with
    the new token. One code, one ``step_done``, nothing deleted, no job left to retry."""
    assert stack.open_app().status_code == 200  # token exchange: an expiring token
    stack.work()
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.expires_at is not None
    cid, seq_id = _due_birthday(stack, "expired@example.com")
    expired = stack.clock.now() + timedelta(hours=2)
    ctx = _racing_context(lambda: stack.clock.set(expired))

    assert steps.handle_step(ctx, SHOP, cid, seq_id) == "run"

    codes = _codes(stack, cid)
    assert len(codes) == 1 and _step_done_codes(stack, cid) == codes
    assert _withdrawn(stack, cid) == []
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None


def test_a_commit_releases_only_its_own_code(stack: Stack) -> None:
    """The commit script takes a code out of the ledger only if it is the one held: a commit
    naming another code, or none, leaves the held code for the withdrawal."""
    cid, seq_id = _due_birthday(stack, "ledger@example.com")
    raw = enrolment_store.load_raw(stack.conn, SHOP, seq_id, cid)
    assert raw is not None
    enr = enrolment_store.decode(cid, seq_id, raw)
    coupon_ledger.hold(stack.conn, SHOP, enr, "KZ-HELD", stack.clock.now())
    moved = replace(enr, due_at=enr.due_at + timedelta(minutes=1) if enr.due_at else None)

    assert enrolment_store.commit(stack.conn, SHOP, cid, seq_id, raw, moved, release="KZ-OTHER")
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is not None
    raw = enrolment_store.load_raw(stack.conn, SHOP, seq_id, cid)
    assert enrolment_store.commit(stack.conn, SHOP, cid, seq_id, raw, enr, release="KZ-HELD")
    assert coupon_ledger.pending(stack.conn, SHOP, cid, seq_id) is None
