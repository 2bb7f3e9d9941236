"""`Idempotency-Key` on batch-shaped writes (draft-ietf-httpapi-idempotency-key-header).

A request with a key is accepted at most once per key of its tenant while the key is kept
(`REACH_IDEMPOTENCY_KEY_HOURS`, default 24): a retry with the same key and the same request
(method, path, query and body) gets the first one's 202 and batchId again, marked
`Idempotent-Replayed: true`, and enqueues nothing; the same key with another request gets 422;
a retry while the first is still being accepted gets 409.

How every ingress agrees, also across restarts: the decision lives in the batch-events topic.
Before it publishes, a request claims its key there (`claim_event`; all claims of a key go to
one partition, so they have one order): the first claim holds the key, by the rule every
reader applies (`BatchStore.after_claim`). The request decides at once from its batch store
and the claims written after what the store has folded, read up to its own claim without
waiting for open transactions on that partition (claims are never part of one, so what is
there is there for good): a worker's transaction in progress, or one a killed ingress left
open for 15 s, does not hold the decision up. The accepted batch's registration,
written in the batch's own transaction, carries the claim, so that once the batch is in Kafka
so is the key — an ingress killed between Kafka's commit and its answer leaves a batch that the
retry finds. A batch that was not accepted releases its claim; a claim whose ingress died
before it could publish or release holds the key for `claim_stale_s` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.requests import Request

from ingest.context import Ingress
from ingest.responses import ApiError
from schemas.batch_events import BatchMeta, IdempotencyClaim, claim_event, claim_key
from state.bookkeeping import BatchLedger, KeyEntry
from topics.view import REQUEST_TIMEOUT_MS

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
RELEASE_WAIT_S = 60.0  # how long a release may wait for the broker (after that, the claim goes stale)
IN_FLIGHT_WAIT_S = 2.0  # for another attempt at the same request to be accepted, before answering 409


@dataclass(frozen=True)
class Keyed:
    """A request's idempotency key and what makes it that request (`fingerprint`)."""

    key: str
    fingerprint: str


def keyed(request: Request, body: bytes) -> Keyed | None:
    """The request's key and fingerprint, None without a key; 400 if the key is malformed."""
    key = key_of(request)
    return None if key is None else Keyed(key, fingerprint(request, body))


