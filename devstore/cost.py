"""Query cost and the leaky bucket, by Shopify's calculated-cost rules.

Requested cost (before running): a scalar or enum field costs 0, an object 1, a connection
2 + ``first``/``last`` × the cost of one node, a mutation field 10 (its payload is free). Actual
cost is the same sum over what was returned (a connection of 3 nodes counts 3). The bucket is
charged the requested cost up front and refunded the difference afterwards, as Shopify does.
"""

from __future__ import annotations

from typing import Any

import redis
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    is_leaf_type,
    value_from_ast_untyped,
)

from .state import PLANS

MAX_QUERY_COST = 1_000
MUTATION_COST = 10
CHEAP_MUTATIONS = {"flowTriggerReceive": 1}
BUCKET_KEY = "devstore:{shop}:bucket"

# Atomic take: refill by elapsed time × rate, then take ``cost`` if it is there.
# Returns {1 if taken else 0, available after (string, fractional)}.
_TAKE = """
local avail = tonumber(redis.call('HGET', KEYS[1], 'a') or ARGV[3])
local ts = tonumber(redis.call('HGET', KEYS[1], 't') or ARGV[1])
local now, rate, size, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
if now > ts then avail = math.min(size, avail + (now - ts) * rate) end
local ok = 0
if cost <= avail then avail = avail - cost; ok = 1 end
avail = math.min(size, avail)
redis.call('HSET', KEYS[1], 'a', tostring(avail), 't', tostring(math.max(now, ts)))
return {ok, tostring(avail)}
"""


def plan_limits(plan: str) -> tuple[int, int]:
    """(restore rate, bucket size) of a plan."""
    return PLANS.get(plan, PLANS["standard"])


class Bucket:
    """One shop's bucket of cost points in Redis; ``now`` is seconds since the epoch."""

    def __init__(self, conn: redis.Redis, shop: str, plan: str) -> None:
        self.conn = conn
        self.key = BUCKET_KEY.format(shop=shop)
        self.rate, self.size = plan_limits(plan)
        self._script = conn.register_script(_TAKE)

    def take(self, cost: float, now: float) -> tuple[bool, float]:
        ok, avail = self._script(keys=[self.key], args=[now, self.rate, self.size, cost])
        return bool(ok), float(avail)

    def status(self, available: float) -> dict[str, Any]:
        return {
            "maximumAvailable": float(self.size),
            "currentlyAvailable": int(available),
            "restoreRate": float(self.rate),
        }


def _fragments(document: Any) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def _arg(field: FieldNode, name: str, variables: dict[str, Any]) -> Any:
    for arg in field.arguments or ():
        if arg.name.value == name:
            return value_from_ast_untyped(arg.value, variables)
    return None


def _fields(
    sel: SelectionSetNode | None, frags: dict[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    out: list[FieldNode] = []
    for s in sel.selections if sel else ():
        if isinstance(s, FieldNode):
            out.append(s)
        elif isinstance(s, InlineFragmentNode):
            out.extend(_fields(s.selection_set, frags))
        elif isinstance(s, FragmentSpreadNode) and s.name.value in frags:
            out.extend(_fields(frags[s.name.value].selection_set, frags))
    return out


def _field_type(schema: GraphQLSchema, parent: Any, name: str) -> Any:
    """The named type of ``parent.name``; for a union/interface, look in its members."""
    candidates = [parent]
    if hasattr(parent, "types"):
        candidates = list(parent.types)
    elif not hasattr(parent, "fields"):
        return None
    elif parent.name in schema.type_map and hasattr(schema, "get_possible_types"):
        try:
            candidates = [parent, *schema.get_possible_types(parent)]
        except TypeError:
            pass
    for t in candidates:
        f = getattr(t, "fields", {}).get(name)
        if f is not None:
            return get_named_type(f.type)
    return None


def selection_cost(
    schema: GraphQLSchema,
    parent: Any,
    sel: SelectionSetNode | None,
    frags: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
    data: Any = None,
    actual: bool = False,
) -> int:
    total = 0
    for field in _fields(sel, frags):
        name = field.name.value
        if name.startswith("__"):
            continue
        ftype = _field_type(schema, parent, name)
        if ftype is None or is_leaf_type(ftype):
            continue
        key = field.alias.value if field.alias else name
        value = data.get(key) if isinstance(data, dict) else None
        if ftype.name.endswith("Connection"):
            n = _arg(field, "first", variables) or _arg(field, "last", variables) or 0
            node_type = _field_type(schema, ftype, "nodes") or _field_type(schema, ftype, "edges")
            per = 0
            sample = None
            if actual and isinstance(value, dict):
                items = value.get("nodes") or value.get("edges") or []
                n = len(items)
                sample = items
            for sub in _fields(field.selection_set, frags):
                sname = sub.name.value
                if sname == "nodes":
                    per = max(
                        per,
                        1
                        + selection_cost(
                            schema,
                            node_type,
                            sub.selection_set,
                            frags,
                            variables,
                            (sample or [None])[0] if actual else None,
                            actual,
                        ),
                    )
                elif sname == "edges":
                    etype = _field_type(schema, ftype, "edges")
                    per = max(
                        per,
                        1
                        + selection_cost(
                            schema,
                            etype,
                            sub.selection_set,
                            frags,
                            variables,
                            (sample or [None])[0] if actual else None,
                            actual,
                        ),
                    )
            total += 2 + int(n) * per
        else:
            child = value[0] if isinstance(value, list) and value else value
            total += 1 + selection_cost(
                schema, ftype, field.selection_set, frags, variables, child, actual
            )
    return total


def query_cost(
    schema: GraphQLSchema,
    document: Any,
    operation: OperationDefinitionNode,
    variables: dict[str, Any],
    data: Any = None,
    actual: bool = False,
) -> int:
    """The requested (or, with ``actual`` and the response ``data``, the actual) cost."""
    frags = _fragments(document)
    if operation.operation.value == "mutation":
        return sum(
            CHEAP_MUTATIONS.get(f.name.value, MUTATION_COST)
            for f in _fields(operation.selection_set, frags)
            if not f.name.value.startswith("__")
        )
    root = schema.query_type
    return selection_cost(schema, root, operation.selection_set, frags, variables, data, actual)
