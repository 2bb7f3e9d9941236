"""The references of a record: which resources it names through `reach:schemas/X` fields."""

from __future__ import annotations

from typing import Any, NamedTuple

from schemas.definitions import Definition
from schemas.events import key_prefix, keyed


class Reference(NamedTuple):  # a tuple: made per reference of every record
    key: bytes  # the referenced resource's key (as on the ingest and resources topics)
    schema_definition_id: str
    external_id: str

    def as_dependency(self) -> dict[str, str]:
        return {"schemaDefinitionId": self.schema_definition_id, "externalId": self.external_id}


def references_of(record: dict[str, Any], definition: Definition, partner_id: str, tenant_id: str) -> list[Reference]:
    """Every resource `record` references, each once, in field order."""
    found: dict[bytes, Reference] = {}
    for field in definition.referenceFields:
        value = record.get(field.name)
        values = value if field.is_array and isinstance(value, list) else [value]
        for item in values:
            if item is None or isinstance(item, (dict, list, bool)):
                continue
            external_id = str(item)
            key = keyed(key_prefix(partner_id, tenant_id, field.target_id), external_id)
            found.setdefault(key, Reference(key, field.target_id, external_id))
    return list(found.values())
