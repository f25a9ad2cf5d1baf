"""The devstore's schema is a true subset of Shopify's Admin schema (2026-07)."""

from __future__ import annotations

from importlib import resources

from graphql import GraphQLEnumType, GraphQLInputObjectType, GraphQLUnionType, build_schema

from ..conftest import SHOPIFY_SHARED, shared_or_skip


def test_every_type_field_and_argument_exists_with_the_same_type() -> None:
    real_path = shared_or_skip(SHOPIFY_SHARED / "admin-2026-07.graphql")
    real = build_schema(real_path.read_text(encoding="utf-8"))
    ours = build_schema(
        resources.files("devstore").joinpath("schema.graphql").read_text(encoding="utf-8")
    )
    problems: list[str] = []
    for name, t in ours.type_map.items():
        if name.startswith("__"):
            continue
        r = real.type_map.get(name)
        if r is None or type(r) is not type(t):
            problems.append(f"type {name}: missing or of another kind")
            continue
        if isinstance(t, GraphQLEnumType):
            extra = set(t.values) - set(r.values)  # type: ignore[attr-defined]
            problems += [f"enum {name}.{v}: not in Shopify's" for v in extra]
        elif isinstance(t, GraphQLUnionType):
            extra = {m.name for m in t.types} - {m.name for m in r.types}  # type: ignore
            problems += [f"union {name} | {m}: not in Shopify's" for m in extra]
        elif hasattr(t, "fields"):
            for fname, f in t.fields.items():
                rf = r.fields.get(fname)  # type: ignore[attr-defined]
                if rf is None or str(rf.type) != str(f.type):
                    problems.append(f"{name}.{fname}: {f.type} vs {rf and rf.type}")
                    continue
                if isinstance(t, GraphQLInputObjectType):
                    continue
                for aname, a in f.args.items():
                    ra = rf.args.get(aname)
                    if ra is None or str(ra.type) != str(a.type):
                        problems.append(f"{name}.{fname}({aname}): {a.type} vs {ra and ra.type}")
    assert problems == []
    assert len(ours.type_map) > 100  # the subset is not trivially empty


def test_regenerating_the_subset_gives_the_committed_file() -> None:
    """`python -m devstore.schema_subset <real schema>` reproduces schema.graphql exactly, so
    the committed file is what the declared list says; --check agrees."""
    from devstore import schema_subset

    real_path = shared_or_skip(SHOPIFY_SHARED / "admin-2026-07.graphql")
    committed = resources.files("devstore").joinpath("schema.graphql").read_text(encoding="utf-8")
    assert schema_subset.render(real_path.read_text(encoding="utf-8")) == committed


def test_subset_refuses_declarations_that_do_not_fit() -> None:
    """Tried: a field Shopify does not have, an unknown type, and a kept field whose object
    type is not declared. Must not: print a schema; each is named in the error."""
    import pytest
    from graphql import parse

    from devstore.schema_subset import ALL, SubsetError, subset

    real = parse(
        """schema { query: QueryRoot }
        type QueryRoot { shop: Shop! customer(id: ID!): Customer }
        type Shop { id: ID! name: String! plan: ShopPlan! }
        type ShopPlan { partnerDevelopment: Boolean! }
        type Customer { id: ID! state: CustomerState! }
        "doc" enum CustomerState { ENABLED DISABLED }"""
    )
    good = subset(real, {"QueryRoot": "customer", "Customer": ALL})
    names = [d.name.value if getattr(d, "name", None) else None for d in good.definitions]  # type: ignore[attr-defined]
    assert names == [None, "CustomerState", "QueryRoot", "Customer"]
    cases = {
        "QueryRoot.nope: no such field": {"QueryRoot": "nope"},
        "Missing: no such": {"QueryRoot": "shop", "Missing": ALL, "Shop": "id"},
        "ShopPlan: reached from a kept field but not declared": {
            "QueryRoot": "shop",
            "Shop": "plan",
        },
    }
    for message, types in cases.items():
        with pytest.raises(SubsetError, match=message):
            subset(real, types)
