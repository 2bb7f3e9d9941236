"""The ingress's reads of resources: asked of the reader that follows each partition (`state.reader`).

A resource lives on the partition its key hashes to; reader p % N follows partition p. A read
of named resources asks each reader for its own keys; a list asks every reader for its share
of the page after the cursor and merges them in external id order (what each reader's store
keeps), so a page costs N seeks and at most N × limit resources read at any depth, and a
cursor walks every resource exactly once. Every question syncs the reader first, as the
ingress's own copy used to: a batch terminal through any ingress has its records readable.

A reader that does not answer makes the read fail with `ReaderUnavailable` (503 with
Retry-After); nothing is answered from a partial set of readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from typing import Any

import httpx
import orjson

from schemas.events import Resource, resource_key
from state.batch_state import BatchState
from topics.partitioning import partition_for

log = logging.getLogger(__name__)


class ReaderUnavailable(RuntimeError):
    """A reader did not answer (down, restarting, or behind Kafka)."""

    retry_after_s = 1


class _Readers:
    """Questions to the readers at `urls` (reader i follows partitions p ≡ i mod len(urls))."""

    def __init__(self, urls: tuple[str, ...], partitions: int, timeout_s: float = 10.0) -> None:
        self.urls = urls
        self.partitions = partitions
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # Connections stay open between questions (a question costs one round trip).
        self._client = httpx.AsyncClient(timeout=self.timeout_s,
                                         limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _ask(self, reader: int, path: str, question: dict[str, Any], waits_s: float = 0.0) -> dict[str, Any]:
        """Ask one reader (`waits_s`: how long the question itself may wait there, beyond the usual)."""
        assert self._client is not None, f"{type(self).__name__}.start() first"
        url = self.urls[reader] + path
        try:
            response = await self._client.post(url, content=orjson.dumps(question),
                                               headers={"content-type": "application/json"},
                                               timeout=self.timeout_s + waits_s)
        except httpx.HTTPError as exc:
            raise ReaderUnavailable(f"reader {reader} ({self.urls[reader]}) did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise ReaderUnavailable(f"reader {reader} ({self.urls[reader]}) answered {response.status_code}: "
                                    f"{response.text[:200]}")
        answer: dict[str, Any] = orjson.loads(response.content)
        return answer

    def reader_of(self, key: bytes) -> int:
        """The index of the reader that follows `key`'s partition."""
        return partition_for(key, self.partitions) % len(self.urls)

    async def _ask_all(self, path: str, question: dict[str, Any]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._ask(i, path, question) for i in range(len(self.urls)))))


