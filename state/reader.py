"""`reach reader`: the read models of a share of the partitions, served to the ingresses.

Reader i of `REACH_READER_URLS` follows the partitions p of the resources topic with
p % (number of readers) == i — no other — into its checkpointed store (`state.resource_store`), and
answers the ingresses' questions about them over HTTP (`state.remote` asks them). So the data
is followed once per partition however many ingresses serve HTTP, an ingress keeps no copy of
its own (a new one answers at once), and a reader that restarts reads on from its checkpoint.

Every question may ask the reader to `sync` first: to apply everything committed to its
partitions before it answers (read-your-writes across processes, as `TopicView.sync`). With
`"sync": "try"` a reader that cannot reach Kafka in time answers from what it has; with
`true` it answers 503.

The API is internal (the ingresses' only): JSON in and out, keys as UTF-8 strings.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from itertools import islice
from typing import Any

import orjson
import uvicorn
from aiokafka.errors import KafkaError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach import heap
from reach.config import Settings
from schemas.definition_view import DefinitionView
from schemas.references import references_of
from state.batch_state import BatchState
from state.batch_store import BatchStore
from state.resource_store import ReferencesOf, ResourceStore
from topics import create_topics, service_topics
from topics.partitioning import Share
from topics.view import TopicView

log = logging.getLogger(__name__)


def reader_share(settings: Settings) -> Share:
    """The partitions this reader process follows."""
    return Share(settings.reader_index, len(settings.reader_urls))


def stored_references(registry: DefinitionView) -> ReferencesOf:
    """The references of a resource stored before workers kept them with it, from its definition
    (the registry starts before the resources are read); parsed only if the definition has
    reference fields."""
    def references(partner_id: str, definition_id: str, raw: bytes) -> list[str]:
        definition = registry.get(partner_id, definition_id)
        if definition is None or not definition.referenceFields:
            return []
        resource = orjson.loads(raw)
        return [r.key.decode() for r in references_of(resource["data"], definition, resource["platformId"],
                                                      resource["businessId"])]
    return references


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), status_code, media_type="application/json")


FRESH_SETTLE_S = 1.0  # how long a "fresh" read waits for open transactions before it reads what is committed
# How long any other synced read first waits for the commit markers of transactions already
# committing: a transaction's markers reach its partitions one at a time, so a batch can be
# reported terminal from the batch-events partition while the commit marker of its records on a
# resources partition is still on its way (a list read at once missed a record so, under load).
MARKERS_S = 0.5


async def _question(request: Request, model: str = "resources") -> dict[str, Any]:
    """The request's JSON object, once the read model has caught up as it asks: "sync": true (or
    "try") everything committed, the transactions committing as it asks included if their commit
    markers are written within MARKERS_S; "settle": everything written, transactions still open
    or whose commit markers are not written yet included (`TopicView.settle`); "fresh": settled
    if that takes at most FRESH_SETTLE_S (a write whose 202 came before its commit marker was
    written is then seen), else everything committed (a transaction left open by a crashed
    ingress does not hold the answer back). "try" answers from what the reader holds when Kafka
    does not answer. "last-stable": what is committed as the last stable offsets say, markers
    under way not waited for, else what the reader holds (the delete planner, which a moment-old
    state only makes wait for referrers a request names)."""
    question = orjson.loads(await request.body())
    store: TopicView = getattr(request.app.state, model)
    if question.get("sync") == "settle":
        if not await store.settle(store.wait_s):
            raise TimeoutError(f"{store.topic} did not settle in {store.wait_s} s")
    elif question.get("sync") == "fresh":
        if not await store.settle(FRESH_SETTLE_S):
            await store.sync()
    elif question.get("sync"):
        if question["sync"] == "last-stable" or not await store.settle(MARKERS_S):
            try:
                await store.sync()
            except (TimeoutError, KafkaError):
                if question["sync"] not in ("try", "last-stable"):
                    raise
    return question


def _scope(question: dict[str, Any]) -> tuple[str, str, str]:
    partner_id, tenant_id, definition_id = question["scope"]
    return partner_id, tenant_id, definition_id


async def get_resources(request: Request) -> Response:
    """{"keys": [[partner, tenant, definition, externalId], ...]} → {"found": [resource | null, ...]}"""
    question = await _question(request)
    store: ResourceStore = request.app.state.resources
    return _json({"found": [store.get(*key) for key in question["keys"]]})


async def page(request: Request) -> Response:
    """{"scope", "after", "limit"} → {"results", "total", "hasNext"}: this reader's share of a page."""
    question = await _question(request)
    found, total, has_next = request.app.state.resources.page(*_scope(question), question.get("after"),
                                                              question["limit"])
    return _json({"results": found, "total": total, "hasNext": has_next})


