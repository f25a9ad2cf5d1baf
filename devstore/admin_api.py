"""The Admin GraphQL endpoint: ``POST /store/<shop>/admin/api/2026-07/graphql.json``.

Order of checks, as Shopify: access token → injected fault → parse and validate against
``schema.graphql`` → input-array limits → single-query cost limit → bucket → execute →
refund the unused part of the requested cost. Time comes from the app's injected clock.
"""

from __future__ import annotations

import json
import random
import time
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from graphql import (
    GraphQLError,
    GraphQLScalarType,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    execute_sync,
    parse,
    validate,
)

from . import tokens
from .cost import MAX_QUERY_COST, Bucket, query_cost
from .resolvers import Ctx, install_query
from .resolvers_mutations import install_discount_queries, install_mutations
from .state import Store

API_VERSION = "2026-07"
MAX_INPUT_ARRAY = 250
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"
RATE_DOC = "https://shopify.dev/api/usage/rate-limits"

bp = Blueprint("devstore_admin_api", __name__)


def _ctx_of(info: Any) -> Ctx:
    ctx: Ctx = info.context
    return ctx


@cache
def schema() -> GraphQLSchema:
    """The devstore's schema subset with its resolvers installed (built once per process)."""
    text = resources.files("devstore").joinpath("schema.graphql").read_text(encoding="utf-8")
    s = build_schema(text)
    assert s.query_type is not None and s.mutation_type is not None
    install_query(_ctx_of, s.query_type.fields)
    install_discount_queries(_ctx_of, s.query_type.fields)
    install_mutations(_ctx_of, s.mutation_type.fields)
    from .consent import parse_datetime

    date_time = s.type_map["DateTime"]
    assert isinstance(date_time, GraphQLScalarType)
    # Shopify refuses a DateTime that is not ISO 8601 (graphql-core 3.3 coerces variables
    # with coerce_input_value, literals through parse_literal → parse_value)
    date_time.coerce_input_value = date_time.parse_value = (  # type: ignore[method-assign]
        lambda value: (parse_datetime(value), value)[1]
    )
    from . import bulk

    bulk.install(_ctx_of, s.query_type.fields, s.mutation_type.fields)
    return s


def _resources() -> tuple[Any, Any]:
    ext = current_app.extensions["devstore"]
    return ext["conn"], ext["clock"]


def _oversized_array(value: Any, path: str) -> tuple[int, str] | None:
    if isinstance(value, list):
        if len(value) > MAX_INPUT_ARRAY:
            return len(value), path
        for i, v in enumerate(value):
            found = _oversized_array(v, f"{path}.{i}")
            if found:
                return found
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _oversized_array(v, f"{path}.{k}" if path else k)
            if found:
                return found
    return None


# -- faults -------------------------------------------------------------------------------

FAULTS_KEY = "devstore:{shop}:admin_faults"


def set_faults(conn: Any, shop: str, spec: dict[str, Any]) -> None:
    """``{"next": ["429", "500"]}`` or ``{"rate": 0.3, "kinds": [...], "seed": 1}``; also
    ``latency_ms`` and ``timeout_s`` (how long a "timeout" holds the answer)."""
    conn.set(FAULTS_KEY.format(shop=shop), json.dumps(spec))
    conn.delete(FAULTS_KEY.format(shop=shop) + ":n")


def _next_fault(conn: Any, shop: str) -> tuple[str | None, dict[str, Any]]:
    raw = conn.get(FAULTS_KEY.format(shop=shop))
    if not raw:
        return None, {}
    spec = json.loads(raw)
    if spec.get("next"):
        kind = spec["next"].pop(0)
        conn.set(FAULTS_KEY.format(shop=shop), json.dumps(spec))
        return str(kind), spec
    if spec.get("rate") and spec.get("kinds"):
        n = int(conn.incr(FAULTS_KEY.format(shop=shop) + ":n"))
        rng = random.Random(f"{spec.get('seed', 0)}:{n}")
        if rng.random() < float(spec["rate"]):
            return str(rng.choice(spec["kinds"])), spec
    return None, spec


