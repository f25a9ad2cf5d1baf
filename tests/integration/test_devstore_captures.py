"""Replay the recorded Shopify captures that touch the devstore's operations and compare the
response shape and userErrors (field, code, message) with what Shopify answered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devstore.state import Store

from ..conftest import SHOPIFY_SHARED, shared_or_skip
from .devstore_helpers import SHOP, Admin, devstore_app


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        shared_or_skip(SHOPIFY_SHARED / "captures" / name).read_text(encoding="utf-8")
    )
    return data


def shape(value: Any) -> Any:
    """Keys and value kinds, not values: the same shape is what must match."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


@pytest.fixture()
def world(conn: Any, clock: Any) -> Any:
    store = Store(conn, clock, webhooks=False)
    store.create_shop(SHOP, plan="standard", currency="USD", timezone="America/New_York")
    return store, Admin(devstore_app(conn, clock).test_client(), conn, clock)


METAFIELDS_SET = """mutation($metafields: [MetafieldsSetInput!]!) {
  metafieldsSet(metafields: $metafields) { metafields { id }
    userErrors { field message code elementIndex } } }"""


def test_metafields_set_validation_matches_shopify(world: Any) -> None:
    store, admin = world
    cap = capture("metafields-set-input-validation.json")
    product = store.create_product(SHOP, {"title": "Capture product"})
    pid = f"gid://shopify/Product/{product['id']}"
    compared = 0
    for name, case in cap["cases"].items():
        want = case["response"]["data"]["metafieldsSet"]
        mfs = [{**m, "ownerId": pid} for m in case["request"]["variables"]["metafields"]]
        if name in {
            "invalidValueJson",
            "invalidValueDimensionNegative",
            "invalidValueWeightUnit",
            "invalidValueVolumeNumeric",
            "invalidValueRatingBounds",
            "invalidValueLinkScheme",
        }:
            continue  # types the devstore does not model (noted in the README)
        got = admin(METAFIELDS_SET, {"metafields": mfs})["data"]["metafieldsSet"]
        assert got["userErrors"] == want["userErrors"], name
        assert shape(got["metafields"]) == shape(want["metafields"]), name
        compared += 1
    assert compared >= 20


def test_discount_code_blank_validation_matches_shopify(world: Any) -> None:
    _, admin = world
    cap = capture("discount-code-required-blank-validation.json")["codeRequiredValidation"]
    got = admin(cap["query"], cap["variables"])
    assert got["data"] == cap["response"]["data"]
    assert (
        got["extensions"]["cost"]["requestedQueryCost"]
        == (cap["response"]["extensions"]["cost"]["requestedQueryCost"])
    )


def test_discount_code_basic_create_shape_matches_shopify(world: Any, clock: Any) -> None:
    _, admin = world
    cap = capture("discount-code-basic-lifecycle.json")
    clock.at = datetime(2026, 7, 14, 15, 49, 38, tzinfo=UTC)  # when Shopify ran it
    req = cap["requests"]["create"]
    got = admin(req["query"], req["variables"])
    want = cap["create"]["payload"]
    assert shape(got["data"]) == shape(want["data"])
    node = got["data"]["discountCodeBasicCreate"]["codeDiscountNode"]["codeDiscount"]
    assert node["status"] == "ACTIVE"
    assert node["summary"] == ("10% off one-time purchase products • Minimum purchase of $1.00")
    assert (
        node["customerGets"]
        == want["data"]["discountCodeBasicCreate"]["codeDiscountNode"]["codeDiscount"][
            "customerGets"
        ]
    )
    again = admin(req["query"], req["variables"])
    assert again["data"]["discountCodeBasicCreate"]["userErrors"][0]["code"] == "TAKEN"
    delete = cap["requests"]["delete"]
    gone = admin(
        delete["query"],
        {"id": node and got["data"]["discountCodeBasicCreate"]["codeDiscountNode"]["id"]},
    )
    assert shape(gone["data"]) == shape(
        {"discountCodeDelete": {"deletedCodeDiscountId": "x", "userErrors": []}}
    )


def test_flow_trigger_receive_body_errors_match_shopify(world: Any) -> None:
    _, admin = world
    cap = capture("admin-platform-flow-trigger-receive-body-schema-gaps.json")
    got = admin(cap["query"])
    assert got["data"] == cap["result"]["payload"]["data"]
    assert got["extensions"]["cost"]["requestedQueryCost"] == 6


def test_bulk_query_user_errors_match_shopify(world: Any) -> None:
    _, admin = world
    cap = capture("bulk-operation-run-query-user-error-codes.json")
    for name, case in cap["validations"].items():
        got = admin(case["query"], case["variables"])
        assert got["data"] == case["response"]["data"], name
        assert got["extensions"]["cost"]["requestedQueryCost"] == 10


def test_tags_add_and_remove_match_shopify(world: Any) -> None:
    store, admin = world
    add_cap = capture("tags-add-parity.json")
    seed = add_cap["seedProduct"]
    p = store.create_product(SHOP, {"title": seed["title"], "tags": seed["tags"]})
    pid = f"gid://shopify/Product/{p['id']}"
    q = """mutation($id: ID!, $tags: [String!]!) { %s(id: $id, tags: $tags) {
      node { id ... on Product { tags } } userErrors { field message } } }"""
    got = admin(q % "tagsAdd", {**add_cap["mutation"]["variables"], "id": pid})
    want = add_cap["mutation"]["response"]
    assert got["data"]["tagsAdd"]["node"]["tags"] == want["data"]["tagsAdd"]["node"]["tags"]
    assert got["data"]["tagsAdd"]["userErrors"] == []
    assert got["extensions"]["cost"]["requestedQueryCost"] == 10
    rm_cap = capture("tags-remove-parity.json")
    got = admin(q % "tagsRemove", {**rm_cap["mutation"]["variables"], "id": pid})
    want = rm_cap["mutation"]["response"]
    assert got["data"]["tagsRemove"]["node"]["tags"] == (want["data"]["tagsRemove"]["node"]["tags"])


