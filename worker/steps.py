"""The RQ jobs that put the sequence engine (:mod:`crm.enrolment`) to work.

- :func:`evaluate_customer` — after a profile changed: for each sequence, enter, exit or
  re-time the customer (:func:`crm.enrolment.evaluate`) and schedule the next step.
  :func:`on_profile_changed` enqueues it with a job id per customer, so a burst of webhooks
  about one customer coalesces into one or two runs.
- :func:`evaluate_shop` — when a sequence is activated: evaluate every customer of the shop for
  it (the sequence's catch-up policy decides what happens to steps already past).
- :func:`run_step` — when the scheduler found a step due: :func:`crm.enrolment.due_step`, then
  write the effects to Shopify **first** and only then store the advanced enrolment, the
  customer's last-step time and the decisions in one compare-and-set
  (:func:`worker.enrolment_store.commit`). A crash between the two re-runs the same step with
  the same deterministic effects (same tags, same coupon code): one tag state, one coupon. A
  coupon whose step is never recorded (the enrolment moved on first) is withdrawn
  (:mod:`worker.coupon_ledger`, :mod:`worker.coupon_withdrawal`).
- :func:`run_batch` / :func:`finish_batch` — hundreds or thousands of customers due at the same
  step at once: tags and metafields go through bulk mutations; each customer's enrolment is
  committed when the operation has finished, and a customer whose line failed falls back to
  :func:`run_step`.

Errors: transient Shopify errors propagate (RQ's ``Retry`` runs the job again; while it holds
the step the scheduler's lease keeps other ticks off it). Permanent ones end the enrolment
visibly: a ``failed`` entry in the customer's decision log and in ``kizuna:{shop}:failed``,
never a retry loop. A paused or uninstalled shop (:class:`~crm.errors.ShopUnavailable`)
postpones the step by :data:`PAUSE_RETRY`; a 401 on the token pauses the shop unless a refresh
fixes it, and the work a pause stopped is resumed after the re-auth (:mod:`worker.reauth`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue, Retry, get_current_job

from crm.analytics import is_held_out
from crm.decisions import Decision
from crm.enrolment import (
    DiscountSpec,
    Enrolment,
    Evaluation,
    ShopRules,
    StepRun,
    customer_gid,
    due_step,
    evaluate,
    exit_all,
    exit_effects,
)
from crm.errors import (
    PermanentShopifyError,
    ServerError,
    ShopUnavailable,
    TransientShopifyError,
    Unauthorized,
)
from crm.profile import Profile
from crm.segments import Thresholds, lifecycle
from crm.sequence import Sequence
from plugin import shops
from plugin.graphql import CUSTOMER_TAGS_ADD, CUSTOMER_TAGS_REMOVE, METAFIELDS_SET
from plugin.tokens import fresh_access_token

from . import (
    bulk,
    coupon_ledger,
    coupon_withdrawal,
    decision_log,
    enrolment_store,
    profile_store,
    reauth,
    restore,
    sequence_store,
    writeback,
)
from .app_events import Context, job_context
from .queues import BULK, DEFAULT_RETRY_INTERVALS, STEPS, default_retry, enqueue, get_queue

log = logging.getLogger(__name__)

RUN_STEP = "worker.steps.run_step"
RUN_STEPS = "worker.steps.run_steps"
EVALUATE_CUSTOMER = "worker.steps.evaluate_customer"
EVALUATE_SHOP = "worker.steps.evaluate_shop"
RUN_BATCH = "worker.steps.run_batch"
FINISH_BATCH = "worker.steps.finish_batch"

PAUSE_RETRY = timedelta(hours=1)
IN_CHUNK_TTL = timedelta(days=1)
MAX_RACES = 20  # compare-and-set attempts before RQ retries the job
CHUNK = 500
#: How long finish_batch polls a bulk operation inline before letting RQ retry it later.
BULK_POLL_SECONDS = 60.0
BATCH_TTL = 7 * 24 * 3600


# -- context ----------------------------------------------------------------------------------


@dataclass
class ShopState:
    """What every job of a shop needs, read once per job."""

    record: shops.ShopRecord
    rules: ShopRules
    thresholds: Thresholds
    sequences: sequence_store.VersionCache
    holdout_percent: int = 0


def shop_state(ctx: Context, shop: str) -> ShopState:
    """Raises :class:`ShopUnavailable` for a shop that is not installed."""
    from plugin.api_settings import load_settings

    from .ingest import thresholds_for

    record = shops.require_active(ctx.conn, shop)
    return ShopState(
        record=record,
        rules=sequence_store.shop_rules(ctx.conn, shop, record, secret=ctx.settings.api_secret),
        thresholds=thresholds_for(ctx.conn, shop),
        sequences=sequence_store.VersionCache(ctx.conn, shop),
        holdout_percent=load_settings(ctx.conn, shop).holdout_percent,
    )


# -- holdout ----------------------------------------------------------------------------------


def holdout_key(shop: str, sequence_id: str) -> str:
    """Hash customer id → ``"{cycle}:{epoch seconds}"``: the customers held out of a sequence,
    the cycle and the moment they would have entered (the analytics' control group)."""
    return f"kizuna:{shop}:holdout:{sequence_id}"


def held_out_since(conn: redis.Redis, shop: str, sequence_id: str) -> dict[int, datetime]:
    """Every customer held out of ``sequence_id``, with the time they would have entered."""
    raw: dict[bytes, bytes] = conn.hgetall(holdout_key(shop, sequence_id))  # type: ignore[assignment]
    return {
        int(cid): datetime.fromtimestamp(int(value.split(b":")[1]), UTC)
        for cid, value in raw.items()
    }


@dataclass
class _Held:
    enrolment: Enrolment | None  # what to store instead of the entry
    decisions: tuple[Decision, ...]  # the evaluation's other decisions (an exit on restart)
    mark: str | None  # the holdout record to write, None when this cycle is recorded already
    entry: dict[str, Any] | None  # the decision-log line for a new record


def _hold_out(
    conn: redis.Redis,
    state: ShopState,
    shop: str,
    seq: Sequence,
    enr: Enrolment | None,
    result: Evaluation,
    now: datetime,
) -> _Held | None:
    """Replace a new entry by a holdout when the customer is drawn into the control group.

    The draw (:func:`crm.analytics.is_held_out`, salted per shop) is stable, and a cycle once
    held out stays held out even if the percentage changes, so the comparison is not biased by
    re-draws. The held-out customer gets no step; the record and a ``skipped``/``holdout`` log
    entry let the analytics compare their orders with the treated customers'.
    """
    new = result.enrolment
    if new is None or not new.active or not any(d.decision == "entered" for d in result.decisions):
        return None
    if enr is not None and enr.active and enr.cycle == new.cycle:
        return None  # not an entry: the same cycle goes on
    cid = new.customer_id
    recorded = conn.hget(holdout_key(shop, seq.id), str(cid))
    mark: str | None = f"{new.cycle}:{int(now.timestamp())}"
    if isinstance(recorded, bytes) and recorded.split(b":")[0] == str(new.cycle).encode():
        mark = None
    elif not is_held_out(cid, seq.id, state.holdout_percent, state.rules.coupon_salt):
        return None
    kept = replace(enr, status="exited", due_at=None) if enr is not None and enr.active else enr
    entry = None
    if mark is not None:
        entry = {
            "at": now.isoformat(),
            "customer_id": cid,
            "sequence": seq.id,
            "decision": "skipped",
            "reason": "holdout",
            "version": seq.version,
            "detail": {"percent": state.holdout_percent, "cycle": new.cycle},
        }
    others = tuple(d for d in result.decisions if d.decision != "entered")
    return _Held(kept, others, mark, entry)


def segments_of(profile: Profile, now: datetime, thresholds: Thresholds) -> dict[str, datetime]:
    """The customer's lifecycle segment and since when they are in it.

    The time is derived from the orders (dormant: last order + ``dormant_days``; repeat: the
    second order…), so it is the same at every evaluation and a segment-entered sequence keeps
    one cycle per stay in the segment.
    """
    seg = lifecycle(profile, now, thresholds)
    if seg is None:
        return {}
    orders = [o.created_at for o in profile.live_orders if o.created_at is not None]
    since: datetime | None
    if seg == "dormant" and orders:
        since = orders[-1] + timedelta(days=thresholds.dormant_days)
    elif seg == "churned" and orders:
        since = orders[-1] + timedelta(days=thresholds.churned_days)
    elif seg == "new" and orders:
        since = orders[0]
    elif seg == "repeat" and len(orders) >= 2:
        since = orders[1]
    elif seg == "loyal" and orders:
        since = orders[min(thresholds.loyal_min_orders, len(orders)) - 1]
    else:
        since = profile.created_at
    return {seg: since or now}


def _flow_mark(shop: str, enr: Enrolment) -> str:
    return f"kizuna:{shop}:flow:{enr.customer_id}:{enr.sequence_id}:{enr.cycle}:{enr.next_step}"


def _failure(now: datetime, enr: Enrolment, step: str | None, exc: Exception) -> dict[str, Any]:
    return {
        "at": now.isoformat(),
        "customer_id": enr.customer_id,
        "sequence": enr.sequence_id,
        "decision": "failed",
        "reason": "shopify_refused",
        "version": enr.version,
        "step": step,
        "detail": {"error": str(exc)[:300], "error_type": type(exc).__name__},
    }


def _with_written(decisions: Iterable[Decision], written: writeback.Written) -> list[Decision]:
    out = []
    for d in decisions:
        if d.decision == "step_done":
            d = replace(d, detail={**d.detail, "written": written.summary()})
        out.append(d)
    return out


# -- run a due step ---------------------------------------------------------------------------


def run_step(shop: str, customer_id: int, sequence_id: str) -> str:
    """RQ job (queue ``steps``): run one due step. See :func:`handle_step`.

    A transient error on RQ's last attempt gives the step up visibly (:func:`give_up`): the
    job still fails (RQ's failed registry keeps it), and the enrolment ends with a ``failed``
    entry, so the scheduler's lease does not claim the step again and again forever.
    """
    ctx = job_context()
    try:
        return handle_step(ctx, shop, int(customer_id), sequence_id)
    except TransientShopifyError as exc:
        job = get_current_job()
        if job is not None and not job.retries_left:
            give_up(ctx, shop, int(customer_id), sequence_id, exc)
        raise


def in_chunk_key(shop: str) -> str:
    """Hash ``"{customer_id}:{sequence_id}"`` → the :func:`run_steps` job holding that step."""
    return f"kizuna:{shop}:inchunk"


def mark_held(conn: redis.Redis, shop: str, marks: Mapping[str, str]) -> None:
    """Record which job holds each step (member → job id), see :func:`in_chunk_key`."""
    if not marks:
        return
    with conn.pipeline(transaction=False) as pipe:
        pipe.hset(in_chunk_key(shop), mapping=dict(marks))  # type: ignore[arg-type]
        pipe.expire(in_chunk_key(shop), int(IN_CHUNK_TTL.total_seconds()))
        pipe.execute()


def run_steps(shop: str, pairs: list[list[Any]]) -> str:
    """RQ job (queue ``steps``): run many due steps, each on its own (:func:`handle_step`).

    One step's failure touches no other: a permanent one ends that enrolment visibly inside
    :func:`handle_step`; a transient or unexpected one hands that step to its own
    :func:`run_step` job (the retries a step job gets, less the run made here), so a retry never
    re-runs the steps this job finished. If the job itself dies (a killed work-horse), RQ's
    ``Retry`` runs it again: the steps done already find their enrolment advanced and do
    nothing, and a step cut short repeats its idempotent writes.
    """
    ctx = job_context()
    outcomes: dict[str, int] = {}
    handed: list[tuple[int, str]] = []
    for cid, seq_id in pairs:
        try:
            outcome = handle_step(ctx, shop, int(cid), str(seq_id))
        except Exception as exc:  # noqa: BLE001 - isolate the step; its own job reports it
            log.warning("step %s:%s handed to its own job: %s", cid, seq_id, exc,
                        extra={"shop": shop})  # fmt: skip
            handed.append((int(cid), str(seq_id)))
            outcome = "handed_off"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    _hand_off(ctx.conn, shop, handed)
    ctx.conn.hdel(in_chunk_key(shop), *(enrolment_store.member(c, s) for c, s in pairs))
    return ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))


