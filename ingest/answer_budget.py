"""One deadline per write: the client has its answer within `produce_timeout_s` of the service's
own waits, however many steps the write takes.

An upload may wait on Kafka or the readers several times in a row — the definition (on a miss),
the backlog figure, its Idempotency-Key claim, its transaction. Each step bounded by the produce
timeout on its own let one upload answer 202 after 15.6 s with a timeout of 10 while a broker was
paused. Every step now waits only for what is left of one budget, started when the request
arrives; time spent reading the client's body is the client's, not the budget's.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from ingest.context import ingress_of


def answer_by(request: Request) -> float:
    """The event-loop time by which this request's waits must be over (set on the first call)."""
    deadline: float | None = getattr(request.state, "answer_by", None)
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + ingress_of(request).settings.produce_timeout_s
        request.state.answer_by = deadline
    return deadline


def seconds_left(request: Request) -> float:
    """What is left of this request's budget (0 once spent)."""
    return max(0.0, answer_by(request) - asyncio.get_running_loop().time())


def spent_on_client(request: Request, seconds: float) -> None:
    """Give back `seconds` the request spent waiting for its client (its body)."""
    request.state.answer_by = answer_by(request) + seconds
