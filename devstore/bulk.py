"""Bulk operations and staged uploads.

A bulk query is accepted as CREATED, turns RUNNING, and is completed on the next poll
(``bulkOperation(id:)`` / ``currentBulkOperation``): the query runs against the devstore's own
schema, every connection node becomes one JSONL line, children carry ``__parentId``. The
file is kept in Redis and served at ``/_devstore/files/<key>``. Completion fires
``bulk_operations/finish``. At most 5 operations of each type run at once per shop.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from graphql import GraphQLError, execute_sync, parse, validate

from .resolvers import Ctx
from .state import gid

MAX_RUNNING = 5
FILE_KEY = "devstore:files:{key}"


def bulk_obj(ctx: Ctx, op: dict[str, Any]) -> dict[str, Any]:
    return {
        "__typename": "BulkOperation",
        "id": gid("bulk_operations", op["id"]),
        "status": op["status"],
        "type": op["type"],
        "errorCode": op.get("error_code"),
        "createdAt": op["created_at"],
        "completedAt": op.get("completed_at"),
        "objectCount": str(op.get("object_count", 0)),
        "rootObjectCount": str(op.get("root_object_count", 0)),
        "fileSize": str(op["file_size"]) if op.get("file_size") is not None else None,
        "url": f"{ctx.base_url}/_devstore/files/{op['file_key']}" if op.get("file_key") else None,
        "partialDataUrl": None,
        "query": op["query"],
    }


def _running(ctx: Ctx, kind: str) -> int:
    return sum(
        1
        for o in ctx.store.all(ctx.shop, "bulk_operations")
        if o["type"] == kind and o["status"] in {"CREATED", "RUNNING"}
    )


def _err(message: str, code: str, field: list[str] | None = None) -> dict[str, Any]:
    return {"field": field, "message": message, "code": code}


def run_query(ctx: Ctx, query: str, groupObjects: bool = False) -> dict[str, Any]:
    try:
        doc = parse(query)
    except GraphQLError as exc:
        msg = "syntax error, unexpected end of file" if not query.strip() else exc.message
        return {
            "bulkOperation": None,
            "userErrors": [_err(f"Invalid bulk query: {msg}", "INVALID", ["query"])],
        }
    from .admin_api import schema

    errors = validate(schema(), doc)
    if errors:
        return {
            "bulkOperation": None,
            "userErrors": [_err(f"Invalid bulk query: {errors[0].message}", "INVALID", ["query"])],
        }
    if "first" not in query and not any(w in query for w in ("customers", "orders", "products")):
        return {
            "bulkOperation": None,
            "userErrors": [
                _err("Bulk queries must contain at least one connection.", "INVALID", ["query"])
            ],
        }
    if _running(ctx, "QUERY") >= MAX_RUNNING:
        return {
            "bulkOperation": None,
            "userErrors": [
                _err(
                    "A bulk query operation for this app and shop is already in progress.",
                    "OPERATION_IN_PROGRESS",
                    None,
                )
            ],
        }
    op = {
        "id": ctx.store.next_id(ctx.shop),
        "type": "QUERY",
        "status": "CREATED",
        "query": query,
        "created_at": ctx.store.now_iso(),
    }
    ctx.store.put(ctx.shop, "bulk_operations", op)
    return {"bulkOperation": bulk_obj(ctx, op), "userErrors": []}


def run_mutation(
    ctx: Ctx,
    mutation: str,
    stagedUploadPath: str,
    groupObjects: bool | None = None,
    clientIdentifier: str | None = None,
) -> dict[str, Any]:
    try:
        doc = parse(mutation)
    except GraphQLError:
        return {
            "bulkOperation": None,
            "userErrors": [
                _err(
                    "Failed to parse the mutation - Invalid mutation: syntax error",
                    "INVALID_MUTATION",
                    ["mutation"],
                )
            ],
        }
    roots = [
        s.name.value
        for d in doc.definitions
        for s in getattr(getattr(d, "selection_set", None), "selections", [])
        if hasattr(s, "name")
    ]
    if any(r.startswith("bulkOperation") for r in roots):
        return {
            "bulkOperation": None,
            "userErrors": [
                _err("You must use an allowed mutation name.", "INVALID_MUTATION", ["mutation"])
            ],
        }
    if ctx.store.conn.get(FILE_KEY.format(key=stagedUploadPath)) is None:
        return {
            "bulkOperation": None,
            "userErrors": [
                _err(
                    "The JSONL file could not be found. Try uploading the file again, and check "
                    "that you've entered the URL correctly for the stagedUploadPath mutation "
                    "argument.",
                    "NO_SUCH_FILE",
                    None,
                )
            ],
        }
    if _running(ctx, "MUTATION") >= MAX_RUNNING:
        return {
            "bulkOperation": None,
            "userErrors": [
                _err(
                    "A bulk mutation operation for this app and shop is already in progress.",
                    "OPERATION_IN_PROGRESS",
                    None,
                )
            ],
        }
    op = {
        "id": ctx.store.next_id(ctx.shop),
        "type": "MUTATION",
        "status": "CREATED",
        "query": mutation,
        "upload": stagedUploadPath,
        "created_at": ctx.store.now_iso(),
    }
    ctx.store.put(ctx.shop, "bulk_operations", op)
    return {"bulkOperation": bulk_obj(ctx, op), "userErrors": []}


def _flatten(value: Any, parent: str | None, out: list[dict[str, Any]]) -> int:
    """Connections in ``value`` → JSONL rows; answer how many root rows were written."""
    roots = 0
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, dict) and ("edges" in v or "nodes" in v):
                items = v.get("nodes") or [e["node"] for e in v.get("edges") or []]
                for node in items:
                    row = {
                        k: x
                        for k, x in node.items()
                        if not (isinstance(x, dict) and ("edges" in x or "nodes" in x))
                    }
                    if parent:
                        row["__parentId"] = parent
                    out.append(row)
                    roots += 1
                    _flatten(node, node.get("id"), out)
    return roots


def advance(ctx: Ctx, op: dict[str, Any]) -> dict[str, Any]:
    """Move an operation one step: CREATED → RUNNING → COMPLETED (with its file)."""
    if op["status"] == "CREATED":
        op["status"] = "RUNNING"
    elif op["status"] == "RUNNING":
        from .admin_api import schema

        rows: list[dict[str, Any]] = []
        if op["type"] == "QUERY":
            result = execute_sync(schema(), parse(op["query"]), context_value=ctx)
            roots = _flatten(result.data or {}, None, rows)
        else:
            raw = ctx.store.conn.get(FILE_KEY.format(key=op["upload"])) or b""
            doc = parse(op["query"])
            roots = 0
            for n, line in enumerate(
                (raw.decode() if isinstance(raw, bytes) else raw).splitlines()
            ):
                if not line.strip():
                    continue
                res = execute_sync(
                    schema(), doc, context_value=ctx, variable_values=json.loads(line)
                )
                row: dict[str, Any] = {"data": res.data, "__lineNumber": n}
                if res.errors:
                    row["errors"] = [e.formatted for e in res.errors]
                rows.append(row)
                roots += 1
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        key = f"bulk/{ctx.shop}/{op['id']}/{uuid.uuid4().hex}.jsonl"
        ctx.store.conn.set(FILE_KEY.format(key=key), body.encode())
        op.update(
            status="COMPLETED",
            completed_at=ctx.store.now_iso(),
            file_key=key,
            file_size=len(body.encode()),
            object_count=len(rows),
            root_object_count=roots,
        )
        ctx.store.put(ctx.shop, "bulk_operations", op)
        from . import payloads

        ctx.store.emit(
            ctx.shop, "bulk_operations/finish", payloads.bulk_finish(ctx.store, ctx.shop, op)
        )
        return op
    ctx.store.put(ctx.shop, "bulk_operations", op)
    return op


def staged_uploads(ctx: Ctx, input: list[dict[str, Any]]) -> dict[str, Any]:
    targets = []
    for item in input:
        folder = "bulk" if item["resource"] == "BULK_MUTATION_VARIABLES" else "products"
        key = f"tmp/{ctx.shop}/{folder}/{uuid.uuid4()}/{item['filename']}"
        url = f"{ctx.base_url}/_devstore/uploads"
        targets.append(
            {
                "url": url,
                "resourceUrl": f"{url}/{key}",
                "parameters": [
                    {"name": "Content-Type", "value": item["mimeType"]},
                    {"name": "success_action_status", "value": "201"},
                    {"name": "acl", "value": "private"},
                    {"name": "key", "value": key},
                ],
            }
        )
    return {"stagedTargets": targets, "userErrors": []}


def install(ctx_of: Callable[[Any], Ctx], query: dict[str, Any], mutation: dict[str, Any]) -> None:
    def by_id(ctx: Ctx, id: str) -> Any:
        found = ctx.store.by_gid(ctx.shop, id)
        if not found or found[0] != "bulk_operations":
            return None
        return bulk_obj(ctx, advance(ctx, found[1]))

    def current(ctx: Ctx, type: str = "QUERY") -> Any:
        ops = [o for o in ctx.store.all(ctx.shop, "bulk_operations") if o["type"] == type]
        return bulk_obj(ctx, advance(ctx, ops[-1])) if ops else None

    def cancel(ctx: Ctx, id: str) -> Any:
        found = ctx.store.by_gid(ctx.shop, id)
        if not found or found[0] != "bulk_operations":
            return {
                "bulkOperation": None,
                "userErrors": [{"field": ["id"], "message": "Bulk operation does not exist"}],
            }
        op = found[1]
        if op["status"] in {"CREATED", "RUNNING"}:
            op["status"] = "CANCELED"
            ctx.store.put(ctx.shop, "bulk_operations", op)
        return {"bulkOperation": bulk_obj(ctx, op), "userErrors": []}

    for fields, name, fn in (
        (query, "bulkOperation", by_id),
        (query, "currentBulkOperation", current),
        (mutation, "bulkOperationRunQuery", run_query),
        (mutation, "bulkOperationRunMutation", run_mutation),
        (mutation, "bulkOperationCancel", cancel),
        (mutation, "stagedUploadsCreate", staged_uploads),
    ):
        fields[name].resolve = (lambda f: lambda root, info, **kw: f(ctx_of(info), **kw))(fn)
