"""Every process's view of the schema definitions, materialised from their compacted topic.

Why a plain consumer feeding a local map, not a Faust global table: the ingress is not a
Faust app, and both the ingress and the workers must apply the very same rules to the very
same log. The topic has one partition, so every process sees one total order of writes.

Writes are checked twice: once by the writer against its current view (for clear errors),
and once more here, in log order, by every process alike. Two ingresses that race to create
the same name both write; whichever lands first in the log wins everywhere, and the loser
learns it when its own write comes back (then it writes a tombstone for its key, so that
compaction can never resurrect it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import orjson
from aiokafka import AIOKafkaProducer

from schemas.definitions import Definition
from topics.view import TopicView

log = logging.getLogger(__name__)
_VERDICTS_KEPT = 10_000


def definition_key(partner_id: str, definition_id: str) -> bytes:
    return f"{partner_id}/{definition_id}".encode()


class DefinitionView(TopicView):
    """Materialises the schema-definitions topic; answers lookups; performs checked writes."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self._by_key: dict[bytes, Definition] = {}
        self._verdicts: OrderedDict[int, str | None] = OrderedDict()
        self._write_lock = asyncio.Lock()

    # -- the rules every process applies in log order ----------------------------------------

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._by_key.pop(key, None)
            return
        try:
            definition = Definition.from_record(orjson.loads(value))
        except Exception:
            log.error("schema registry: undecodable record at offset %s skipped", offset)
            return
        verdict = self._conflict(key, definition)
        if verdict is None:
            self._by_key[key] = definition
        self._verdicts[offset] = verdict
        while len(self._verdicts) > _VERDICTS_KEPT:
            self._verdicts.popitem(last=False)

    def _conflict(self, key: bytes, new: Definition) -> str | None:
        current = self._by_key.get(key)
        expected_revision = 1 if current is None else current.revision + 1
        if new.revision != expected_revision:
            return "The schema definition was changed concurrently; retry"
        others = [d for k, d in self._by_key.items() if k != key and d.partnerId == new.partnerId and d.active]
        if new.active:
            clash = self.clash(new)
            if clash is not None:
                return f"A schema definition named '{clash.name}' already exists"
            active_ids = {d.id for d in others} | {new.id}
            missing = [r for r in new.referenceSchemas if r not in active_ids]
            if missing:
                return "A referenced schema definition is no longer active"
        elif current is not None and current.active:
            users = [d.name for d in others if new.id in d.referenceSchemas]
            if users:
                return f"Referenced by active schema definitions: {', '.join(sorted(users))}"
        return None

    # -- lookups ---------------------------------------------------------------------------

    def find(self, partner_id: str, id_or_name: str) -> Definition | None:
        """The active definition of `partner_id` with this id, name or pluralName (any case)."""
        wanted = id_or_name.lower()
        for d in self._by_key.values():
            if d.partnerId == partner_id and d.active and (d.id == wanted or wanted in d.names):
                return d
        return None

    async def find_fresh(self, partner_id: str, id_or_name: str, timeout_s: float | None = None) -> Definition | None:
        """Like `find`, but on a miss first catch up with writes made through other processes
        (waiting at most `timeout_s`, default `wait_s`: TimeoutError after)."""
        found = self.find(partner_id, id_or_name)
        if found is None:
            await self.sync(None if timeout_s is None else min(timeout_s, self.wait_s))
            found = self.find(partner_id, id_or_name)
        return found

    def get(self, partner_id: str, definition_id: str) -> Definition | None:
        """The definition with this id, deactivated or not (for work accepted before)."""
        return self._by_key.get(definition_key(partner_id, definition_id))

    def active(self, partner_id: str) -> list[Definition]:
        return sorted((d for d in self._by_key.values() if d.partnerId == partner_id and d.active),
                      key=lambda d: (d.createdAt, d.id))

    def clash(self, new: Definition) -> Definition | None:
        """Another active definition of the partner that answers to one of `new`'s names."""
        return next((d for d in self.active(new.partnerId) if d.id != new.id and d.names & new.names), None)

    def referencing(self, definition: Definition) -> list[Definition]:
        """Other active definitions that reference `definition`."""
        return [d for d in self.active(definition.partnerId)
                if d.id != definition.id and definition.id in d.referenceSchemas]

    # -- writes ----------------------------------------------------------------------------

    def write_lock(self) -> asyncio.Lock:
        """Serialises this process's writes, so its own check-then-write steps never race."""
        return self._write_lock

    async def write(self, producer: AIOKafkaProducer, definition: Definition) -> str | None:
        """Publish `definition`; return None once applied, or why the log order refused it."""
        key = definition_key(definition.partnerId, definition.id)
        offset = await self.append(producer, key, orjson.dumps(definition.to_record()))
        verdict = self._verdicts.get(offset, "The write was not applied")
        if verdict is not None and definition.revision == 1:
            await producer.send_and_wait(self.topic, None, key=key)
        return verdict
