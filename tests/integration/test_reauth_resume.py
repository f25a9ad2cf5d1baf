"""Work paused by a revoked token resumes by itself after the merchant re-authorises.

Against the devstore over HTTP, with real RQ jobs: Shopify revokes the shop's token (the
devstore's control API), a due step meets the 401 and the shop waits for re-auth; an evaluation
and a job that failed on the 401 wait too. The merchant opens the app (token exchange), a
worker runs, and the step runs exactly once, the evaluation happens and the failed job is
re-queued once. Opening the app again resumes nothing a second time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import requests
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from plugin import shops
from plugin.clock import FixedClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from tests.fixtures.stack import AppKeys, Installed, Stacks
from tests.fixtures.stack import ShopStack as Stack
from worker import app_events, backfill, decision_log, enrolment_store, reauth
from worker.app_events import AFTER_INSTALL_JOB, Context, job_context
from worker.queues import ALL_QUEUES, BULK, DEFAULT, DEFAULT_RETRY_INTERVALS, get_queue
from worker.scheduler import tick

KEYS = AppKeys("kizuna-reauth-client-id", "kizuna-reauth-client-secret-0123456789abcdef")
SHOP = "reauth-shop.myshopify.com"
TZ = "Asia/Tokyo"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
BIRTHDAY_STEP = datetime(2026, 8, 1, 1, 0, tzinfo=UTC)  # 1 August, 10:00 in Tokyo
INSTALLED = Installed(SHOP, shops.ShopFacts("Reauth", TZ, "JPY", "Basic"), START)


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    return stacks.shop(Stack, KEYS, INSTALLED)


def revoke_tokens(stack: Stack) -> None:
    """Shopify revokes the shop's tokens without an uninstall (the devstore's control API)."""
    url = stack.devstore.url(f"/_devstore/shops/{stack.shop}/revoke_tokens")
    r = stack.devstore.session.post(url, timeout=10)
    assert r.status_code == 200 and r.json()["revoked_tokens"] >= 1, r.text


def open_app(stack: Stack) -> requests.Response:
    return stack.open_app()


def birthday_customer(stack: Stack, email: str, birth_date: str) -> int:
    cid = stack.subscribed_customer(email)
    stack.emit_birth_date(cid, birth_date)
    stack.sync(cid)
    return cid


def step_done(stack: Stack, cid: int, seq_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in decision_log.read(stack.conn, SHOP, cid)
        if e["sequence"] == seq_id and e["decision"] == "step_done"
    ]


def after_install_runs(stack: Stack) -> list[Any]:
    """What each finished after-install job answered, oldest first."""
    queue = get_queue(stack.conn, DEFAULT)
    ids = FinishedJobRegistry(queue=queue).get_job_ids()
    jobs = [
        j
        for j in Job.fetch_many(ids, connection=stack.conn, serializer=queue.serializer)
        if j is not None and j.func_name == AFTER_INSTALL_JOB
    ]
    return [j.return_value() for j in sorted(jobs, key=lambda j: j.ended_at or START)]


def no_failed_jobs(stack: Stack) -> bool:
    return all(FailedJobRegistry(queue=get_queue(stack.conn, q)).count == 0 for q in ALL_QUEUES)


def test_step_paused_by_a_revoked_token_runs_once_after_reauth(stack: Stack) -> None:
    """A revoked token: the due step must not fail the enrolment nor write anything; the shop
    waits for re-auth. After the app is opened again and a worker has run, the step must have
    run exactly once (one coupon, one ``step_done``), the customer who arrived during the pause
    must have been evaluated, and no job may have failed. A second page load and more ticks
    must change nothing."""
    seq_id = stack.sequence("birthday_coupon")
    cid = birthday_customer(stack, "kei@example.com", "1990-08-15")
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.due_at == BIRTHDAY_STEP

    revoke_tokens(stack)

    stack.advance_to(BIRTHDAY_STEP.replace(minute=5))  # the step is due and meets the 401
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.NEEDS_REAUTH
    assert record.reauth_id and "refused the access token" in (record.reauth_reason or "")
    assert stack.customer_view(cid)["discount_codes"] == []
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.active and enr.next_step == 0, "the pause ended the enrolment"
    assert not any(e["decision"] == "failed" for e in decision_log.read(stack.conn, SHOP, cid))
    member = enrolment_store.member(cid, seq_id)
    assert stack.conn.sismember(reauth.paused_steps_key(SHOP), member)

    # A customer arrives during the pause: their evaluation waits too.
    later = birthday_customer(stack, "mio@example.com", "1991-09-03")
    assert enrolment_store.load(stack.conn, SHOP, seq_id, later) is None
    assert stack.conn.hexists(reauth.paused_jobs_key(SHOP), f"eval:{later}")
    assert tick(stack.conn, stack.clock.now()).claimed == 0  # the tick skips a paused shop

    r = open_app(stack)  # the merchant comes back: token exchange
    assert r.status_code == 200, r.text
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.INSTALLED
    assert record.reauth_id is None and record.expires_at is not None  # an expiring token now
    stack.work()  # the resume job, then what it queued
    tick(stack.conn, stack.clock.now())
    stack.work()

    codes = stack.customer_view(cid)["discount_codes"]
    assert len(codes) == 1
    assert len(step_done(stack, cid, seq_id)) == 1
    enr = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert enr is not None and enr.status == "done"
    arrived = enrolment_store.load(stack.conn, SHOP, seq_id, later)
    assert arrived is not None and arrived.active
    assert arrived.due_at == datetime(2026, 9, 1, 1, 0, tzinfo=UTC)
    assert no_failed_jobs(stack)
    assert not stack.conn.exists(reauth.paused_steps_key(SHOP), reauth.paused_jobs_key(SHOP))

    # Opening the app again, ticking and working once more: nothing runs a second time.
    assert open_app(stack).status_code == 200
    stack.work()
    tick(stack.conn, stack.clock.now())
    stack.work()
    assert len(stack.customer_view(cid)["discount_codes"]) == 1
    assert len(step_done(stack, cid, seq_id)) == 1


def test_after_install_meeting_a_revoked_token_runs_once_after_reauth(stack: Stack) -> None:
    """The after-install job (not done yet) meets the revoked token. It must pause the shop and
    answer ``paused``, neither failing nor spending a retry, and park nothing; after the re-auth
    the resume must run it once (the install's work done, the backfill queued), not twice (no
    failed copy left for the resume to re-queue besides its own re-run), and opening the app
    again must run it no more."""
    revoke_tokens(stack)
    record = shops.load(stack.conn, SHOP)
    assert record is not None and not record.after_install_done
    assert app_events.schedule_after_install(stack.conn, SHOP, record.generation)  # as at install
    stack.work()
    paused = Job.fetch(f"after-install-{shops.shop_handle(SHOP)}-{record.generation}",
                       connection=stack.conn, serializer=JSONSerializer)  # fmt: skip

    assert paused.get_status(refresh=True) == JobStatus.FINISHED
    assert paused.return_value() == "paused"
    assert paused.retries_left == len(DEFAULT_RETRY_INTERVALS)
    assert no_failed_jobs(stack)
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.NEEDS_REAUTH
    assert "refused the access token" in (record.reauth_reason or "")
    assert not stack.conn.exists(reauth.paused_jobs_key(SHOP))

    assert open_app(stack).status_code == 200
    stack.work()  # the resume, then the after-install job it queued
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.after_install_done
    assert after_install_runs(stack) == ["paused", "done"]
    assert backfill.progress(stack.conn, SHOP)["status"] == "running"  # queued by that run
    assert no_failed_jobs(stack)
    assert open_app(stack).status_code == 200
    stack.work()
    assert after_install_runs(stack) == ["paused", "done"]


def test_an_exit_meeting_a_revoked_token_removes_its_tags_after_reauth(stack: Stack) -> None:
    """A replenishment customer got the first step's tag; Shopify then revokes the token and
    the customer reorders, so the evaluation ends the cycle and removes its tags in Shopify,
    which answers 401. The evaluation must not fail: the shop waits for re-auth, the evaluation
    is parked, the enrolment and the tag stay as they were. After the re-auth the exit must
    happen once: the tag gone, one ``exited``/``new_order``, the series restarted."""
    product = stack.ctl("/products", {"title": "Vitamin C 30 days", "variants": [{"price": "30"}]})
    seq_id = stack.sequence("replenishment", trigger={"product_ids": [int(product["id"])]})
    cid = stack.subscribed_customer("aoi@example.com")
    stack.order(cid, product)
    stack.sync(cid)
    stack.advance_to(datetime(2026, 7, 26, 1, 1, tzinfo=UTC))  # 10:01 in Tokyo: the reminder
    tag = f"kizuna:{seq_id}:reminder"
    assert tag in stack.tags(cid)
    before = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert before is not None and before.active and before.next_step == 1

    revoke_tokens(stack)
    stack.clock.set(datetime(2026, 7, 28, 3, 0, tzinfo=UTC))
    stack.order(cid, product)
    stack.sync(cid)

    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.status is shops.Status.NEEDS_REAUTH
    assert "refused the access token" in (record.reauth_reason or "")
    assert stack.conn.hexists(reauth.paused_jobs_key(SHOP), f"eval:{cid}")
    assert no_failed_jobs(stack)
    assert enrolment_store.load(stack.conn, SHOP, seq_id, cid) == before
    assert tag in stack.tags(cid)

    assert open_app(stack).status_code == 200
    stack.work()  # the resume, then the parked evaluation

    assert not any(t.startswith(f"kizuna:{seq_id}:") for t in stack.tags(cid))
    exits = [
        (e["decision"], e["reason"])
        for e in decision_log.read(stack.conn, SHOP, cid)
        if e["sequence"] == seq_id and e["decision"] == "exited"
    ]
    assert exits == [("exited", "new_order")]
    after = enrolment_store.load(stack.conn, SHOP, seq_id, cid)
    assert after is not None and after.active and after.next_step == 0
    assert after.cycle != before.cycle
    assert no_failed_jobs(stack)


def test_resume_for_a_stale_pause_changes_nothing(stack: Stack) -> None:
    """A resume job for another install generation (the shop was reinstalled meanwhile) or
    for a shop that is paused again must not re-queue anything: the notes stay for the resume
    of the current pause."""
    seq_id = stack.sequence("birthday_coupon")
    cid = birthday_customer(stack, "kei@example.com", "1990-08-15")
    shops.mark_needs_reauth(stack.conn, SHOP, "test", stack.clock.now())
    stack.conn.sadd(reauth.paused_steps_key(SHOP), enrolment_store.member(cid, seq_id))
    ctx = job_context()
    record = shops.load(stack.conn, SHOP)
    assert record is not None and record.reauth_id
    assert reauth.handle_resume(ctx, SHOP, record.generation, record.reauth_id) == "stale"
    cipher_grant = shops.Grant(access_token="shpat_new", scopes=("read_customers",))
    done = shops.install_grant(
        stack.conn, TokenCipher.from_settings(stack.settings), SHOP, cipher_grant,
        stack.clock.now(),
    )  # fmt: skip
    assert done.resumed == record.reauth_id and not done.fresh
    assert reauth.handle_resume(ctx, SHOP, "another-generation", record.reauth_id) == "stale"
    assert stack.conn.sismember(reauth.paused_steps_key(SHOP), enrolment_store.member(cid, seq_id))


def test_resume_restarts_the_install_work_the_pause_stopped(
    conn: redis.Redis, settings: Settings, clock: FixedClock
) -> None:
    """The after-install job had not finished and the backfill was stopped by the pause: the
    resume enqueues both again, once (a second run of the same resume enqueues nothing). Once
    they are done, the resume of a later pause must not enqueue them."""
    cipher = TokenCipher.from_settings(settings)
    grant = shops.Grant(access_token="shpat_one", scopes=("read_customers",))
    record, _ = shops.install(conn, cipher, SHOP, grant, clock.now())
    progress = backfill.progress_key(SHOP)
    conn.hset(progress, mapping={"status": "cancelled", "generation": record.generation})
    ctx = Context(conn=conn, settings=settings, clock=clock)

    def resume_after_a_pause() -> tuple[str, set[str]]:
        shops.mark_needs_reauth(conn, SHOP, "refused", clock.now())
        done = shops.install_grant(conn, cipher, SHOP, grant, clock.now())
        assert done.resumed is not None
        reauth.handle_resume(ctx, SHOP, record.generation, done.resumed)
        queued = {j for q in (DEFAULT, BULK) for j in get_queue(conn, q).get_job_ids()}
        return done.resumed, queued

    reauth_id, queued = resume_after_a_pause()
    handle = shops.shop_handle(SHOP)
    expected = {
        f"after-install-{handle}-{record.generation}-{reauth_id}",
        f"backfill-{handle}-{record.generation}-{reauth_id}",
    }
    assert queued == expected
    reauth.handle_resume(ctx, SHOP, record.generation, reauth_id)  # the job run again
    assert {j for q in (DEFAULT, BULK) for j in get_queue(conn, q).get_job_ids()} == expected

    shops.mark_after_install_done(conn, SHOP, record.generation)
    conn.hset(progress, "status", "done")
    _, queued_later = resume_after_a_pause()
    assert queued_later == expected