class ResourceReads(_Readers):
    """Resources by key, pages, counts and referrers, from the readers."""

    async def _ask_by_reader(self, path: str, keys: list[bytes], sync: bool | str,
                             sent: list[Any] | None = None) -> dict[int, tuple[list[int], dict[str, Any]]]:
        """Ask each reader about its own keys (as `sent`, one item per key; default: the keys
        as text): reader -> (the positions of its keys in `keys`, answer)."""
        mine: dict[int, list[int]] = {}
        for n, key in enumerate(keys):
            mine.setdefault(self.reader_of(key), []).append(n)
        items = sent if sent is not None else [key.decode() for key in keys]
        readers = list(mine)
        answers = await asyncio.gather(*(self._ask(r, path, {"sync": sync, "keys": [items[n] for n in mine[r]]})
                                         for r in readers))
        return {r: (mine[r], answer) for r, answer in zip(readers, answers)}

    async def get(self, partner_id: str, tenant_id: str, definition_id: str, external_id: str,
                  sync: bool | str = True) -> Resource | None:
        return (await self.get_many(partner_id, tenant_id, [(definition_id, external_id)], sync))[0]

    async def get_many(self, partner_id: str, tenant_id: str, wanted: list[tuple[str, str]],
                       sync: bool | str = True) -> list[Resource | None]:
        """Each (definition id, external id)'s resource of one tenant, or None (`sync`: see
        `state.reader`; "try" answers from what the readers hold when Kafka does not answer)."""
        keys = [resource_key(partner_id, tenant_id, d, x) for d, x in wanted]
        parts = [[partner_id, tenant_id, d, x] for d, x in wanted]  # what the reader's store is keyed by
        found: list[Resource | None] = [None] * len(keys)
        for positions, answer in (await self._ask_by_reader("/resources/get", keys, sync, parts)).values():
            for n, resource in zip(positions, answer["found"]):
                found[n] = resource
        return found

    async def exist(self, keys: list[bytes], sync: bool | str = True) -> list[bool]:
        """Whether each resource key is stored."""
        found = [False] * len(keys)
        for positions, answer in (await self._ask_by_reader("/resources/exist", keys, sync)).values():
            for n, exists in zip(positions, answer["exist"]):
                found[n] = exists
        return found

    async def referrers_of_many(self, keys: list[bytes], sync: bool | str = True) -> dict[bytes, list[bytes]]:
        """The keys of the resources that reference each of `keys` (itself excluded). A referrer
        is indexed on its own partition: every reader is asked."""
        found: dict[bytes, list[bytes]] = {key: [] for key in keys}
        if not keys:
            return found
        question = {"sync": sync, "keys": [k.decode() for k in keys]}
        for answer in await self._ask_all("/resources/referrers", question):
            for key, referrers in answer["referrers"].items():
                found[key.encode()].extend(r.encode() for r in referrers)
        return found

    async def count(self, partner_id: str, tenant_id: str, definition_id: str, sync: bool | str = True) -> int:
        question = {"sync": sync, "scope": [partner_id, tenant_id, definition_id]}
        return sum(answer["count"] for answer in await self._ask_all("/resources/count", question))

    async def external_ids(self, partner_id: str, tenant_id: str, definition_id: str,
                           sync: bool | str = True) -> list[str]:
        """Every external id of a scope, in order."""
        question = {"sync": sync, "scope": [partner_id, tenant_id, definition_id]}
        shares = [answer["ids"] for answer in await self._ask_all("/resources/ids", question)]
        return list(heapq.merge(*shares, key=str.encode))

    async def page(self, partner_id: str, tenant_id: str, definition_id: str, after: str | None,
                   limit: int, sync: bool | str = True) -> tuple[list[Resource], int, bool]:
        """Resources ordered by external id after `after`: (page, total, has_next_page)."""
        question = {"sync": sync, "scope": [partner_id, tenant_id, definition_id], "after": after, "limit": limit}
        answers = await self._ask_all("/resources/page", question)
        merged = heapq.merge(*(a["results"] for a in answers), key=lambda r: r["resourceExternalId"].encode())
        found = [resource for _, resource in zip(range(limit), merged)]
        # More follow if the shares returned more than the page takes, or a share has more than
        # it returned (a full share: the page holds at most all of it, the rest comes after).
        has_next = next(merged, None) is not None or any(a["hasNext"] for a in answers)
        return found, sum(a["total"] for a in answers), has_next



