"""Record outcomes, gathered per input partition and batch, sent as one message per batch.

An outcome belongs to the transaction of the event that produced it, so outcomes wait here
per input partition and go out when the transaction commits (or when a batch has gathered
`MAX_PER_MESSAGE` of them): one message for many records instead of one each. If the
worker's producer changed in between, the transaction was aborted and the events will be
processed again: what waited for it is dropped.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

from processors.transactions import ExactlyOnce
from schemas.batch_events import BatchMeta, outcomes
from schemas.events import Operation

MAX_PER_MESSAGE = 1000


class OutcomeBuffer:
    def __init__(self, eos: ExactlyOnce, topic: str) -> None:
        self.eos, self.topic = eos, topic
        # input partition -> (its producer when the first outcome came, batchId -> (meta, entries))
        self._open: dict[TP, tuple[Any, dict[str, tuple[BatchMeta, list[dict[str, Any]]]]]] = {}
        eos.before_commit(self.flush)

    async def add(self, event: faust.EventT, body: Operation, entry: dict[str, Any]) -> None:
        """Queue the outcome of one record (`body`: its decoded ingest event) in `event`'s transaction."""
        tp = event.message.tp
        producer = self.eos.transactions.producer_of(tp)
        slot = self._open.get(tp)
        if slot is None or slot[0] is not producer:
            slot = self._open[tp] = (producer, {})
        waiting = slot[1].get(body["batchId"])
        if waiting is None:
            waiting = slot[1][body["batchId"]] = (BatchMeta.of_event(body), [])
        meta, entries = waiting
        entries.append(entry)
        if len(entries) >= MAX_PER_MESSAGE:
            del slot[1][meta.batchId]
            await self.eos.outputs.send_in(tp, self.topic, meta.batchId.encode(), outcomes(meta, entries))

    async def flush(self) -> None:
        """Send what waits for the transaction (called just before it commits): every
        partition's, whether or not its own offset moves in this commit (a delete made in place
        on another partition answers there)."""
        slots, self._open = self._open, {}
        producer = self.eos.transactions.producer()
        for tp, (carrier, waiting) in slots.items():
            if carrier is producer:
                for meta, entries in waiting.values():
                    await self.eos.outputs.send_in(tp, self.topic, meta.batchId.encode(), outcomes(meta, entries))
