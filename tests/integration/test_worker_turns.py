"""Workers take turns between the queues: a steps backlog cannot starve bulk, and nothing
queued below makes the webhook drain wait more than a few jobs.

The real ``kizuna worker --burst`` (RQ's forking worker, a work-horse per job) runs on a real
Redis; each job notes its label in a Redis list, so the list is the order the worker took them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from rq import get_current_job

from worker.queues import ALL_QUEUES, BULK, DEFAULT, PATIENCE, STEPS, WEBHOOKS, Turns, enqueue

ROOT = Path(__file__).resolve().parents[2]
TAKEN = "kizuna:test:taken"
NOTE = "tests.integration.test_worker_turns.note"
#: Jobs a queue can wait, whatever else is queued (see :class:`worker.queues.Turns`).
BOUND = PATIENCE + len(ALL_QUEUES) - 1


def note(label: str, webhook: str | None = None) -> None:
    """RQ job: append ``label`` to the taken list; with ``webhook``, a webhook job arrives."""
    job = get_current_job()
    assert job is not None
    job.connection.rpush(TAKEN, label)
    if webhook:
        enqueue(job.connection, NOTE, webhook, queue=WEBHOOKS)


def run_cli_worker(test_env: dict[str, str]) -> None:
    """``kizuna worker --burst`` in its own process, on every queue."""
    env = {**os.environ, **test_env}
    done = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "worker", "--burst"],
        cwd=ROOT, env=env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def taken(conn: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in conn.lrange(TAKEN, 0, -1)]


def test_a_bulk_job_runs_behind_a_steps_backlog(
    conn: redis.Redis, test_env: dict[str, str]
) -> None:
    """40 evaluations queued on ``steps``, then a reconcile on ``bulk``: RQ's default worker
    would take the reconcile last (41st); it must be taken within ``PATIENCE + 1`` jobs, and
    every job must still run once."""
    for n in range(40):
        enqueue(conn, NOTE, f"steps-{n}", queue=STEPS)
    enqueue(conn, NOTE, "bulk", queue=BULK)

    run_cli_worker(test_env)

    order = taken(conn)
    assert sorted(order) == sorted([f"steps-{n}" for n in range(40)] + ["bulk"])
    assert order.index("bulk") + 1 <= PATIENCE + 1, order
    assert [x for x in order if x != "bulk"] == [f"steps-{n}" for n in range(40)]


def test_a_webhook_waits_behind_a_few_jobs_only(
    conn: redis.Redis, test_env: dict[str, str]
) -> None:
    """Steps, default and bulk all backlogged; a webhook job arrives in the middle (queued by
    the 10th steps job). At most three jobs (one per other queue) may be taken between its
    arrival and its run, and no queue may wait more than ``PATIENCE + 3`` jobs for its first
    turn."""
    for n in range(30):
        enqueue(conn, NOTE, f"steps-{n}", "webhook" if n == 10 else None, queue=STEPS)
    for n in range(12):
        enqueue(conn, NOTE, f"default-{n}", queue=DEFAULT)
        enqueue(conn, NOTE, f"bulk-{n}", queue=BULK)

    run_cli_worker(test_env)

    order = taken(conn)
    assert len(order) == 30 + 12 + 12 + 1
    waited = order.index("webhook") - order.index("steps-10") - 1
    assert 0 <= waited <= len(ALL_QUEUES) - 1, order
    assert order.index("default-0") < BOUND and order.index("bulk-0") < BOUND, order


# -- the turn rule alone, over long runs --------------------------------------------------------


def simulate(full: set[str], jobs: int, patience: int = PATIENCE) -> list[str]:
    """Which queue each of ``jobs`` dequeues takes when the queues in ``full`` never empty."""
    turns = Turns(ALL_QUEUES, patience)
    order = list(ALL_QUEUES)
    out = []
    for _ in range(jobs):
        served = next(name for name in order if name in full)
        out.append(served)
        order = turns.after(served, order)
    return out


def longest_wait(served: list[str], name: str) -> int:
    """The most jobs taken in a row from other queues than ``name``."""
    longest = run = 0
    for queue in served:
        run = 0 if queue == name else run + 1
        longest = max(longest, run)
    return longest


def test_every_full_queue_gets_its_turn_within_the_bound() -> None:
    """With every queue always full, no queue waits more than ``PATIENCE + 3`` jobs, the
    webhook queue no more than 3, and the webhook queue keeps ``PATIENCE - 2`` turns in
    ``PATIENCE + 1`` (each other queue one)."""
    served = simulate(set(ALL_QUEUES), 10_000)
    for name in ALL_QUEUES:
        assert longest_wait(served, name) <= BOUND, name
    assert longest_wait(served, WEBHOOKS) <= len(ALL_QUEUES) - 1
    for name in (STEPS, DEFAULT, BULK):
        assert abs(served.count(name) / len(served) - 1 / (PATIENCE + 1)) < 0.01, name
    assert abs(served.count(WEBHOOKS) / len(served) - (PATIENCE - 2) / (PATIENCE + 1)) < 0.01


def test_behind_steps_alone_bulk_waits_patience_jobs() -> None:
    """Only steps and bulk full: bulk gets one job in ``PATIENCE + 1``, never later."""
    served = simulate({STEPS, BULK}, 1_000)
    assert longest_wait(served, BULK) == PATIENCE
    assert served.count(BULK) == 1_000 // (PATIENCE + 1)
