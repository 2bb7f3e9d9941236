"""The resource agent's logic: apply writes in order per resource, hold those that must wait.

Per resource R (one partition of the ingest topic, one agent at a time):
- no record of R is pending → check the record; if it references other resources, it first
  pins every one of them on its own partition (`processors.dependencies`) — so that a delete
  there sees R — in place where this worker may (`processors.in_place`), else by a request,
  whose answer it waits for; then applies;
- a reference is missing → with `dependencyWaitTimeout` > 0 (uploads only) the record waits,
  reported pending with its missing references, until they are created or its deadline
  passes; else it fails MISSING_DEPENDENCY (at once when this worker knows it is missing, or
  when the referenced partition answers "missing");
- R has a pending queue → the record joins its tail: records of one resource apply in order.
A patch of an absent resource fails NOT_FOUND. A delete fails NOT_FOUND or, when another
resource references R or has pinned it, REFERENCED; else R's tombstone goes to the
resources topic. A cascade delete of R instead asks every referrer to delete itself (a
cascade request on its partition, queued behind its other writes; it asks its own referrers in
turn; one that no longer references R at its turn stays), waits for all answers, looks again
(a new referrer may have pinned R meanwhile) and deletes R once none is left. A referrer whose
own cascade is under way answers "deleting" at once and is not waited for: that ends cycles
(A↔B, longer ones); self-references never count.
A delete without cascade whose referrers its own request deletes too (the ingress names them,
`ingest.deletes`) waits for their unrefs instead of failing. After each record, the resources
R no longer references (nor will, by its queued records) are told to forget R ("unref").
The waiting records' deadlines are kept in memory per partition (`processors.deadlines`), read from
the pending table when a partition arrives.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NotRequired, TypedDict

import faust
import orjson
from faust.types import TableT

from processors import metrics
from processors.apply import (
    Outcome,
    apply_record,
    checked_record,
    op_of,
    option_problems,
    options_of,
    uuid5,
    waits,
    where,
)
from processors.deadlines import Deadlines
from processors.dependencies import (
    PIN,
    DependencyIndex,
    cascade_answer,
    cascade_request,
    pin_request,
    unref_request,
)
from processors.hand_on import handed_on_from
from processors.in_place import event_at
from processors.outcomes import OutcomeBuffer
from processors.transactions import ExactlyOnce
from schemas.batch_events import (
    CREATED,
    DELETED,
    DEPENDENCY_TIMEOUT,
    FAILED,
    INVALID_OPTIONS,
    MISSING_DEPENDENCY,
    NOT_FOUND,
    PENDING,
    REFERENCED,
    SCHEMA_NOT_FOUND,
    VALIDATION_FAILED,
    outcome_entry,
)
from schemas.definitions import Definition
from schemas.events import Operation, resource_key_parts
from schemas.references import Reference, references_of
from schemas.validation import validators_for
from topics.definitions import ServiceTopics
from topics.partitioning import partition_for

Body = Operation  # a decoded ingest event
# The definition an event names (`partnerId`, `schemaDefinitionId`), or None.
DefinitionOf = Callable[[Mapping[str, Any]], Awaitable[Definition | None]]
# How long a record that may not wait for missing references waits for its pins' answers at
# most (they come within a round trip; this bounds a lost one); also how long a delete waits
# for referrers its own request deletes.
PIN_ANSWER_S = 60
# How long a cascade delete waits for its referrers' answers at most (a referrer's own queue,
# a record waiting for a missing reference included); past it the resource is kept.
CASCADE_S = 600
# Waiting records whose checked form is kept for their release (`_remember_checked`): ~1.5 KB each,
# and for an update the resource as it was read.
CHECKED_KEPT = 10_000
_READ = object()  # `_settle`: read the resource from the table
_CASCADE_IDS = uuid.UUID("0c1f8a52-5e7b-4d2c-b7f4-93a8e1d6c3b0").bytes


class _Checked(NamedTuple):
    """A record as checked before it waited for its pins (`ResourceProcessor._remember_checked`),
    and its resource as it was then."""

    definition: Definition
    current: dict[str, Any] | None
    record: dict[str, Any]
    references: list[Reference]


class PendingEntry(TypedDict):
    """What waits at resource R (the `pending` table's value at R's key): R's records in order,
    the head waiting for answers about what it references, or for its cascade."""

    queue: list[Body]
    deadline: int  # epoch ms: past it the head fails (or its cascade leaves R in place)
    # Resources whose partition has not answered the head's pin yet (absent: stored before pins).
    pins: NotRequired[list[str]]
    missing: list[dict[str, Any]]  # referenced resources reported missing, as the status shows them
    absent: NotRequired[list[str]]  # missing ones the head may not wait for: it fails once all answered
    cascade: NotRequired[dict[str, Any]]  # a cascade delete's progress: asked, deleted, excused, kept
    exempt: NotRequired[bool]  # a delete waiting for referrers its own request deletes


class WaitState(TypedDict, total=False):
    """What a waiting head adds to its pending entry (`PendingEntry`'s fields of the same name)."""

    pins: list[str]
    missing: list[dict[str, Any]]
    absent: list[str]
    cascade: dict[str, Any]
    exempt: bool


@dataclass(frozen=True)
class Wait:
    """Why the head record of a resource waits: fields of its pending entry, the requests
    (target key, message) whose answers it waits for, and for how long at most."""

    state: WaitState
    requests: list[tuple[bytes, dict[str, Any]]]
    seconds: int


class ResourceProcessor:
    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, resources: TableT, pending: TableT,
                 dependencies: DependencyIndex, definition_of: DefinitionOf, partitions: int,
                 released: Callable[[], None]) -> None:
        self.eos, self.topics = eos, topics
        self.released = released  # called when a waiting record learns that a missing reference was created
        self.resources, self.pending, self.dependencies = resources, pending, dependencies
        self.definition_of = definition_of
        self.partitions = partitions  # of the ingest topic
        self.outcomes = OutcomeBuffer(eos, topics.batch_events.name)
        # (resource key, event id) of a record waiting for its pins -> its checked form
        self._checked: dict[tuple[bytes, str], _Checked] = {}
        # (resource, its partition) unpinned in place during this record, to look at (`look_again`)
        self._unpinned: list[tuple[bytes, int]] = []
        self.deadlines = Deadlines()

    def _pending_entry(self, event: faust.EventT, key: bytes) -> PendingEntry | None:
        if not self.deadlines.may_be_pending(event.message.partition, key):
            return None  # most records: nothing of their resource waits (`processors.deadlines`)
        found: PendingEntry | None = self.eos.tables.get(event, self.pending, key)
        return found

    def forget_partitions(self, partitions: set[int]) -> None:
        self.deadlines.forget(partitions)
        for waiting in [w for w in self._checked if partition_for(w[0], self.partitions) in partitions]:
            del self._checked[waiting]

    def needs_tick(self, partition: int) -> bool:
        """Whether the notices partition `partition` has a deadline due (`on_tick`'s clock)."""
        return self.deadlines.needs_tick(partition, _now_ms())

    # -- inputs --------------------------------------------------------------------------

    async def on_ingest(self, event: faust.EventT, body: Body, key: bytes, placed: bool) -> None:
        """One operation of an ingest message (a message of version 2 may hold several) of the
        resource `key`; `placed`: known to be on its owner partition (`processors.hand_on`)."""
        definition = await self.definition_of(body)
        failure = self._event_failure(event, key, body, placed, definition)
        if failure is not None:
            await self._emit(event, body, failure)
            return
        queue = self._pending_entry(event, key)
        if queue is not None:
            queue["queue"].append(body)
            await self.eos.tables.put(event, self.pending, key, queue)
            await self._emit_pending(event, body, queue)
            return
        # `_drain` of this one record, its definition at hand (most records: applied at once).
        wait = await self._apply_or_wait(event, key, body, [], None, definition)
        if wait is not None:
            await self._wait(event, key, [body], wait)

    async def on_resolved(self, event: faust.EventT, key: bytes, notice: dict[str, Any]) -> None:
        """An answer to R (`key`) from a referenced resource's partition: "resolved" (pinned),
        "waiting" (it is missing; the record waits for it) or "missing" (the record may not wait)."""
        target = notice["target"]
        queue = self._pending_entry(event, key)
        if queue is None or queue["queue"][0]["eventId"] != notice["eventId"]:
            # That record expired or failed meanwhile: its pin, if one was made, is not needed.
            if notice["type"] == "resolved":
                await self._settle(event, key, None, {target.encode()}, queue["queue"] if queue else [])
            return
        head, *rest = queue["queue"]
        if notice["type"] == "waiting":
            if target in _pins(queue) and all(m["key"] != target for m in queue["missing"]):
                queue["missing"].append(_missing(target))
                await self.eos.tables.put(event, self.pending, key, queue)
                for waiting in queue["queue"]:
                    await self._emit_pending(event, waiting, queue)
            return
        queue["pins"] = [p for p in _pins(queue) if p != target]
        if notice["type"] == "missing":  # the record may not wait: it fails once every pin answered
            queue["absent"] = sorted({*queue.get("absent", []), target})
        else:
            missing = [m for m in queue["missing"] if m["key"] != target]
            if len(missing) < len(queue["missing"]):
                self.released()  # it waited for this one's creation: its client is waiting too
            queue["missing"] = missing
        if queue["pins"]:
            await self.eos.tables.put(event, self.pending, key, queue)
            if notice["type"] == "resolved" and queue["missing"]:
                for waiting in queue["queue"]:  # the status shows only what is still missing
                    await self._emit_pending(event, waiting, queue)
            return
        if queue.get("absent"):
            names = ", ".join(_name(absent) for absent in queue["absent"])
            self._checked.pop((key, head["eventId"]), None)
            await self._emit(event, head, Outcome(FAILED, MISSING_DEPENDENCY, f"resources[{head['recordIndex']}]: "
                                                  f"referenced resources do not exist: {names}"))
            await self._settle(event, key, None, await self._body_refs(head), rest)
            await self._drain(event, key, rest)
            return
        await self._drain(event, key, queue["queue"], released=queue)

    async def on_cascade(self, event: faust.EventT, key: bytes, request: dict[str, Any]) -> None:
        """A cascade delete of a resource that this one (`key`) references."""
        body = _cascade_body(request, key)
        queue = self._pending_entry(event, key)
        if queue is None:
            await self._drain(event, key, [body], stored=False)
        elif "cascade" in queue:  # its own cascade delete is under way: a cycle, or two cascades meet
            await self.eos.outputs.send_item(event, self.topics.dependency_requests.name, request["asker"].encode(),
                                             cascade_answer(request, {}, "deleting"))
        else:
            queue["queue"].append(body)  # after the writes of this resource accepted before it
            await self.eos.tables.put(event, self.pending, key, queue)

    async def on_unref(self, event: faust.EventT, key: bytes) -> None:
        """A resource stopped referencing this one (`key`): a delete waiting for that looks again."""
        queue = self._pending_entry(event, key)
        if queue is not None and "exempt" in queue:
            await self._drain(event, key, queue["queue"], released=queue)

    async def look_again(self, event: faust.EventT) -> None:
        """After a record: what `on_unref` does for each resource unpinned in place meanwhile,
        as an unref through the topic would have, and what `on_resolved` does with each answer
        made in place (`DependencyIndex.answered`) — here, not within the record: T's delete may
        unpin further resources, a released record create more, and R's own processing is not
        re-entered."""
        answered = self.dependencies.answered
        while self._unpinned or answered:
            if self._unpinned:
                target, partition = self._unpinned.pop()
                await self.on_unref(event_at(event, partition), target)
            else:
                waiter, partition, notice = answered.popleft()
                await self.on_resolved(event_at(event, partition), waiter, notice)

    async def on_cascaded(self, event: faust.EventT, key: bytes, answer: dict[str, Any]) -> None:
        """A referrer's answer to the cascade delete of this resource (`key`)."""
        queue = self._pending_entry(event, key)
        if (queue is None or "cascade" not in queue or queue["queue"][0]["eventId"] != answer["eventId"]
                or answer["target"] not in queue["cascade"]["asked"]):
            return  # that delete ended meanwhile (its deadline), or a duplicate
        progress = queue["cascade"]
        progress["asked"].remove(answer["target"])
        for definition_id, n in answer["deleted"].items():
            progress["deleted"][definition_id] = progress["deleted"].get(definition_id, 0) + n
        if answer["outcome"] == "deleting":
            progress["excused"].append(answer["target"])
        elif answer["outcome"] == "kept":
            progress["kept"] = True
        if progress["asked"]:
            await self.eos.tables.put(event, self.pending, key, queue)
            return
        await self._drain(event, key, queue["queue"], released=queue)

    async def on_tick(self, event: faust.EventT) -> None:
        partition = event.message.partition

        def stored() -> list[tuple[int, bytes]]:
            return [(q["deadline"], k) for k, q in self.eos.tables.partition_items(self.pending, partition)]

        for deadline, key in self.deadlines.due(partition, _now_ms(), stored):
            # Read from the table: the heap has just given up this deadline of the key's.
            queue: PendingEntry | None = self.eos.tables.get(event, self.pending, key)
            if queue is None:  # (the deadlines follow the table: not expected)
                self.deadlines.remove(partition, key)
                continue
            if queue["deadline"] != deadline:
                self.deadlines.add(partition, queue["deadline"], key)
                continue
            head, *rest = queue["queue"]
            if "exempt" in queue:
                left = self.dependencies.referrers_of(event, key, 1)
                await self._emit(event, head, await self._referenced(head, left[0]) if left else Outcome(
                    FAILED, REFERENCED, f"{where(head)}: resource '{head['externalId']}' was still referenced"))
                await self._drain(event, key, rest)
                continue
            if "cascade" in queue:
                await self._emit(event, head, Outcome(FAILED, REFERENCED, f"{where(head)}: resource "
                                 f"'{head['externalId']}' is still referenced: its cascade did not end in time"),
                                 {"cascade": queue["cascade"]["deleted"]})
                await self._drain(event, key, rest)
                continue
            # Its unanswered pins: missing, or (a lost answer) not known to exist.
            missing = ", ".join(_name(target) for target in _pins(queue))
            self._checked.pop((key, head["eventId"]), None)
            await self._emit(event, head, Outcome(FAILED, DEPENDENCY_TIMEOUT,
                             f"resources[{head['recordIndex']}]: references still missing at the deadline: {missing}"))
            await self._settle(event, key, None, await self._body_refs(head), rest)
            await self._drain(event, key, rest)

    # -- processing ------------------------------------------------------------------------

    async def _drain(self, event: faust.EventT, key: bytes, queue: list[Body],
                     released: PendingEntry | None = None, stored: bool = True) -> None:
        """Process `queue` in order until a record must wait; store what is left pending.
        `released`: the pending entry whose head has just had every answer it waited for;
        `stored`: whether R may have a pending entry to remove (else one lookup is spared)."""
        known = released is not None  # its pending entry is stored
        while queue:
            body = queue[0]
            wait = await self._apply_or_wait(event, key, body, queue[1:], released, await self.definition_of(body))
            released = None
            if wait is not None:
                await self._wait(event, key, queue, wait)
                return
            queue = queue[1:]
        if known or (stored and self.eos.tables.has(event, self.pending, key)):
            await self.eos.tables.delete(event, self.pending, key)
            self.deadlines.remove(event.message.partition, key)

    async def _wait(self, event: faust.EventT, key: bytes, queue: list[Body], wait: Wait) -> None:
        """Store R's `queue` pending, its head waiting for what `wait` says."""
        deadline = _now_ms() + wait.seconds * 1000
        pending: PendingEntry = {"queue": queue, "deadline": deadline, "pins": [], "missing": [], **wait.state}
        await self.eos.tables.put(event, self.pending, key, pending)
        self.deadlines.add(event.message.partition, deadline, key)
        for target, request in wait.requests:
            await self.eos.outputs.send_item(event, self.topics.dependency_requests.name, target, request,
                                             ordered=request["type"] == PIN)
        for waiting in queue:  # the head and everything queued behind it
            await self._emit_pending(event, waiting, pending)

    async def _apply_or_wait(self, event: faust.EventT, key: bytes, body: Body, rest: list[Body],
                             released: PendingEntry | None, definition: Definition | None) -> Wait | None:
        """Apply `body` (or fail it); or say what it must first wait for: its references pinned
        on their partitions, or (a cascade delete) its referrers deleted. `definition`: the
        one it names."""
        if definition is None:
            await self._emit(event, body, Outcome(FAILED, SCHEMA_NOT_FOUND,
                             f"schema definition {body['schemaDefinitionId']} does not exist"))
            return None
        if op_of(body) == "delete":
            return await self._delete(event, key, body, rest, released.get("cascade") if released else None)
        version = body["schemaVersion"] or definition.versionNumber
        validators = validators_for(definition.id, version, definition.schema_of_version(version))
        checked = self._checked.pop((key, body["eventId"]), None) if released is not None else None
        if checked is not None and checked.definition is not definition:
            checked = None
        # Checked before it waited, and its resource read then: nothing has changed it since (R's
        # other writes, cascades included, queue behind a waiting head; a rebalance forgets what
        # is kept here, a restart starts without it). Else read before the checks: a record that
        # creates its resource is checked once, as a whole.
        current = checked.current if checked is not None else self.eos.tables.get(event, self.resources, key)
        creating = current is None and op_of(body) != "patch"
        if checked is not None:
            record, references = checked.record, checked.references
        else:
            fresh, failure = checked_record(body, definition, validators, creating)
            if failure is not None or fresh is None:
                await self._emit(event, body, failure or Outcome(FAILED))
                return None
            record = fresh
            references = references_of(record, definition, body["partnerId"], body["tenantId"])
        if references and released is None:
            wait = await self._pin(event, key, body, references, current is None)
            if isinstance(wait, Outcome):
                await self._emit(event, body, wait)
                return None
            if wait is not None:
                self._remember_checked((key, body["eventId"]),
                                       _Checked(definition, current, record, references))
                return wait
        changed, result = apply_record(current, body, record, validators, _now_ms(), complete=creating)
        if changed is not None and definition.referenceFields:
            # Stored with the resource: who references whom is then readable from the resources
            # topic alone (the ingress's reverse index, `state.resource_store`). A creation stores the
            # record as it came, less its nulls: the same references.
            after = references if result.status == CREATED else references_of(
                changed["data"], definition, body["partnerId"], body["tenantId"])
            changed["references"] = [r.key.decode() for r in after]
        if changed is not None:
            # Its changelog record is the resource's message on the resources topic.
            await self.eos.tables.put(event, self.resources, key, changed)
            if result.status == CREATED:
                await self.dependencies.on_created(event, key)
        await self._emit(event, body, result)
        if references or current is not None:  # else it referenced nothing and pinned nothing
            await self._settle(event, key, current, {r.key for r in references}, rest,
                               after=current if changed is None else changed)
        return None

    async def _pin(self, event: faust.EventT, key: bytes, body: Body, references: list[Reference], new: bool
                   ) -> Wait | Outcome | None:
        """Pin every resource the record of R (`key`) references on its own partition, so that a
        delete there sees R (`processors.dependencies`): at once, in this transaction, where this
        worker may (`processors.in_place`: this partition, and others it processes), by a request
        for the others. What the record then waits for (None: nothing, it applies now), or why
        it fails.

        Only uploads wait for missing references; the others wait just for the answers. A
        record that may not wait learns which are missing from their partitions' answers, and
        fails naming them all. `new`: R does not exist (its pins are surely not stored yet)."""
        partition, may_wait = event.message.partition, waits(body) > 0
        places = {r.key: partition_for(r.key, self.partitions) for r in references}
        here = [r for r in references if self.eos.in_place.allows(partition, places[r.key])]
        if not may_wait and len(here) == len(references):
            missing = [r for r in here
                       if not self.eos.tables.has(event_at(event, places[r.key]), self.resources, r.key)]
            if missing:  # nothing pinned yet: nothing to take back
                names = ", ".join(f"{m.schema_definition_id}/{m.external_id}" for m in missing)
                return Outcome(FAILED, MISSING_DEPENDENCY,
                               f"resources[{body['recordIndex']}]: referenced resources do not exist: {names}")
        answers = {r.key: await self.dependencies.pin(event_at(event, places[r.key]), r.key,
                                                      pin_request(key, body["eventId"], r.key, may_wait, new))
                   for r in here}
        elsewhere = [r for r in references if r.key not in answers]
        waiting = [r for r in here if answers[r.key] == "waiting"]
        if not elsewhere and not waiting:
            return None
        absent = sorted(r.key.decode() for r in here if answers[r.key] == "missing")
        return Wait({"pins": [r.key.decode() for r in (*elsewhere, *waiting)],
                     "missing": [{"key": m.key.decode(), **m.as_dependency()} for m in waiting],
                     **({"absent": absent} if absent else {})},
                    [(r.key, pin_request(key, body["eventId"], r.key, may_wait, new)) for r in elsewhere],
                    waits(body) or PIN_ANSWER_S)

    def _remember_checked(self, waiting: tuple[bytes, str], checked: _Checked) -> None:
        """Keep a waiting record's checked form for its release (in memory, bounded: a record
        released after a restart, or that came to wait while `CHECKED_KEPT` others did, is
        checked again). Records are released in about the order they came to wait: dropping
        the oldest to make room dropped the very ones released next (a burst of 20,000 records
        naming three resources each checked 19,070 of its first 35,000 releases twice)."""
        if len(self._checked) < CHECKED_KEPT:
            self._checked[waiting] = checked

    async def _delete(self, event: faust.EventT, key: bytes, body: Body, rest: list[Body],
                      progress: dict[str, Any] | None) -> Wait | None:
        """Delete R, or refuse; a cascade delete first waits for its referrers to be deleted
        (`progress`: what their answers said, once all came)."""
        current = self.eos.tables.get(event, self.resources, key)
        asker = body.get("cascadeFor")
        if (asker is not None and current is not None
                and asker["asker"].encode() not in await self._resource_refs(current)):
            # It stopped referencing the asker before the cascade reached it (a write applied here
            # first, whose unref the asker had not read yet): it is no referrer to delete.
            current = None
        if current is None:
            if asker is not None:
                # Nothing to delete; a pin it still holds on the asker is stale.
                await self._unref(event, asker["asker"].encode(), key)
                await self._emit(event, body, Outcome(DELETED))
            elif (body.get("plan") or {}).get("byCascade"):
                # Its request's cascade deleted it first (it references another named one): a
                # success, not counted twice among the resources deleted by cascade.
                await self._emit(event, body, Outcome(DELETED), {"cascade": {body["schemaDefinitionId"]: -1}})
            else:
                await self._emit(event, body, Outcome(FAILED, NOT_FOUND, f"{where(body)}: resource "
                                                      f"'{body['externalId']}' does not exist"))
            return None
        deleted: dict[str, int] = dict(progress["deleted"]) if progress else {}
        excused: list[str] = progress["excused"] if progress else []
        wait = set((body.get("plan") or {}).get("wait", []))
        referrers = [r for r in self.dependencies.referrers_of(event, key, 1000 + len(excused) + len(wait))
                     if r.decode() not in excused]
        if progress is not None and progress["kept"]:
            await self._emit(event, body, Outcome(FAILED, REFERENCED, f"{where(body)}: resource "
                             f"'{body['externalId']}' is referenced by a resource its cascade could not delete"),
                             {"cascade": deleted})
            return None
        if referrers and not body.get("cascade"):
            others = [r for r in referrers if r.decode() not in wait]
            if not others:
                # Referenced only by resources its request deletes too: deleted once they are
                # (each one's unref looks again), or left in place at the deadline.
                return Wait({"exempt": True}, [], PIN_ANSWER_S)
            await self._emit(event, body, await self._referenced(body, others[0]))
            return None
        referrers = referrers[:1000]
        if referrers:  # a round of at most 1000; the next look finds any more
            state = {"asked": [r.decode() for r in referrers], "deleted": deleted, "excused": excused, "kept": False}
            return Wait({"cascade": state},
                        [(r, cascade_request(key, body["eventId"], r, body["batchId"])) for r in referrers], CASCADE_S)
        await self.eos.tables.delete(event, self.resources, key)  # a tombstone on the resources topic
        # Unrefs first: an asker reads them before the answer (one topic, one transaction).
        await self._settle(event, key, current, set(), rest)
        if asker is not None:
            deleted[body["schemaDefinitionId"]] = deleted.get(body["schemaDefinitionId"], 0) + 1
        await self._emit(event, body, Outcome(DELETED), {"cascade": deleted} if body.get("cascade") else None)
        return None

    async def _settle(self, event: faust.EventT, key: bytes, before: dict[str, Any] | None, pinned: set[bytes],
                      rest: list[Body], after: Any = _READ) -> None:
        """After a record of R: tell every resource R referenced (`before`) or pinned, and no
        longer references nor will (its records still queued), that it may forget R. `after`:
        R as the record left it, when the caller has it at hand."""
        candidates = set(pinned)
        if before is not None:
            candidates |= await self._resource_refs(before)
        if not candidates:
            return
        keep: set[bytes] = set()
        current = self.eos.tables.get(event, self.resources, key) if after is _READ else after
        if current is not None:
            keep |= await self._resource_refs(current)
        for queued in rest:
            keep |= await self._body_refs(queued)
        for target in sorted(candidates - keep):
            await self._unref(event, target, key)

    async def _unref(self, event: faust.EventT, target: bytes, key: bytes) -> None:
        """Tell T (`target`) to forget R (`key`): in place where R's pins are made in place
        (`processors.in_place`), else by a request on T's partition."""
        partition = partition_for(target, self.partitions)
        if self.eos.in_place.allows(event.message.partition, partition):
            await self.dependencies.unpin(event_at(event, partition), target, key)
            self._unpinned.append((target, partition))  # a delete of T waiting for that looks again (`look_again`)
        else:
            await self.eos.outputs.send_item(event, self.topics.dependency_requests.name, target, unref_request(key),
                                             ordered=True)

    async def _resource_refs(self, resource: dict[str, Any]) -> set[bytes]:
        if "references" in resource:
            return {r.encode() for r in resource["references"]}
        definition = await self.definition_of({"partnerId": resource["platformId"],
                                               "schemaDefinitionId": resource["schemaDefinitionId"]})
        if definition is None or not definition.referenceFields:
            return set()
        return {r.key for r in references_of(resource["data"], definition, resource["platformId"],
                                             resource["businessId"])}

    async def _body_refs(self, body: Body) -> set[bytes]:
        """What a queued record references (nothing for a delete or an unreadable record)."""
        data = body["data"]
        if data is None:
            return set()
        definition = await self.definition_of(body)
        if definition is None or not definition.referenceFields:
            return set()
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError:
            return set()
        if not isinstance(record, dict):
            return set()
        return {r.key for r in references_of(record, definition, body["partnerId"], body["tenantId"])}

    async def _referenced(self, body: Body, referrer: bytes) -> Outcome:
        """REFERENCED, naming the referrer by its schema's name and external id."""
        partner_id, _, definition_id, external_id = resource_key_parts(referrer)
        definition = await self.definition_of({"partnerId": partner_id, "schemaDefinitionId": definition_id})
        return Outcome(FAILED, REFERENCED, f"{where(body)}: resource '{body['externalId']}' is referenced by "
                                           f"{definition.name if definition else definition_id}/{external_id}")

    def _event_failure(self, event: faust.EventT, key: bytes, body: Body, placed: bool,
                       definition: Definition | None) -> Outcome | None:
        """What makes an event fail before it may even wait (direct producers skip the ingress);
        `definition`: the one it names."""
        if definition is None or (definition.deactivatedAt is not None
                                  and body["acceptedAt"] >= definition.deactivatedAt):
            return Outcome(FAILED, SCHEMA_NOT_FOUND,
                           f"schema definition {body['schemaDefinitionId']} does not exist or is deactivated")
        problems = option_problems(options_of(body))
        if problems:
            return Outcome(FAILED, INVALID_OPTIONS, f"resources[{body['recordIndex']}]: {'; '.join(problems)}")
        if body.get("version") == 1 and event.key != key:
            return Outcome(FAILED, VALIDATION_FAILED,
                           f"resources[{body['recordIndex']}]: the message key must be {key.decode()!r}")
        if placed:
            return None
        partition = partition_for(key, self.partitions)
        if partition != event.message.partition:
            # A copy handed on here (`processors.hand_on`) is not handed on twice: applied
            # here, it could overtake the resource's other writes.
            return Outcome(FAILED, VALIDATION_FAILED,
                           f"resources[{body['recordIndex']}]: the resource {key.decode()!r} belongs to partition "
                           f"{partition} of {self.partitions}, not {event.message.partition}, where partition "
                           f"{handed_on_from(event.message.headers)} handed it on: do all workers have the ingest "
                           "topic's partition count (REACH_TOPIC_PARTITIONS)?")
        return None

    # -- outcomes --------------------------------------------------------------------------

    async def _emit(self, event: faust.EventT, body: Body, result: Outcome,
                    extra: dict[str, Any] | None = None) -> None:
        asker = body.get("cascadeFor")
        if asker is not None:  # a resource deleted by cascade: its answer goes to the one that asked
            await self.eos.outputs.send_item(event, self.topics.dependency_requests.name, asker["asker"].encode(),
                                             cascade_answer(asker, (extra or {}).get("cascade", {}),
                                                            "deleted" if result.status == DELETED else "kept"))
            return
        now = _now_ms()
        if result.status != PENDING:
            metrics.record_applied(result.status, result.code, body.get("acceptedAt"), now)
        message = event.message
        await self.outcomes.add(event, body, outcome_entry(
            body["recordIndex"], body["externalId"], result.status, now, message.partition, message.offset,
            result.code, result.message, extra))

    async def _emit_pending(self, event: faust.EventT, body: Body, pending: PendingEntry) -> None:
        if not pending["missing"] or "cascadeFor" in body:
            return  # only waiting for its pins' answers (a round trip): not reported as pending
        missing = {m["key"] for m in pending["missing"]}
        if any(pin not in missing for pin in _pins(pending)):
            return  # reported once every pin has answered, with all that is missing at once
        dependencies = [{"schemaDefinitionId": m["schemaDefinitionId"], "externalId": m["externalId"]}
                        for m in pending["missing"]]
        await self._emit(event, body, Outcome(PENDING),
                         {"missingDependencies": dependencies, "expiresAt": pending["deadline"]})


