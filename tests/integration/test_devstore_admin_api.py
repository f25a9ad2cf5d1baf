"""The devstore's Admin GraphQL API: auth, reads, writes with Shopify's userErrors, cost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from devstore import tokens
from devstore.state import Store

from .devstore_helpers import SHOP, URL, Admin, devstore_app


@pytest.fixture()
def world(conn: Any, clock: Any) -> Any:
    store = Store(conn, clock, webhooks=False)
    store.create_shop(SHOP, plan="standard", timezone="Asia/Tokyo", currency="JPY")
    app = devstore_app(conn, clock)
    client = app.test_client()
    return store, Admin(client, conn, clock), client


def test_bad_token_and_other_shops_token_are_refused(world: Any, conn: Any, clock: Any) -> None:
    """Tried: no token, a made-up token, shop B's valid token on shop A's URL. Must not: answer
    any data; each gets Shopify's 401 body."""
    store, _, client = world
    store.create_shop("other.myshopify.com")
    other = tokens.mint_offline(conn, "other.myshopify.com", scope="", now=clock.now())
    for token in ("", "shpat_nope", other.access_token):
        resp = client.post(
            URL, json={"query": "{ shop { name } }"}, headers={"X-Shopify-Access-Token": token}
        )
        assert resp.status_code == 401
        assert resp.get_json() == {
            "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"
        }


def test_invalid_document_gets_graphql_errors_not_data(world: Any) -> None:
    """Tried: a field that is not in the schema. Must not: execute; answer errors only."""
    _, admin, _ = world
    body = admin("{ shop { nameX } }")
    assert "data" not in body
    assert "nameX" in body["errors"][0]["message"]


def test_customers_search_by_updated_at_and_pagination(world: Any, clock: Any) -> None:
    store, admin, _ = world
    ids = []
    for i in range(5):
        clock.advance(timedelta(hours=1))
        ids.append(
            store.create_customer(
                SHOP, {"first_name": f"花子{i}", "last_name": "山田", "email": f"h{i}@example.jp"}
            )["id"]
        )
    q = """query($q: String, $after: String) { customers(first: 2, query: $q, after: $after) {
      nodes { id email } pageInfo { hasNextPage endCursor } } }"""
    body = admin(q, {"q": "updated_at:>'2026-07-01T02:30:00Z'"})
    page = body["data"]["customers"]
    assert [n["email"] for n in page["nodes"]] == ["h2@example.jp", "h3@example.jp"]
    assert page["pageInfo"]["hasNextPage"] is True
    body = admin(
        q, {"q": "updated_at:>'2026-07-01T02:30:00Z'", "after": page["pageInfo"]["endCursor"]}
    )
    assert [n["email"] for n in body["data"]["customers"]["nodes"]] == ["h4@example.jp"]
    assert body["data"]["customers"]["pageInfo"]["hasNextPage"] is False


def test_tags_add_normalises_and_remove_ignores_missing(world: Any) -> None:
    store, admin, _ = world
    c = store.create_customer(SHOP, {"email": "a@example.jp", "tags": "vip"})
    cid = f"gid://shopify/Customer/{c['id']}"
    add = """mutation($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) {
      node { id ... on Customer { tags } } userErrors { field message } } }"""
    body = admin(add, {"id": cid, "tags": [" kizuna:b:1 ", "VIP", "a, c", ""]})
    assert body["data"]["tagsAdd"]["node"]["tags"] == ["a", "c", "kizuna:b:1", "vip"]
    rm = add.replace("tagsAdd", "tagsRemove")
    body = admin(rm, {"id": cid, "tags": ["a", "missing"]})
    assert body["data"]["tagsRemove"]["node"]["tags"] == ["c", "kizuna:b:1", "vip"]
    body = admin(add, {"id": "gid://shopify/Customer/1", "tags": ["x"]})
    assert body["data"]["tagsAdd"]["node"] is None
    assert body["data"]["tagsAdd"]["userErrors"][0]["field"] == ["id"]


