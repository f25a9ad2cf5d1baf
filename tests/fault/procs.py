"""Worker and scheduler processes for the fault tests, with kill and stop points.

``python -m tests.fault.procs worker [--burst]``
    The real worker on every queue (``kizuna worker``'s :class:`worker.queues.KizunaWorker`):
    it forks one work-horse per job, as in production.
    ``KIZUNA_FAULT_KILL`` (comma-separated point names) arms kill points in ``run_step`` jobs:
    the work-horse SIGKILLs itself the first time each job reaches an armed point (a Redis key
    per job and point remembers it), so RQ sees a horse die mid-step and its ``Retry`` (or the
    scheduler's lease) runs the step again. The points:

    - ``before_call`` — entering :func:`worker.writeback.write_effects`: nothing written yet;
    - ``after_call`` — Shopify answered the n-th mutation of the step (the write is committed
      on Shopify's side) and the client has not read the answer (entering
      ``AdminClient._read``); n is drawn from the job id among tagsAdd, the coupon create and
      metafieldsSet;
    - ``before_record`` — entering :func:`worker.enrolment_store.commit` in a step job:
      everything is written to Shopify, nothing recorded.

``python -m tests.fault.procs scheduler --seconds S [--interval I]``
    Ticks on the dev clock every I seconds for S seconds (``worker.scheduler.run_forever``).

``python -m tests.fault.procs scheduler-stop-mid-tick``
    One tick that SIGSTOPs itself right after its claim (mid-tick: steps leased, no job
    enqueued yet); the test sends SIGCONT later and the tick finishes.

``KIZUNA_FAULT_RESERVATION_TTL`` (seconds) shortens how long the cost reservation of a killed
horse keeps counting against the shop's budget (``plugin.admin_client.RESERVATION_TTL``, 60 s:
with a kill after every answer, the dead reservations would otherwise stall the test for
minutes — the real cost of a crash storm, measured once and reported, not re-measured in CI).

``KIZUNA_FAULT_READ_TIMEOUT`` (seconds) gives the Admin client a short read timeout and
backoff, so that injected Shopify timeouts cost the test little time.

Nothing here changes what the code under test does: every wrapper calls the real function.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

from rq import get_current_job

KILL_ENV = "KIZUNA_FAULT_KILL"
READ_TIMEOUT_ENV = "KIZUNA_FAULT_READ_TIMEOUT"
RESERVATION_TTL_ENV = "KIZUNA_FAULT_RESERVATION_TTL"
#: Mutations whose answer a kill may pre-empt (Flow is at-least-once by design; see the tests).
AFTER_CALL_DOCS = ("CustomerTagsAdd", "DiscountCodeBasicCreate", "MetafieldsSet")
STEP_JOB = "worker.steps.run_step"


def kills_key(point: str) -> str:
    return f"kizuna:fault:kills:{point}"


def _step_job() -> Any:
    job = get_current_job()
    return job if job is not None and job.func_name == STEP_JOB else None


def _die(point: str) -> None:
    job = _step_job()
    if job is None:
        return
    if job.connection.set(f"kizuna:fault:kill:{job.id}:{point}", "1", nx=True, ex=3600):
        job.connection.incr(kills_key(point))
        os.kill(os.getpid(), signal.SIGKILL)


def arm_kill_points(points: set[str]) -> None:
    from plugin import admin_client
    from worker import enrolment_store, writeback

    if "before_call" in points:
        original_write: Callable[..., Any] = writeback.write_effects

        def write_effects(*args: Any, **kwargs: Any) -> Any:
            _die("before_call")
            return original_write(*args, **kwargs)

        writeback.write_effects = write_effects

    if "after_call" in points:
        original_read = admin_client.AdminClient._read
        seen: dict[str, int] = {}

        def _read(self: Any, shop: str, rid: str, doc: Any, response: Any) -> Any:
            job = _step_job()
            if job is not None and doc.name in AFTER_CALL_DOCS and response.status_code == 200:
                n = seen.get(job.id, 0)
                seen[job.id] = n + 1
                if n == zlib.crc32(job.id.encode()) % len(AFTER_CALL_DOCS):
                    _die("after_call")
            return original_read(self, shop, rid, doc, response)

        admin_client.AdminClient._read = _read  # type: ignore[method-assign]

    if "before_record" in points:
        original_commit = enrolment_store.commit

        def commit(*args: Any, **kwargs: Any) -> Any:
            _die("before_record")
            return original_commit(*args, **kwargs)

        enrolment_store.commit = commit


def admin_client_method(read_timeout: float) -> Callable[[Any], Any]:
    """A ``Context.admin_client`` building the real client with a short read timeout and
    quick backoff (the retry counts and caps stay those of the client)."""
    from plugin.admin_client import AdminClient, RedisBudget

    def admin_client(self: Any) -> Any:
        if self.admin is None:
            self.admin = AdminClient(
                self.settings, budget=RedisBudget(self.conn), connect_timeout=1.0,
                read_timeout=read_timeout, backoff_base=0.02, backoff_cap=0.2,
            )  # fmt: skip
        return self.admin

    return admin_client


def short_admin_timeouts(read_timeout: float) -> None:
    from worker.app_events import Context

    setattr(Context, "admin_client", admin_client_method(read_timeout))  # noqa: B010


def _conn() -> Any:
    from plugin.connections import connect
    from plugin.settings import Settings

    return connect(Settings.from_env().redis_url)


def preload() -> None:
    """Import what jobs import lazily, once in the parent: each forked work-horse then starts
    warm, as a long-running production worker's horses do."""
    from plugin.cli import preload_job_modules
    from plugin.settings import Settings

    preload_job_modules()

    Settings.from_env()


def run_worker(burst: bool) -> int:
    """The worker ``kizuna worker`` runs (:func:`worker.queues.make_worker`), without its
    scheduler thread."""
    from worker.queues import make_worker

    preload()

    make_worker(_conn()).work(burst=burst, with_scheduler=False)
    return 0


def run_scheduler(seconds: float, interval: float) -> int:
    from plugin.clock import DevClock
    from worker.scheduler import run_forever

    conn = _conn()
    deadline = time.monotonic() + seconds
    clock = DevClock(conn)
    run_forever(conn, clock.now, interval=interval, stop=lambda: time.monotonic() > deadline)
    return 0


def run_stopping_tick() -> int:
    from plugin.clock import DevClock
    from worker import enrolment_store
    from worker.scheduler import tick

    original_claim = enrolment_store.claim

    def claim(*args: Any, **kwargs: Any) -> Any:
        got = original_claim(*args, **kwargs)
        if got:
            print(f"claimed {len(got)}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)  # mid-tick: leased, nothing enqueued yet
        return got

    enrolment_store.claim = claim
    conn = _conn()
    print(tick(conn, DevClock(conn).now()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fault.procs")
    parser.add_argument("role", choices=["worker", "scheduler", "scheduler-stop-mid-tick"])
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    points = {p.strip() for p in os.environ.get(KILL_ENV, "").split(",") if p.strip()}
    if points:
        arm_kill_points(points)
    ttl = os.environ.get(RESERVATION_TTL_ENV)
    if ttl:
        from plugin import admin_client

        admin_client.RESERVATION_TTL = float(ttl)
    timeout = os.environ.get(READ_TIMEOUT_ENV)
    if timeout:
        short_admin_timeouts(float(timeout))
    if args.role == "worker":
        return run_worker(args.burst)
    if args.role == "scheduler":
        return run_scheduler(args.seconds, args.interval)
    return run_stopping_tick()


if __name__ == "__main__":
    sys.exit(main())
