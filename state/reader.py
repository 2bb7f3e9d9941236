"""`reach reader`: the read models of a share of the partitions, served to the ingresses.

Reader i of `REACH_READER_URLS` follows the partitions p of the resources topic with
p % (number of readers) == i — no other — into its checkpointed store (`state.resources`), and
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
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import uvicorn
from aiokafka.errors import KafkaError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach.config import Settings
from schemas.references import references_of
from schemas.registry import SchemaRegistry
from state.resources import ResourceStore
from topics import create_topics, service_topics
from topics.partitioning import Share

log = logging.getLogger(__name__)


def reader_share(settings: Settings) -> Share:
    """The partitions this reader process follows."""
    return Share(settings.reader_index, len(settings.reader_urls))


def stored_references(registry: SchemaRegistry) -> Callable[[dict[str, Any]], list[str]]:
    """The references of a resource stored before workers kept them with it, from its definition
    (the registry starts before the resources are read)."""
    def references(resource: dict[str, Any]) -> list[str]:
        definition = registry.get(resource["platformId"], resource["schemaDefinitionId"])
        if definition is None or not definition.referenceFields:
            return []
        return [r.key.decode() for r in references_of(resource["data"], definition, resource["platformId"],
                                                      resource["businessId"])]
    return references


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code, media_type="application/json")


async def _question(request: Request) -> dict[str, Any]:
    """The request's JSON object, once the store has caught up as it asks."""
    question = orjson.loads(await request.body())
    store: ResourceStore = request.app.state.resources
    if question.get("sync"):
        try:
            await store.sync()
        except (TimeoutError, KafkaError):
            if question["sync"] != "try":
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
        registry = SchemaRegistry(settings.bootstrap_servers, topics.schema_definitions.name)
        await registry.start()
        try:
            # A question that must catch up with Kafka waits for it no longer than an upload does.
            app.state.resources = ResourceStore(
                settings.bootstrap_servers, topics.resources.name,
                settings.data_dir / "reader" / str(share.index) / "resources", min(5.0, settings.produce_timeout_s),
                references_of=stored_references(registry), share=share)
            await app.state.resources.start()
            try:
                log.info("reader %d of %d: following partitions %s of %s", share.index, share.of,
                         sorted(tp.partition for tp in app.state.resources.followed()), topics.resources.name)
                yield
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