def _hand_off(conn: redis.Redis, shop: str, items: list[tuple[int, str]]) -> None:
    from .scheduler import step_job_id

    if not items:
        return
    retry = Retry(max=len(DEFAULT_RETRY_INTERVALS) - 1, interval=DEFAULT_RETRY_INTERVALS[1:])
    raws = enrolment_store.load_many(conn, shop, items)
    queue = get_queue(conn, STEPS)
    datas = []
    marks: dict[str, str] = {}
    for cid, seq_id in items:
        raw = raws[(cid, seq_id)]
        if raw is None:
            continue
        enr = enrolment_store.decode(cid, seq_id, raw)
        job_id = step_job_id(shop, cid, seq_id, enr.cycle, enr.next_step)
        marks[enrolment_store.member(cid, seq_id)] = job_id
        datas.append(queue.prepare_data(RUN_STEP, args=(shop, cid, seq_id), job_id=job_id,
                                        retry=retry))  # fmt: skip
    if datas:
        mark_held(conn, shop, marks)
        queue.enqueue_many(datas)


def give_up(ctx: Context, shop: str, customer_id: int, sequence_id: str, exc: Exception) -> bool:
    """End an active enrolment whose step could not be written after every retry; answer
    whether it was ended now (a ``failed`` decision and an entry in the shop's failures)."""
    conn, now = ctx.conn, ctx.clock.now()
    for _ in range(MAX_RACES):
        raw = enrolment_store.load_raw(conn, shop, sequence_id, customer_id)
        if raw is None:
            return False
        enr = enrolment_store.decode(customer_id, sequence_id, raw)
        if not enr.active:
            return False
        seq = sequence_store.VersionCache(conn, shop).get(sequence_id, enr.version)
        step = None
        if seq is not None and enr.next_step < len(seq.steps):
            step = seq.steps[enr.next_step].key
        entry = _failure(now, enr, step, exc)
        entry["detail"]["gave_up_after_retries"] = True
        failed = replace(enr, status="exited", due_at=None)
        if enrolment_store.commit(conn, shop, customer_id, sequence_id, raw, failed, log=[entry]):
            enrolment_store.mark_failed(conn, shop, customer_id, sequence_id, str(exc))
            log.warning("step given up after retries: %s", exc, extra={"shop": shop})
            try:
                coupon_withdrawal.settle(ctx, shop, customer_id, sequence_id, failed)
            except TransientShopifyError:
                pass  # Shopify still failing: the sweep withdraws the code later
            return True
    return False


