"""Dead letters: messages the pipeline cannot use, kept with why and where they came from.

A dead letter carries the original key, value and headers, plus headers of its own:
`reach-dlq-reason`, `reach-dlq-topic`, `reach-dlq-partition`, `reach-dlq-offset`,
`reach-dlq-at` (epoch ms). `reach dead-letters` lists them and re-drives chosen ones.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

DLQ_PREFIX = "reach-dlq-"
REASON, TOPIC, PARTITION, OFFSET, AT = (DLQ_PREFIX + n for n in ("reason", "topic", "partition", "offset", "at"))


def dead_letter_headers(original: list[tuple[str, bytes]], reason: str, topic: str, partition: int,
                        offset: int) -> list[tuple[str, bytes]]:
    """The original headers (without earlier dead-letter ones) and where/why this one failed."""
    kept = [(k, v) for k, v in original if not k.startswith(DLQ_PREFIX)]
    return kept + [
        (REASON, reason.encode()), (TOPIC, topic.encode()), (PARTITION, str(partition).encode()),
        (OFFSET, str(offset).encode()), (AT, str(int(time.time() * 1000)).encode()),
    ]


def original_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers a dead letter had before it failed (what a re-drive sends again)."""
    return [(k, v) for k, v in headers if not k.startswith(DLQ_PREFIX)]


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str:
        return next((v.decode(errors="replace") for k, v in self.headers if k == name), "")

    def summary(self) -> dict[str, Any]:
        return {
            "offset": self.offset, "reason": self.header(REASON),
            "from": f"{self.header(TOPIC)}[{self.header(PARTITION)}]@{self.header(OFFSET)}",
            "at": self.header(AT), "key": (self.key or b"").decode(errors="replace"),
            "valueBytes": len(self.value or b""),
        }


async def read_dead_letters(bootstrap_servers: str, topic: str) -> list[DeadLetter]:
    """Every dead letter currently on `topic` (one partition), oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        letters: list[DeadLetter] = []
        while await consumer.position(tp) < end:
            for message in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                letters.append(DeadLetter(message.offset, message.key, message.value, list(message.headers or [])))
        return letters
    finally:
        await consumer.stop()


async def redrive(bootstrap_servers: str, dead_letter_topic: str, offsets: set[int]) -> list[DeadLetter]:
    """Send the chosen dead letters back to the topic they came from, as they were."""
    chosen = [d for d in await read_dead_letters(bootstrap_servers, dead_letter_topic) if d.offset in offsets]
    missing = offsets - {d.offset for d in chosen}
    if missing:
        raise ValueError(f"no dead letter at offset(s) {sorted(missing)}")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for letter in chosen:
            await producer.send_and_wait(letter.header(TOPIC), letter.value, key=letter.key,
                                         headers=original_headers(letter.headers))
    finally:
        await producer.stop()
    return chosen


def main(argv: list[str]) -> int:
    """`reach dead-letters list | redrive OFFSET...`."""
    import argparse

    from reach.config import Settings
    from topics.definitions import service_topics

    parser = argparse.ArgumentParser(prog="reach dead-letters")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print every dead letter as one JSON line")
    again = sub.add_parser("redrive", help="send chosen dead letters back to their topic")
    again.add_argument("offsets", nargs="+", type=int, help="offsets on the dead-letter topic")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    topic = service_topics(settings).dead_letters.name
    if args.command == "list":
        for letter in asyncio.run(read_dead_letters(settings.bootstrap_servers, topic)):
            print(orjson.dumps(letter.summary()).decode())
        return 0
    try:
        sent = asyncio.run(redrive(settings.bootstrap_servers, topic, set(args.offsets)))
    except ValueError as exc:
        print(f"reach dead-letters: {exc}", file=sys.stderr)
        return 2
    for letter in sent:
        print(f"re-drove offset {letter.offset} to {letter.header(TOPIC)}")
    return 0
