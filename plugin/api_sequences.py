"""The sequences API and the decision-log API of the embedded page.

Every route is under ``/api/`` and so guarded by the session-token guard (:mod:`plugin.guard`);
the shop is the token's (``g.shop``), never one named in the request.

- ``GET /api/sequences`` — the shop's sequences (id, title, version, active, counts);
- ``POST /api/sequences`` — ``{"template": "<name>", …overrides}`` or ``{"definition": {…}}``:
  creates an **inactive** sequence, 201 with its ``id``;
- ``GET /api/sequences/<id>`` — definition, versions, counts, and ``history``: every version
  with its save time (``saved_at``, ISO) and step count;
- ``PUT /api/sequences/<id>`` — an edit becomes a new version (customers inside keep theirs);
  a bad definition: 422 ``{"error": msg, "field": path}`` and nothing changes;
- ``POST /api/sequences/<id>/activate`` | ``/deactivate`` — on activation every customer is
  evaluated (a background job); deactivation lets no one new in, customers inside finish;
- ``POST /api/sequences/<id>/preview`` — who would enter now and at which step, with a sample
  of those customers (id, name, email);
- ``GET /api/customers/<id>/log`` — the customer's decision log, oldest first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from crm.enrolment import preview
from crm.errors import ValidationError
from crm.sequence import from_dict, to_dict
from crm.templates import TEMPLATES, instantiate
from worker import decision_log, enrolment_store, profile_store, sequence_store

from .app import resources
from .guard import require_session

bp = Blueprint("api_sequences", __name__, url_prefix="/api")

PREVIEW_LIMIT = 5000
SAMPLE = 20


def _error(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ValidationError("send a JSON object", field=None)
    return body


def _summary(shop: str, seq: Any) -> dict[str, Any]:
    conn = resources().redis
    return {
        "id": seq.id,
        "title": seq.title,
        "version": seq.version,
        "active": seq.active,
        "trigger": seq.trigger.kind,
        "steps": len(seq.steps),
        "counts": enrolment_store.counts(conn, shop, seq.id),
    }


@bp.errorhandler(ValidationError)
def _invalid(exc: ValidationError) -> Response:
    return _error(422, str(exc), exc.field)


@bp.get("/sequences")
@require_session
def list_sequences() -> Any:
    shop = g.shop
    conn = resources().redis
    items = [_summary(shop, s) for s in sequence_store.all_current(conn, shop)]
    return jsonify(sequences=items, templates=sorted(TEMPLATES))


@bp.post("/sequences")
@require_session
def create_sequence() -> Any:
    shop = g.shop
    body = _json_body()
    if not isinstance(body, dict):
        raise ValidationError("send a JSON object")
    res = resources()
    overrides = {k: v for k, v in body.items() if k not in ("template", "definition", "shop")}
    if "template" in body:
        if not isinstance(body["template"], str):
            raise ValidationError("template must be a name", field="template")
        seq = instantiate(body["template"], **overrides)
    elif "definition" in body:
        seq = from_dict(body["definition"])
    else:
        raise ValidationError("name a template or send a definition", field="template")
    created = sequence_store.create(res.redis, shop, seq, res.clock.now())
    response = jsonify(id=created.id, version=created.version, active=created.active)
    response.status_code = 201
    return response


def _load_or_404(shop: str, sequence_id: str) -> Any:
    return sequence_store.load(resources().redis, shop, sequence_id)


@bp.get("/sequences/<sequence_id>")
@require_session
def get_sequence(sequence_id: str) -> Any:
    shop = g.shop
    seq = _load_or_404(shop, sequence_id)
    if seq is None:
        return _error(404, "no such sequence")
    conn = resources().redis
    return jsonify(
        **_summary(shop, seq),
        definition=to_dict(seq),
        versions=sequence_store.versions(conn, shop, sequence_id),
        history=[
            {"version": v.version, "saved_at": v.saved_at, "steps": v.steps}
            for v in sequence_store.history(conn, shop, sequence_id)
        ],
    )


@bp.put("/sequences/<sequence_id>")
@require_session
def update_sequence(sequence_id: str) -> Any:
    shop = g.shop
    body = _json_body()
    res = resources()
    try:
        seq = sequence_store.update(res.redis, shop, sequence_id, body, res.clock.now())
    except KeyError:
        return _error(404, "no such sequence")
    return jsonify(id=seq.id, version=seq.version, active=seq.active, definition=to_dict(seq))


@bp.post("/sequences/<sequence_id>/activate")
@require_session
def activate(sequence_id: str) -> Any:
    return _switch(sequence_id, True)


@bp.post("/sequences/<sequence_id>/deactivate")
@require_session
def deactivate(sequence_id: str) -> Any:
    return _switch(sequence_id, False)


def _switch(sequence_id: str, active: bool) -> Any:
    from worker.steps import schedule_evaluate_shop

    shop = g.shop
    conn = resources().redis
    try:
        changed = sequence_store.set_active(conn, shop, sequence_id, active)
    except KeyError:
        return _error(404, "no such sequence")
    job = None
    if changed and active:
        meta = sequence_store.meta(conn, shop, sequence_id)
        assert meta is not None
        job = schedule_evaluate_shop(conn, shop, sequence_id, meta.version)
    return jsonify(id=sequence_id, active=active, changed=changed, evaluation_job=job)


@bp.post("/sequences/<sequence_id>/preview")
@require_session
def preview_sequence(sequence_id: str) -> Any:
    from worker.ingest import thresholds_for
    from worker.steps import segments_of

    shop = g.shop
    res = resources()
    conn, now = res.redis, res.clock.now()
    seq = _load_or_404(shop, sequence_id)
    if seq is None:
        return _error(404, "no such sequence")
    rules = sequence_store.shop_rules(conn, shop, secret=res.settings.api_secret)
    thresholds = thresholds_for(conn, shop)
    ids: list[int] = []
    for cid in profile_store.iter_members(conn, shop, profile_store.ALL):
        ids.append(cid)
        if len(ids) >= PREVIEW_LIMIT:
            break
    profiles = profile_store.load_many(conn, shop, ids)
    segs = {p.customer_id: segments_of(p, now, thresholds) for p in profiles}
    rows = preview(seq, profiles, now, rules, segments=segs)
    entering = [r for r in rows if r.step is not None]
    people = {p.customer_id: p for p in profiles}
    by_step = Counter(seq.steps[r.step].key for r in entering if r.step is not None)
    return jsonify(
        id=seq.id,
        version=seq.version,
        evaluated=len(rows),
        truncated=len(ids) >= PREVIEW_LIMIT,
        would_enter=len(entering),
        by_step=dict(by_step),
        by_reason=dict(Counter(r.reason for r in rows)),
        sample=[
            {
                "customer_id": r.customer_id,
                **_who(people.get(r.customer_id)),
                "step": seq.steps[r.step].key if r.step is not None else None,
                "reason": r.reason,
                "due_at": r.due_at.isoformat() if r.due_at else None,
            }
            for r in entering[:SAMPLE]
        ],
    )


def _who(profile: Any) -> dict[str, str | None]:
    """A sample customer's name and email, as the customer list shows them (the page puts
    them in as text, never as HTML)."""
    if profile is None:
        return {"first_name": None, "last_name": None, "email": None}
    return {
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "email": profile.email,
    }


@bp.get("/customers/<int:customer_id>/log")
@require_session
def customer_log(customer_id: int) -> Any:
    shop = g.shop
    limit = request.args.get("limit", default=decision_log.CAP, type=int) or decision_log.CAP
    return jsonify(decision_log.read(resources().redis, shop, customer_id, limit=limit))