async def count(request: Request) -> Response:
    question = await _question(request)
    return _json({"count": request.app.state.resources.count(*_scope(question))})


async def external_ids(request: Request) -> Response:
    """{"scope"} → {"ids": [...]}: every external id of the scope in this reader's share, in order."""
    question = await _question(request)
    return _json({"ids": list(request.app.state.resources.external_ids(*_scope(question)))})


async def exist(request: Request) -> Response:
    """{"keys": [resource key, ...]} → {"exist": [bool, ...]}"""
    question = await _question(request)
    return _json({"exist": request.app.state.resources.exist([k.encode() for k in question["keys"]])})


async def referrers(request: Request) -> Response:
    """{"keys": [resource key, ...]} → {"referrers": {key: [referrer key, ...]}}: the referrers
    this reader's share holds (a referrer is stored on its own partition)."""
    question = await _question(request)
    found = request.app.state.resources.referrers_of_many([k.encode() for k in question["keys"]])
    return _json({"referrers": {k.decode(): [r.decode() for r in rs] for k, rs in found.items()}})


def _sent(batch: BatchState | None) -> dict[str, Any] | None:
    return None if batch is None else batch.to_json()


async def find_batch(request: Request) -> Response:
    """{"partner", "tenant", "batchId", "details", "waitS"} → {"batch": batch | null}, waiting up to
    waitS for a batch accepted moments ago (`BatchStore.find`)."""
    question = orjson.loads(await request.body())
    batches: BatchStore = request.app.state.batches
    found = await batches.find(question["partner"], question["tenant"], question["batchId"], question["waitS"],
                               question["details"])
    return _json({"batch": _sent(found)})


async def batch_outcome(request: Request) -> Response:
    """{"partner", "tenant", "batchId", "timeoutS"} → {"batch": the batch once terminal | null}"""
    question = orjson.loads(await request.body())
    batches: BatchStore = request.app.state.batches
    found = await batches.outcome(question["partner"], question["tenant"], question["batchId"], question["timeoutS"])
    return _json({"batch": _sent(found)})


async def batch_changed(request: Request) -> Response:
    """{"partner", "tenant", "batchId", "version", "timeoutS"} → {"batch": without details | null}
    once its version (`BatchState.version`) is past `version`, or the time is up."""
    question = orjson.loads(await request.body())
    batches: BatchStore = request.app.state.batches
    deadline = time.monotonic() + question["timeoutS"]
    while True:
        batch = batches.get(question["partner"], question["tenant"], question["batchId"], details=False)
        left = deadline - time.monotonic()
        if batch is None or batch.version > question["version"] or left <= 0:
            return _json({"batch": _sent(batch)})
        await batches.changed(left)


async def batch_records(request: Request) -> Response:
    """{"partner", "tenant", "batchId", "status", "after", "limit"} → {"records", "hasNext"}: the
    outcomes of the batch's records after index `after`, in index order."""
    question = await _question(request, "batches")
    batches: BatchStore = request.app.state.batches
    batch = batches.get(question["partner"], question["tenant"], question["batchId"], details=False)
    if batch is None:
        return _json({"records": [], "hasNext": False})
    found = list(islice(batches.records(batch, question["status"], question["after"]), question["limit"] + 1))
    return _json({"records": found[:question["limit"]], "hasNext": len(found) > question["limit"]})


async def batch_page(request: Request) -> Response:
    """{"partner", "tenant", "position": [acceptedAt, batchId] | null, "limit", "type", "status"} →
    {"results", "total", "hasNext"}: this reader's share of a page of the tenant's batch list."""
    question = await _question(request, "batches")
    position = tuple(question["position"]) if question["position"] is not None else None
    found, total, has_next = request.app.state.batches.page_after(
        question["partner"], question["tenant"], position, question["limit"], question["type"], question["status"])
    return _json({"results": [b.to_json() for b in found], "total": total, "hasNext": has_next})