def test_input_arrays_above_250_are_refused(world: Any) -> None:
    """Tried: tagsAdd with 251 tags. Must not: change the customer."""
    store, admin, _ = world
    c = store.create_customer(SHOP, {"email": "a@example.jp"})
    body = admin(
        """mutation($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) {
      userErrors { message } } }""",
        {"id": f"gid://shopify/Customer/{c['id']}", "tags": [f"t{i}" for i in range(251)]},
    )
    assert body["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED"
    assert store.get(SHOP, "customers", c["id"])["tags"] == []


def test_birth_date_metafield_and_compare_digest(world: Any) -> None:
    store, admin, _ = world
    c = store.create_customer(SHOP, {"email": "a@example.jp"})
    cid = f"gid://shopify/Customer/{c['id']}"
    enable = admin("""mutation { standardMetafieldDefinitionEnable(ownerType: CUSTOMER,
      namespace: "facts", key: "birth_date") { createdDefinition { key type { name } }
      userErrors { code } } }""")
    assert enable["data"]["standardMetafieldDefinitionEnable"]["createdDefinition"] == {
        "key": "birth_date",
        "type": {"name": "date"},
    }
    setq = """mutation($m: [MetafieldsSetInput!]!) { metafieldsSet(metafields: $m) {
      metafields { compareDigest value } userErrors { field message code elementIndex } } }"""
    mf = {
        "ownerId": cid,
        "namespace": "facts",
        "key": "birth_date",
        "type": "date",
        "value": "1990-07-15",
    }
    body = admin(setq, {"m": [mf]})
    digest = body["data"]["metafieldsSet"]["metafields"][0]["compareDigest"]
    read = admin(
        """query($id: ID!) { customer(id: $id) {
      metafield(namespace: "facts", key: "birth_date") { value } } }""",
        {"id": cid},
    )
    assert read["data"]["customer"]["metafield"] == {"value": "1990-07-15"}
    bad = admin(setq, {"m": [{**mf, "value": "1990/07/15"}]})
    assert bad["data"]["metafieldsSet"]["userErrors"] == [
        {
            "field": ["metafields", "0", "value"],
            "message": "Value must be in YYYY-MM-DD format.",
            "code": "INVALID_VALUE",
            "elementIndex": None,
        }
    ]
    ok = admin(setq, {"m": [{**mf, "value": "1991-01-01", "compareDigest": digest}]})
    assert ok["data"]["metafieldsSet"]["userErrors"] == []
    stale = admin(setq, {"m": [{**mf, "value": "1992-01-01", "compareDigest": digest}]})
    assert stale["data"]["metafieldsSet"]["userErrors"][0]["code"] == "STALE_OBJECT"
    assert (
        store.get(SHOP, "customers", c["id"])["metafields"]["facts.birth_date"]["value"]
        == "1991-01-01"
    )


CREATE = """mutation($input: DiscountCodeBasicInput!) { discountCodeBasicCreate(
  basicCodeDiscount: $input) { codeDiscountNode { id codeDiscount { ... on DiscountCodeBasic {
  status codes(first: 1) { nodes { code } } context { __typename } } } }
  userErrors { field message code extraInfo } } }"""


def test_discount_code_restricted_to_customer_duplicate_lookup_delete(world: Any) -> None:
    store, admin, client = world
    c = store.create_customer(SHOP, {"email": "a@example.jp"})
    inp = {
        "title": "Birthday",
        "code": "KZ-BDAY-1",
        "startsAt": "2026-06-30T00:00:00Z",
        "endsAt": "2026-07-31T00:00:00Z",
        "usageLimit": 1,
        "appliesOncePerCustomer": True,
        "context": {"customers": {"add": [f"gid://shopify/Customer/{c['id']}"]}},
        "customerGets": {"value": {"percentage": 0.1}, "items": {"all": True}},
    }
    body = admin(CREATE, {"input": inp})
    node = body["data"]["discountCodeBasicCreate"]["codeDiscountNode"]
    assert node["codeDiscount"]["status"] == "ACTIVE"
    assert node["codeDiscount"]["context"]["__typename"] == "DiscountCustomers"
    dup = admin(CREATE, {"input": {**inp, "code": "kz-bday-1"}})
    assert dup["data"]["discountCodeBasicCreate"] == {
        "codeDiscountNode": None,
        "userErrors": [
            {
                "field": ["basicCodeDiscount", "code"],
                "message": "Code must be unique. Please try a different code.",
                "code": "TAKEN",
                "extraInfo": None,
            }
        ],
    }
    found = admin('{ codeDiscountNodeByCode(code: "KZ-BDAY-1") { id } }')
    assert found["data"]["codeDiscountNodeByCode"]["id"] == node["id"]
    view = client.get(f"/_devstore/shops/{SHOP}/customers/{c['id']}").get_json()
    assert [d["code"] for d in view["discount_codes"]] == ["KZ-BDAY-1"]
    gone = admin(
        "mutation($id: ID!) { discountCodeDelete(id: $id) { deletedCodeDiscountId "
        "userErrors { code } } }",
        {"id": node["id"]},
    )
    assert gone["data"]["discountCodeDelete"]["deletedCodeDiscountId"] == node["id"]
    again = admin('{ codeDiscountNodeByCode(code: "KZ-BDAY-1") { id } }')
    assert again["data"]["codeDiscountNodeByCode"] is None


def test_discount_for_missing_customer_is_refused(world: Any) -> None:
    """Tried: a code restricted to a customer that does not exist. Must not: create it."""
    store, admin, _ = world
    inp = {
        "title": "x",
        "code": "NOPE1",
        "startsAt": "2026-06-30T00:00:00Z",
        "context": {"customers": {"add": ["gid://shopify/Customer/42"]}},
        "customerGets": {"value": {"percentage": 0.1}, "items": {"all": True}},
    }
    body = admin(CREATE, {"input": inp})
    assert body["data"]["discountCodeBasicCreate"]["codeDiscountNode"] is None
    assert store.discount_by_code(SHOP, "NOPE1") is None


def test_every_response_carries_cost_and_bucket_drains(world: Any) -> None:
    _, admin, _ = world
    body = admin("{ customers(first: 10) { nodes { id } } }")
    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 12
    assert cost["actualQueryCost"] == 2
    assert cost["throttleStatus"] == {
        "maximumAvailable": 2000.0,
        "currentlyAvailable": 1998,
        "restoreRate": 100.0,
    }


def test_query_above_1000_points_is_refused(world: Any) -> None:
    """Tried: a query whose requested cost is 2 + 250 × (1 + 2 + 250) points. Must not: run."""
    _, admin, _ = world
    body = admin("{ customers(first: 250) { nodes { orders(first: 250) { nodes { id } } } } }")
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert "data" not in body


def test_throttled_rate_matches_leaky_bucket_within_10_percent(world: Any, clock: Any) -> None:
    """A load of 10 requests/s × 52 points for 60 s on a standard shop (restore 100/s, bucket
    2,000). The bucket model says: 2,000 + 60 × 100 = 8,000 points serve 153 requests, the
    other 447 of 600 are THROTTLED."""
    _, admin, _ = world
    q = "{ customers(first: 50) { nodes { id defaultAddress { id } } } }"  # 102 requested
    throttled = 0
    total = 600
    for _ in range(total):
        body = admin(q)
        if "errors" in body:
            assert body["errors"][0]["extensions"]["code"] == "THROTTLED"
            throttled += 1
        clock.advance(timedelta(milliseconds=100))
    # Every served request costs 102 up front and is refunded 100 (no customers): net 2.
    # Model: a request is served when 102 points are available.
    avail, served_model = 2000.0, 0
    for _ in range(total):
        if avail >= 102:
            avail -= 2
            served_model += 1
        avail = min(2000.0, avail + 10)
    expected = total - served_model
    assert abs(throttled - expected) <= max(1, 0.1 * expected)


def test_throttled_under_heavy_actual_cost(world: Any, clock: Any) -> None:
    """Requests that really cost 102 points at 5 per second (510 points/s against a restore
    rate of 100/s): after the 2,000 burst, about 100/510 of them pass, as the bucket says."""
    store, admin, _ = world
    for i in range(50):
        store.create_customer(SHOP, {"email": f"c{i}@example.jp"})
    q = "{ customers(first: 50) { nodes { id defaultAddress { id } } } }"
    served = throttled = 0
    for _ in range(300):  # 60 s
        body = admin(q)
        if "errors" in body:
            throttled += 1
        else:
            served += 1
            assert body["extensions"]["cost"]["actualQueryCost"] == 102
        clock.advance(timedelta(milliseconds=200))
    # Bucket model: 50 customers × (node 1 + address 1) + 2 = 102 points, nothing refunded.
    avail, model = 2000.0, 0
    for _ in range(300):
        if avail >= 102:
            avail -= 102
            model += 1
        avail = min(2000.0, avail + 20)
    assert abs(served - model) <= max(1, 0.1 * model)
    assert throttled > 0
