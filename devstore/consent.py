"""``customerEmailMarketingConsentUpdate``: Shopify's rules, as recorded from a live store.

- ``NOT_SUBSCRIBED``, ``REDACTED`` and ``INVALID`` cannot be set: a top-level GraphQL error
  (``Cannot specify X as a marketing state input``, code ``INVALID``) and ``null`` data;
- an unknown customer: ``Customer not found`` on ``[input, customerId]``;
- a missing opt-in level (``MISSING_ARGUMENT``), a ``consentUpdatedAt`` in the future, or
  ``PENDING`` without ``CONFIRMED_OPT_IN`` (``INVALID``): the customer is answered unchanged
  with the user error;
- a customer without an e-mail address is answered unchanged, without an error;
- otherwise the state, level and time (``consentUpdatedAt`` or now) are stored; a repeat of the
  same values changes nothing. A change fires ``customers/update`` and
  ``customers_email_marketing_consent/update``, as the store's other consent writes do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from graphql import GraphQLError

from .resolvers import Ctx, customer_obj
from .state import iso

REFUSED_STATES = {"NOT_SUBSCRIBED", "REDACTED", "INVALID"}
FIELD = ["input", "emailMarketingConsent"]


def _error(field: list[str], message: str, code: str) -> dict[str, Any]:
    return {"field": field, "message": message, "code": code}


def parse_datetime(value: Any) -> datetime:
    """The ``DateTime`` scalar's input rule (ISO 8601 with an offset or ``Z``)."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        at = None
    if not isinstance(value, str) or at is None or at.tzinfo is None:
        raise GraphQLError(f"invalid DateTime '{value}'")
    return at


def update(ctx: Ctx, input: dict[str, Any]) -> dict[str, Any]:
    consent = input["emailMarketingConsent"]
    state = consent["marketingState"]
    if state in REFUSED_STATES:
        raise GraphQLError(
            f"Cannot specify {state} as a marketing state input", extensions={"code": "INVALID"}
        )
    found = ctx.store.by_gid(ctx.shop, input["customerId"])
    if found is None or found[0] != "customers":
        return {
            "customer": None,
            "userErrors": [_error(["input", "customerId"], "Customer not found", "INVALID")],
        }
    record = found[1]
    level = consent.get("marketingOptInLevel")
    at = consent.get("consentUpdatedAt")
    problem = None
    if level is None:
        problem = _error(
            [*FIELD, "marketingOptInLevel"], "Marketing opt in level must exist", "MISSING_ARGUMENT"
        )
    elif at is not None and parse_datetime(at) > ctx.store.clock.now():
        problem = _error(
            [*FIELD, "consentUpdatedAt"], "Consent updated at must not be in the future", "INVALID"
        )
    elif state == "PENDING" and level != "CONFIRMED_OPT_IN":
        problem = _error(
            [*FIELD, "marketingOptInLevel"],
            "Marketing opt in level must be confirmed opt-in for pending consent state",
            "INVALID",
        )
    if problem is not None:
        return {"customer": customer_obj(ctx, record), "userErrors": [problem]}
    if not record.get("email"):
        return {"customer": customer_obj(ctx, record), "userErrors": []}
    current = record["email_marketing_consent"]
    wanted = {"state": state.lower(), "opt_in_level": level.lower()}
    if (current["state"], current.get("opt_in_level")) != (wanted["state"], wanted["opt_in_level"]):
        when = iso(parse_datetime(at)) if at is not None else ctx.store.now_iso()
        updated = ctx.store.update_customer(
            ctx.shop,
            int(record["id"]),
            {"email_marketing_consent": {**wanted, "consent_updated_at": when}},
        )
        record = updated or record
    return {"customer": customer_obj(ctx, record), "userErrors": []}