def handle_step(ctx: Context, shop: str, customer_id: int, sequence_id: str) -> str:
    """Run the customer's due step, retrying the compare-and-set against fresh state.

    Every state loaded settles the enrolment's coupon ledger first
    (:func:`worker.coupon_withdrawal.settle`): a coupon created for a step that was never
    recorded, by this job (its commit lost) or by an earlier one that stopped, is withdrawn
    once the enrolment is no longer at that step. A token replaced after a 401 runs the step
    again here with the new token (once), instead of handing it to RQ's retry.
    """
    conn, now = ctx.conn, ctx.clock.now()
    try:
        state = shop_state(ctx, shop)
    except ShopUnavailable:
        reauth.pause_step(conn, shop, customer_id, sequence_id, now, PAUSE_RETRY)
        return "paused"
    created: writeback.Coupon | None = None  # by this job, its commit lost
    replaced = False
    for _ in range(MAX_RACES):
        raw = enrolment_store.load_raw(conn, shop, sequence_id, customer_id)
        enr = enrolment_store.decode(customer_id, sequence_id, raw) if raw is not None else None
        coupon_withdrawal.settle(ctx, shop, customer_id, sequence_id, enr, created)
        created = None
        if raw is None or enr is None:
            gone = enrolment_store.member(customer_id, sequence_id)
            conn.zrem(enrolment_store.due_key(shop), gone)
            return "gone"
        if not enr.active:
            enrolment_store.commit(conn, shop, customer_id, sequence_id, raw, enr)
            return "ended"
        seq = state.sequences.get(sequence_id, enr.version)
        profile = profile_store.load(conn, shop, customer_id)
        if seq is None or profile is None:
            outcome = _end_without_customer(ctx, shop, enr, raw, seq, now)
            if outcome:
                coupon_withdrawal.settle(ctx, shop, customer_id, sequence_id, None)
                return outcome
            continue
        run = due_step(
            profile,
            seq,
            enr,
            now,
            state.rules,
            last_step_at=enrolment_store.last_step_at(conn, shop, customer_id),
            segments=segments_of(profile, now, state.thresholds),
        )
        try:
            done, created = _apply_run(ctx, shop, enr, raw, run, now, seq)
        except ShopUnavailable:
            reauth.pause_step(conn, shop, customer_id, sequence_id, now, PAUSE_RETRY)
            return "paused"
        except reauth.TokenReplaced:
            if replaced:
                raise
            replaced = True
            continue
        if done is not None:
            return done
    raise ServerError(f"enrolment {customer_id}:{sequence_id} kept changing", shop=shop)


