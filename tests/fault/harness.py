"""The fault tests' stack and verbs: the app, the devstore, real RQ workers, the dev clock.

:class:`FaultStack` is the end-to-end stack of ``tests/fixtures/stack.py`` (the app over
HTTP, the devstore over HTTP, one Redis, the shared ``DevClock``, the shop installed) plus what
fault tests need:

- :meth:`FaultStack.birthday_cohort` — N consenting customers born in August, enrolled through
  real webhooks in the ``birthday_coupon`` sequence (one step: a tag, a unique coupon,
  metafields and a Flow trigger — every kind of write-back), all due on 1 August 10:00 Tokyo;
- :func:`promote_retries` — RQ's scheduler with the time compressed: every job RQ scheduled for
  a retry (``Retry`` intervals of 5 s, 30 s…) is enqueued now;
- :func:`start_workers` — real ``rq.Worker`` processes (one forked work-horse per job) run by
  :mod:`tests.fault.procs`, optionally with kill points armed;
- :meth:`FaultStack.audit` — what Shopify (the devstore) and the decision log hold, per
  customer, as the ``FAULT`` line's counts.

Every fault test ends with :func:`report`, which prints
``FAULT <name> ok=<n> lost=<n> duplicated=<n> unexpected=<n>`` and fails on any non-zero
lost, duplicated or unexpected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.fixtures.stack import ShopStack
from worker import decision_log
from worker.queues import ALL_QUEUES, STEPS

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "kizuna-fault-client-id"
API_SECRET = "kizuna-fault-client-secret-0123456789abcdef"
SHOP = "fault-shop.myshopify.com"
TZ = "Asia/Tokyo"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
#: 1 August 10:00 in Tokyo: the birthday step of every customer born in August.
BIRTHDAY_DUE = datetime(2026, 8, 1, 1, 0, tzinfo=UTC)


def report(name: str, ok: int, lost: int, duplicated: int, unexpected: int) -> None:
    """Print the FAULT line (visible with ``-s`` and in a failure's captured output) and fail
    on anything lost, duplicated or unexpected."""
    line = f"FAULT {name} ok={ok} lost={lost} duplicated={duplicated} unexpected={unexpected}"
    print(line, flush=True)
    assert lost == 0 and duplicated == 0 and unexpected == 0, line


@dataclass
class Audit:
    """Per-customer outcome of one step run by everyone."""

    ok: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    flow_repeats: int = 0
    late: list[str] = field(default_factory=list)

    def line(self, name: str) -> None:
        if self.lost or self.duplicated or self.unexpected:
            print(f"FAULT {name} details lost={self.lost[:10]} dup={self.duplicated[:10]} "
                  f"unexpected={self.unexpected[:10]}", flush=True)  # fmt: skip
        report(name, self.ok, len(self.lost), len(self.duplicated), len(self.unexpected))


@dataclass
class FaultStack(ShopStack):
    """The shared stack (:class:`tests.fixtures.stack.ShopStack`) and the processes a fault
    test starts."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop_procs(self) -> None:
        """Kill what the test started and is still running (each by its own pid)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()

    # -- Shopify's side ---------------------------------------------------------------------

    def admin_faults(self, spec: Mapping[str, Any]) -> None:
        """The devstore's Admin API fault switch (``{}`` turns it off)."""
        self.ctl("/faults", dict(spec))

    def flow_triggers(self) -> list[dict[str, Any]]:
        raw = self.conn.lrange(f"devstore:{self.shop}:flow_triggers", 0, -1)
        return [json.loads(x) for x in raw]

    # -- a cohort ---------------------------------------------------------------------------

    def birthday_cohort(self, n: int) -> tuple[str, list[int]]:
        """``n`` subscribed customers born in August, enrolled; answer (sequence id, ids)."""
        seq_id = self.sequence("birthday_coupon")
        ids = []
        for i in range(n):
            cid = self.subscribed_customer(f"c{i}@example.com", first_name=f"Hana{i}")
            self.emit_birth_date(cid, f"1990-08-{1 + i % 28:02d}")
            ids.append(cid)
        self.sync(*ids)
        return seq_id, ids

    # -- what happened ----------------------------------------------------------------------

    def audit(
        self, seq_id: str, ids: Iterable[int], *, due: datetime, within: timedelta | None = None
    ) -> Audit:
        """One birthday step per customer: one ``step_done``, one coupon, the tag, and (with
        ``within``) done no later than ``due + within`` on the dev clock."""
        out = Audit()
        flows: dict[str, int] = {}
        for t in self.flow_triggers():
            owner = str((t.get("payload") or {}).get("customer_id", "")).rsplit("/", 1)[-1]
            flows[owner] = flows.get(owner, 0) + 1
        for cid in ids:
            log = [
                e for e in decision_log.read(self.conn, SHOP, cid, limit=200)
                if e.get("sequence") == seq_id
            ]  # fmt: skip
            done = [e for e in log if e.get("decision") == "step_done"]
            failed = [e for e in log if e.get("decision") == "failed"]
            view = self.customer_view(cid)
            codes = view.get("discount_codes") or []
            raw_tags = view.get("tags") or []
            tags = {t.strip() for t in (raw_tags.split(",") if isinstance(raw_tags, str)
                                        else raw_tags)}  # fmt: skip
            if failed:
                out.unexpected.append(f"{cid}: failed {failed[-1].get('detail')}")
            if not done:
                out.lost.append(cid)
                continue
            if len(done) > 1:
                out.duplicated.append(f"{cid}: {len(done)} step_done")
            if len(codes) > 1:
                out.duplicated.append(f"{cid}: {len(codes)} coupons")
            if len(codes) == 0:
                out.lost.append(cid)
                continue
            if f"kizuna:{seq_id}:coupon" not in tags:
                out.unexpected.append(f"{cid}: tag missing {sorted(tags)}")
            fields = {
                m["key"]: m["value"]
                for m in view.get("metafields") or []
                if m.get("namespace") == "kizuna"
            }
            if fields.get("coupon_code") != codes[0].get("code"):
                out.unexpected.append(f"{cid}: metafield {fields.get('coupon_code')}")
            n_flow = flows.get(str(cid), 0)
            if n_flow == 0:
                out.unexpected.append(f"{cid}: no Flow trigger")
            out.flow_repeats += max(0, n_flow - 1)
            if within is not None:
                at = datetime.fromisoformat(str(done[0]["at"]))
                if at > due + within or at < due:
                    out.late.append(f"{cid}: done at {at.isoformat()}")
                    out.unexpected.append(f"{cid}: done at {at.isoformat()} (due {due})")
            if len(done) == 1 and len(codes) == 1:
                out.ok += 1
        return out


# -- RQ plumbing ----------------------------------------------------------------------------


def promote_retries(conn: redis.Redis) -> int:
    """Enqueue every job waiting in a ScheduledJobRegistry (what RQ's scheduler does once a
    retry's interval has passed); answer how many."""
    moved = 0
    far = int(datetime.now(UTC).timestamp()) + 10 * 365 * 86400
    for name in ALL_QUEUES:
        queue = Queue(name, connection=conn, serializer=JSONSerializer)
        registry = ScheduledJobRegistry(queue=queue)
        ids = registry.get_jobs_to_schedule(far)
        for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer):
            if job is None:
                continue
            registry.remove(job)
            queue._enqueue_job(job)
            moved += 1
    return moved


