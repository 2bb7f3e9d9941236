"""Records of an input partition read back from Kafka: those Faust's stream skipped
(`processors.transactions`, point 6), which `ExactlyOnce.in_order` processes before the record
that came after them."""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP


@dataclass(frozen=True)
class _Message:
    topic: str
    partition: int
    offset: int
    tp: TP
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class SkippedRecord:
    """A record read back from Kafka, shaped like the parts of a Faust event we use."""

    key: bytes | None
    value: bytes | None
    message: _Message


class ReadBack:
    """A read_committed consumer started on first use, and what its last fetch per partition returned."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._reader: AIOKafkaConsumer | None = None
        self._read_ahead: dict[TP, tuple[int, int, list[Any]]] = {}  # see records_between

    def forget(self, tp: TP) -> None:
        self._read_ahead.pop(tp, None)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    async def records_between(self, tp: TP, start: int, end: int) -> list[Any]:
        """The committed records of `tp` in [start, end); a hole of markers only gives [].

        Holes are mostly transaction markers, one per upload and partition. What one fetch
        returned is kept, so that the next holes are answered without asking Kafka again.
        """
        known = self._read_ahead.get(tp)
        if known is None or not (known[0] <= start and end <= known[1]):
            known = self._read_ahead[tp] = await self._fetch_from(tp, start, end)
        records = known[2]
        first = bisect.bisect_left(records, start, key=lambda r: r.offset)
        found = []
        for record in records[first:]:
            if record.offset >= end:
                break
            found.append(SkippedRecord(record.key, record.value, _Message(
                tp.topic, tp.partition, record.offset, tp, list(record.headers or []))))
        return found

    async def _fetch_from(self, tp: TP, start: int, end: int) -> tuple[int, int, list[Any]]:
        """(start, position, every committed record in between), reading at least up to `end`."""
        if self._reader is None:
            self._reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                            isolation_level="read_committed", fetch_max_wait_ms=10)
            await self._reader.start()
        reader, atp = self._reader, TopicPartition(tp.topic, tp.partition)
        reader.assign([atp])
        reader.seek(atp, start)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + 30
        while (position := await reader.position(atp)) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {tp} [{start}, {end}) back from Kafka")
            records.extend((await reader.getmany(atp, timeout_ms=500)).get(atp, []))
        return start, position, records