def _end_without_customer(
    ctx: Context, shop: str, enr: Enrolment, raw: str, seq: Sequence | None, now: datetime
) -> str | None:
    """The profile is gone (redacted, deleted) or the sequence version is: end the enrolment."""
    reason = "customer_deleted" if seq is not None else "sequence_deleted"
    placeholder = seq or Sequence(id=enr.sequence_id, trigger=None, steps=())  # type: ignore[arg-type]
    ended = exit_all([enr], {enr.sequence_id: placeholder}, now, reason)
    new, decision = ended[0]
    ok = enrolment_store.commit(
        ctx.conn, shop, enr.customer_id, enr.sequence_id, raw, new, log=[decision]
    )
    return "exited" if ok else None


def _apply_run(
    ctx: Context,
    shop: str,
    enr: Enrolment,
    raw: str,
    run: StepRun,
    now: datetime,
    seq: Sequence,
) -> tuple[str | None, writeback.Coupon | None]:
    """Write the run's effects, then commit; answer the outcome, or None if we lost a race,
    and with a lost race the coupon this run created (for :func:`handle_step` to withdraw)."""
    conn = ctx.conn
    decisions = decision_log.loggable(run.decisions)
    effects = run.effects
    if run.kind in ("exited", "restarted") and not enr.history:
        effects = None  # no step of this cycle was written: nothing to clean up
    if run.kind == "exited" and any(d.reason == "customer_deleted" for d in run.decisions):
        effects = None  # the customer is gone from Shopify too
    last = None
    created: writeback.Coupon | None = None
    code = effects.discount.code if effects is not None and effects.discount else None

    def hold(spec: DiscountSpec) -> None:
        coupon_ledger.hold(conn, shop, enr, spec.code, now)

    if effects is not None:
        token = fresh_access_token(conn, ctx.settings, shop, ctx.clock)
        try:
            written = writeback.write_effects(
                ctx.admin_client(), shop, token, effects,
                conn=conn, flow_mark=_flow_mark(shop, enr), before_create=hold,
            )  # fmt: skip
        except Unauthorized:
            reauth.on_unauthorized(ctx, shop, token)  # paused (ShopUnavailable) or retried
        except PermanentShopifyError as exc:
            step = seq.steps[enr.next_step].key if enr.next_step < len(seq.steps) else None
            failed = replace(enr, status="exited", due_at=None)
            entry = _failure(now, enr, step, exc)
            if enrolment_store.commit(
                conn, shop, enr.customer_id, enr.sequence_id, raw, failed, log=[entry]
            ):
                enrolment_store.mark_failed(conn, shop, enr.customer_id, enr.sequence_id, str(exc))
                log.warning("step failed for good: %s", exc, extra={"shop": shop})
                coupon_withdrawal.settle(ctx, shop, enr.customer_id, enr.sequence_id, failed)
                return "failed", None
            return None, None
        decisions = _with_written(decisions, written)
        if written.coupon is not None and written.coupon.created:
            created = written.coupon
        if run.kind == "run":
            last = now
    ok = enrolment_store.commit(
        conn, shop, enr.customer_id, enr.sequence_id, raw, run.enrolment,
        last_step_at=last, log=decisions, release=code,
    )  # fmt: skip
    return (run.kind, None) if ok else (None, created)


# -- evaluate ---------------------------------------------------------------------------------


def _eval_job_ids(shop: str, customer_id: int) -> tuple[str, str]:
    base = f"eval-{shops.shop_handle(shop)}-{int(customer_id)}"
    return base, base + "-b"


def on_profile_changed(conn: redis.Redis, shop: str, customer_id: int) -> str | None:
    """Enqueue :func:`evaluate_customer` unless one is already waiting; answer the job id.

    Two ids alternate: while one run is under way, a second is queued under the other id, so a
    change that arrives during a run is never lost and a burst costs at most two runs.
    """
    return on_profiles_changed(conn, shop, [customer_id])[int(customer_id)]


def on_profiles_changed(
    conn: redis.Redis, shop: str, customer_ids: Iterable[int]
) -> dict[int, str | None]:
    """:func:`on_profile_changed` for many customers of one shop in two round trips.

    One pipeline reads the status of both evaluation jobs of every customer, one pipeline
    enqueues the jobs needed (RQ's ``enqueue_many``: the same job hashes, ids, retry and queue
    as one ``enqueue`` each). Answers each customer's enqueued job id, or None when a run is
    already waiting.
    """
    ids = sorted({int(cid) for cid in customer_ids})
    if not ids:
        return {}
    with conn.pipeline(transaction=False) as pipe:
        for cid in ids:
            for job_id in _eval_job_ids(shop, cid):
                pipe.hget(f"rq:job:{job_id}", "status")
        statuses = pipe.execute()
    chosen: dict[int, str | None] = {}
    for i, cid in enumerate(ids):
        first, second = _eval_job_ids(shop, cid)
        chosen[cid] = _next_eval_job(first, second, statuses[2 * i], statuses[2 * i + 1])
    wanted = [(cid, job_id) for cid, job_id in chosen.items() if job_id is not None]
    if wanted:
        queue = get_queue(conn, STEPS)
        datas = [
            Queue.prepare_data(
                EVALUATE_CUSTOMER, args=(shop, cid), job_id=job_id, retry=default_retry()
            )
            for cid, job_id in wanted
        ]
        with conn.pipeline() as pipe:
            queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    return chosen


