"""Avro schema compatibility, as the Schema Registry API checks it (level BACKWARD).

The rules are Apache Avro's own schema-resolution checker (`avro.compatibility`, the Python port
of the Java `SchemaCompatibility` that Confluent's registry runs): a new schema is backward
compatible with a registered one if it can read data written with it.
"""

from __future__ import annotations

import avro.compatibility
import avro.errors
import avro.schema

LEVEL = "BACKWARD"


class InvalidSchema(ValueError):
    """Text that is not an Avro schema."""


def parse(text: str) -> avro.schema.Schema:
    """The Avro schema in `text`; InvalidSchema saying why not."""
    try:
        return avro.schema.parse(text)
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        raise InvalidSchema(f"{type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise InvalidSchema("nested too deeply to read") from None


def canonical_form(schema: avro.schema.Schema) -> str:
    """Avro's Parsing Canonical Form: what decides the bytes on the wire (no docs, no defaults)."""
    return schema.canonical_form


def backward_problems(new: avro.schema.Schema, registered: avro.schema.Schema, label: str) -> list[str]:
    """Why `new` cannot read data written with `registered` (called `label` in messages); [] if it can."""
    result = avro.compatibility.ReaderWriterCompatibilityChecker().get_compatibility(new, registered)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
    return [f"the new schema cannot read data written with {label} ({kinds}) at {', '.join(sorted(result.locations))}: "
            + "; ".join(sorted(result.messages))]
