"""Property-based checks of the merge (RFC 7396) and of required-field protection."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.apply import uuid5
from processors.merge import merge_patch
from schemas.definitions import Definition
from schemas.records import BatchOptions, check_record
from schemas.validation import build_validators, without_nulls

keys = st.sampled_from(["a", "b", "c", "d"])
scalars = st.one_of(st.integers(), st.text(max_size=3), st.booleans())
documents = st.recursive(scalars | st.lists(scalars, max_size=3),
                         lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12)
objects = st.dictionaries(keys, documents, max_size=4)
patch_values = st.recursive(st.none() | scalars | st.lists(scalars, max_size=3),
                            lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12)
patches = st.dictionaries(keys, patch_values, max_size=4)


def has_null(value: Any) -> bool:
    if isinstance(value, dict):
        return any(v is None or has_null(v) for v in value.values())
    return False


@given(objects)
def test_an_empty_patch_changes_nothing(target: dict) -> None:
    assert merge_patch(target, {}) == target


@given(objects, patches)
def test_applying_a_patch_twice_is_applying_it_once(target: dict, patch: dict) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(objects, patches)
def test_null_deletes_and_no_null_is_ever_stored(target: dict, patch: dict) -> None:
    merged = merge_patch(target, patch)
    assert not has_null(merged)
    for key, value in patch.items():
        if value is None:
            assert key not in merged


@given(objects, patches)
def test_absent_fields_are_kept_and_non_objects_replace(target: dict, patch: dict) -> None:
    merged = merge_patch(target, patch)
    for key, value in target.items():
        if key not in patch:
            assert merged[key] == value
    for key, value in patch.items():
        if value is not None and not isinstance(value, dict):
            assert merged[key] == value


@given(objects, patches)
def test_the_target_is_not_modified(target: dict, patch: dict) -> None:
    import copy

    before = copy.deepcopy(target)
    merge_patch(target, patch)
    assert target == before


SCHEMA = {"type": "object", "required": ["id", "name"], "properties": {
    "id": {"type": "string"}, "name": {"type": "string"}, "note": {"type": "string"},
    "address": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "zip": {"type": "string"}}}}}
DEFINITION = Definition(id="d", partnerId="p", name="X", pluralName=None, description=None, category="custom_schema",
                        externalIdField="id", schema=SCHEMA, referenceSchemas=[], referenceFields=[],
                        versionNumber=1, fieldsToExpose=[], exposeNameJsonPath=None, createdAt=0, updatedAt=0,
                        deactivatedAt=None, revision=1)
VALIDATORS = build_validators(SCHEMA)
fields = st.fixed_dictionaries({}, optional={
    "name": st.none() | st.text(max_size=3), "note": st.none() | st.text(max_size=3),
    "address": st.none() | st.fixed_dictionaries({}, optional={"city": st.none() | st.text(max_size=3),
                                                               "zip": st.none() | st.text(max_size=3)})})


@settings(max_examples=300)
@given(fields)
def test_a_null_on_a_required_field_is_always_refused(record: dict) -> None:
    record = {"id": "r1", **record}
    _, problems = check_record(0, record, DEFINITION, VALIDATORS, BatchOptions())
    deletes_required = record.get("name", "") is None or (
        isinstance(record.get("address"), dict) and record["address"].get("city", "") is None)
    refused = any("required fields cannot be deleted" in p for p in problems)
    assert refused == deletes_required
    assert all(p.startswith("resources[0]") for p in problems)


@given(st.text(max_size=200))
def test_resource_ids_are_the_rfc_4122_uuid5_of_their_event(name: str) -> None:
    namespace = uuid.uuid4()
    assert uuid5(namespace.bytes, name) == str(uuid.uuid5(namespace, name))


nested = st.recursive(st.none() | scalars,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=16)


@given(nested)
def test_without_nulls_drops_exactly_the_null_members_at_every_depth(value: Any) -> None:
    def null_members(v: Any) -> int:
        if isinstance(v, dict):
            return sum(1 if x is None else null_members(x) for x in v.values())
        return sum(null_members(x) for x in v) if isinstance(v, list) else 0

    def shape(v: Any) -> Any:  # what is left once null members are gone, written plainly
        if isinstance(v, dict):
            return {k: shape(x) for k, x in v.items() if x is not None}
        return [shape(x) for x in v] if isinstance(v, list) else v

    cleaned = without_nulls(value)
    assert null_members(cleaned) == 0
    assert cleaned == shape(value)
    if null_members(value) == 0:
        assert cleaned == value
