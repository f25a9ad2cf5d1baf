"""Killed workers and schedulers: work-horses SIGKILLed at every point of a step, an idle
worker killed before jobs arrive, a scheduler stopped mid-tick while another ticks. Every step
runs, none twice, each within 3 minutes of its due time on the dev clock.

The kills are real: ``rq.Worker`` processes (:mod:`tests.fault.procs`) fork a work-horse per
job, and the horse SIGKILLs itself at an armed kill point. RQ notices the dead horse, fails the
job and its ``Retry`` schedules it again; :func:`promote_retries` plays RQ's scheduler, and the
dev clock moves by the retry's interval each round, so "within 3 minutes" is measured against
the intervals production would wait.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta

from rq import Worker

from tests.fault.harness import (
    BIRTHDAY_DUE,
    FaultStack,
    promote_retries,
    queued,
    run_workers,
    start_proc,
)
from tests.fault.procs import KILL_ENV, RESERVATION_TTL_ENV, kills_key
from worker.queues import DEFAULT_RETRY_INTERVALS
from worker.scheduler import tick

POINTS = ("before_call", "after_call", "before_record")
WITHIN = timedelta(minutes=3)
STEPS = 250  # each is killed at the three points, then completes: 1,000 executions


def _rounds(stack: FaultStack, workers: int, **env: str) -> int:
    """Worker processes until the queues are empty; between rounds RQ's retries come due and
    the dev clock moves by their interval (5 s, 30 s, 120 s…) and the scheduler ticks."""
    for n in range(len(DEFAULT_RETRY_INTERVALS) + 2):
        run_workers(stack, workers, env)
        moved = promote_retries(stack.conn)
        interval = DEFAULT_RETRY_INTERVALS[min(n, len(DEFAULT_RETRY_INTERVALS) - 1)]
        stack.clock.advance(timedelta(seconds=interval))
        tick(stack.conn, stack.clock.now())
        if not moved and queued(stack.conn) == 0:
            return n + 1
    return n + 1


def test_work_horses_killed_at_every_point_of_a_step(fstack: FaultStack) -> None:
    """Tried: 250 birthday steps (tag, unique coupon, metafields, Flow) on two forking workers
    whose work-horse is SIGKILLed once per step at each point — before the Shopify calls, after
    Shopify answered a write but before the answer was read, after the writes before the
    commit — so 1,000 step executions, 750 of them killed. One job per step (no chunk jobs), so
    that every execution can be killed. Must not happen: a step lost, a second coupon, a second
    step_done, a step done more than 3 minutes after its due time, or fewer than 700 real
    kills."""
    seq_id, ids = fstack.birthday_cohort(STEPS)
    fstack.clock.set(BIRTHDAY_DUE)
    tick(fstack.conn, fstack.clock.now(), chunk_min=STEPS + 1)
    started = time.monotonic()
    rounds = _rounds(fstack, 2, **{KILL_ENV: ",".join(POINTS), RESERVATION_TTL_ENV: "1"})
    kills = {p: int(fstack.conn.get(kills_key(p)) or 0) for p in POINTS}
    # The dev clock runs in real time too: this machine's own processing time is not lateness.
    wall = timedelta(seconds=time.monotonic() - started)
    audit = fstack.audit(seq_id, ids, due=BIRTHDAY_DUE, within=WITHIN + wall)
    print(f"FAULT-STATS killed_workers kills={kills} rounds={rounds} "
          f"seconds={time.monotonic() - started:.1f} flow_repeats={audit.flow_repeats}",
          flush=True)  # fmt: skip
    if sum(kills.values()) < 700:
        audit.unexpected.append(f"only {sum(kills.values())} kills")
    audit.line("killed_workers")


def test_idle_worker_killed_before_jobs_are_enqueued(fstack: FaultStack) -> None:
    """Tried: a worker waiting on the queues is SIGKILLed, then the tick enqueues the due
    steps. Must not happen: a job swallowed by the dead worker (lost) or run twice."""
    seq_id, ids = fstack.birthday_cohort(5)
    idle = start_proc(fstack, "worker")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(w.get_state() == "idle" for w in Worker.all(connection=fstack.conn)):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the worker never became idle")
    idle.send_signal(signal.SIGKILL)
    assert idle.wait(10) == -signal.SIGKILL
    fstack.clock.set(BIRTHDAY_DUE)
    started = time.monotonic()
    tick(fstack.conn, fstack.clock.now())
    _rounds(fstack, 1)
    wall = timedelta(seconds=time.monotonic() - started)
    audit = fstack.audit(seq_id, ids, due=BIRTHDAY_DUE, within=WITHIN + wall)
    audit.line("idle_worker_killed")


def test_scheduler_stopped_mid_tick_while_another_ticks(fstack: FaultStack) -> None:
    """Tried: scheduler A claims the due steps and is SIGSTOPped before enqueuing them; 90 s
    pass on the dev clock while scheduler B ticks and workers run; A is continued. Must not
    happen: B enqueuing A's leased steps as well (a double), a step lost with A's lease, or a
    step more than 3 minutes late."""
    seq_id, ids = fstack.birthday_cohort(10)
    fstack.clock.set(BIRTHDAY_DUE)
    started = time.monotonic()
    a = start_proc(fstack, "scheduler-stop-mid-tick")
    assert a.stdout is not None
    first = a.stdout.readline().decode()
    assert first.startswith("claimed"), first
    fstack.clock.advance(timedelta(seconds=90))
    during = tick(fstack.conn, fstack.clock.now())  # scheduler B
    run_workers(fstack, 1)
    a.send_signal(signal.SIGCONT)
    out, _ = a.communicate(timeout=60)
    assert a.returncode == 0, out.decode()
    _rounds(fstack, 1)
    wall = timedelta(seconds=time.monotonic() - started)
    audit = fstack.audit(seq_id, ids, due=BIRTHDAY_DUE, within=WITHIN + wall)
    print(f"FAULT-STATS scheduler_stopped a='{first.strip()}' b_claimed={during.claimed}",
          flush=True)  # fmt: skip
    if during.claimed:
        audit.unexpected.append(f"B claimed {during.claimed} leased steps")
    audit.line("scheduler_stopped")
