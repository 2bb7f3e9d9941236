"""`Idempotency-Key` on batch-shaped writes (draft-ietf-httpapi-idempotency-key-header).

A request with a key is accepted at most once per key of its tenant while the key is kept
(`REACH_IDEMPOTENCY_KEY_HOURS`, default 24): a retry with the same key and the same request
(method, path, query and body) gets the first one's 202 and batchId again, marked
`Idempotent-Replayed: true`, and enqueues nothing; the same key with another request gets 422;
a retry while the first is still being accepted gets 409.

How every ingress agrees, also across restarts: the decision lives in the batch-events topic.
Before it publishes, a request claims its key there (`claim_event`; all claims of a key go to
one partition, so they have one order) and waits until its own view of the topic has folded
its claim (`state.batches`): the first claim holds the key. The accepted batch's registration,
written in the batch's own transaction, carries the claim, so that once the batch is in Kafka
so is the key — an ingress killed between Kafka's commit and its answer leaves a batch that the
retry finds. A batch that was not accepted releases its claim; a claim whose ingress died
before it could publish or release holds the key for `claim_stale_s` at most.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from aiokafka import TopicPartition
from starlette.requests import Request

from ingest.responses import ApiError
from schemas.batch_events import BatchMeta, IdempotencyClaim, claim_event, claim_key

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
CLAIM_WAIT_S = 10.0  # for this ingress to read its own claim back (behind open transactions at most)
IN_FLIGHT_WAIT_S = 2.0  # for another attempt at the same request to be accepted, before answering 409


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


def accepted_before(entry: dict[str, Any] | None, print_: str) -> BatchMeta | None:
    """The batch accepted under the key of `entry` for this same request; 422 for another request."""
    if entry is None or entry.get("batch") is None:
        return None
    if entry["fingerprint"] != print_:
        raise reused()
    return BatchMeta(**entry["batch"])


def reused() -> ApiError:
    return ApiError(422, "This Idempotency-Key was used for another request (method, path, query or body); "
                         "use a new key for a new request")


async def claim(state: Any, partner_id: str, tenant_id: str, key: str, print_: str) -> IdempotencyClaim | BatchMeta:
    """Hold `key` for this request (the claim to publish its batch with), or the batch already
    accepted for it; 409 while another attempt holds it, 422 if that was another request."""
    batches = state.batches
    done = accepted_before(batches.key_entry(partner_id, tenant_id, key), print_)
    if done is not None:
        return done
    mine = IdempotencyClaim(partner_id, tenant_id, key, print_, str(uuid.uuid4()), int(time.time() * 1000))
    topic = state.topics.batch_events.name
    sent = await state.kafka.producer.send_and_wait(topic, claim_event(mine), key=claim_key(partner_id, tenant_id, key))
    await batches.wait_for({TopicPartition(topic, sent.partition): sent.offset + 1}, CLAIM_WAIT_S)
    entry = batches.key_entry(partner_id, tenant_id, key)
    done = accepted_before(entry, print_)
    if done is not None:
        return done
    if entry is not None and entry["claimant"] == mine.claimant:
        return mine
    if entry is not None and entry["fingerprint"] == print_:
        # Another attempt at this request holds the key: its batch may be accepted already, or
        # moments from it (Kafka makes a commit readable moments after it returns). Its answer,
        # if it comes soon, is this request's answer.
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            await batches.changed(left)
            entry = batches.key_entry(partner_id, tenant_id, key) or entry
            done = accepted_before(entry, print_)
            if done is not None:
                return done
    if entry is not None and entry["fingerprint"] != print_:
        raise reused()
    raise ApiError(409, "A request with this Idempotency-Key is being accepted right now; retry in a moment "
                        "to get its answer", headers={"Retry-After": "1"})


async def release(state: Any, mine: IdempotencyClaim) -> None:
    """Free the key of a claim whose batch was not accepted (best effort: else it goes stale)."""
    try:
        await state.kafka.producer.send_and_wait(state.topics.batch_events.name, claim_event(mine, released=True),
                                                 key=claim_key(mine.partnerId, mine.tenantId, mine.key))
    except Exception:  # the broker is away: the claim frees the key once stale
        pass
