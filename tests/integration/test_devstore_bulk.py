"""Bulk operations end to end over HTTP: a query export (JSONL with ``__parentId`` children,
served at the operation's url, ``bulk_operations/finish`` delivered), a staged upload and a
bulk ``tagsAdd`` mutation, the five-at-once limit, and a large shop in seconds."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devstore.seed import seed, seed_large
from devstore.state import Store

SHOP = "bulk.myshopify.com"
KEY, SECRET = "bulk-key", "bulk-secret"

EXPORT = """{ customers { edges { node { id email
  metafield(namespace: "facts", key: "birth_date") { value }
  orders { edges { node { id name fulfillments { createdAt }
    lineItems { edges { node { id sku quantity } } } } } } } } } }"""
RUN_QUERY = """mutation($q: String!) { bulkOperationRunQuery(query: $q) {
  bulkOperation { id status } userErrors { field message code } } }"""
RUN_MUTATION = """mutation($m: String!, $path: String!) {
  bulkOperationRunMutation(mutation: $m, stagedUploadPath: $path) {
    bulkOperation { id status type } userErrors { field message code } } }"""
POLL = """query($id: ID!) { bulkOperation(id: $id) { id status type errorCode objectCount
  rootObjectCount fileSize url } }"""
STAGE = """mutation($input: [StagedUploadInput!]!) { stagedUploadsCreate(input: $input) {
  stagedTargets { url resourceUrl parameters { name value } } userErrors { field message } } }"""
TAGS_ADD = (
    "mutation call($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) "
    "{ node { id } userErrors { message } } }"
)


class Api:
    def __init__(self, devstore: Any, shop: str, token: str) -> None:
        self.devstore, self.shop, self.token = devstore, shop, token

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        r = self.devstore.session.post(
            self.devstore.graphql_url(self.shop),
            json={"query": query, "variables": variables},
            headers={"X-Shopify-Access-Token": self.token},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert "errors" not in body, body
        return body["data"]

    def wait(self, op_id: str) -> dict[str, Any]:
        """Poll until the operation is done (one state per poll in the devstore)."""
        statuses = []
        for _ in range(10):
            op: dict[str, Any] = self(POLL, id=op_id)["bulkOperation"]
            statuses.append(op["status"])
            if op["status"] not in {"CREATED", "RUNNING"}:
                assert statuses[:2] == ["RUNNING", "COMPLETED"][: len(statuses[:2])]
                return op
        raise AssertionError(f"never finished: {statuses}")

    def download(self, url: str) -> list[dict[str, Any]]:
        r = self.devstore.session.get(url, timeout=60)
        assert r.status_code == 200
        return [json.loads(line) for line in r.text.splitlines()]

    def upload(self, lines: list[dict[str, Any]]) -> str:
        """stagedUploadsCreate, then the multipart POST to the target; answer the key."""
        staged = self(
            STAGE,
            input=[
                {
                    "resource": "BULK_MUTATION_VARIABLES",
                    "filename": "vars.jsonl",
                    "mimeType": "text/jsonl",
                    "httpMethod": "POST",
                }
            ],
        )["stagedUploadsCreate"]
        assert staged["userErrors"] == []
        target = staged["stagedTargets"][0]
        params = {p["name"]: p["value"] for p in target["parameters"]}
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        r = self.devstore.session.post(
            target["url"], data=params, files={"file": ("vars.jsonl", body)}, timeout=60
        )
        assert r.status_code == 201, r.text
        return params["key"]


@pytest.fixture()
def api(devstore: Any, webhook_sink: Any) -> Api:
    devstore.create_shop(SHOP)
    return Api(devstore, SHOP, devstore.install(SHOP, webhook_sink.url, KEY, SECRET))


def _finish_webhooks(devstore: Any, sink: Any) -> list[dict[str, Any]]:
    devstore.flush_webhooks()
    return [
        r.json() for r in sink.received if r.headers["X-Shopify-Topic"] == "bulk_operations/finish"
    ]


def test_query_export_streams_jsonl_with_parent_ids(
    api: Api, devstore: Any, webhook_sink: Any
) -> None:
    """300 customers (more than one page of 250) with orders, line items, fulfilments and
    birthdays: every record is one line, children carry the id of a parent that came before
    them, counts and size match, and bulk_operations/finish arrives."""
    store = Store(devstore.conn, devstore.clock)
    seed(store, SHOP, customers=300, now=devstore.now())
    started = api(RUN_QUERY, q=EXPORT)["bulkOperationRunQuery"]
    assert started["userErrors"] == [] and started["bulkOperation"]["status"] == "CREATED"
    op = api.wait(started["bulkOperation"]["id"])
    assert op["status"] == "COMPLETED" and op["errorCode"] is None
    rows = api.download(op["url"])
    raw = devstore.session.get(op["url"], timeout=30).content
    assert int(op["fileSize"]) == len(raw) and int(op["objectCount"]) == len(rows)

    customers = {f"gid://shopify/Customer/{c['id']}": c for c in store.all(SHOP, "customers")}
    orders = {
        f"gid://shopify/Order/{o['id']}": o
        for o in store.all(SHOP, "orders")
        if o["customer_id"] is not None
    }
    top = [r for r in rows if "__parentId" not in r]
    assert [r["id"] for r in top] == list(customers)  # every customer once, in id order
    assert int(op["rootObjectCount"]) == len(top)
    seen: set[str] = set()
    kinds = {"Customer": 0, "Order": 0, "LineItem": 0}
    for r in rows:
        kind = r["id"].split("/")[3]
        kinds[kind] += 1
        if kind == "Order":
            assert r["__parentId"] in seen and r["__parentId"].split("/")[3] == "Customer"
            o = orders[r["id"]]
            assert f"gid://shopify/Customer/{o['customer_id']}" == r["__parentId"]
            assert len(r["fulfillments"]) == len(o["fulfillments"])
        if kind == "LineItem":
            assert r["__parentId"] in seen and r["__parentId"].split("/")[3] == "Order"
        if kind == "Customer":
            birth = customers[r["id"]]["metafields"].get("facts.birth_date")
            assert r["metafield"] == (None if birth is None else {"value": birth["value"]})
        seen.add(r["id"])
    assert kinds["Order"] == len(orders)
    assert kinds["LineItem"] == sum(len(o["line_items"]) for o in orders.values())
    finished = _finish_webhooks(devstore, webhook_sink)
    assert finished == [
        {
            "admin_graphql_api_id": op["id"],
            "completed_at": finished[0]["completed_at"],
            "created_at": finished[0]["created_at"],
            "error_code": None,
            "status": "completed",
            "type": "query",
        }
    ]


def test_mutation_applies_every_line_and_writes_results(
    api: Api, devstore: Any, webhook_sink: Any
) -> None:
    """A staged JSONL of tagsAdd variables: every line is applied in order, each result line
    carries its __lineNumber; a line for a missing customer answers its userErrors and a
    line that is not JSON answers errors, without stopping the others."""
    store = Store(devstore.conn, devstore.clock, webhooks=False)
    ids = [
        store.create_customer(SHOP, {"first_name": f"顧客{i}", "email": f"c{i}@example.jp"})["id"]
        for i in range(20)
    ]
    lines = [
        {"id": f"gid://shopify/Customer/{cid}", "tags": ["kizuna:bulk", "wave-1"]} for cid in ids
    ]
    lines.append({"id": "gid://shopify/Customer/1", "tags": ["x"]})
    key = api.upload(lines)
    devstore.conn.append(f"devstore:files:{key}", b"{not json\n")
    started = api(RUN_MUTATION, m=TAGS_ADD, path=key)["bulkOperationRunMutation"]
    assert started["userErrors"] == [], started
    assert started["bulkOperation"]["type"] == "MUTATION"
    op = api.wait(started["bulkOperation"]["id"])
    rows = api.download(op["url"])
    assert [r["__lineNumber"] for r in rows] == list(range(22))
    for cid, row in zip(ids, rows, strict=False):
        assert row["data"]["tagsAdd"] == {
            "node": {"id": f"gid://shopify/Customer/{cid}"},
            "userErrors": [],
        }
        assert (store.get(SHOP, "customers", cid) or {})["tags"] == ["kizuna:bulk", "wave-1"]
    assert rows[20]["data"]["tagsAdd"]["userErrors"] == [{"message": "Resource not found"}]
    assert "errors" in rows[21] and "data" not in rows[21]
    assert int(op["objectCount"]) == 22
    finished = _finish_webhooks(devstore, webhook_sink)
    assert [(f["type"], f["status"]) for f in finished] == [("mutation", "completed")]
    tag_hooks = [
        r for r in webhook_sink.received if r.headers["X-Shopify-Topic"] == "customer.tags_added"
    ]
    assert len(tag_hooks) == 20, "each applied line fires its webhooks like a single call"


def test_bulk_mutation_refuses_bad_submissions(api: Api) -> None:
    """Tried: a mutation with a syntax error, a bulkOperation* root, one that does not
    validate, and a path nothing was uploaded to. Must not: create an operation."""
    key = api.upload([{"id": "gid://shopify/Customer/1", "tags": ["x"]}])
    cases = {
        "mutation { not real syntax": "INVALID_MUTATION",
        'mutation { bulkOperationCancel(id: "x") { userErrors { message } } }': None,
        "mutation { tagsAdd(id: 1) { nope } }": "INVALID_MUTATION",
    }
    for mutation, code in cases.items():
        got = api(RUN_MUTATION, m=mutation, path=key)["bulkOperationRunMutation"]
        assert got["bulkOperation"] is None and got["userErrors"][0]["code"] == code, got
    got = api(RUN_MUTATION, m=TAGS_ADD, path="tmp/none.jsonl")["bulkOperationRunMutation"]
    assert got["userErrors"][0]["code"] == "NO_SUCH_FILE"
    assert Store(api.devstore.conn, api.devstore.clock).count(SHOP, "bulk_operations") == 0


def test_five_operations_of_a_type_at_once(api: Api) -> None:
    """Five bulk queries may run at once; the sixth is refused with OPERATION_IN_PROGRESS
    (a mutation is still accepted: the limit is per type); once one finishes, a new one is."""
    q = "{ customers { edges { node { id } } } }"
    ops = [api(RUN_QUERY, q=q)["bulkOperationRunQuery"] for _ in range(5)]
    assert all(o["userErrors"] == [] for o in ops)
    sixth = api(RUN_QUERY, q=q)["bulkOperationRunQuery"]
    assert sixth["bulkOperation"] is None
    assert sixth["userErrors"][0]["code"] == "OPERATION_IN_PROGRESS"
    key = api.upload([])
    mutation = api(RUN_MUTATION, m=TAGS_ADD, path=key)["bulkOperationRunMutation"]
    assert mutation["userErrors"] == []
    api.wait(ops[0]["bulkOperation"]["id"])
    again = api(RUN_QUERY, q=q)["bulkOperationRunQuery"]
    assert again["userErrors"] == [] and again["bulkOperation"]["status"] == "CREATED"


def test_large_shop_export_and_ten_thousand_tags_in_seconds(api: Api, devstore: Any) -> None:
    """seed_large builds 10,000 customers (~30,000 orders) with pipelines; the customer
    export and a 10,000-line tagsAdd mutation (20,000 webhooks) each finish within one poll;
    the figures are printed (a shared 2-core box under load: 5.5 s, 3.6 s, 10.4 s)."""
    store = Store(devstore.conn, devstore.clock)
    started = time.perf_counter()
    summary = seed_large(store, SHOP, customers=10_000, now=devstore.now())
    seed_s = time.perf_counter() - started
    assert store.count(SHOP, "customers") == 10_000
    assert 2.5 * 10_000 < summary.orders == store.count(SHOP, "orders") < 3.5 * 10_000
    op_id = api(RUN_QUERY, q="{ customers { edges { node { id email tags } } } }")[
        "bulkOperationRunQuery"
    ]["bulkOperation"]["id"]
    api(POLL, id=op_id)
    started = time.perf_counter()
    op = api(POLL, id=op_id)["bulkOperation"]
    export_s = time.perf_counter() - started
    assert op["status"] == "COMPLETED" and op["objectCount"] == "10000"
    ids = [json.loads(line)["id"] for line in devstore.session.get(op["url"]).text.splitlines()]
    key = api.upload([{"id": cid, "tags": ["kizuna:winback:1"]} for cid in ids])
    op_id = api(RUN_MUTATION, m=TAGS_ADD, path=key)["bulkOperationRunMutation"]["bulkOperation"][
        "id"
    ]
    api(POLL, id=op_id)
    started = time.perf_counter()
    op = api(POLL, id=op_id)["bulkOperation"]
    mutation_s = time.perf_counter() - started
    print(
        f"seed_large {summary.customers} customers / {summary.orders} orders {seed_s:.1f}s; "
        f"bulk export {export_s:.1f}s; 10,000-line tagsAdd {mutation_s:.1f}s"
    )
    assert op["status"] == "COMPLETED" and op["objectCount"] == "10000"
    tagged = sum("kizuna:winback:1" in c["tags"] for c in store.all(SHOP, "customers"))
    assert tagged == 10_000
    assert seed_s < 30 and export_s < 30 and mutation_s < 60  # generous: shared 2-core boxes