def queued(conn: redis.Redis) -> int:
    total = 0
    for name in ALL_QUEUES:
        q = Queue(name, connection=conn, serializer=JSONSerializer)
        total += q.count + len(ScheduledJobRegistry(queue=q)) + len(StartedJobRegistry(queue=q))
    return total


def failed_jobs(conn: redis.Redis, queue: str = STEPS) -> list[Job]:
    q = Queue(queue, connection=conn, serializer=JSONSerializer)
    ids = FailedJobRegistry(queue=q).get_job_ids()
    return [j for j in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if j]


def proc_env(stack: FaultStack, **extra: str) -> dict[str, str]:
    """The environment of a worker/scheduler process of this stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_FAULT_")}
    env.update(stack.env)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_proc(stack: FaultStack, role: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    """``python -m tests.fault.procs <role> ...`` (see that module)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fault.procs", role, *args],
        cwd=str(ROOT),
        env=proc_env(stack, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stack.procs.append(proc)
    return proc


def run_workers(
    stack: FaultStack, n: int, env: dict[str, str] | None = None, timeout: float = 120.0
) -> list[str]:
    """Run ``n`` burst worker processes (extra ``env``) to the end of the queues; answer their
    outputs."""
    procs = [start_proc(stack, "worker", "--burst", **(env or {})) for _ in range(n)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out.decode(errors="replace"))
    return outs