def test_bulk_mutation_user_errors_match_shopify(world: Any) -> None:
    """Every recorded bulkOperationRunMutation refusal (no such file, a syntax error, a
    bulkOperation* root) answers Shopify's userErrors exactly, and creates no operation."""
    store, admin = world
    cap = capture("bulk-operation-run-mutation-user-errors.json")
    for name, case in cap["validations"].items():
        got = admin(case["query"], case["variables"])
        assert got["data"] == case["response"]["data"], name
    assert store.count(SHOP, "bulk_operations") == 0


def test_bulk_mutation_created_status_matches_shopify(world: Any, clock: Any) -> None:
    """A bulk mutation accepted: the same fields and kinds as Shopify's CREATED answer (null
    url, size and completion; zero counts; the mutation echoed), and currentBulkOperation
    (type MUTATION) names it."""
    store, admin = world
    cap = capture("bulk-operation-run-mutation-created-status.json")
    run = cap["success"]["run"]
    store.conn.set("devstore:files:tmp/upload.jsonl", b'{"id": "x", "tags": ["a"]}\n')
    mutation = (
        "mutation m($id: ID!, $tags: [String!]!) "
        "{ tagsAdd(id: $id, tags: $tags) { userErrors { message } } }"
    )
    got = admin(run["query"], {"mutation": mutation, "path": "tmp/upload.jsonl"})
    want = run["response"]["data"]["bulkOperationRunMutation"]
    mine = got["data"]["bulkOperationRunMutation"]
    assert shape(mine) == shape(want)
    op = mine["bulkOperation"]
    assert {
        k: op[k] for k in ("status", "type", "errorCode", "completedAt", "url", "fileSize")
    } == {
        k: want["bulkOperation"][k]
        for k in ("status", "type", "errorCode", "completedAt", "url", "fileSize")
    }
    assert (op["objectCount"], op["rootObjectCount"], op["query"]) == ("0", "0", mutation)
    assert op["createdAt"] == clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    current = admin("{ currentBulkOperation(type: MUTATION) { id type } }")
    assert current["data"]["currentBulkOperation"] == {"id": op["id"], "type": "MUTATION"}


CONSENT = """mutation($input: CustomerEmailMarketingConsentUpdateInput!) {
  customerEmailMarketingConsentUpdate(input: $input) {
    customer { id firstName lastName displayName email
      defaultEmailAddress { emailAddress marketingState marketingOptInLevel marketingUpdatedAt }
      defaultPhoneNumber { phoneNumber marketingState marketingOptInLevel marketingUpdatedAt
        marketingCollectedFrom } }
    userErrors { field message code } } }"""


def _email_side(data: dict[str, Any]) -> dict[str, Any]:
    """The answer without the phone's SMS consent: between the recorded calls the live store's
    SMS consent of one customer was changed by a mutation the devstore does not model."""
    out = json.loads(json.dumps(data))
    customer = out["customerEmailMarketingConsentUpdate"]["customer"] or {}
    if customer.get("defaultPhoneNumber"):
        customer["defaultPhoneNumber"] = customer["defaultPhoneNumber"]["phoneNumber"]
    return out


def test_email_marketing_consent_update_matches_shopify(world: Any) -> None:
    """Replay the consent capture on customers made like Shopify's (same names, e-mails,
    phones): the main update, the unknown customer, the missing opt-in level, and every case
    of the matrix in order — the same customer answers and userErrors; refused states are
    top-level INVALID errors; bad variables are refused before anything changes."""
    store, admin = world
    cap = capture("customer-email-marketing-consent-update-parity.json")
    made = {"main": cap["precondition"]["response"]}
    made.update(cap["validation"]["matrixPreconditions"])
    ids: dict[str, str] = {}
    for answer in made.values():
        want = answer["data"]["customerCreate"]["customer"]
        rec = store.create_customer(
            SHOP,
            {
                "first_name": want["firstName"],
                "last_name": want["lastName"],
                "email": want["email"],
                "phone": (want["defaultPhoneNumber"] or {}).get("phoneNumber"),
            },
        )
        ids[want["id"]] = f"gid://shopify/Customer/{rec['id']}"
    back = {ours: theirs for theirs, ours in ids.items()}

    def replay(variables: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(variables)
        for theirs, ours in ids.items():
            text = text.replace(theirs, ours)
        got = json.dumps(admin(CONSENT, json.loads(text)))
        for ours, theirs in back.items():
            got = got.replace(f'"{ours}"', f'"{theirs}"')
        result: dict[str, Any] = json.loads(got)
        return result

    cases = [("main", cap["mutation"])]
    cases += [(n, cap["validation"][n]) for n in ("unknownCustomer", "missingOptInLevel")]
    cases += [(c["name"], c) for c in cap["validation"]["matrix"]]
    for name, case in cases:
        want, got = case["response"], replay(case["variables"])
        codes = [e.get("extensions", {}).get("code") for e in want.get("errors", [])]
        if "INVALID_VARIABLE" in codes:
            assert got["errors"] and not got.get("data"), name
        elif codes:
            assert [(e["message"], e["extensions"]["code"], e["path"]) for e in got["errors"]] == [
                (e["message"], e["extensions"]["code"], e["path"]) for e in want["errors"]
            ], name
            assert got["data"] == want["data"], name
        else:
            assert "errors" not in got, (name, got["errors"])
            assert _email_side(got["data"]) == _email_side(want["data"]), name
            if name == "main":
                assert got["data"] == want["data"]
