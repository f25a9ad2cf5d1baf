"""A 401 in the reconcile, the backfill or a bulk batch pauses the shop; the work resumes once.

Against the devstore over HTTP with real RQ jobs (burst workers, as ``kizuna worker`` takes
turns): Shopify revokes the shop's tokens (the devstore's control API) and a job outside the
step engine meets the 401. It must not fail nor spend its retries; the shop must wait for
re-auth; and once the merchant opens the app again (token exchange) the job's work must run,
once. A 401 that a refresh fixes must cost the job nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry

from devstore.state import PREFIX
from plugin import shops
from plugin.crypto import TokenCipher
from tests.fixtures.stack import Stacks
from tests.integration.test_bulk_writeback import _dormant_customers
from tests.integration.test_e2e_sequences import INSTALLED, KEYS, SHOP, Stack
from tests.integration.test_reauth_resume import revoke_tokens
from worker import backfill, decision_log, enrolment_store, profile_store, reauth, reconcile
from worker.queues import ALL_QUEUES, BULK, DEFAULT_RETRY_INTERVALS, enqueue, get_queue
from worker.scheduler import tick

RECONCILE = "worker.reconcile.run"
BACKFILL_START = "worker.backfill.start"
BACKFILL_POLL = "worker.backfill.poll"


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    return stacks.shop(Stack, KEYS, INSTALLED)


def open_app(stack: Stack) -> None:
    """The admin loads the embedded page with a fresh ID token: the token exchange re-auths."""
    r = stack.open_app()
    assert r.status_code == 200, r.text


def run_job(stack: Stack, func: str, job_id: str, queue: str = BULK) -> Job:
    """Enqueue ``func(SHOP)`` as the app does (with RQ's ``Retry``), work, answer the job."""
    job = enqueue(stack.conn, func, SHOP, queue=queue, job_id=job_id)
    stack.work()
    return Job.fetch(job.id, connection=stack.conn, serializer=job.serializer)


def assert_paused_without_failing(stack: Stack, job: Job) -> None:
    """The job answered ``paused``: finished, no retry spent or scheduled, no job failed; the
    shop waits for re-auth because Shopify refused its token."""
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == "paused"
    assert job.retries_left == len(DEFAULT_RETRY_INTERVALS)
    for name in ALL_QUEUES:
        queue = get_queue(stack.conn, name)
        assert FailedJobRegistry(queue=queue).get_job_ids() == [], name
        assert job.id not in ScheduledJobRegistry(queue=queue).get_job_ids(), name
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.NEEDS_REAUTH
    assert "refused the access token" in (record.reauth_reason or "")


def resumed_runs(stack: Stack, func: str) -> int:
    """Jobs of ``func`` the resume enqueued (``resumed-…``) that have finished."""
    queue = get_queue(stack.conn, BULK)
    ids = FinishedJobRegistry(queue=queue).get_job_ids()
    jobs = Job.fetch_many(ids, connection=stack.conn, serializer=queue.serializer)
    return sum(1 for j in jobs if j is not None and j.func_name == func and "resumed-" in j.id)


def bulk_exports(stack: Stack) -> int:
    """Bulk queries (exports) the devstore was asked to run for the shop."""
    ops = [json.loads(v) for v in stack.conn.hvals(f"{PREFIX}{SHOP}:bulk_operations")]
    return sum(1 for op in ops if op["type"] == "QUERY")


def test_a_reconcile_meeting_a_revoked_token_waits_and_runs_once_after_reauth(
    stack: Stack,
) -> None:
    """A customer whose webhook never came is only found by a reconcile. The reconcile meets
    the revoked token: it must pause the shop (not fail, not retry), keep one parked run
    however many reconciles meet the pause, and after the re-auth reconcile once, bringing the
    customer in. Opening the app again must run nothing a second time."""
    revoke_tokens(stack)
    cid = stack.subscribed_customer("sora@example.com")  # its webhook is never delivered

    job = run_job(stack, RECONCILE, "reconcile-during-revocation")

    assert_paused_without_failing(stack, job)
    assert profile_store.load(stack.conn, SHOP, cid) is None
    assert stack.conn.hkeys(reauth.paused_jobs_key(SHOP)) == [b"reconcile"]
    again = run_job(stack, RECONCILE, "reconcile-during-pause")  # the next period's run
    assert again.return_value() == "paused"
    assert stack.conn.hlen(reauth.paused_jobs_key(SHOP)) == 1

    open_app(stack)
    stack.work()  # the resume job, then the parked reconcile

    assert profile_store.load(stack.conn, SHOP, cid) is not None
    assert stack.conn.hget(reconcile.state_key(SHOP), "last_run") is not None
    assert resumed_runs(stack, RECONCILE) == 1
    assert not stack.conn.exists(reauth.paused_jobs_key(SHOP))
    open_app(stack)
    stack.work()
    assert resumed_runs(stack, RECONCILE) == 1


def test_a_backfill_poll_meeting_a_revoked_token_goes_on_from_its_exports(stack: Stack) -> None:
    """The backfill's exports are started; the poll then meets the revoked token. The poll must
    pause the shop without failing and without cancelling the backfill (still ``running``, its
    exports kept); after the re-auth the backfill must finish from those exports (no export
    started again) with every customer merged."""
    cids = [stack.subscribed_customer(f"yui{n}@example.com") for n in range(3)]
    assert run_job(stack, BACKFILL_START, "backfill-start").return_value() == "started"
    assert bulk_exports(stack) == 2
    revoke_tokens(stack)

    job = run_job(stack, BACKFILL_POLL, "backfill-poll-during-revocation")

    assert_paused_without_failing(stack, job)
    assert backfill.progress(stack.conn, SHOP)["status"] == "running"
    open_app(stack)
    stack.work()  # the resume: the backfill's start again, which schedules a poll
    finish_backfill(stack)
    assert bulk_exports(stack) == 2
    for cid in cids:
        assert profile_store.load(stack.conn, SHOP, cid) is not None, cid


def test_a_backfill_start_meeting_a_revoked_token_starts_after_reauth(stack: Stack) -> None:
    """The backfill's start meets the revoked token before any export was started: it must
    pause the shop without failing, and after the re-auth the backfill must run to the end,
    one export per kind."""
    cid = stack.subscribed_customer("rin@example.com")
    revoke_tokens(stack)

    job = run_job(stack, BACKFILL_START, "backfill-start-during-revocation")

    assert_paused_without_failing(stack, job)
    assert bulk_exports(stack) == 0
    open_app(stack)
    stack.work()
    finish_backfill(stack)
    assert bulk_exports(stack) == 2
    assert profile_store.load(stack.conn, SHOP, cid) is not None


def finish_backfill(stack: Stack, polls: int = 5) -> None:
    """Poll (the scheduled poll, run now) until the backfill is done."""
    for n in range(polls):
        if backfill.progress(stack.conn, SHOP)["status"] != "running":
            break
        run_job(stack, BACKFILL_POLL, f"backfill-poll-{n}")
    assert backfill.progress(stack.conn, SHOP)["status"] == "done"


def test_a_bulk_batch_meeting_a_revoked_token_runs_its_steps_once_after_reauth(
    stack: Stack,
) -> None:
    """Five customers due at the same step go in one bulk batch, whose bulk mutation start
    meets the revoked token. The batch must pause the shop without failing and put the steps
    back (noted for the resume), writing nothing; after the re-auth each step must run once:
    its tag in Shopify, one ``step_done``."""
    ids = _dormant_customers(stack, 5)
    seq_id = stack.sequence("winback")
    assert enrolment_store.counts(stack.conn, SHOP, seq_id)["at_step"] == {0: 5}
    revoke_tokens(stack)

    assert len(tick(stack.conn, stack.clock.now(), bulk_threshold=3).batches) == 1
    stack.work()

    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.NEEDS_REAUTH
    assert stack.conn.scard(reauth.paused_steps_key(SHOP)) == 5
    assert all(FailedJobRegistry(queue=get_queue(stack.conn, q)).count == 0 for q in ALL_QUEUES)
    tag = f"kizuna:{seq_id}:news"
    assert not any(tag in stack.tags(cid) for cid in ids)

    open_app(stack)
    stack.work()  # the resume: the steps due again
    assert len(tick(stack.conn, stack.clock.now(), bulk_threshold=3).batches) == 1
    stack.work()
    stack.devstore.flush_webhooks()
    stack.work()

    assert all(tag in stack.tags(cid) for cid in ids)
    for cid in ids:
        done = [
            e
            for e in decision_log.read(stack.conn, SHOP, cid)
            if e["sequence"] == seq_id and e["decision"] == "step_done"
        ]
        assert len(done) == 1, cid
    assert enrolment_store.counts(stack.conn, SHOP, seq_id)["at_step"] == {1: 5}
    assert tick(stack.conn, stack.clock.now(), bulk_threshold=3).claimed == 0


def test_a_401_fixed_by_a_refresh_costs_the_job_nothing(stack: Stack) -> None:
    """The shop holds an expiring token and its refresh token; Shopify refuses the access
    token. The reconcile must refresh it once and finish its run in the same attempt: no retry
    spent, the shop still installed, the refused token replaced."""
    open_app(stack)  # the token exchange: an expiring token with a refresh token
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.encrypted_refresh_token is not None
    cipher = TokenCipher.from_settings(stack.settings)
    refused = shops.Grant(
        access_token="shpat_refused", scopes=record.scopes, expires_at=record.expires_at,
        refresh_token=shops.decrypt_refresh_token(cipher, record),
        refresh_expires_at=record.refresh_expires_at,
    )  # fmt: skip
    shops.store_refreshed(
        stack.conn, cipher, SHOP, refused, stack.clock.now(), generation=record.generation
    )
    cid = stack.subscribed_customer("mei@example.com")

    job = run_job(stack, RECONCILE, "reconcile-with-a-refused-token")

    result: Any = job.return_value()
    assert job.get_status() == JobStatus.FINISHED and isinstance(result, dict), result
    assert job.retries_left == len(DEFAULT_RETRY_INTERVALS)
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.INSTALLED
    assert shops.decrypt_access_token(cipher, record) != "shpat_refused"
    assert profile_store.load(stack.conn, SHOP, cid) is not None