class BatchReads(_Readers):
    """Batches and their records' outcomes, from the reader that follows each batch's partition
    of the batch-events topic (a batch's registration and all its outcomes share its key); a
    tenant's list asks every reader for its share after the cursor's position and merges them
    newest first."""

    async def _batch(self, path: str, question: dict[str, Any]) -> BatchState | None:
        waits_s = question.get("waitS", 0) + question.get("timeoutS", 0)
        answer = await self._ask(self.reader_of(question["batchId"].encode()), path, question, waits_s)
        return None if answer["batch"] is None else BatchState.from_json(answer["batch"])

    async def find(self, partner_id: str, tenant_id: str, batch_id: str, wait_s: float = 3.0,
                   details: bool = True) -> BatchState | None:
        """The batch, waiting up to `wait_s` for one accepted moments ago (`BatchStore.find`)."""
        return await self._batch("/batches/find", {"partner": partner_id, "tenant": tenant_id, "batchId": batch_id,
                                                   "details": details, "waitS": wait_s})

    async def outcome(self, partner_id: str, tenant_id: str, batch_id: str, timeout_s: float) -> BatchState | None:
        """The batch once terminal, waiting up to `timeout_s`; None if it is not by then."""
        return await self._batch("/batches/outcome", {"partner": partner_id, "tenant": tenant_id,
                                                      "batchId": batch_id, "timeoutS": timeout_s})

    async def changed(self, partner_id: str, tenant_id: str, batch_id: str, version: int,
                      timeout_s: float) -> BatchState | None:
        """The batch (without details) once its version is past `version`, or after `timeout_s`."""
        return await self._batch("/batches/changed", {"partner": partner_id, "tenant": tenant_id,
                                                      "batchId": batch_id, "version": version,
                                                      "timeoutS": timeout_s})

    async def records(self, partner_id: str, tenant_id: str, batch_id: str, status: str | None, after: int,
                      limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` record outcomes after index `after`, and whether more follow."""
        answer = await self._ask(self.reader_of(batch_id.encode()), "/batches/records", {
            "sync": True, "partner": partner_id, "tenant": tenant_id, "batchId": batch_id, "status": status,
            "after": after, "limit": limit})
        return answer["records"], answer["hasNext"]

    async def page(self, partner_id: str, tenant_id: str, after: str | None, limit: int,
                   batch_type: str | None = None, status: str | None = None) -> tuple[list[BatchState], int, bool]:
        """The tenant's batches of that type and status (None: any), newest first, after the
        batch `after`: (page, total, has_next_page)."""
        position = None
        if after is not None:
            cursor = await self.find(partner_id, tenant_id, after, wait_s=0, details=False)
            if cursor is None:  # a cursor of a batch no longer kept: nothing after it, the list's total
                limit = 0
            else:
                position = [cursor.acceptedAt, cursor.batchId]
        # "fresh": a batch whose 202 has just been answered is listed, even before its commit
        # marker is written (`state.reader._question`).
        answers = await self._ask_all("/batches/page", {
            "sync": "fresh", "partner": partner_id, "tenant": tenant_id, "position": position, "limit": limit,
            "type": batch_type, "status": status})
        total = sum(answer["total"] for answer in answers)
        if limit == 0:
            return [], total, False
        shares = [[BatchState.from_json(b) for b in answer["results"]] for answer in answers]
        merged = heapq.merge(*shares, key=lambda b: (-b.acceptedAt, b.batchId))
        found = [batch for _, batch in zip(range(limit), merged)]
        has_next = next(merged, None) is not None or any(answer["hasNext"] for answer in answers)
        return found, total, has_next

    async def totals(self, tenants: list[tuple[str, str]]) -> dict[str, Any]:
        """{"backlog", "pending", "outcomes", "inFlight": {"partner/tenant": n}} over every reader,
        each settled first: every batch written before the call counts — also one whose commit
        has returned to its ingress before the broker wrote its commit marker, which a read of
        committed messages alone may not see yet."""
        answers = await self._ask_all("/batches/totals", {"sync": "settle", "tenants": tenants})
        in_flight: dict[str, int] = {}
        for answer in answers:
            for tenant, n in answer["inFlight"].items():
                in_flight[tenant] = in_flight.get(tenant, 0) + n
        return {"backlog": sum(a["backlog"] for a in answers), "pending": sum(a["pending"] for a in answers),
                "outcomes": sum(a["outcomes"] for a in answers), "inFlight": in_flight}


class ReaderTotals:
    """The readers' totals of all batches (backlog, pending, records taken), asked every
    `interval_s` in the background: admission and metrics read them without a round trip. While
    the readers do not answer, the last totals stay."""

    def __init__(self, reads: BatchReads, interval_s: float = 0.5) -> None:
        self.reads, self.interval_s = reads, interval_s
        # The tenants whose batches in flight are asked for too (those with that quota seen here).
        self.tenants: set[tuple[str, str]] = set()
        self._latest: dict[str, Any] = {"backlog": 0, "pending": 0, "outcomes": 0, "inFlight": {}}
        self._at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(ReaderUnavailable):
            await self._ask()
        self._task = asyncio.create_task(self._follow(), name="reader-totals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _ask(self) -> None:
        asked = time.monotonic()
        self._latest = await self.reads.totals(sorted(self.tenants))
        self._at = asked

    async def refresh(self, timeout_s: float | None = None) -> None:
        """Ask now (where a stale figure would decide wrongly); the last totals stay if the readers
        do not answer (within `timeout_s`, if given)."""
        with contextlib.suppress(ReaderUnavailable, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ask()

    def asked_at(self) -> float:
        """When the latest totals were asked for (monotonic): they count every batch committed before."""
        return self._at

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._ask()
            except ReaderUnavailable as exc:
                log.debug("reader totals: %s", exc)

    def backlog(self) -> int:
        return int(self._latest["backlog"])

    def pending(self) -> int:
        return int(self._latest["pending"])

    def outcomes(self) -> int:
        return int(self._latest["outcomes"])

    def in_flight(self, partner_id: str, tenant_id: str) -> int:
        """The tenant's batches queued or processing (0 until it is asked for: add it to `tenants`)."""
        return int(self._latest["inFlight"].get(f"{partner_id}/{tenant_id}", 0))