async def batch_totals(request: Request) -> Response:
    """{"tenants": [[partner, tenant], ...]} → {"backlog", "pending", "outcomes", "inFlight": {"partner/tenant": n}}
    over this reader's share: records no worker has taken yet, records waiting for references,
    records taken, and each named tenant's batches queued or processing."""
    question = await _question(request, "batches")
    batches: BatchStore = request.app.state.batches
    return _json({"backlog": batches.backlog(), "pending": batches.pending_total(),
                  "outcomes": batches.outcomes_total(),
                  "inFlight": {f"{p}/{t}": batches.in_flight(p, t) for p, t in question["tenants"]}})


async def health(request: Request) -> Response:
    return _json({"status": "ok", "reader": request.app.state.settings.reader_index,
                  "of": len(request.app.state.settings.reader_urls)})


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s: Kafka did not answer in time (%r)", request.url.path, exc)
    return _json({"message": "Kafka is not reachable; retry later"}, 503)


def create_reader_app(settings: Settings) -> Starlette:
    """The reader's app; its store and Kafka clients start and stop with the app's lifespan."""
    share = reader_share(settings)
    topics = service_topics(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = DefinitionView(settings.bootstrap_servers, topics.schema_definitions.name)
        await registry.start()
        try:
            # A question that must catch up with Kafka waits for it no longer than an upload does.
            app.state.resources = ResourceStore(
                settings.bootstrap_servers, topics.resources.name,
                settings.data_dir / "reader" / str(share.index) / "resources", min(5.0, settings.produce_timeout_s),
                references_of=stored_references(registry), share=share)
            app.state.batches = BatchStore(
                settings.bootstrap_servers, topics.batch_events.name,
                settings.data_dir / "reader" / str(share.index) / "batches", min(5.0, settings.produce_timeout_s),
                retention_s=settings.batch_retention_days * 24 * 3600, share=share)
            await app.state.resources.start()
            try:
                await app.state.batches.start()
                try:
                    log.info("reader %d of %d: following partitions %s of %s and %s", share.index, share.of,
                             sorted(tp.partition for tp in app.state.resources.followed()), topics.resources.name,
                             topics.batch_events.name)
                    heap.settle()
                    yield
                finally:
                    await app.state.batches.stop()
            finally:
                await app.state.resources.stop()
        finally:
            await registry.stop()

    app = Starlette(routes=[
        Route("/health", health),
        Route("/resources/get", get_resources, methods=["POST"]),
        Route("/resources/page", page, methods=["POST"]),
        Route("/resources/count", count, methods=["POST"]),
        Route("/resources/ids", external_ids, methods=["POST"]),
        Route("/resources/exist", exist, methods=["POST"]),
        Route("/resources/referrers", referrers, methods=["POST"]),
        Route("/batches/find", find_batch, methods=["POST"]),
        Route("/batches/outcome", batch_outcome, methods=["POST"]),
        Route("/batches/changed", batch_changed, methods=["POST"]),
        Route("/batches/records", batch_records, methods=["POST"]),
        Route("/batches/page", batch_page, methods=["POST"]),
        Route("/batches/totals", batch_totals, methods=["POST"]),
    ], exception_handlers={TimeoutError: unavailable, KafkaError: unavailable}, lifespan=lifespan)
    app.state.settings = settings
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve this reader (`REACH_READER_INDEX`) on the port of its URL in `REACH_READER_URLS`."""
    import asyncio
    from urllib.parse import urlsplit

    settings = Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if not 0 <= settings.reader_index < len(settings.reader_urls):
        sys.exit(f"reach reader: REACH_READER_INDEX={settings.reader_index} names no URL of REACH_READER_URLS "
                 f"({', '.join(settings.reader_urls)})")
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    url = urlsplit(settings.reader_urls[settings.reader_index])
    uvicorn.run(create_reader_app(settings), host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 80), log_level="info", access_log=False)


if __name__ == "__main__":
    main()
