"""Write a step's effects to Shopify, idempotently: tags, the unique coupon, metafields, Flow.

Every part may run again after a crash or a retry and leave the same state:

- tags: ``tagsRemove`` then ``tagsAdd`` (an existing tag stays once; an absent one is no error);
- the coupon: its code is deterministic (:func:`crm.coupons.coupon_code`), so it is looked up
  with ``codeDiscountNodeByCode`` first and created with ``discountCodeBasicCreate`` only when
  absent; a create answered "code taken" (a concurrent or lost earlier create) is read back and
  accepted only if it is restricted to the same customer. An existing coupon keeps its expiry,
  and the metafields carry that expiry, not a recomputed one. A coupon a step created but whose
  enrolment commit never recorded it is withdrawn with :func:`delete_coupon` (see
  :mod:`worker.coupon_withdrawal`);
- metafields: ``metafieldsSet`` in calls of at most 25 (each call is atomic on Shopify's side);
- Flow: ``flowTriggerReceive`` fires once per step: a marker is set after it succeeded and
  checked before. The mutation takes no idempotency key (Shopify's ``@idempotent`` directive is
  not documented for it), so a call that timed out after Shopify ran it, or a crash between
  the call and the marker, fires it again: at least once, never zero times. The payload's
  ``occurrence`` is the same for such a repeat.

Transient errors (:class:`~crm.errors.TransientShopifyError`) propagate so RQ retries the job;
permanent ones (:class:`~crm.errors.PermanentShopifyError`) propagate too and the step job
records them.

The bulk path (:func:`start_bulk_mutation`, :func:`bulk_status`, :func:`bulk_results`) stages a
JSONL of variables (``stagedUploadsCreate`` with ``BULK_MUTATION_VARIABLES``), uploads it and
runs ``bulkOperationRunMutation``; it spends no cost points, for batches of thousands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import requests

from crm.enrolment import DiscountSpec, Metafield, StepEffects
from crm.errors import PermanentShopifyError, ServerError, UserErrors
from plugin.graphql import (
    BULK_OPERATION_BY_ID,
    BULK_OPERATION_RUN_MUTATION,
    CUSTOMER_TAGS_ADD,
    CUSTOMER_TAGS_REMOVE,
    DISCOUNT_CODE_BASIC_CREATE,
    DISCOUNT_CODE_DELETE,
    FLOW_TRIGGER_RECEIVE,
    KIZUNA_COUPON_BY_CODE,
    METAFIELDS_SET,
    STAGED_UPLOADS_CREATE,
    Document,
)

log = logging.getLogger(__name__)

#: The handle of Kizuna's Shopify Flow trigger ("Kizuna step due").
FLOW_HANDLE = "kizuna-step-due"
METAFIELDS_PER_CALL = 25
FLOW_MARK_TTL = 400 * 24 * 3600
UPLOAD_TIMEOUT = (5.0, 120.0)


@dataclass(frozen=True, slots=True)
class Coupon:
    code: str
    discount_id: str
    ends_at: str | None
    created: bool


@dataclass(slots=True)
class Written:
    """What one step wrote (it goes into the decision log)."""

    tags_added: list[str] = field(default_factory=list)
    tags_removed: list[str] = field(default_factory=list)
    coupon: Coupon | None = None
    metafields: list[str] = field(default_factory=list)
    flow: bool = False

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tags_added:
            out["tags_added"] = self.tags_added
        if self.tags_removed:
            out["tags_removed"] = self.tags_removed
        if self.coupon:
            out["coupon"] = self.coupon.code
            out["coupon_ends_at"] = self.coupon.ends_at
            out["coupon_created"] = self.coupon.created
        if self.metafields:
            out["metafields"] = self.metafields
        if self.flow:
            out["flow"] = True
        return out


def write_effects(
    admin: Any,
    shop: str,
    token: str,
    effects: StepEffects,
    *,
    conn: redis.Redis | None = None,
    flow_mark: str | None = None,
    before_create: Callable[[DiscountSpec], None] | None = None,
) -> Written:
    """Write ``effects`` for ``shop`` (see the module docstring); answer what was written.

    ``conn`` and ``flow_mark`` (a key naming the step, e.g. shop/customer/sequence/cycle/step)
    make the Flow trigger fire once. ``before_create`` runs just before a coupon is created
    (the step records the code in :mod:`worker.coupon_ledger`).
    """
    out = Written()
    gid = effects.customer_gid
    if effects.tags_remove:
        admin.execute_mutation(
            shop, token, CUSTOMER_TAGS_REMOVE, {"id": gid, "tags": list(effects.tags_remove)},
            "tagsRemove",
        )  # fmt: skip
        out.tags_removed = list(effects.tags_remove)
    if effects.tags_add:
        admin.execute_mutation(
            shop, token, CUSTOMER_TAGS_ADD, {"id": gid, "tags": list(effects.tags_add)}, "tagsAdd"
        )
        out.tags_added = list(effects.tags_add)
    metafields = list(effects.metafields)
    if effects.discount is not None:
        coupon = ensure_coupon(admin, shop, token, effects.discount, before_create=before_create)
        out.coupon = coupon
        if coupon.ends_at:
            metafields = [
                replace(m, value=coupon.ends_at) if m.key == "coupon_expires_at" else m
                for m in metafields
            ]
    set_metafields(admin, shop, token, gid, metafields)
    out.metafields = [f"{m.namespace}.{m.key}" for m in metafields]
    if effects.flow_trigger is not None:
        payload = dict(effects.flow_trigger)
        if out.coupon is not None:
            payload["coupon_expires_at"] = out.coupon.ends_at
        out.flow = fire_flow(admin, shop, token, payload, conn=conn, mark=flow_mark)
    return out


def set_metafields(
    admin: Any, shop: str, token: str, owner_gid: str, metafields: Sequence[Metafield]
) -> None:
    inputs = [m.as_input(owner_gid) for m in metafields]
    for start in range(0, len(inputs), METAFIELDS_PER_CALL):
        admin.execute_mutation(
            shop, token, METAFIELDS_SET,
            {"metafields": inputs[start : start + METAFIELDS_PER_CALL]}, "metafieldsSet",
        )  # fmt: skip


def fire_flow(
    admin: Any,
    shop: str,
    token: str,
    payload: dict[str, Any],
    *,
    conn: redis.Redis | None = None,
    mark: str | None = None,
) -> bool:
    """Fire the Flow trigger unless ``mark`` says it already was; answer whether it fired now."""
    if conn is not None and mark is not None and conn.exists(mark):
        return False
    admin.execute_mutation(
        shop, token, FLOW_TRIGGER_RECEIVE, {"handle": FLOW_HANDLE, "payload": payload},
        "flowTriggerReceive",
    )  # fmt: skip
    if conn is not None and mark is not None:
        conn.set(mark, "1", ex=FLOW_MARK_TTL)
    return True


# -- the coupon -----------------------------------------------------------------------------


def lookup_coupon(admin: Any, shop: str, token: str, code: str) -> dict[str, Any] | None:
    data = admin.execute(shop, token, KIZUNA_COUPON_BY_CODE, {"code": code})
    node = data.get("codeDiscountNodeByCode")
    return node if isinstance(node, dict) else None


def restricted_to(node: dict[str, Any], customer_gid: str) -> bool:
    """Whether a ``codeDiscountNodeByCode`` node is a basic code for this one customer only
    (a code of ours; the merchant's own codes are never touched)."""
    basic = node.get("codeDiscount") or {}
    context = basic.get("context") or {}
    customers = {c.get("id") for c in context.get("customers") or []}
    return basic.get("__typename") == "DiscountCodeBasic" and customers == {customer_gid}


def _confirm(node: dict[str, Any], spec: DiscountSpec, shop: str) -> Coupon:
    """An existing code is ours only if it is a basic code restricted to this one customer."""
    basic = node.get("codeDiscount") or {}
    if not restricted_to(node, spec.customer_gid):
        raise PermanentShopifyError(
            f"code {spec.code} exists but is not restricted to {spec.customer_gid}", shop=shop
        )
    return Coupon(spec.code, str(node.get("id")), basic.get("endsAt"), created=False)


def ensure_coupon(
    admin: Any,
    shop: str,
    token: str,
    spec: DiscountSpec,
    *,
    before_create: Callable[[DiscountSpec], None] | None = None,
) -> Coupon:
    """The customer's coupon, created if absent; never a second one."""
    existing = lookup_coupon(admin, shop, token, spec.code)
    if existing is not None:
        return _confirm(existing, spec, shop)
    if before_create is not None:
        before_create(spec)
    try:
        payload = admin.execute_mutation(
            shop, token, DISCOUNT_CODE_BASIC_CREATE, {"basicCodeDiscount": spec.graphql_input()},
            "discountCodeBasicCreate",
        )  # fmt: skip
    except UserErrors as exc:
        taken = "TAKEN" in exc.codes or any(
            "unique" in str(e.get("message", "")).lower() for e in exc.user_errors
        )
        if not taken:
            raise
        existing = lookup_coupon(admin, shop, token, spec.code)
        if existing is None:
            # Taken but not readable yet: Shopify indexes codes asynchronously. Try again later.
            raise ServerError(f"code {spec.code} reported taken but not found", shop=shop) from exc
        return _confirm(existing, spec, shop)
    node = payload.get("codeDiscountNode") or {}
    basic = node.get("codeDiscount") or {}
    return Coupon(spec.code, str(node.get("id")), basic.get("endsAt"), created=True)


def delete_coupon(admin: Any, shop: str, token: str, coupon: Coupon) -> bool:
    """Delete ``coupon`` (``discountCodeDelete``); answer whether this call deleted it.

    Idempotent: a refused delete whose code is no longer there (deleted already) is no error.
    A refusal while the same discount is still there raises; a code now held by another
    discount (not ours any more) is left alone.
    """
    try:
        admin.execute_mutation(
            shop, token, DISCOUNT_CODE_DELETE, {"id": coupon.discount_id}, "discountCodeDelete"
        )
    except UserErrors:
        node = lookup_coupon(admin, shop, token, coupon.code)
        if node is not None and str(node.get("id")) == coupon.discount_id:
            raise
        return False
    return True


# -- the bulk path ----------------------------------------------------------------------------


def _mutation_text(doc: Document) -> str:
    return "\n".join(line for line in doc.text.splitlines() if not line.lstrip().startswith("#"))


def start_bulk_mutation(
    admin: Any,
    shop: str,
    token: str,
    document: Document,
    variables: Sequence[dict[str, Any]],
    *,
    client_identifier: str | None = None,
    http: requests.Session | None = None,
) -> str:
    """Upload ``variables`` as JSONL and start ``document`` over it; answer the operation id."""
    body = "".join(json.dumps(v, separators=(",", ":")) + "\n" for v in variables).encode()
    staged = admin.execute_mutation(
        shop,
        token,
        STAGED_UPLOADS_CREATE,
        {
            "input": [
                {
                    "resource": "BULK_MUTATION_VARIABLES",
                    "filename": "kizuna-variables.jsonl",
                    "mimeType": "text/jsonl",
                    "httpMethod": "POST",
                }
            ]
        },
        "stagedUploadsCreate",
    )
    targets = staged.get("stagedTargets") or []
    if not targets:
        raise PermanentShopifyError("stagedUploadsCreate gave no target", shop=shop)
    target = targets[0]
    params = {p["name"]: p["value"] for p in target.get("parameters") or []}
    path = params.get("key")
    if not path:
        raise PermanentShopifyError("staged upload target has no key", shop=shop)
    session = http or requests.Session()
    try:
        # The upload target is a storage bucket: no Shopify token goes with it.
        response = session.post(
            target["url"],
            data=params,
            files={"file": ("kizuna-variables.jsonl", body, "text/jsonl")},
            timeout=UPLOAD_TIMEOUT,
            allow_redirects=False,
        )
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise ServerError(f"staged upload failed: {type(exc).__name__}", shop=shop) from exc
    finally:
        if http is None:
            session.close()
    if response.status_code >= 500:
        raise ServerError(f"staged upload answered {response.status_code}", shop=shop)
    if response.status_code >= 400:
        raise PermanentShopifyError(f"staged upload refused ({response.status_code})", shop=shop)
    run = admin.execute_mutation(
        shop,
        token,
        BULK_OPERATION_RUN_MUTATION,
        {
            "mutation": _mutation_text(document),
            "stagedUploadPath": path,
            "clientIdentifier": client_identifier,
        },
        "bulkOperationRunMutation",
    )
    op = run.get("bulkOperation") or {}
    if not op.get("id"):
        raise PermanentShopifyError("bulkOperationRunMutation started nothing", shop=shop)
    return str(op["id"])


def bulk_status(admin: Any, shop: str, token: str, operation_id: str) -> dict[str, Any]:
    data = admin.execute(shop, token, BULK_OPERATION_BY_ID, {"id": operation_id})
    op = data.get("bulkOperation")
    if not isinstance(op, dict):
        raise PermanentShopifyError(f"bulk operation {operation_id} not found", shop=shop)
    return op


def bulk_results(
    url: str, *, shop: str, http: requests.Session | None = None
) -> Iterator[dict[str, Any]]:
    """The result rows of a finished bulk mutation (one per input line, ``__lineNumber``)."""
    session = http or requests.Session()
    try:
        try:
            response = session.get(url, timeout=UPLOAD_TIMEOUT, stream=True)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise ServerError(f"bulk result download failed: {exc}", shop=shop) from exc
        if response.status_code != 200:
            raise ServerError(f"bulk result download answered {response.status_code}", shop=shop)
        for line in response.iter_lines():
            if line.strip():
                yield json.loads(line)
    finally:
        if http is None:
            session.close()


def row_ok(row: dict[str, Any]) -> bool:
    """A bulk result row without top-level errors or userErrors in its payload."""
    if row.get("errors"):
        return False
    data = row.get("data") or {}
    for payload in data.values():
        if not isinstance(payload, dict) or payload.get("userErrors"):
            return False
    return bool(data)
