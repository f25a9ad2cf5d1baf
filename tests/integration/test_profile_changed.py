"""Handing changed profiles to the sequences: one evaluation job waiting per customer at most."""

from __future__ import annotations

from typing import Any

import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from worker import steps
from worker.queues import STEPS, get_queue

SHOP = "evals.myshopify.com"
# customer → statuses of its two evaluation jobs (None: no such job)
STATES: dict[int, tuple[str | None, str | None]] = {
    1: (None, None),
    2: ("queued", None),
    3: ("started", None),
    4: ("started", "started"),
    5: ("started", "queued"),
    6: ("finished", None),
    7: ("failed", "finished"),
    8: (None, "queued"),
}
EXPECTED = {1: "first", 2: None, 3: "second", 4: None, 5: None, 6: "first", 7: "first", 8: None}


def _arrange(conn: redis.Redis) -> None:
    conn.flushdb()
    for cid, statuses in STATES.items():
        for job_id, status in zip(steps._eval_job_ids(SHOP, cid), statuses, strict=True):
            if status is None:
                continue
            job = Job.create(
                steps.EVALUATE_CUSTOMER, args=(SHOP, cid), id=job_id, connection=conn,
                serializer=JSONSerializer, origin=STEPS,
            )  # fmt: skip
            job.set_status(JobStatus(status), pipeline=None)
            job.save()


def _state(conn: redis.Redis) -> dict[str, Any]:
    """Which jobs exist with which status, function and arguments, and what is queued."""
    jobs = {}
    for key in conn.scan_iter("rq:job:*"):
        job = Job.fetch(key.decode().removeprefix("rq:job:"), conn, serializer=JSONSerializer)
        jobs[job.id] = (job.get_status(), job.func_name, job.args, job.retries_left)
    return {"jobs": jobs, "queued": sorted(get_queue(conn, STEPS).get_job_ids())}


def _named(answers: dict[int, str | None]) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for cid, job_id in answers.items():
        first, second = steps._eval_job_ids(SHOP, cid)
        out[cid] = {first: "first", second: "second", None: None}[job_id]
    return out


def test_many_customers_at_once_do_what_one_call_each_does(conn: redis.Redis) -> None:
    """Tried: customers with no evaluation job, one queued, one running, both running, a
    finished or failed one — handed over one call each, then all in one batched call. Must not
    happen: a second waiting job for a customer, a change left with no run after it (running
    job and nothing queued), or any job, status, argument, retry or queue entry differing
    between the two ways."""
    _arrange(conn)
    one_by_one = {cid: steps.on_profile_changed(conn, SHOP, cid) for cid in STATES}
    expected = _state(conn)

    _arrange(conn)
    batched = steps.on_profiles_changed(conn, SHOP, [8, 1, 2, 3, 3, 4, 5, 6, 7])
    assert batched == one_by_one
    assert _named(batched) == EXPECTED
    assert _state(conn) == expected
    assert all(
        v[0] == JobStatus.QUEUED for k, v in expected["jobs"].items() if k in batched.values()
    )

    again = steps.on_profiles_changed(conn, SHOP, STATES)
    assert set(again.values()) == {None}  # every customer now has a run waiting
    assert _state(conn) == expected
    assert steps.on_profiles_changed(conn, SHOP, []) == {}
