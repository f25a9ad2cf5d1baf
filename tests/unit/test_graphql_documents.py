"""Every document the app sends validates against Shopify's Admin schema (2026-07).

The schema is the real one in ``../shared/shopify/admin-2026-07.graphql``; where ``../shared``
is absent these tests skip and say so. Besides validity, each document must be one operation
named like its file, use no deprecated field or argument, and stay well under Shopify's
1,000-point limit for a single query (estimated with Shopify's published cost rules).
"""

from __future__ import annotations

from typing import Any

import pytest
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    NoDeprecatedCustomRule,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    get_named_type,
    is_leaf_type,
    parse,
    specified_rules,
    validate,
    value_from_ast_untyped,
)

import plugin.graphql as documents
from plugin.graphql import DOCUMENTS, Document, document_names
from tests.conftest import SHOPIFY_SHARED, shared_or_skip

MAX_QUERY_COST = 1000


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    path = shared_or_skip(SHOPIFY_SHARED / "admin-2026-07.graphql")
    # Shopify's schema breaks one newer rule of the spec that graphql-core 3.3 checks
    # (deprecated implementations of non-deprecated interface fields); it is Shopify's real
    # schema all the same, so it is taken as valid.
    return build_schema(path.read_text(encoding="utf-8"), assume_valid=True)


def test_every_file_is_a_named_constant() -> None:
    """A .graphql file that no constant names (or a constant with no file) fails: the set of
    files, DOCUMENTS and the module's Document constants are the same."""
    constants = {v.name for v in vars(documents).values() if isinstance(v, Document)}
    assert set(document_names()) == set(DOCUMENTS) == constants
    assert len(DOCUMENTS) >= 19


@pytest.mark.parametrize("name", document_names())
def test_document_is_one_operation_named_like_its_file(name: str) -> None:
    """A file holding two operations, an anonymous one, or one named unlike the file fails."""
    doc = DOCUMENTS[name]
    definitions = parse(doc.text).definitions
    assert len(definitions) == 1, "one operation and no fragments per file"
    op = definitions[0]
    assert isinstance(op, OperationDefinitionNode)
    assert op.name is not None and op.name.value == name
    assert op.operation.value == doc.kind


@pytest.mark.parametrize("name", document_names())
def test_document_validates_against_the_admin_schema(schema: GraphQLSchema, name: str) -> None:
    """An unknown field, a wrong argument or variable type, or a deprecated field must not pass."""
    ast = parse(DOCUMENTS[name].text)
    errors = validate(schema, ast, [*specified_rules, NoDeprecatedCustomRule])
    assert not errors, "\n".join(e.message for e in errors)


@pytest.mark.parametrize("name", document_names())
def test_document_costs_less_than_shopify_allows(schema: GraphQLSchema, name: str) -> None:
    """With its variables' defaults (and 1 for a size without one), the estimated requested cost
    stays under 1,000 points: Shopify refuses a single query above that."""
    cost = estimate_cost(schema, parse(DOCUMENTS[name].text))
    assert 0 < cost < MAX_QUERY_COST, f"{name}: estimated cost {cost}"


def test_cost_estimate_grows_with_page_size(schema: GraphQLSchema) -> None:
    """The estimator is not a constant: asking for 250 customers a page instead of 90 is
    estimated over the limit, which is why the document defaults to 90."""
    text = DOCUMENTS["CustomersUpdatedSince"].text.replace("$first: Int = 90", "$first: Int = 250")
    assert estimate_cost(schema, parse(text)) > MAX_QUERY_COST


def test_an_invalid_document_is_caught(schema: GraphQLSchema) -> None:
    """The validation itself can fail: a misspelt field and a deprecated field are reported."""
    bad = parse("query Bad { shop { nmae plan { displayName } } }")
    messages = [
        e.message for e in validate(schema, bad, [*specified_rules, NoDeprecatedCustomRule])
    ]
    assert any("nmae" in m for m in messages)
    assert any("displayName" in m and "deprecated" in m for m in messages)


# --- cost estimate: Shopify's rules (shopify.dev, "Rate limits" → calculated query cost) -------
# scalar/enum 0; object 1; connection 2 + size × (cost of one element); list sized by `first`
# size × element; each mutation field 10. Fragments are summed (an overestimate for unions).


def estimate_cost(schema: GraphQLSchema, ast: DocumentNode) -> float:
    op = next(d for d in ast.definitions if isinstance(d, OperationDefinitionNode))
    defaults: dict[str, Any] = {}
    for var in op.variable_definitions or ():
        if var.default_value is not None:
            defaults[var.variable.name.value] = value_from_ast_untyped(var.default_value)
    root = schema.mutation_type if op.operation == OperationType.MUTATION else schema.query_type
    assert root is not None
    mutation = op.operation == OperationType.MUTATION
    return _selection_cost(schema, op.selection_set, root, defaults, top_mutation=mutation)


def _selection_cost(
    schema: GraphQLSchema,
    selection_set: SelectionSetNode | None,
    parent: Any,
    variables: dict[str, Any],
    *,
    top_mutation: bool = False,
) -> float:
    if selection_set is None:
        return 0.0
    total = 0.0
    for sel in selection_set.selections:
        if isinstance(sel, InlineFragmentNode):
            cond = schema.get_type(sel.type_condition.name.value) if sel.type_condition else parent
            total += _selection_cost(schema, sel.selection_set, cond, variables)
            continue
        if isinstance(sel, FragmentSpreadNode):  # the documents use none (tested above)
            raise AssertionError("named fragments are not used")
        assert isinstance(sel, FieldNode)
        name = sel.name.value
        if name.startswith("__"):
            continue
        field = parent.fields[name]
        named = get_named_type(field.type)
        if is_leaf_type(named):
            continue
        child = _selection_cost(schema, sel.selection_set, named, variables)
        size = _size(sel, variables)
        if top_mutation:
            total += 10 + child
        elif isinstance(named, GraphQLObjectType) and named.name.endswith("Connection"):
            total += 2 + size * child
        elif _is_list(field.type):
            total += size * (1 + child)
        else:
            total += 1 + child
    return total


def _size(field: FieldNode, variables: dict[str, Any]) -> int:
    for arg in field.arguments or ():
        if arg.name.value in {"first", "last"}:
            value = value_from_ast_untyped(arg.value, variables)
            return int(value) if isinstance(value, int) else 1
    return 1


def _is_list(t: GraphQLOutputType) -> bool:
    if isinstance(t, GraphQLNonNull):
        t = t.of_type
    return isinstance(t, GraphQLList)
