"""The resource agent's logic: apply records, hold the ones whose references are missing.

Per resource R (one partition of the ingest topic, one agent at a time):
- no record of R is pending → check the record, check its references, apply it;
- a reference is missing and `dependencyWaitTimeout` > 0 → R gets a pending queue whose head
  is this record, with its missing references and its deadline; a dependency request per
  missing reference goes to the referenced resource's partition (`processors.dependencies`);
- R has a pending queue → the record joins its tail: records of one resource apply in order.
A "resolved" notice for the head removes a missing reference; with none left, the head is
applied against the state at that moment and the queue drains. A tick past the head's
deadline fails it with DEPENDENCY_TIMEOUT and the queue drains. Deadlines live in an
in-memory heap per partition, rebuilt from the pending table when a partition arrives.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson

from processors.apply import Outcome, apply_record, checked_record, op_of, options_of, waits
from processors.dependencies import DependencyIndex
from processors.outcomes import OutcomeBuffer
from processors.references import Reference, references_of
from processors.transactions import ExactlyOnce
from schemas.batch_events import (
    CREATED,
    DEPENDENCY_TIMEOUT,
    FAILED,
    INVALID_OPTIONS,
    MISSING_DEPENDENCY,
    PENDING,
    SCHEMA_NOT_FOUND,
    VALIDATION_FAILED,
    BatchMeta,
    outcome_entry,
)
from schemas.definitions import Definition
from schemas.events import resource_key
from schemas.validation import validators_for
from topics.definitions import ServiceTopics
from topics.partitioning import partition_for

Body = dict[str, Any]  # a decoded ingest event


class ResourceProcessor:
    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, resources: faust.Table, pending: faust.Table,
                 dependencies: DependencyIndex, definition_of: Callable[[Body], Awaitable[Definition | None]],
                 exists_elsewhere: Callable[[bytes], Awaitable[bool]], partitions: int) -> None:
        self.eos, self.topics = eos, topics
        self.resources, self.pending, self.dependencies = resources, pending, dependencies
        self.definition_of = definition_of
        self.exists_elsewhere = exists_elsewhere
        self.partitions = partitions  # of the ingest topic
        self.outcomes = OutcomeBuffer(eos, topics.batch_events.name)
        # partition -> heap of (deadline ms, resource key); absent until built from the table
        self._deadlines: dict[int, list[tuple[int, bytes]]] = {}

    def forget_partitions(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._deadlines.pop(partition, None)

    # -- inputs --------------------------------------------------------------------------

    async def on_ingest(self, event: faust.EventT, body: Body) -> None:
        """One operation of an ingest message (a message of version 2 may hold several)."""
        key = resource_key(body["partnerId"], body["tenantId"], body["schemaDefinitionId"], body["externalId"])
        failure = await self._event_failure(event, key, body)
        if failure is not None:
            await self._emit(event, body, failure)
            return
        queue = self.eos.get(event, self.pending, key)
        if queue is not None:
            queue["queue"].append(body)
            await self.eos.put(event, self.pending, key, queue)
            await self._emit_pending(event, body, queue)
            return
        await self._drain(event, key, [body])

    async def on_resolved(self, event: faust.EventT, notice: dict[str, Any]) -> None:
        key: bytes = event.key
        queue = self.eos.get(event, self.pending, key)
        if queue is None or queue["queue"][0]["eventId"] != notice["eventId"]:
            return  # that record expired or was applied already
        queue["missing"] = [m for m in queue["missing"] if m["key"] != notice["target"]]
        if queue["missing"]:
            await self.eos.put(event, self.pending, key, queue)
            for waiting in queue["queue"]:  # the status shows only what is still missing
                await self._emit_pending(event, waiting, queue)
            return
        await self._drain(event, key, queue["queue"], head_released=True)

    async def on_tick(self, event: faust.EventT) -> None:
        partition = event.message.partition
        heap = self._deadlines.get(partition)
        if heap is None:
            heap = self._deadlines[partition] = [
                (q["deadline"], k) for k, q in self.eos.partition_items(self.pending, partition)]
            heapq.heapify(heap)
        now = _now_ms()
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            queue = self.eos.get(event, self.pending, key)
            if queue is None or queue["deadline"] != deadline:
                continue  # released or re-queued since
            head, *rest = queue["queue"]
            missing = ", ".join(f"{m['schemaDefinitionId']}/{m['externalId']}" for m in queue["missing"])
            await self._emit(event, head, Outcome(FAILED, DEPENDENCY_TIMEOUT,
                             f"resources[{head['recordIndex']}]: references still missing at the deadline: {missing}"))
            await self._drain(event, key, rest)

    # -- processing ------------------------------------------------------------------------

    async def _drain(self, event: faust.EventT, key: bytes, queue: list[Body], head_released: bool = False) -> None:
        """Process `queue` in order until a record must wait; store what is left pending."""
        while queue:
            body = queue[0]
            missing = await self._apply_or_missing(event, key, body, skip_references=head_released)
            head_released = False
            if missing:
                deadline = _now_ms() + body["dependencyWaitTimeout"] * 1000
                pending = {"queue": queue, "deadline": deadline,
                           "missing": [{"key": m.key.decode(), **m.as_dependency()} for m in missing]}
                await self.eos.put(event, self.pending, key, pending)
                heap = self._deadlines.get(event.message.partition)
                if heap is not None:
                    heapq.heappush(heap, (deadline, key))
                for reference in missing:
                    request = {"waiter": key.decode(), "eventId": body["eventId"], "target": reference.key.decode()}
                    await self.eos.send(event, self.topics.dependency_requests.name, reference.key, orjson.dumps(request))
                for waiting in queue:  # the head and everything queued behind it
                    await self._emit_pending(event, waiting, pending)
                return
            queue = queue[1:]
        if self.eos.get(event, self.pending, key) is not None:
            await self.eos.delete(event, self.pending, key)

    async def _apply_or_missing(self, event: faust.EventT, key: bytes, body: Body,
                                skip_references: bool) -> list[Reference]:
        """Apply `body` (or fail it); return its missing references if it has to wait instead."""
        definition = await self.definition_of(body)
        if definition is None:
            await self._emit(event, body, Outcome(FAILED, SCHEMA_NOT_FOUND,
                             f"schema definition {body['schemaDefinitionId']} does not exist"))
            return []
        if op_of(body) == "delete":  # applied from the next commit on (issue 14)
            await self._emit(event, body, Outcome(FAILED, "NOT_SUPPORTED", f"resources[{body['recordIndex']}]: "
                                                  "deletes are not applied by this version of the worker"))
            return []
        version = body["schemaVersion"] or definition.versionNumber
        validators = validators_for(definition.id, version, definition.schema_of_version(version))
        record, failure = checked_record(body, definition, validators)
        if failure is not None or record is None:
            await self._emit(event, body, failure or Outcome(FAILED))
            return []
        if not skip_references:
            references = references_of(record, definition, body["partnerId"], body["tenantId"])
            missing = [r for r in references if not await self._exists(event, r.key)]
            if missing and waits(body) > 0:
                return missing
            if missing:
                names = ", ".join(f"{m.schema_definition_id}/{m.external_id}" for m in missing)
                await self._emit(event, body, Outcome(FAILED, MISSING_DEPENDENCY,
                                 f"resources[{body['recordIndex']}]: referenced resources do not exist: {names}"))
                return []
        current = self.eos.get(event, self.resources, key)
        changed, result = apply_record(current, body, record, validators, _now_ms())
        if changed is not None:
            # Its changelog record is the resource's message on the resources topic.
            await self.eos.put(event, self.resources, key, changed)
            if result.status == CREATED:
                await self.dependencies.on_created(event, key)
        await self._emit(event, body, result)
        return []

    async def _event_failure(self, event: faust.EventT, key: bytes, body: Body) -> Outcome | None:
        """What makes an event fail before it may even wait (direct producers skip the ingress)."""
        definition = await self.definition_of(body)
        if definition is None or (definition.deactivatedAt is not None
                                  and body["acceptedAt"] >= definition.deactivatedAt):
            return Outcome(FAILED, SCHEMA_NOT_FOUND,
                           f"schema definition {body['schemaDefinitionId']} does not exist or is deactivated")
        problems = options_of(body).problems()
        if problems:
            return Outcome(FAILED, INVALID_OPTIONS, f"resources[{body['recordIndex']}]: {'; '.join(problems)}")
        if body.get("version") == 1 and event.key != key:
            return Outcome(FAILED, VALIDATION_FAILED,
                           f"resources[{body['recordIndex']}]: the message key must be {key.decode()!r}")
        partition = partition_for(key, self.partitions)
        if partition != event.message.partition:
            # Its other writes go to that partition: applied here, they could overtake them.
            return Outcome(FAILED, VALIDATION_FAILED,
                           f"resources[{body['recordIndex']}]: the resource {key.decode()!r} belongs to partition "
                           f"{partition}, not {event.message.partition}; key the message by its resource key")
        return None

    async def _exists(self, event: faust.EventT, key: bytes) -> bool:
        # The event's own partition first: it holds what this transaction created moments ago.
        return self.eos.get(event, self.resources, key) is not None or await self.exists_elsewhere(key)

    # -- outcomes --------------------------------------------------------------------------

    async def _emit(self, event: faust.EventT, body: Body, result: Outcome, extra: dict[str, Any] | None = None) -> None:
        details = {"sourcePartition": event.message.partition, "sourceOffset": event.message.offset, **(extra or {})}
        await self.outcomes.add(event, BatchMeta.of_event(body), outcome_entry(
            body["recordIndex"], body["externalId"], result.status, _now_ms(), result.code, result.message, details))

    async def _emit_pending(self, event: faust.EventT, body: Body, pending: dict[str, Any]) -> None:
        dependencies = [{"schemaDefinitionId": m["schemaDefinitionId"], "externalId": m["externalId"]}
                        for m in pending["missing"]]
        await self._emit(event, body, Outcome(PENDING),
                         {"missingDependencies": dependencies, "expiresAt": pending["deadline"]})


def _now_ms() -> int:
    return int(time.time() * 1000)
