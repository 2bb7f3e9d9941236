"""Compiled JSON Schema validators for records, cached per definition version.

Records are checked with jsonschema-rs (compiled, ~100x faster than pure-Python jsonschema);
`jsonschema` itself is kept for checking submitted schemas, where its messages serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jsonschema_rs

REACH_REF_PREFIX = "reach:schemas/"
# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = ("additionalProperties", "additionalItems", "not", "if", "then", "else", "contains", "propertyNames")
_LIST = ("allOf", "anyOf", "oneOf")
_MAP = ("properties", "patternProperties", "definitions")


def reach_ref_target(node: Any) -> str | None:
    """The `X` of a `{"$ref": "reach:schemas/X"}` node, else None."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REACH_REF_PREFIX):
            return ref[len(REACH_REF_PREFIX):]
    return None


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The direct subschemas of `schema` (schema positions only, never data names)."""
    for key in _ONE:
        if isinstance(schema.get(key), dict):
            yield schema[key]
    for key in _LIST:
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                yield sub
    for key in _MAP:
        for sub in (schema.get(key) or {}).values():
            if isinstance(sub, dict):
                yield sub
    items = schema.get("items")
    if isinstance(items, dict):
        yield items
    elif isinstance(items, list):
        yield from (s for s in items if isinstance(s, dict))
    for sub in (schema.get("dependencies") or {}).values():
        if isinstance(sub, dict):
            yield sub


def _rewrite(schema: dict[str, Any], drop_required: bool) -> dict[str, Any]:
    """Copy `schema` with reach references as external-id types (and `required` dropped)."""
    if reach_ref_target(schema) is not None:
        return {"type": ["string", "integer"]}
    out = dict(schema)
    if drop_required:
        out.pop("required", None)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = _rewrite(out[key], drop_required)
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [_rewrite(s, drop_required) if isinstance(s, dict) else s for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {k: _rewrite(s, drop_required) if isinstance(s, dict) else s for k, s in out[key].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _rewrite(out["items"], drop_required)
    elif isinstance(out.get("items"), list):
        out["items"] = [_rewrite(s, drop_required) if isinstance(s, dict) else s for s in out["items"]]
    if isinstance(out.get("dependencies"), dict):
        out["dependencies"] = {k: _rewrite(s, drop_required) if isinstance(s, dict) else s
                               for k, s in out["dependencies"].items()}
    return out


def _refuse_remote(uri: str) -> Any:
    raise ValueError(f"remote references are not allowed: {uri}")


def compile_schema(schema: dict[str, Any]) -> jsonschema_rs.Draft7Validator:
    """A compiled draft-07 validator that never fetches anything over the network."""
    return jsonschema_rs.Draft7Validator(schema, retriever=_refuse_remote)


@dataclass(frozen=True)
class RecordValidators:
    """The compiled checks of one schema-definition version."""

    full: jsonschema_rs.Draft7Validator   # a whole stored resource
    patch: jsonschema_rs.Draft7Validator  # a record read as a patch: `required` not enforced
    schema: dict[str, Any]

    @cached_property
    def names(self) -> frozenset[str]:
        """The schema's top-level property names (`check_record` tests every record's keys)."""
        return frozenset(self.schema.get("properties") or {})


def build_validators(schema: dict[str, Any]) -> RecordValidators:
    """Compile both validators of `schema` (raises jsonschema_rs.ValidationError if it can't)."""
    return RecordValidators(
        full=compile_schema(_rewrite(schema, drop_required=False)),
        patch=compile_schema(_rewrite(schema, drop_required=True)),
        schema=schema,
    )


# A definition's schema never changes within one versionNumber, so (id, version) names it.
_compiled: dict[tuple[str, int], RecordValidators] = {}


def validators_for(definition_id: str, version: int, schema: dict[str, Any]) -> RecordValidators:
    """The validators of one definition version, compiled once per process."""
    found = _compiled.get((definition_id, version))
    if found is None:
        found = _compiled[(definition_id, version)] = build_validators(schema)
    return found


def error_messages(validator: jsonschema_rs.Draft7Validator, instance: Any, where: str) -> list[str]:
    """Every problem of `instance`, each as `<where>.<path>: <message>`."""
    out = []
    for error in validator.iter_errors(instance):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.instance_path)
        out.append(f"{where}{path}: {error.message}")
    return out


_SCALARS = frozenset((str, int, float, bool))  # JSON's, but null


def without_nulls(value: Any) -> Any:
    """`value` with every null object member removed, at any depth (a patch's deletions): `value`
    itself when it holds none (most records: no copy, and callers may skip looking for deletions)."""
    if isinstance(value, dict):
        if _SCALARS.issuperset(map(type, value.values())):  # one pass in C: most records
            return value
        for member in value.values():
            if member is None or isinstance(member, (dict, list)):
                # Scalars are kept as they are without a call each: most of a record's fields are.
                return {k: without_nulls(v) if isinstance(v, (dict, list)) else v
                        for k, v in value.items() if v is not None}
        return value
    if isinstance(value, list):
        return [without_nulls(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


def deleted_required_fields(record: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of required fields that `record` sets to null (deletion of a required field)."""
    found = []
    required = set(schema.get("required") or [])
    props = schema.get("properties") or {}
    for name, value in record.items():
        if value is None:
            if name in required:
                found.append(f"{path}.{name}")
        elif isinstance(value, dict) and isinstance(props.get(name), dict):
            found.extend(deleted_required_fields(value, props[name], f"{path}.{name}"))
    return found