def _next_eval_job(first: str, second: str, s1: bytes | None, s2: bytes | None) -> str | None:
    """The evaluation job id to enqueue given both jobs' statuses, or None (one is waiting)."""
    if s1 == b"queued" or s2 == b"queued":
        return None
    job_id = second if s1 == b"started" else first
    if job_id == second and s2 == b"started":
        return None  # both busy: the second run reads the profile after this change anyway
    return job_id


def evaluate_customer(shop: str, customer_id: int) -> str:
    """RQ job: evaluate one customer against every sequence of the shop."""
    return handle_evaluate(job_context(), shop, int(customer_id))


def handle_evaluate(ctx: Context, shop: str, customer_id: int, *, only: str | None = None) -> str:
    try:
        state = shop_state(ctx, shop)
    except ShopUnavailable:
        reauth.park_evaluation(ctx.conn, shop, customer_id)
        return "paused"
    now = ctx.clock.now()
    profile = profile_store.load(ctx.conn, shop, customer_id)
    changed = 0
    metas = sequence_store.metas(ctx.conn, shop)
    recent = _recent_log(ctx.conn, shop, customer_id)
    for m in metas:
        if only is not None and m.sequence_id != only:
            continue
        changed += _evaluate_one(ctx, state, shop, customer_id, profile, m, now, recent)
    return f"evaluated {len(metas)} sequences, {changed} changed"


def _recent_log(conn: redis.Redis, shop: str, customer_id: int) -> dict[str, tuple[Any, ...]]:
    """The newest logged (decision, reason, step) per sequence, to avoid repeating it."""
    out: dict[str, tuple[Any, ...]] = {}
    for e in decision_log.read(conn, shop, customer_id, limit=20):
        out[str(e.get("sequence"))] = (e.get("decision"), e.get("reason"), e.get("step"))
    return out


def _evaluate_one(
    ctx: Context,
    state: ShopState,
    shop: str,
    customer_id: int,
    profile: Profile | None,
    meta: sequence_store.Meta,
    now: datetime,
    recent: Mapping[str, tuple[Any, ...]],
) -> int:
    conn, seq_id = ctx.conn, meta.sequence_id
    for _ in range(MAX_RACES):
        raw = enrolment_store.load_raw(conn, shop, seq_id, customer_id)
        enr = enrolment_store.decode(customer_id, seq_id, raw) if raw else None
        if enr is not None and enr.active:
            seq = state.sequences.get(seq_id, enr.version)
        elif meta.active:
            seq = state.sequences.get(seq_id)
        else:
            return 0
        if seq is None:
            return 0
        if profile is None:
            if enr is None or not enr.active or raw is None:
                return 0
            if _end_without_customer(ctx, shop, enr, raw, seq, now):
                return 1
            continue
        segments = segments_of(profile, now, state.thresholds)
        if raw is None and restore.tagged_step(seq, profile.tags) is not None:
            outcome = _restore_one(ctx, state, shop, seq, profile, now, segments)
            if outcome is not None:
                return outcome
            if enrolment_store.load_raw(conn, shop, seq_id, customer_id) is not None:
                continue  # restored meanwhile by another job
        result = evaluate(profile, seq, enr, now, state.rules, segments=segments)
        new = result.enrolment
        held = _hold_out(conn, state, shop, seq, enr, result, now)
        if held is not None:
            new = held.enrolment
        decisions: list[Decision | dict[str, Any]] = [
            d
            for d in decision_log.loggable(held.decisions if held else result.decisions)
            if not (
                d.decision == "skipped" and recent.get(seq_id) == (d.decision, d.reason, d.step)
            )
        ]
        if held is not None and held.entry is not None:
            decisions.append(held.entry)
        if new == enr and not decisions:
            return 0
        ended_cycle = (
            enr is not None
            and enr.active
            and enr.history
            and (new is None or not new.active or new.cycle != enr.cycle)
            and not any(d.reason == "customer_deleted" for d in result.decisions)
        )
        if ended_cycle and not _write_exit(ctx, shop, seq, customer_id):
            return 0
        if enrolment_store.commit(conn, shop, customer_id, seq_id, raw, new, log=decisions):
            if held is not None and held.mark is not None:
                conn.hset(holdout_key(shop, seq_id), str(customer_id), held.mark)
            return 1
    raise ServerError(f"enrolment {customer_id}:{seq_id} kept changing", shop=shop)


def _write_exit(ctx: Context, shop: str, seq: Sequence, customer_id: int) -> bool:
    """Remove the ended cycle's tags in Shopify; answer False when the shop is paused for
    re-auth (now, or after a 401 no refresh fixed): the evaluation is parked and runs again
    after the re-auth, as nothing was committed.

    A refresh that replaced the token raises :class:`~worker.reauth.TokenReplaced` (RQ runs
    the evaluation again); a shop still installed that Shopify refuses otherwise (402, 423)
    raises :class:`ShopUnavailable`, for RQ's retry rather than a park no re-auth would end.
    """
    try:
        token = fresh_access_token(ctx.conn, ctx.settings, shop, ctx.clock)
        with reauth.refused(ctx, shop, token):
            writeback.write_effects(ctx.admin_client(), shop, token, exit_effects(seq, customer_id))
    except ShopUnavailable:
        record = shops.load(ctx.conn, shop)
        if record is not None and record.status is shops.Status.INSTALLED:
            raise
        reauth.park_evaluation(ctx.conn, shop, customer_id)
        return False
    return True