def key_of(request: Request) -> str | None:
    """The request's idempotency key (a quoted or bare string), None without one; 400 if malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


def fingerprint(request: Request, body: bytes) -> str:
    """What makes two requests the same request: method, path, query (in any order) and body."""
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, "&".join(sorted(str(request.query_params).split("&")))):
        digest.update(part.encode() + b"\x00")
    digest.update(body)
    return digest.hexdigest()


def accepted_before(entry: KeyEntry | None, print_: str) -> BatchMeta | None:
    """The batch accepted under the key of `entry` for this same request; 422 for another request."""
    batch = entry.get("batch") if entry is not None else None
    if entry is None or batch is None:
        return None
    if entry["fingerprint"] != print_:
        raise reused()
    return BatchMeta(**batch)


def reused() -> ApiError:
    return ApiError(422, "This Idempotency-Key was used for another request (method, path, query or body); "
                         "use a new key for a new request")


async def claim(state: Ingress, partner_id: str, tenant_id: str, key: str, print_: str,
                deadline: float) -> IdempotencyClaim | BatchMeta:
    """Hold `key` for this request (the claim to publish its batch with), or the batch already
    accepted for it; 409 while another attempt holds it, 422 if that was another request.
    Waits until `deadline` (an event-loop time: the request's, `ingest.answer_budget`)."""
    loop = asyncio.get_running_loop()
    batches = state.ledger
    done = accepted_before(batches.key_entry(partner_id, tenant_id, key), print_)
    if done is not None:
        return done
    mine = IdempotencyClaim(partner_id, tenant_id, key, print_, str(uuid.uuid4()), int(time.time() * 1000))
    topic = state.topics.batch_events.name
    try:
        # Bounded: with the broker away, aiokafka would hold the send until it is back.
        async with asyncio.timeout_at(deadline):
            sent = await state.kafka.producer.send_and_wait(topic, claim_event(mine),
                                                            key=claim_key(partner_id, tenant_id, key))
            entry = await state.claims.entry_with(mine, sent.partition, sent.offset)
    except TimeoutError:
        release_later(state, mine)  # queued behind the claim: frees the key if the claim lands late
        raise ApiError(503, "Kafka did not take this request's Idempotency-Key claim in time; nothing was "
                            "accepted; retry later with the same key") from None
    done = accepted_before(entry, print_)
    if done is not None:
        return done
    if entry is not None and entry["claimant"] == mine.claimant:
        return mine
    if entry is not None and entry["fingerprint"] == print_:
        # Another attempt at this request holds the key: its batch may be accepted already, or
        # moments from it (Kafka makes a commit readable moments after it returns). Its answer,
        # if it comes soon, is this request's answer.
        until = min(deadline, loop.time() + IN_FLIGHT_WAIT_S)
        while (left := until - loop.time()) > 0:
            await batches.changed(left)
            done = accepted_before(batches.key_entry(partner_id, tenant_id, key), print_)  # the store may lag
            if done is not None:  # `entry` in claims; only an accepted batch is news
                return done
    if entry is not None and entry["fingerprint"] != print_:
        raise reused()
    raise ApiError(409, "A request with this Idempotency-Key is being accepted right now; retry in a moment "
                        "to get its answer", headers={"Retry-After": "1"})


_releasing: set[asyncio.Task[None]] = set()


def release_later(state: Ingress, mine: IdempotencyClaim) -> None:
    """Free the key of a claim whose batch was not accepted, in the background (best effort:
    else the claim frees it once stale)."""
    async def release() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RELEASE_WAIT_S):
                await state.kafka.producer.send_and_wait(state.topics.batch_events.name,
                                                         claim_event(mine, released=True),
                                                         key=claim_key(mine.partnerId, mine.tenantId, mine.key))

    task = asyncio.get_running_loop().create_task(release())
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


class ClaimLog:
    """Reads the claims of a batch-events partition that the batch store has not folded yet,
    up to a given offset, whatever transactions are open there (read_uncommitted: claims are
    written outside transactions; the transactional messages around them are skipped)."""

    def __init__(self, bootstrap_servers: str, topic: str, batches: BatchLedger) -> None:
        self.topic, self.batches = topic, batches
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                          isolation_level="read_uncommitted", auto_offset_reset="earliest",
                                          fetch_max_wait_ms=10, request_timeout_ms=REQUEST_TIMEOUT_MS)
        self._lock = asyncio.Lock()  # one partition read at a time on the one consumer

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def entry_with(self, mine: IdempotencyClaim, partition: int, offset: int) -> KeyEntry | None:
        """The entry of `mine`'s key once every claim up to `offset` (`mine`'s own) counts."""
        entry, position = self.batches.key_entry_at(mine.partnerId, mine.tenantId, mine.key, partition)
        if position > offset:
            return entry  # folded already
        tp = TopicPartition(self.topic, partition)
        async with self._lock:
            self._consumer.assign([tp])
            self._consumer.seek(tp, position)
            while position <= offset:
                for message in (await self._consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    position = message.offset + 1
                    if message.offset > offset:
                        break
                    event = _claim_of(message.value)
                    if event is not None and (event[0].partnerId, event[0].tenantId, event[0].key) == (
                            mine.partnerId, mine.tenantId, mine.key):
                        entry = self.batches.after_claim(entry, *event)
        return entry


def _claim_of(value: bytes | None) -> tuple[IdempotencyClaim, bool] | None:
    """(claim, released) of a claim or release message; None for any other message."""
    if value is None or b'"claim"' not in value and b'"release"' not in value:
        return None
    try:
        event = orjson.loads(value)
        if event.get("type") not in ("claim", "release"):
            return None
        return IdempotencyClaim.of_event(event), event["type"] == "release"
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
