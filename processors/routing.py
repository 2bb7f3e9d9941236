"""Which handler takes each record of the worker's agent (`processors.app`).

Its three co-partitioned input topics carry: ingest messages (decoded, their operations handed
on to their owner partition when they are elsewhere, or sent to the dead letters when they
cannot be used); on the dependency-requests topic, ingest messages handed on from another
partition, pins, unpins and cascade requests and their answers; on the dependency-notices
topic, answers to pins and the expiry ticks.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import orjson

from processors import metrics
from processors.dead_letters import dead_letter_headers
from processors.dependencies import CASCADE, CASCADED, UNREF, DependencyIndex
from processors.event_checks import unusable_batch
from processors.grouped import items_of
from processors.hand_on import handed_on_from, place
from processors.resource_processor import ResourceProcessor
from processors.transactions import ExactlyOnce
from processors.turns import Turns
from schemas.events import UndecodableEvent, decode_ingest_message, operation_keys
from topics.definitions import ServiceTopics

log = logging.getLogger(__name__)


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else [tuple(h) for h in headers]


class RecordRouter:
    """Routes the agent's records to the resource processor and the dependency index."""

    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, processor: ResourceProcessor,
                 index: DependencyIndex) -> None:
        self.eos, self.topics, self.processor, self.index = eos, topics, processor, index
        self.turns = Turns()  # between an event's records (`processors.turns`)

    async def on_ingest_message(self, event: faust.EventT, copy: bool = False) -> None:
        """Decode and attribute an ingest message's operations (handing on those of another
        partition, unless it is a `copy` handed on here), or send it to the dead letters."""
        try:
            bodies = decode_ingest_message(event.value, event.message.headers)
            reason = next((f"operation {n}: {r}" if len(bodies) > 1 else r
                           for n, r in enumerate(map(unusable_batch, bodies)) if r is not None), None)
        except UndecodableEvent as exc:
            reason = str(exc)
        message = event.message
        if reason is None:
            if copy:  # handed on to this partition: it is not handed on again, and its owner is checked
                for key, body in zip(operation_keys(bodies), bodies):
                    await self.processor.on_ingest(event, body, key, placed=False)
                    await self.turns.take()
                return
            placement = place(bodies, message.partition, self.topics.ingest.partitions, event.key, event.value,
                              _headers(message.headers))
            requests = self.topics.dependency_requests.name
            for partition, to_key, to_value, to_headers in placement.elsewhere:  # to the owner, on the requests topic
                await self.eos.outputs.send(event, requests, to_key, to_value, partition, to_headers)
            if placement.handed_on:
                metrics.HANDED_ON.inc(placement.handed_on)
            for key, body in placement.here:
                await self.processor.on_ingest(event, body, key, placed=True)
                await self.turns.take()
            return
        log.warning("dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        headers = dead_letter_headers(_headers(message.headers), reason, message.topic, message.partition,
                                      message.offset)
        await self.eos.outputs.send(event, self.topics.dead_letters.name, message.key, message.value, 0, headers)
        metrics.DEAD_LETTERS.inc()

    async def route(self, record: Any) -> None:
        """Hand `record` (an event, or a record read back by `ExactlyOnce.in_order`) to its handler."""
        await self._route(record)
        await self.processor.look_again(record)

    async def _route(self, record: Any) -> None:
        if record.message.topic == self.topics.ingest.name:
            await self.on_ingest_message(record)
            return
        if record.message.topic == self.topics.dependency_requests.name:
            if handed_on_from(record.message.headers) is not None:  # an ingest message (`processors.hand_on`)
                await self.on_ingest_message(record, copy=True)
                return
            for key, request in items_of(record.key, orjson.loads(record.value)):
                kind = request.get("type")
                if kind == CASCADE:
                    await self.processor.on_cascade(record, key, request)
                elif kind == CASCADED:
                    await self.processor.on_cascaded(record, key, request)
                else:
                    await self.index.on_request(record, key, request)
                    if kind == UNREF:
                        await self.processor.on_unref(record, key)
                await self.turns.take()
            return
        message = orjson.loads(record.value)
        if message["type"] == "tick":
            await self.processor.on_tick(record)
            return
        for key, notice in items_of(record.key, message):
            await self.processor.on_resolved(record, key, notice)
            await self.turns.take()
