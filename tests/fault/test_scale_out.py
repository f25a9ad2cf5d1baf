"""Scale-out: four worker processes and two schedulers share one Redis; every step runs once."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

from tests.fault.harness import BIRTHDAY_DUE, FaultStack, start_proc
from worker import decision_log
from worker.queues import STEPS, get_queue

WORKERS = 4
SCHEDULERS = 2


def test_four_workers_and_two_schedulers_run_every_step_once(fstack: FaultStack) -> None:
    """Tried: 40 birthday steps come due while two scheduler processes tick every 50 ms on the
    dev clock and four forking worker processes take jobs from the same Redis. Must not
    happen: a step claimed by both schedulers and run twice (second coupon, second step_done),
    a step left behind, or a step later than 3 minutes (plus this machine's own time)."""
    seq_id, ids = fstack.birthday_cohort(40)
    shop = "fault-shop.myshopify.com"
    workers = [start_proc(fstack, "worker") for _ in range(WORKERS)]
    fstack.clock.set(BIRTHDAY_DUE)
    started = time.monotonic()
    schedulers = [
        start_proc(fstack, "scheduler", "--seconds", "60", "--interval", "0.05")
        for _ in range(SCHEDULERS)
    ]
    queue = get_queue(fstack.conn, STEPS)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = sum(
            any(e.get("decision") == "step_done" for e in decision_log.read(fstack.conn, shop, c))
            for c in ids
        )
        if done == len(ids) and queue.count == 0 and queue.started_job_registry.count == 0:
            time.sleep(0.5)  # let the schedulers tick on: a late double would show now
            break
        time.sleep(0.2)
    for p in schedulers + workers:
        p.send_signal(signal.SIGTERM)  # a warm shutdown, as a deploy does
    for p in schedulers + workers:
        p.wait(30)
    wall = timedelta(seconds=time.monotonic() - started)
    audit = fstack.audit(seq_id, ids, due=BIRTHDAY_DUE, within=timedelta(minutes=3) + wall)
    print(f"FAULT-STATS scale_out seconds={wall.total_seconds():.1f} "
          f"flow_repeats={audit.flow_repeats}", flush=True)  # fmt: skip
    audit.line("scale_out")