def _restore_one(
    ctx: Context,
    state: ShopState,
    shop: str,
    seq: Sequence,
    profile: Profile,
    now: datetime,
    segments: dict[str, datetime],
) -> int | None:
    """A customer without an enrolment who carries one of the sequence's tags (Kizuna's Redis
    was wiped or the app reinstalled): put them back at the step after the tagged one
    (:mod:`worker.restore`). Answer 1 when restored, 0 when the shop cannot be read now, None
    when the tags prove nothing (the customer is evaluated as new)."""
    try:
        token = fresh_access_token(ctx.conn, ctx.settings, shop, ctx.clock)
    except ShopUnavailable:
        reauth.park_evaluation(ctx.conn, shop, profile.customer_id)
        return 0
    check = restore.coupon_checker(ctx.admin_client(), shop, token)
    try:
        with reauth.refused(ctx, shop, token):
            found = restore.restored(profile, seq, now, state.rules, segments, check)
    except ShopUnavailable:  # a 401 no refresh fixed: evaluated again after the re-auth
        reauth.park_evaluation(ctx.conn, shop, profile.customer_id)
        return 0
    if found is None:
        return None
    cid = profile.customer_id
    if enrolment_store.commit(
        ctx.conn, shop, cid, seq.id, None, found.enrolment, log=[found.decision]
    ):
        log.info("enrolment %s:%s restored from %s", cid, seq.id, found.tag, extra={"shop": shop})
        return 1
    return None


def evaluate_shop(shop: str, sequence_id: str) -> str:
    """RQ job (queue ``bulk``): evaluate every customer of the shop for one sequence."""
    return handle_evaluate_shop(job_context(), shop, sequence_id)


def handle_evaluate_shop(ctx: Context, shop: str, sequence_id: str) -> str:
    try:
        state = shop_state(ctx, shop)
    except ShopUnavailable:
        reauth.park_evaluate_shop(ctx.conn, shop, sequence_id)
        return "paused"
    meta = sequence_store.meta(ctx.conn, shop, sequence_id)
    if meta is None:
        return "unknown sequence"
    now = ctx.clock.now()
    seen = changed = 0
    batch: list[int] = []

    def flush() -> None:
        nonlocal changed
        for profile in profile_store.load_many(ctx.conn, shop, batch):
            changed += _evaluate_one(ctx, state, shop, profile.customer_id, profile, meta, now, {})
        batch.clear()

    for cid in profile_store.iter_members(ctx.conn, shop, profile_store.ALL, batch=CHUNK):
        batch.append(cid)
        seen += 1
        if len(batch) >= CHUNK:
            flush()
    flush()
    return f"evaluated {seen} customers, {changed} changed"


def schedule_evaluate_shop(conn: redis.Redis, shop: str, sequence_id: str, version: int) -> str:
    """Enqueue :func:`evaluate_shop` (one per activation of a version)."""
    job_id = f"evalshop-{shops.shop_handle(shop)}-{sequence_id}-{version}-{uuid.uuid4().hex[:8]}"
    enqueue(conn, EVALUATE_SHOP, shop, sequence_id, queue=BULK, job_id=job_id)
    return job_id


# -- batches: the bulk-mutation path ------------------------------------------------------------


def batch_key(shop: str, batch_id: str) -> str:
    return f"kizuna:{shop}:batch:{batch_id}"


def bulk_op_key(shop: str, operation_id: str) -> str:
    return f"kizuna:{shop}:bulkop:{operation_id.rsplit('/', 1)[-1]}"


def create_batch(
    conn: redis.Redis, shop: str, sequence_id: str, customer_ids: list[int], lease_until: datetime
) -> str:
    """Store a batch of claimed customers and enqueue :func:`run_batch` for it."""
    batch_id = uuid.uuid4().hex[:16]
    key = batch_key(shop, batch_id)
    due = enrolment_store.due_key(shop)
    with conn.pipeline(transaction=True) as pipe:
        pipe.rpush(f"{key}:ids", *customer_ids)
        pipe.expire(f"{key}:ids", BATCH_TTL)
        # The bulk operation may take a while: hold these members longer than a step's lease.
        pipe.zadd(
            due,
            {enrolment_store.member(c, sequence_id): lease_until.timestamp() for c in customer_ids},
            xx=True,
        )
        pipe.execute()
    enqueue(conn, RUN_BATCH, shop, sequence_id, batch_id, queue=BULK, job_id=f"batch-{batch_id}")
    return batch_id


def run_batch(shop: str, sequence_id: str, batch_id: str) -> str:
    """RQ job (queue ``bulk``): start the bulk mutations of a batch."""
    return handle_batch(job_context(), shop, sequence_id, batch_id)


def _bulkable(run: StepRun) -> bool:
    """Only tags and metafields go in bulk; a coupon or a Flow trigger needs its own call."""
    e = run.effects
    return run.kind == "run" and e is not None and e.discount is None and e.flow_trigger is None