def _missing(target: str) -> dict[str, str]:
    """A pending entry's missing reference, from its resource key."""
    _, _, definition_id, external_id = resource_key_parts(target.encode())
    return {"key": target, "schemaDefinitionId": definition_id, "externalId": external_id}


def _name(target: str) -> str:
    """How an error names a referenced resource: its schema definition id and external id."""
    _, _, definition_id, external_id = resource_key_parts(target.encode())
    return f"{definition_id}/{external_id}"


def _pins(queue: PendingEntry) -> list[str]:
    """The references of the head still unanswered (queues stored before pins: its missing ones)."""
    return queue["pins"] if "pins" in queue else [m["key"] for m in queue["missing"]]


def _cascade_body(request: dict[str, Any], key: bytes) -> Body:
    """The delete that a cascade request asks of the resource `key` (no batch counts it: its
    outcome is an answer to the asker)."""
    partner_id, tenant_id, definition_id, external_id = resource_key_parts(key)
    return {"op": "delete", "cascade": True, "cascadeFor": request, "partnerId": partner_id, "tenantId": tenant_id,
            "schemaDefinitionId": definition_id, "externalId": external_id, "recordIndex": -1,
            "eventId": uuid5(_CASCADE_IDS, request["eventId"] + "\x00" + request["target"]),
            "batchId": request["batchId"], "data": None, "schemaVersion": None, "onConflict": "upsert",
            "ignoreUnknownFields": False, "dependencyWaitTimeout": 0}


def _now_ms() -> int:
    return int(time.time() * 1000)
