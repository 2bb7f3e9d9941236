"""The checks every uploaded record passes before it is enqueued (docs/api.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.definitions import Definition
from schemas.validation import RecordValidators, deleted_required_fields, error_messages, without_nulls

ON_CONFLICT = ("upsert", "reject")
MAX_RECORDS = 1000  # per batch
# A deleteAll names every resource of a schema: its batch may hold more (REACH_DELETE_ALL_MAX, up to this).
MAX_DELETE_RECORDS = 1_000_000
MAX_WAIT_S = 86_400


@dataclass(frozen=True)
class BatchOptions:
    """The query options of one upload, carried by each of its events."""

    on_conflict: str = "upsert"
    ignore_unknown_fields: bool = False
    dependency_wait_timeout: int = 0

    def problems(self) -> list[str]:
        """What is out of range (for options that did not come through the HTTP parser)."""
        out = []
        if self.on_conflict not in ON_CONFLICT:
            out.append(f"onconflict must be one of {', '.join(ON_CONFLICT)}")
        if not 0 <= self.dependency_wait_timeout <= MAX_WAIT_S:
            out.append(f"dependencyWaitTimeout must be an integer from 0 to {MAX_WAIT_S}")
        return out


def external_id_of(record: dict[str, Any], definition: Definition) -> str | None:
    """The record's external id as a string, or None when it is missing or not usable."""
    value = record.get(definition.externalIdField)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


def check_record(index: int, record: Any, definition: Definition, validators: RecordValidators,
                 options: BatchOptions) -> tuple[dict[str, Any] | None, list[str]]:
    """Check one record read as a patch; return it as it will be enqueued, and its problems.

    Unknown fields are dropped when `ignore_unknown_fields`, else they are problems. Nulls
    mean "delete" and are kept; they are not type-checked.
    """
    # Runs for every record, in the ingress and again in the worker: what a valid record with
    # no unknown field and no null does not need (its place's name, a copy) is not made for it.
    if not isinstance(record, dict):
        return None, [f"resources[{index}]: must be a JSON object"]
    errors: list[str] = []
    names = validators.names
    if record.keys() <= names:
        unknown: list[str] = []
        known = record
    else:
        unknown = [name for name in record if name not in names]
        known = {k: v for k, v in record.items() if k in names}
    if options.ignore_unknown_fields:
        record = known
    elif unknown:
        errors.extend(f"resources[{index}].{name}: unknown field (not in the schema's properties)"
                      for name in unknown)
    if external_id_of(record, definition) is None:
        errors.append(f"resources[{index}].{definition.externalIdField}: the external id must be a non-empty string "
                      "or an integer")
    present = without_nulls(known)
    if present is not known or unknown:  # else it has no null, so deletes nothing
        errors.extend(f"resources[{index}]{path}: required fields cannot be deleted"
                      for path in deleted_required_fields(record, validators.schema))
    # `reject` makes every record a creation: it must be complete on its own.
    validator = validators.full if options.on_conflict == "reject" else validators.patch
    if not validator.is_valid(present):
        errors.extend(error_messages(validator, present, f"resources[{index}]"))
    return record, errors
