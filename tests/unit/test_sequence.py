"""The sequence model: validation with field paths, round trips, versions, templates."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.errors import ValidationError
from crm.sequence import Sequence, from_dict, new_version, step_tag
from crm.templates import TEMPLATES, instantiate, template


def good() -> dict[str, Any]:
    return {
        "id": "vitamin-c",
        "title": "Vitamin C refill",
        "trigger": {
            "kind": "replenishment",
            "product_ids": [42],
            "consumption_days": 30,
            "days_before": 5,
        },
        "steps": [
            {"key": "reminder", "offset_days": 0, "send_hour": 10},
            {
                "key": "coupon",
                "offset_days": 7,
                "send_hour": 10,
                "discount": {"kind": "percentage", "value": 10, "valid_days": 7},
            },
        ],
        "starts_at": "2026-07-01T00:00:00+09:00",
        "ends_at": "2027-07-01T00:00:00+09:00",
    }


def with_(path: str, value: Any) -> dict[str, Any]:
    """``good()`` with one value replaced (``steps.1.discount.value``); ``...`` deletes it."""
    data = copy.deepcopy(good())
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return data


def test_a_good_definition_parses_and_round_trips() -> None:
    seq = from_dict(good())
    assert seq.id == "vitamin-c" and seq.version == 1
    assert seq.steps[1].discount is not None
    assert seq.steps[1].discount.value == Decimal("10")
    assert seq.tags == ("kizuna:vitamin-c:reminder", "kizuna:vitamin-c:coupon")
    assert from_dict(seq.to_dict()) == seq


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("id", "Vitamin C", "id", "lowercase"),
        ("id", "vit:c", "id", "lowercase"),
        ("id", "-vit", "id", "lowercase"),
        ("id", ..., "id", "required"),
        ("steps.0.key", "Reminder!", "steps[0].key", "lowercase"),
        ("steps.1.key", "reminder", "steps[1].key", "twice"),
        ("steps.1.offset_days", 0, "steps[1].offset_days", "time order"),
        ("steps.1.offset_days", -3, "steps[1].offset_days", "between"),
        ("steps.0.offset_days", "3", "steps[0].offset_days", "whole number"),
        ("steps.0.offset_days", True, "steps[0].offset_days", "whole number"),
        ("steps.0.send_hour", 24, "steps[0].send_hour", "between"),
        ("steps.1.discount.value", 120, "steps[1].discount.value", "100%"),
        ("steps.1.discount.value", 0, "steps[1].discount.value", "more than 0"),
        ("steps.1.discount.value", "ten", "steps[1].discount.value", "number"),
        ("steps.1.discount.value", "NaN", "steps[1].discount.value", "finite"),
        ("steps.1.discount.value", "10.005", "steps[1].discount.value", "two decimals"),
        ("steps.1.discount.kind", "bogo", "steps[1].discount.kind", "one of"),
        ("steps.1.discount.valid_days", None, "steps[1].discount.valid_days", "expiry"),
        ("steps.1.discount.valid_days", 0, "steps[1].discount.valid_days", "between"),
        ("steps.0.tags", ["vip,gold"], "steps[0].tags[0]", "commas"),
        ("steps", [], "steps", "at least one step"),
        ("steps.0", "reminder", "steps[0]", "object"),
        ("trigger.kind", "phase_of_moon", "trigger.kind", "one of"),
        ("trigger.product_ids", [], "trigger.product_ids", "product or collection"),
        ("trigger.product_ids", [0], "trigger.product_ids[0]", "positive id"),
        ("trigger.consumption_days", ..., "trigger.consumption_days", "consumption_days"),
        ("trigger.anchor", "delivered", "trigger.anchor", "one of"),
        ("trigger", None, "trigger", "object"),
        ("ends_at", "2026-06-01T00:00:00+09:00", "ends_at", "after the start"),
        ("ends_at", "2027-07-01T00:00:00", "ends_at", "UTC offset"),
        ("starts_at", "next tuesday", "starts_at", "ISO 8601"),
        ("catch_up", "all", "catch_up", "one of"),
        ("exit", {"on_order": "yes"}, "exit.on_order", "true or false"),
    ],
)
def test_each_bad_input_names_its_field(path: str, value: Any, field: str, words: str) -> None:
    """Setting ``path`` to a bad value must raise ValidationError on exactly that field,
    with a message saying what is wrong, and must not return a sequence."""
    with pytest.raises(ValidationError) as err:
        from_dict(with_(path, value))
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"kind": "nth_order"}, "trigger.nth"),
        ({"kind": "nth_order", "nth": 1}, "trigger.nth"),
        ({"kind": "yearly_date"}, "trigger.date_source"),
        ({"kind": "yearly_date", "date_source": "metafield"}, "trigger.metafield"),
        (
            {"kind": "yearly_date", "date_source": "metafield", "metafield": "no dot"},
            "trigger.metafield",
        ),
        (
            {"kind": "yearly_date", "date_source": "birthday", "yearly_mode": "days_before"},
            "trigger.days_before",
        ),
        ({"kind": "segment_entered"}, "trigger.segment"),
        ({"kind": "product_bought"}, "trigger.product_ids"),
    ],
)
def test_trigger_specific_requirements(trigger: dict[str, Any], field: str) -> None:
    """A trigger missing what its kind needs must be refused on that field."""
    with pytest.raises(ValidationError) as err:
        from_dict(with_("trigger", trigger))
    assert err.value.field == field


def test_not_an_object_is_refused() -> None:
    """A list or a string as the whole definition must raise ValidationError, not TypeError."""
    bads: list[Any] = [[], "sequence", None, 3]
    for bad in bads:
        with pytest.raises(ValidationError):
            from_dict(bad)


def test_gids_are_accepted_as_product_ids() -> None:
    seq = from_dict(with_("trigger.product_ids", ["gid://shopify/Product/42", 7]))
    assert seq.trigger.product_ids == (42, 7)


def test_an_edit_makes_a_new_version_and_keeps_the_id() -> None:
    v1 = from_dict(good())
    same = new_version(v1, good())
    assert same is v1  # saving unchanged does not fork a version
    edited = with_("steps.1.offset_days", 10)
    v2 = new_version(v1, edited)
    assert v2.version == 2 and v2.steps[1].offset_days == 10
    assert v1.steps[1].offset_days == 7  # the old version is untouched
    v3 = new_version(v2, with_("steps.1.offset_days", 12))
    assert v3.version == 3
    with pytest.raises(ValidationError) as err:
        new_version(v1, with_("id", "renamed"))
    assert err.value.field == "id"


def test_templates_are_valid_and_bilingual() -> None:
    assert set(TEMPLATES) == {
        "replenishment",
        "birthday_coupon",
        "milestone_gift",
        "winback",
        "four_walls",
    }
    for handle, tpl in TEMPLATES.items():
        seq = instantiate(handle)
        assert isinstance(seq, Sequence)
        assert from_dict(seq.to_dict()) == seq
        assert tpl.title("en") and tpl.title("ja") != tpl.title("en")
        assert tpl.description("ja") != tpl.description("en")
    walls = instantiate("four_walls")
    assert [s.key for s in walls.steps] == ["trust", "safety", "opportunity", "efficacy", "offer"]
    assert [s.discount is not None for s in walls.steps] == [False] * 4 + [True]


def test_instantiate_applies_overrides_and_validates_them() -> None:
    """Overrides go through the validator: a bad product list must raise, not slip through."""
    seq = instantiate("replenishment", id="vitamin-c", trigger={"product_ids": [42]})
    assert seq.id == "vitamin-c" and seq.trigger.product_ids == (42,)
    assert seq.trigger.consumption_days == 30  # the rest of the template trigger is kept
    with pytest.raises(ValidationError):
        instantiate("replenishment", trigger={"product_ids": []})
    with pytest.raises(ValidationError) as err:
        template("nope")
    assert err.value.field == "template"


def test_step_tag_shape() -> None:
    assert step_tag("birthday", "coupon") == "kizuna:birthday:coupon"


# -- property: whatever comes in, only ValidationError comes out -------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "id",
    "title",
    "version",
    "trigger",
    "steps",
    "exit",
    "catch_up",
    "active",
    "starts_at",
    "ends_at",
]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=8))
def test_arbitrary_dicts_only_raise_validation_error(data: dict[str, Any]) -> None:
    """Arbitrary JSON must either parse or raise ValidationError: no TypeError, KeyError…"""
    try:
        from_dict(data)
    except ValidationError as err:
        assert str(err)


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    paths = [
        "id",
        "trigger.kind",
        "trigger.anchor",
        "trigger.product_ids",
        "trigger.consumption_days",
        "trigger.days_before",
        "steps.0",
        "steps.0.key",
        "steps.0.offset_days",
        "steps.0.send_hour",
        "steps.0.tags",
        "steps.1.discount",
        "steps.1.discount.value",
        "steps.1.discount.kind",
        "steps.1.discount.valid_days",
        "steps.1.discount.combines_with",
        "starts_at",
        "ends_at",
        "exit",
    ]
    return st.tuples(st.sampled_from(paths), json_values)


@settings(max_examples=400, deadline=None)
@given(st.lists(_mutations(), min_size=1, max_size=3))
def test_near_valid_definitions_only_raise_validation_error(
    changes: list[tuple[str, Any]],
) -> None:
    """A good definition with 1–3 fields replaced by arbitrary JSON must parse to a sequence
    that round-trips, or raise ValidationError naming a field, and nothing else."""
    data = good()
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
            if not isinstance(node, dict | list):
                break
        else:
            if isinstance(node, dict):
                node[last] = value
            elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = value
    try:
        seq = from_dict(data)
    except ValidationError as err:
        assert err.field
    else:
        assert from_dict(seq.to_dict()) == seq
