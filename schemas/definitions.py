"""Schema definitions: the checks on what a partner submits, and the stored record.

A definition is stored as one JSON record (see `Definition.to_record`) in the compacted
schema-definitions topic, keyed by `<partnerId>/<id>`. `revision` counts every write of the
record; `versionNumber` counts schema changes.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jsonschema
import jsonschema_rs

from schemas.validation import build_validators, reach_ref_target, subschemas

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
CATEGORIES = ("contacts_schema", "transactions_schema", "custom_schema", "combined_schema",
              "locations_schema", "customer_fields")
IMMUTABLE = ("name", "pluralName", "category", "externalIdField")
ALIASES = {"plural_name": "pluralName", "external_id_field": "externalIdField",
           "fields_to_expose": "fieldsToExpose", "expose_name_json_path": "exposeNameJsonPath"}
CREATE_FIELDS = {"name", "pluralName", "description", "category", "externalIdField", "schema",
                 "fieldsToExpose", "exposeNameJsonPath"}
UPDATABLE = {"description", "schema", "fieldsToExpose", "exposeNameJsonPath"}


@dataclass(frozen=True)
class ReferenceField:
    """A top-level property holding the external id(s) of resources of another definition."""

    name: str
    target_id: str
    is_array: bool


@dataclass(frozen=True)
class Definition:
    id: str
    partnerId: str
    name: str
    pluralName: str | None
    description: str | None
    category: str
    externalIdField: str
    schema: dict[str, Any]
    referenceSchemas: list[str]
    referenceFields: list[ReferenceField]
    versionNumber: int
    fieldsToExpose: list[Any]
    exposeNameJsonPath: str | None
    createdAt: int  # epoch milliseconds
    updatedAt: int
    deactivatedAt: int | None
    revision: int
    # Every schema version this definition has had, so that events accepted against an older
    # version are validated by the workers with that version.
    schemaHistory: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.deactivatedAt is None

    @property
    def names(self) -> set[str]:
        """The lower-cased names this definition answers to in paths."""
        return {n.lower() for n in (self.name, self.pluralName) if n}

    def schema_of_version(self, version: int) -> dict[str, Any]:
        return self.schemaHistory.get(str(version), self.schema)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Definition:
        refs = [ReferenceField(**r) for r in record.get("referenceFields", [])]
        return cls(**{**record, "referenceFields": refs})


class DefinitionError(Exception):
    """A submission breaks a rule: `status` 400, 404 or 409, with every problem found."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []


# Resolves "X" of reach:schemas/X to an active definition of the same partner, or None.
Resolver = Callable[[str], "Definition | None"]


def normalise_body(body: Any) -> dict[str, Any]:
    """The request body with snake_case aliases folded into their camelCase names."""
    if not isinstance(body, dict):
        raise DefinitionError(400, "The request body must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in body.items():
        camel: str = ALIASES.get(key) or key
        if camel in out and out[camel] != value:
            raise DefinitionError(400, f"'{key}' and '{camel}' disagree")
        out[camel] = value
    return out


def _check_name(field_name: str, value: Any, errors: list[str]) -> None:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        errors.append(f"{field_name}: must be a non-empty string of letters, digits, '_' or '-'")


def _check_optional_fields(body: dict[str, Any], errors: list[str]) -> None:
    if body.get("description") is not None and not isinstance(body["description"], str):
        errors.append("description: must be a string")
    fields = body.get("fieldsToExpose")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, dict) for f in fields)):
        errors.append("fieldsToExpose: must be an array of objects")
    path = body.get("exposeNameJsonPath")
    if path is not None and not isinstance(path, str):
        errors.append("exposeNameJsonPath: must be a string")


def check_schema(schema: Any, external_id_field: str, self_names: set[str], resolve: Resolver,
                 errors: list[str]) -> list[ReferenceField] | None:
    """Check a submitted JSON Schema; return its reference fields (None when invalid).

    A reference to one of `self_names` is a self-reference (its target id is filled later).
    """
    if not isinstance(schema, dict):
        errors.append("schema: must be a JSON object")
        return None
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        errors.append(f"schema{'/' + where if where else ''}: not a valid draft-07 JSON Schema: {exc.message}")
        return None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        errors.append("schema: must be an object schema (`type: object` with `properties`)")
        return None
    if external_id_field not in (schema.get("required") or []) or external_id_field not in schema["properties"]:
        errors.append(f"schema: externalIdField '{external_id_field}' must be a property listed in `required`")
    refs: list[ReferenceField] = []
    top_level = set()
    for prop, sub in schema["properties"].items():
        target, is_array = reach_ref_target(sub), False
        if target is None and isinstance(sub, dict) and sub.get("type") == "array":
            target, is_array = reach_ref_target(sub.get("items")), True
        if target is None:
            continue
        top_level.add(id(sub.get("items") if is_array else sub))
        if target.lower() in self_names:
            refs.append(ReferenceField(prop, "", is_array))
            continue
        found = resolve(target)
        if found is None:
            errors.append(f"schema.properties.{prop}: reach:schemas/{target} is not an active schema definition")
        else:
            refs.append(ReferenceField(prop, found.id, is_array))
    stray = [n for n in _all_nodes(schema) if reach_ref_target(n) is not None and id(n) not in top_level]
    if stray:
        errors.append("schema: reach:schemas references are allowed only as a property "
                      "or as the `items` of an array property")
    try:
        build_validators(schema)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        errors.append(f"schema: cannot be compiled: {str(exc).splitlines()[0]}")
    return refs


