"""The tick: atomic claims, deterministic job ids, leases, cost growing with the steps due."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import redis

from crm.enrolment import Enrolment
from plugin import shops
from plugin.crypto import TokenCipher
from plugin.settings import DEV_ENCRYPTION_KEY
from worker import enrolment_store
from worker.queues import STEPS, get_queue
from worker.scheduler import tick

SHOP = "tick-test.myshopify.com"
NOW = datetime(2026, 7, 1, tzinfo=UTC)


def _install(conn: redis.Redis) -> None:
    grant = shops.Grant(access_token="shpat-x", scopes=("read_customers",))
    shops.install(conn, TokenCipher([DEV_ENCRYPTION_KEY]), SHOP, grant, NOW)


def _enrol(conn: redis.Redis, cid: int, due: datetime, seq: str = "seq") -> None:
    enr = Enrolment(cid, seq, 1, 1, NOW - timedelta(days=1), 0, due, entered_at=NOW)
    assert enrolment_store.commit(conn, SHOP, cid, seq, None, enr)


def test_concurrent_ticks_claim_each_due_step_once(conn: redis.Redis) -> None:
    """Four schedulers tick at the same instant over 600 due steps (and 400 not yet due), one
    job per step (chunks off): every due step must be queued exactly once, and none that is
    not due."""
    _install(conn)
    for cid in range(1, 601):
        _enrol(conn, cid, NOW - timedelta(minutes=1))
    for cid in range(601, 1001):
        _enrol(conn, cid, NOW + timedelta(days=1))
    results = []

    def run() -> None:
        results.append(tick(conn, NOW, bulk_threshold=10_000, chunk_min=10_000))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.claimed for r in results) == 600
    ids = get_queue(conn, STEPS).get_job_ids()
    assert len(ids) == len(set(ids)) == 600
    assert all(i.startswith("step-tick-test-") for i in ids)
    # Claimed steps hold a lease: an immediate second tick finds nothing.
    assert tick(conn, NOW).claimed == 0


def test_expired_lease_reclaims_but_does_not_queue_a_job_twice(conn: redis.Redis) -> None:
    """A step whose lease ran out is claimed again; while its job is still queued under the
    same deterministic id, no second job may be added."""
    _install(conn)
    _enrol(conn, 7, NOW)
    assert tick(conn, NOW).enqueued == 1
    later = NOW + timedelta(minutes=11)
    result = tick(conn, later)
    assert result.claimed == 1 and result.enqueued == 0 and result.already_queued == 1
    assert len(get_queue(conn, STEPS).get_job_ids()) == 1


def test_uninstalled_shop_is_postponed_without_claiming(conn: redis.Redis) -> None:
    """A shop that is not installed: nothing claimed, nothing queued, retried an hour later."""
    _install(conn)
    _enrol(conn, 3, NOW)
    shops.mark_uninstalled(conn, SHOP, NOW)
    result = tick(conn, NOW)
    assert result.postponed == [SHOP] and result.claimed == 0
    assert get_queue(conn, STEPS).get_job_ids() == []
    assert conn.zscore(enrolment_store.due_key(SHOP), "3:seq") == NOW.timestamp()


def test_tick_cost_follows_steps_due_not_customers(conn: redis.Redis) -> None:
    """1,000 due among 20,000 enrolled: the claim (finding the due steps) stays fast; a tick
    with nothing due touches nothing."""
    _install(conn)
    pipe_enr = [(cid, NOW + timedelta(days=3)) for cid in range(1, 19_001)]
    pipe_enr += [(cid, NOW - timedelta(seconds=5)) for cid in range(19_001, 20_001)]
    with conn.pipeline(transaction=False) as pipe:
        for cid, due in pipe_enr:
            enr = Enrolment(cid, "seq", 1, 1, NOW, 0, due, entered_at=NOW)
            pipe.hset(enrolment_store.enrolment_key(SHOP, "seq", cid), str(cid),
                      enrolment_store.encode(enr))  # fmt: skip
            pipe.zadd(enrolment_store.due_key(SHOP), {f"{cid}:seq": due.timestamp()})
        pipe.execute()
    conn.zadd(enrolment_store.SHOPS_DUE, {SHOP: (NOW - timedelta(seconds=5)).timestamp()})
    started = time.perf_counter()
    claimed = enrolment_store.claim(conn, SHOP, NOW, NOW + timedelta(minutes=10), 1000)
    elapsed = time.perf_counter() - started
    assert len(claimed) == 1000
    print(f"claim of 1,000 due among 20,000: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.25, f"claiming 1,000 due took {elapsed * 1000:.0f} ms"
    assert tick(conn, NOW).shops == 0  # the shop's next due is in 3 days


def _chunk_jobs(conn: redis.Redis) -> dict[str, list[tuple[int, str]]]:
    queue = get_queue(conn, STEPS)
    out = {}
    for job in queue.get_jobs():
        assert job.func_name == "worker.steps.run_steps", job.func_name
        out[job.id] = [(int(c), str(s)) for c, s in job.args[1]]
    return out


def test_many_due_steps_go_in_chunk_jobs_each_step_once_across_concurrent_ticks(
    conn: redis.Redis,
) -> None:
    """Four schedulers tick together over 600 due steps: they must go in chunk jobs of at most
    100 steps, every due step in exactly one job, none that is not due."""
    _install(conn)
    for cid in range(1, 601):
        _enrol(conn, cid, NOW - timedelta(minutes=1))
    for cid in range(601, 701):
        _enrol(conn, cid, NOW + timedelta(days=1))
    results = []

    def run() -> None:
        results.append(tick(conn, NOW, bulk_threshold=10_000))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.claimed for r in results) == sum(r.enqueued for r in results) == 600
    jobs = _chunk_jobs(conn)
    steps = [pair for pairs in jobs.values() for pair in pairs]
    assert len(steps) == len(set(steps)) == 600
    assert {cid for cid, _ in steps} == set(range(1, 601))
    assert all(len(pairs) <= 100 for pairs in jobs.values())
    assert 6 <= len(jobs) <= 12 and sum(r.jobs for r in results) == len(jobs)
    assert all(j.startswith("steps-tick-test-") for j in jobs)


def test_expired_lease_does_not_requeue_steps_whose_chunk_job_waits_but_does_after_it_died(
    conn: redis.Redis,
) -> None:
    """150 due steps go in chunk jobs; their leases run out while the jobs still wait: a tick
    must not queue any of them again. One chunk job is then lost (its worker died and RQ
    forgot it): the next tick must queue exactly that job's steps again."""
    _install(conn)
    for cid in range(1, 151):
        _enrol(conn, cid, NOW)
    first = tick(conn, NOW, bulk_threshold=10_000)
    assert first.enqueued == 150 and first.jobs == 2
    jobs = _chunk_jobs(conn)
    later = NOW + timedelta(minutes=11)
    again = tick(conn, later, bulk_threshold=10_000)
    assert again.claimed == 150 and again.enqueued == 0 and again.already_queued == 150
    lost_id, lost_steps = sorted(jobs.items())[0]
    queue = get_queue(conn, STEPS)
    queue.remove(lost_id)
    conn.delete(f"rq:job:{lost_id}")
    third = tick(conn, later + timedelta(minutes=11), bulk_threshold=10_000)
    assert third.claimed == 150 and third.enqueued == len(lost_steps)
    assert third.already_queued == 150 - len(lost_steps)
    requeued = [p for j, pairs in _chunk_jobs(conn).items() if j != sorted(jobs)[1]
                for p in pairs]  # fmt: skip
    assert sorted(requeued) == sorted(lost_steps)


def test_a_few_due_steps_still_get_one_job_each(conn: redis.Redis) -> None:
    """Below the chunk threshold each step keeps its own job (its own retries and id)."""
    _install(conn)
    for cid in range(1, 11):
        _enrol(conn, cid, NOW)
    result = tick(conn, NOW)
    assert result.enqueued == 10 and result.jobs == 0
    ids = get_queue(conn, STEPS).get_job_ids()
    assert len(ids) == 10 and all(i.startswith("step-tick-test-") for i in ids)