def handle_batch(ctx: Context, shop: str, sequence_id: str, batch_id: str) -> str:
    conn, now = ctx.conn, ctx.clock.now()
    key = batch_key(shop, batch_id)
    if conn.exists(f"{key}:plan"):
        return handle_finish_batch(ctx, shop, batch_id)  # started already: a re-run finishes it
    ids = [int(x) for x in conn.lrange(f"{key}:ids", 0, -1)]
    if not ids:
        return "gone"
    try:
        state = shop_state(ctx, shop)
        token = fresh_access_token(conn, ctx.settings, shop, ctx.clock)
    except ShopUnavailable:
        return _pause_batch(conn, shop, sequence_id, batch_id, ids, now)
    plan: dict[str, str] = {}
    adds: list[dict[str, Any]] = []
    removes: list[dict[str, Any]] = []
    fields: list[dict[str, Any]] = []
    single: list[int] = []
    removers: list[int] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        raws = enrolment_store.load_many(conn, shop, [(c, sequence_id) for c in chunk])
        profiles = {p.customer_id: p for p in profile_store.load_many(conn, shop, chunk)}
        lasts = _lasts(conn, shop, chunk)
        for cid in chunk:
            raw = raws[(cid, sequence_id)]
            profile = profiles.get(cid)
            if raw is None or profile is None:
                single.append(cid)
                continue
            enr = enrolment_store.decode(cid, sequence_id, raw)
            seq = state.sequences.get(sequence_id, enr.version)
            if not enr.active or seq is None:
                single.append(cid)
                continue
            run = due_step(
                profile, seq, enr, now, state.rules, last_step_at=lasts.get(cid),
                segments=segments_of(profile, now, state.thresholds),
            )  # fmt: skip
            if not _bulkable(run):
                single.append(cid)
                continue
            assert run.effects is not None and run.enrolment is not None
            gid = customer_gid(cid)
            written_steps = {seq.steps[i].tag(seq.id) for i, _ in enr.history if i < len(seq.steps)}
            stale = [t for t in run.effects.tags_remove if t in written_steps]
            adds.append({"id": gid, "tags": list(run.effects.tags_add)})
            if stale:
                removes.append({"id": gid, "tags": stale})
                removers.append(cid)
            fields.append({"metafields": [m.as_input(gid) for m in run.effects.metafields]})
            summary = {
                "tags_added": list(run.effects.tags_add),
                "metafields": [f"{m.namespace}.{m.key}" for m in run.effects.metafields],
                "bulk": batch_id,
            }
            if stale:
                summary["tags_removed"] = stale
            decisions = [
                d.to_dict()
                for d in _with_decision_detail(decision_log.loggable(run.decisions), summary)
            ]
            plan[str(cid)] = json.dumps(
                {"raw": raw, "new": enrolment_store.encode(run.enrolment), "log": decisions},
                separators=(",", ":"),
            )
    ops: dict[str, str] = {}  # operation id -> "add" | "remove" | "metafields"
    admin = ctx.admin_client()
    try:
        with reauth.refused(ctx, shop, token):  # a 401: paused, or retried with a new token
            for kind, doc, lines in (("add", CUSTOMER_TAGS_ADD, adds),
                                     ("remove", CUSTOMER_TAGS_REMOVE, removes),
                                     ("metafields", METAFIELDS_SET, fields)):  # fmt: skip
                if lines:
                    op_id = writeback.start_bulk_mutation(
                        admin, shop, token, doc, lines, client_identifier=f"kizuna-{batch_id}"
                    )
                    ops[op_id] = kind
    except ShopUnavailable:
        return _pause_batch(conn, shop, sequence_id, batch_id, ids, now)
    with conn.pipeline(transaction=True) as pipe:
        if plan:
            pipe.hset(f"{key}:plan", mapping=plan)  # type: ignore[arg-type]
            pipe.expire(f"{key}:plan", BATCH_TTL)
        pipe.hset(
            f"{key}:meta",
            mapping={
                "ops": json.dumps(ops),
                "removers": json.dumps(removers),
                "seq": sequence_id,
                "at": str(int(now.timestamp())),
            },
        )
        pipe.expire(f"{key}:meta", BATCH_TTL)
        for op in ops:
            pipe.set(bulk_op_key(shop, op), batch_id, ex=BATCH_TTL)
        pipe.execute()
    for op in ops:  # the bulk_operations/finish webhook job calls back here
        bulk.register(conn, shop, op, "worker.steps.bulk_operation_finished")
    _enqueue_singles(conn, shop, sequence_id, single)
    if not plan:
        _drop_batch(conn, shop, batch_id, ops)
        return f"no bulk work; {len(single)} single steps"
    return handle_finish_batch(ctx, shop, batch_id)


def _pause_batch(
    conn: redis.Redis, shop: str, sequence_id: str, batch_id: str, ids: list[int], now: datetime
) -> str:
    """The shop is paused: each customer's step back in the schedule (noted for the resume)."""
    for cid in ids:
        reauth.pause_step(conn, shop, cid, sequence_id, now, PAUSE_RETRY)
    conn.delete(f"{batch_key(shop, batch_id)}:ids")
    return "paused"


def _with_decision_detail(decisions: list[Decision], summary: dict[str, Any]) -> list[Decision]:
    return [
        replace(d, detail={**d.detail, "written": summary}) if d.decision == "step_done" else d
        for d in decisions
    ]


def _lasts(conn: redis.Redis, shop: str, ids: list[int]) -> dict[int, datetime]:
    with conn.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.hget(enrolment_store.last_key(shop, cid), str(cid))
        values = pipe.execute()
    return {
        cid: datetime.fromtimestamp(int(v), UTC)
        for cid, v in zip(ids, values, strict=True)
        if v is not None
    }


