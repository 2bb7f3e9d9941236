"""The ingress's shared parts, typed: what every request handler reaches with `ingress_of`.

One `Ingress` per app (`ingest.app.create_app`), kept on Starlette's `app.state.ingress`; its
Kafka- and reader-backed parts are set by the app's lifespan before the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from starlette.applications import Starlette
from starlette.requests import Request

if TYPE_CHECKING:
    from ingest.idempotency import ClaimLog
    from ingest.kafka import KafkaGateway
    from ingest.publisher import BatchPublisher
    from ingest.quotas import Admission
    from reach.config import Settings
    from schemas.definition_view import DefinitionView
    from schemas.subjects import Subjects
    from state.bookkeeping import BatchLedger
    from state.remote import BatchReads, ReaderTotals, ResourceReads
    from topics.definitions import ServiceTopics


class Part(Protocol):
    """A client the lifespan starts before the first request and stops after the last."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Ingress:
    """One ingress process's configuration and the clients its requests share."""

    settings: Settings
    topics: ServiceTopics
    stopping: bool = False  # set by the server when asked to stop (`ingest.server`)
    # Started by the lifespan, in this order; stopped in the reverse one.
    kafka: KafkaGateway = field(init=False)
    publisher: BatchPublisher = field(init=False)
    definitions: DefinitionView = field(init=False)  # the schema definitions
    subjects: Subjects = field(init=False)  # the Schema Registry API's subjects
    ledger: BatchLedger = field(init=False)  # idempotency keys and quotas' arrival times, per batch
    batches: BatchReads = field(init=False)  # batch status, from the readers
    totals: ReaderTotals = field(init=False)  # the readers' totals (backlog, for admission)
    admission: Admission = field(init=False)  # quotas and backlog
    claims: ClaimLog = field(init=False)  # Idempotency-Key claims
    resources: ResourceReads = field(init=False)  # resources, from the readers


def ingress_of(request: Request) -> Ingress:
    """The ingress serving `request`."""
    return cast(Ingress, request.app.state.ingress)


def ingress_of_app(app: Starlette) -> Ingress:
    """The ingress of an app built by `ingest.app.create_app`."""
    return cast(Ingress, app.state.ingress)