def _throttled(requested: int, bucket: Bucket, available: float) -> Response:
    return jsonify(
        {
            "errors": [
                {
                    "message": "Throttled",
                    "extensions": {"code": "THROTTLED", "documentation": RATE_DOC},
                }
            ],
            "extensions": {
                "cost": {
                    "requestedQueryCost": requested,
                    "actualQueryCost": None,
                    "throttleStatus": bucket.status(available),
                }
            },
        }
    )


@bp.post(f"/store/<shop>/admin/api/{API_VERSION}/graphql.json")
def graphql(shop: str) -> Any:
    conn, clock = _resources()
    token = request.headers.get("X-Shopify-Access-Token", "")
    if tokens.shop_for_token(conn, token, clock.now()) != shop:
        return jsonify({"errors": INVALID_TOKEN}), 401
    store = Store(conn, clock)
    shop_rec = store.get_shop(shop)
    if shop_rec is None:
        return jsonify({"errors": "Not Found"}), 404
    fault, spec = _next_fault(conn, shop)
    if spec.get("latency_ms"):
        time.sleep(float(spec["latency_ms"]) / 1000)
    if fault == "429":
        resp = jsonify(
            {
                "errors": "Exceeded 2 calls per second for api client. Reduce request "
                "rates to resume uninterrupted service."
            }
        )
        resp.headers["Retry-After"] = "2.0"
        return resp, 429
    if fault in {"500", "502", "503", "504"}:
        return jsonify({"errors": "Internal Server Error"}), int(fault)
    if fault == "timeout":
        time.sleep(float(spec.get("timeout_s", 10)))
        return jsonify({"errors": "Timeout"}), 504
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return jsonify({"errors": {"query": "Required parameter missing or invalid"}}), 400
    variables = body.get("variables") or {}
    try:
        document = parse(body["query"])
    except GraphQLError as exc:
        return jsonify({"errors": [exc.formatted]})
    errors = validate(schema(), document)
    if errors:
        return jsonify({"errors": [e.formatted for e in errors]})
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    op_name = body.get("operationName")
    op = next((o for o in ops if not op_name or (o.name and o.name.value == op_name)), None)
    if op is None:
        return jsonify({"errors": [{"message": f"No operation named '{op_name}'"}]})
    big = _oversized_array(variables, "")
    if big:
        return jsonify(
            {
                "errors": [
                    {
                        "message": f"The input array size of {big[0]} is greater than the maximum "
                        f"allowed of {MAX_INPUT_ARRAY}.",
                        "path": big[1].split("."),
                        "extensions": {"code": "MAX_INPUT_SIZE_EXCEEDED"},
                    }
                ]
            }
        )
    requested = query_cost(schema(), document, op, variables)
    if requested > MAX_QUERY_COST:
        return jsonify(
            {
                "errors": [
                    {
                        "message": f"Query cost is {requested}, which exceeds the single query max "
                        f"cost limit ({MAX_QUERY_COST}).\n\nSee {RATE_DOC} for more information on "
                        "how the\ncost of a query is calculated.\n\nTo query larger amounts of "
                        "data with fewer limits, bulk operations should be used instead.\n",
                        "extensions": {
                            "code": "MAX_COST_EXCEEDED",
                            "cost": requested,
                            "maxCost": MAX_QUERY_COST,
                            "documentation": RATE_DOC,
                        },
                    }
                ]
            }
        )
    bucket = Bucket(conn, shop, shop_rec["plan"])
    now_s = clock.now().timestamp()
    if fault == "throttled":
        return _throttled(requested, bucket, bucket.take(0, now_s)[1])
    ok, available = bucket.take(requested, now_s)
    if not ok:
        return _throttled(requested, bucket, available)
    ctx = Ctx(store=store, shop=shop, base_url=request.host_url.rstrip("/"))
    result = execute_sync(
        schema(), document, context_value=ctx, variable_values=variables, operation_name=op_name
    )
    out: dict[str, Any] = {}
    if result.errors:
        out["errors"] = [e.formatted for e in result.errors]
    out["data"] = result.data
    actual = query_cost(schema(), document, op, variables, result.data, actual=True)
    actual = min(actual, requested)
    if actual < requested:
        _, available = bucket.take(actual - requested, now_s)
    out["extensions"] = {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": bucket.status(available),
        }
    }
    if fault == "timeout_after_commit":
        time.sleep(float(spec.get("timeout_s", 10)))
    return jsonify(out)
