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
import heapq
from typing import Any

import httpx
import orjson

from schemas.events import resource_key, resource_key_parts
from topics.partitioning import partition_for

Resource = dict[str, Any]


class ReaderUnavailable(RuntimeError):
    """A reader did not answer (down, restarting, or behind Kafka)."""

    retry_after_s = 1


class ResourceReads:
    """Resources by key, pages, counts and referrers, from the readers at `urls`."""

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

    def reader_of(self, key: bytes) -> int:
        """The index of the reader that follows `key`'s partition."""
        return partition_for(key, self.partitions) % len(self.urls)

    async def _ask(self, reader: int, path: str, question: dict[str, Any]) -> dict[str, Any]:
        assert self._client is not None, "ResourceReads.start() first"
        url = self.urls[reader] + path
        try:
            response = await self._client.post(url, content=orjson.dumps(question),
                                               headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise ReaderUnavailable(f"reader {reader} ({self.urls[reader]}) did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise ReaderUnavailable(f"reader {reader} ({self.urls[reader]}) answered {response.status_code}: "
                                    f"{response.text[:200]}")
        answer: dict[str, Any] = orjson.loads(response.content)
        return answer

    async def _ask_all(self, path: str, question: dict[str, Any]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._ask(i, path, question) for i in range(len(self.urls)))))

    async def _ask_by_reader(self, path: str, keys: list[bytes], sync: bool | str,
                             as_parts: bool = False) -> dict[int, tuple[list[int], dict[str, Any]]]:
        """Ask each reader about its own keys: reader -> (the positions of its keys in `keys`, answer)."""
        mine: dict[int, list[int]] = {}
        for n, key in enumerate(keys):
            mine.setdefault(self.reader_of(key), []).append(n)
        readers = list(mine)
        answers = await asyncio.gather(*(self._ask(r, path, {
            "sync": sync, "keys": [_parts(keys[n]) if as_parts else keys[n].decode() for n in mine[r]]})
            for r in readers))
        return {r: (mine[r], answer) for r, answer in zip(readers, answers)}

    async def get(self, partner_id: str, tenant_id: str, definition_id: str, external_id: str) -> Resource | None:
        return (await self.get_many(partner_id, tenant_id, [(definition_id, external_id)]))[0]

    async def get_many(self, partner_id: str, tenant_id: str,
                       wanted: list[tuple[str, str]]) -> list[Resource | None]:
        """Each (definition id, external id)'s resource of one tenant, or None."""
        keys = [resource_key(partner_id, tenant_id, d, x) for d, x in wanted]
        found: list[Resource | None] = [None] * len(keys)
        for positions, answer in (await self._ask_by_reader("/resources/get", keys, True, as_parts=True)).values():
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
                   limit: int) -> tuple[list[Resource], int, bool]:
        """Resources ordered by external id after `after`: (page, total, has_next_page)."""
        question = {"sync": True, "scope": [partner_id, tenant_id, definition_id], "after": after, "limit": limit}
        answers = await self._ask_all("/resources/page", question)
        merged = heapq.merge(*(a["results"] for a in answers), key=lambda r: r["resourceExternalId"].encode())
        found = [resource for _, resource in zip(range(limit), merged)]
        # More follow if the shares returned more than the page takes, or a share has more than
        # it returned (a full share: the page holds at most all of it, the rest comes after).
        has_next = next(merged, None) is not None or any(a["hasNext"] for a in answers)
        return found, sum(a["total"] for a in answers), has_next


def _parts(key: bytes) -> list[str]:
    return list(resource_key_parts(key))