def _enqueue_singles(conn: redis.Redis, shop: str, sequence_id: str, ids: list[int]) -> None:
    """Hand customers back to the one-by-one path (due now: the next tick, or right away)."""
    if not ids:
        return
    queue = get_queue(conn, STEPS)
    datas = [
        queue.prepare_data(
            RUN_STEP,
            args=(shop, cid, sequence_id),
            job_id=f"single-{shops.shop_handle(shop)}-{cid}-{sequence_id}-{uuid.uuid4().hex[:6]}",
            retry=default_retry(),
        )
        for cid in ids
    ]
    queue.enqueue_many(datas)


def _drop_batch(conn: redis.Redis, shop: str, batch_id: str, ops: Iterable[str]) -> None:
    key = batch_key(shop, batch_id)
    conn.delete(f"{key}:ids", f"{key}:plan", f"{key}:meta", *(bulk_op_key(shop, o) for o in ops))


def on_bulk_finished(conn: redis.Redis, shop: str, operation_id: str) -> str | None:
    """For the ``bulk_operations/finish`` webhook job: finish the batch the operation belongs
    to (enqueue :func:`finish_batch`); answer the batch id, or None if it is not ours."""
    raw = conn.get(bulk_op_key(shop, operation_id))
    if raw is None:
        return None
    batch_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    enqueue(conn, FINISH_BATCH, shop, batch_id, queue=BULK, job_id=f"finish-{batch_id}")
    return batch_id


def bulk_operation_finished(conn: redis.Redis, shop: str, event: Any) -> str:
    """Handler registered with :mod:`worker.bulk` for our bulk mutations' finish webhook."""
    return on_bulk_finished(conn, shop, event.operation_id) or "not a batch of ours"


def finish_batch(shop: str, batch_id: str) -> str:
    """RQ job (queue ``bulk``): wait for a batch's bulk operations, then commit its customers."""
    return handle_finish_batch(job_context(), shop, batch_id)


def handle_finish_batch(
    ctx: Context, shop: str, batch_id: str, *, poll_seconds: float = BULK_POLL_SECONDS
) -> str:
    conn = ctx.conn
    key = batch_key(shop, batch_id)
    meta = {k.decode(): v.decode() for k, v in conn.hgetall(f"{key}:meta").items()}  # type: ignore[union-attr]
    if not meta:
        return "gone"
    ops: dict[str, str] = json.loads(meta.get("ops") or "{}")
    removers: list[int] = json.loads(meta.get("removers") or "[]")
    sequence_id = meta["seq"]
    done_at = datetime.fromtimestamp(int(meta["at"]), UTC)
    try:
        token = fresh_access_token(conn, ctx.settings, shop, ctx.clock)
    except ShopUnavailable:
        reauth.park_finish_batch(conn, shop, batch_id)  # finished after a re-auth
        return "paused"  # else the leases run out and the steps are claimed again later
    admin = ctx.admin_client()
    try:
        with reauth.refused(ctx, shop, token):
            finished = _wait_for(admin, shop, token, list(ops), poll_seconds)
    except ShopUnavailable:  # a 401 no refresh fixed
        reauth.park_finish_batch(conn, shop, batch_id)
        return "paused"
    failed_lines: dict[str, set[int]] = {}
    for op_id, op in finished.items():
        bad: set[int] = set()
        if op.get("status") != "COMPLETED":
            bad = {-1}  # the whole operation failed: every customer goes one by one
        elif op.get("url"):
            for row in writeback.bulk_results(op["url"], shop=shop):
                if not writeback.row_ok(row):
                    bad.add(int(row.get("__lineNumber", -1)))
        failed_lines[op_id] = bad
    plan = {int(k): json.loads(v) for k, v in conn.hgetall(f"{key}:plan").items()}
    order = [int(x) for x in conn.lrange(f"{key}:ids", 0, -1)]
    planned = [cid for cid in order if cid in plan]
    failed_cids: set[int] = set()
    for op_id, bad in failed_lines.items():
        owners = removers if ops[op_id] == "remove" else planned
        if -1 in bad:
            failed_cids |= set(owners)
        else:
            failed_cids |= {owners[n] for n in bad if 0 <= n < len(owners)}
    commits = [
        enrolment_store.Commit(
            cid,
            sequence_id,
            plan[cid]["raw"],
            enrolment_store.decode(cid, sequence_id, plan[cid]["new"]),
            last_step_at=done_at,
            log=tuple(plan[cid]["log"]),
        )  # fmt: skip
        for cid in planned
        if cid not in failed_cids
    ]
    committed = sum(enrolment_store.commit_many(conn, shop, commits))
    _enqueue_singles(conn, shop, sequence_id, sorted(failed_cids))
    _drop_batch(conn, shop, batch_id, ops)
    return f"batch {batch_id}: {committed} committed, {len(failed_cids)} retried one by one"


def _wait_for(
    admin: Any, shop: str, token: str, ops: list[str], poll_seconds: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + poll_seconds
    pause = 0.05
    done: dict[str, dict[str, Any]] = {}
    while True:
        for op_id in ops:
            if op_id in done:
                continue
            op = writeback.bulk_status(admin, shop, token, op_id)
            if op.get("status") in {"COMPLETED", "FAILED", "CANCELED", "EXPIRED"}:
                done[op_id] = op
        if len(done) == len(ops):
            return done
        if time.monotonic() >= deadline:
            # Still running: let RQ retry the job later (the batch stays in Redis).
            raise ServerError(f"bulk operations still running: {sorted(set(ops) - set(done))}",
                              shop=shop)  # fmt: skip
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
