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

import orjson
from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    GraphQLError,
    IntValueNode,
    NameNode,
    OperationDefinitionNode,
    StringValueNode,
    execute_sync,
    parse,
    validate,
)

from .resolvers import Ctx
from .state import Store, gid

MAX_RUNNING = 5
PAGE = 250  # root nodes per page of a bulk query
PAGE_INFO = "devstorePageInfo_"  # alias of the pageInfo the devstore adds to page through
ROWS_PER_WRITE = 500
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


def _syntax_error(text: str, exc: GraphQLError) -> str:
    """graphql-ruby's wording: ``syntax error, unexpected end of file at [1, 21]`` (the position
    of the last token read) or ``syntax error, unexpected X at [line, col]``."""
    from graphql.language import Lexer, Source, TokenKind

    line, col = (exc.locations[0].line, exc.locations[0].column) if exc.locations else (1, 1)
    if "<EOF>" in exc.message:
        lexer = Lexer(Source(text))
        last = None
        try:
            while (tok := lexer.advance()).kind != TokenKind.EOF:
                last = tok
        except GraphQLError:
            pass
        if last is not None:
            line, col = last.line, last.column
        return f"syntax error, unexpected end of file at [{line}, {col}]"
    return f"syntax error, unexpected {exc.message.split('Unexpected ')[-1]} at [{line}, {col}]"


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
    except GraphQLError as exc:
        return {
            "bulkOperation": None,
            "userErrors": [
                _err(
                    f"Failed to parse the mutation - {_syntax_error(mutation, exc)}",
                    "INVALID_MUTATION",
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
                {
                    "field": ["mutation"],
                    "message": "You must use an allowed mutation name.",
                    "code": None,
                }
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
    from .admin_api import schema

    invalid = validate(schema(), doc)
    if invalid or not any(
        isinstance(d, OperationDefinitionNode) and d.operation.value == "mutation"
        for d in doc.definitions
    ):
        message = invalid[0].message if invalid else "the document is not a mutation"
        return {
            "bulkOperation": None,
            "userErrors": [_err(f"Invalid mutation: {message}", "INVALID_MUTATION", ["mutation"])],
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
    """Connections in ``value`` → JSONL rows (a node, then its children with ``__parentId``);
    answer how many rows were written at this level."""
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


def _with(node: Any, **changes: Any) -> Any:
    """A copy of a (frozen) graphql-core AST node with some attributes replaced."""
    return type(node)(**{**{k: getattr(node, k) for k in node.keys}, **changes})


def _root_position(doc: DocumentNode) -> tuple[int, int] | None:
    """(definition index, selection index) of the first root field with a selection set."""
    for i, d in enumerate(doc.definitions):
        if isinstance(d, OperationDefinitionNode):
            for j, sel in enumerate(d.selection_set.selections):
                if isinstance(sel, FieldNode) and sel.selection_set is not None:
                    return i, j
    return None


def _page_doc(doc: DocumentNode, at: tuple[int, int], after: str | None) -> DocumentNode:
    """The document with its root connection limited to one page (``first``/``after``) and a
    ``pageInfo`` added under an alias, to know where the next page starts."""
    i, j = at
    op = doc.definitions[i]
    assert isinstance(op, OperationDefinitionNode)
    root = op.selection_set.selections[j]
    assert isinstance(root, FieldNode) and root.selection_set is not None
    args = [a for a in root.arguments or () if a.name.value not in {"first", "after"}]
    args.append(ArgumentNode(name=NameNode(value="first"), value=IntValueNode(value=str(PAGE))))
    if after:
        args.append(ArgumentNode(name=NameNode(value="after"), value=StringValueNode(value=after)))
    info = _PAGE_INFO_FIELD
    new_root = _with(
        root,
        arguments=tuple(args),
        selection_set=_with(root.selection_set, selections=(*root.selection_set.selections, info)),
    )
    sels = list(op.selection_set.selections)
    sels[j] = new_root
    new_op = _with(op, selection_set=_with(op.selection_set, selections=tuple(sels)))
    defs = list(doc.definitions)
    defs[i] = new_op
    return _with(doc, definitions=tuple(defs))


_PAGE_INFO_FIELD = next(
    iter(
        d.selection_set.selections
        for d in parse("{ " + PAGE_INFO + ": pageInfo { hasNextPage endCursor } }").definitions
        if isinstance(d, OperationDefinitionNode)
    )
)[0]


def _append(conn: Any, key: str, rows: list[dict[str, Any]]) -> int:
    """Write rows to the end of the file; answer the bytes written."""
    if not rows:
        return 0
    chunk = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    conn.append(key, chunk)
    return len(chunk)


def _run_query(ctx: Ctx, op: dict[str, Any], path: str) -> tuple[int, int, int]:
    """Run a bulk query one page of the root connection at a time, appending each page's rows
    to the file as it goes (the file grows; the rows are never all in memory)."""
    from .admin_api import schema

    doc = parse(op["query"])
    at = _root_position(doc)
    size = objects = roots = 0
    after: str | None = None
    while True:
        page_doc = _page_doc(doc, at, after) if at is not None else doc
        result = execute_sync(schema(), page_doc, context_value=ctx)
        rows: list[dict[str, Any]] = []
        roots += _flatten(_strip_page_info(result.data or {}), None, rows)
        objects += len(rows)
        size += _append(ctx.store.conn, path, rows)
        page = _page_info(result.data or {})
        if at is None or not page.get("hasNextPage") or not page.get("endCursor"):
            return size, objects, roots
        after = page["endCursor"]


def _page_info(data: dict[str, Any]) -> dict[str, Any]:
    for v in data.values():
        if isinstance(v, dict) and PAGE_INFO in v:
            return v[PAGE_INFO] or {}
    return {}


def _strip_page_info(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != PAGE_INFO} if isinstance(v, dict) else v)
        for k, v in data.items()
    }


def _flush(ctx: Ctx) -> None:
    if isinstance(ctx.store, _BulkStore):
        ctx.store.flush()


def _run_mutation(ctx: Ctx, op: dict[str, Any], path: str) -> tuple[int, int, int]:
    """Run the mutation once per line of the uploaded JSONL; write one result row per line
    (``data`` or ``errors``, with ``__lineNumber``). Lines run in batches of
    ``ROWS_PER_WRITE``: the records they name are read at once, their writes and webhooks
    go out in one pipeline after the batch, then the batch's result rows are appended."""
    from .admin_api import schema

    raw = ctx.store.conn.get(FILE_KEY.format(key=op["upload"])) or b""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    doc = parse(op["query"])
    size = lines = 0
    all_lines = text.splitlines()
    for start in range(0, len(all_lines), ROWS_PER_WRITE):
        batch = list(enumerate(all_lines[start : start + ROWS_PER_WRITE], start=start))
        parsed: list[tuple[int, Any]] = []
        for n, line in batch:
            if not line.strip():
                continue
            try:
                parsed.append((n, json.loads(line)))
            except ValueError as exc:
                parsed.append((n, exc))
        if isinstance(ctx.store, _BulkStore):
            ctx.store.prefetch(
                ctx.shop,
                [
                    v["id"]
                    for _, v in parsed
                    if isinstance(v, dict) and isinstance(v.get("id"), str)
                ],
            )
        rows: list[dict[str, Any]] = []
        for n, variables in parsed:
            row: dict[str, Any]
            if isinstance(variables, ValueError):
                row = {"errors": [{"message": f"Invalid JSON on line {n + 1}: {variables}"}]}
            else:
                res = execute_sync(schema(), doc, context_value=ctx, variable_values=variables)
                row = {"data": res.data}
                if res.errors:
                    row["errors"] = [e.formatted for e in res.errors]
            row["__lineNumber"] = n
            rows.append(row)
        _flush(ctx)
        size += _append(ctx.store.conn, path, rows)
        lines += len(rows)
    return size, lines, lines


class _BulkStore(Store):
    """The store a bulk mutation runs on: the shop record is read once for the whole run
    (every line's payload needs its time zone and currency), and webhook events are collected
    and sent in batches (:meth:`flush_events`), in order, as Shopify fires them for each line."""

    def emit(self, shop: str, topic: str, payload: dict[str, Any]) -> None:
        if self.webhooks:
            self.__dict__.setdefault("_events", []).append((shop, topic, payload))

    # Records the lines of one batch name are read in one HMGET and written in one pipeline.

    def prefetch(self, shop: str, gids: list[str]) -> None:
        from .state import KIND_OF_GID_TYPE, parse_gid

        wanted: dict[str, list[int]] = {}
        for value in gids:
            parsed = parse_gid(value)
            if parsed and parsed[0] in KIND_OF_GID_TYPE:
                wanted.setdefault(KIND_OF_GID_TYPE[parsed[0]], []).append(parsed[1])
        cache: dict[tuple[str, str, int], Any] = self.__dict__.setdefault("_records", {})
        for kind, ids in wanted.items():
            found: Any = self.conn.hmget(self._kind_key(shop, kind), [str(i) for i in ids])
            for rid, raw in zip(ids, found, strict=True):
                cache[(shop, kind, rid)] = json.loads(raw) if raw else None

    def get(self, shop: str, kind: str, record_id: int | str) -> dict[str, Any] | None:
        cache = self.__dict__.get("_records", {})
        key = (shop, kind, int(record_id))
        if key in cache:
            record = cache[key]
            return None if record is None else json.loads(json.dumps(record))
        return super().get(shop, kind, record_id)

    def put(
        self, shop: str, kind: str, record: dict[str, Any], *, pipe: Any | None = None
    ) -> dict[str, Any]:
        if pipe is not None:
            return super().put(shop, kind, record, pipe=pipe)
        self.__dict__.setdefault("_records", {})[(shop, kind, int(record["id"]))] = record
        self.__dict__.setdefault("_writes", {})[(shop, kind, int(record["id"]))] = record
        return record

    def flush(self) -> None:
        """Write the batch's records, then send its webhook events."""
        writes = self.__dict__.pop("_writes", {})
        self.__dict__.pop("_records", None)
        if writes:
            with self.conn.pipeline(transaction=False) as pipe:
                for (shop, kind, _), record in writes.items():
                    super().put(shop, kind, record, pipe=pipe)
                pipe.execute()
        self.flush_events()

    def flush_events(self) -> None:
        from . import webhooks_out

        events = self.__dict__.pop("_events", [])
        by_shop: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for shop, topic, payload in events:
            by_shop.setdefault(shop, []).append((topic, payload))
        for shop, batch in by_shop.items():
            webhooks_out.emit_many(self.conn, shop, batch, now=self.clock.now())

    def get_shop(self, shop: str) -> dict[str, Any] | None:
        memo: dict[str, Any] = self.__dict__.setdefault("_shops", {})
        if shop not in memo:
            memo[shop] = super().get_shop(shop)
        return memo[shop]


def advance(ctx: Ctx, op: dict[str, Any]) -> dict[str, Any]:
    """Move an operation one step: CREATED → RUNNING → COMPLETED (with its file)."""
    if op["status"] == "CREATED":
        op["status"] = "RUNNING"
    elif op["status"] == "RUNNING":
        key = f"bulk/{ctx.shop}/{op['id']}/{uuid.uuid4().hex}.jsonl"
        path = FILE_KEY.format(key=key)
        ctx.store.conn.set(path, b"")
        if op["type"] == "QUERY":
            # reads see one snapshot of each kind (and no N+1 round trips per node)
            bulk_ctx = Ctx(store=ctx.store, shop=ctx.shop, base_url=ctx.base_url, cache={})
            size, objects, roots = _run_query(bulk_ctx, op, path)
        else:
            bulk_ctx = Ctx(
                store=_BulkStore(ctx.store.conn, ctx.store.clock, webhooks=ctx.store.webhooks),
                shop=ctx.shop,
                base_url=ctx.base_url,
            )
            size, objects, roots = _run_mutation(bulk_ctx, op, path)
        op.update(
            status="COMPLETED",
            completed_at=ctx.store.now_iso(),
            file_key=key if size else None,
            file_size=size if size else None,
            object_count=objects,
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