def _all_nodes(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(subschemas(node))
    return out


def _with_self_references(refs: list[ReferenceField], own_id: str) -> list[ReferenceField]:
    return [r if r.target_id else replace(r, target_id=own_id) for r in refs]


def _reference_ids(refs: list[ReferenceField]) -> list[str]:
    return list(dict.fromkeys(r.target_id for r in refs))


def new_definition(partner_id: str, raw_body: Any, resolve: Resolver) -> Definition:
    """Check a create request and build the definition it asks for."""
    body = normalise_body(raw_body)
    errors: list[str] = []
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        errors.append(f"unknown fields: {', '.join(unknown)}")
    _check_name("name", body.get("name"), errors)
    if body.get("pluralName") is not None:
        _check_name("pluralName", body["pluralName"], errors)
    category = body.get("category", "custom_schema")
    if category not in CATEGORIES:
        errors.append(f"category: must be one of {', '.join(CATEGORIES)}")
    id_field = body.get("externalIdField")
    if not isinstance(id_field, str) or not id_field:
        errors.append("externalIdField: required, a non-empty string")
        id_field = ""
    _check_optional_fields(body, errors)
    self_names = {str(n).lower() for n in (body.get("name"), body.get("pluralName")) if n}
    refs = check_schema(body.get("schema"), id_field, self_names, resolve, errors) if "schema" in body else None
    if "schema" not in body:
        errors.append("schema: required")
    if errors:
        raise DefinitionError(400, "Invalid schema definition", errors)
    own_id = str(uuid.uuid4())
    refs = _with_self_references(refs or [], own_id)
    now = int(time.time() * 1000)
    return Definition(
        id=own_id, partnerId=partner_id, name=body["name"], pluralName=body.get("pluralName"),
        description=body.get("description"), category=category, externalIdField=id_field,
        schema=body["schema"], referenceSchemas=_reference_ids(refs), referenceFields=refs,
        versionNumber=1, fieldsToExpose=body.get("fieldsToExpose") or [],
        exposeNameJsonPath=body.get("exposeNameJsonPath"), createdAt=now, updatedAt=now,
        deactivatedAt=None, revision=1, schemaHistory={"1": body["schema"]},
    )


def updated_definition(current: Definition, raw_body: Any, resolve: Resolver) -> Definition:
    """Check an update request against `current` and build the next revision."""
    body = normalise_body(raw_body)
    errors: list[str] = []
    for name in IMMUTABLE:
        if name in body and body[name] != getattr(current, name):
            errors.append(f"{name}: cannot be changed")
    unknown = sorted(set(body) - UPDATABLE - set(IMMUTABLE))
    if unknown:
        errors.append(f"unknown fields: {', '.join(unknown)}")
    _check_optional_fields(body, errors)
    schema, refs = current.schema, current.referenceFields
    if "schema" in body:
        checked = check_schema(body["schema"], current.externalIdField, current.names, resolve, errors)
        schema, refs = body["schema"], _with_self_references(checked or [], current.id)
    if errors:
        raise DefinitionError(400, "Invalid schema definition update", errors)
    version = current.versionNumber + (1 if schema != current.schema else 0)
    return replace(
        current,
        description=body.get("description", current.description),
        schema=schema, referenceFields=refs, referenceSchemas=_reference_ids(refs),
        fieldsToExpose=body.get("fieldsToExpose", current.fieldsToExpose) or [],
        exposeNameJsonPath=body.get("exposeNameJsonPath", current.exposeNameJsonPath),
        versionNumber=version, updatedAt=int(time.time() * 1000), revision=current.revision + 1,
        schemaHistory={**current.schemaHistory, str(version): schema},
    )


def deactivated_definition(current: Definition) -> Definition:
    now = int(time.time() * 1000)
    return replace(current, deactivatedAt=now, updatedAt=now, revision=current.revision + 1)
