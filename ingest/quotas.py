"""Per-tenant quotas and backpressure: whether the ingress takes a write now, and the RateLimit
header fields (draft-ietf-httpapi-ratelimit-headers-11) that tell a client where it stands.

Three limits, checked before anything is published:

- **Records per minute** of a tenant (`Quota.records_per_minute`, Q): a token bucket of capacity
  B (`Quota.burst_records`, `REACH_QUOTA_BURST_RECORDS`; by default Q, a window's worth) refilled
  at Q/60 records a second, kept as a GCRA: a tenant with a full allowance may send B records at
  once, then one record every 60/Q s. A write that comes up to `PACE_S` early is held that long
  and then taken (its 202 comes later); earlier: 429. With B = Q, `q=Q;w=60` means what clients
  of window-style limits expect: Q records at any moment after a quiet minute. A small B (one
  batch, 1000) spreads a tenant at its quota evenly over the minute instead, so the workers
  never queue other tenants' records behind its bursts (docs/benchmarks.md: fairness with
  both). The state is one time per tenant, its *theoretical arrival time*, folded by every
  ingress from the batch registrations on the batch-events topic (`state.bookkeeping.BatchLedger`),
  so every ingress counts what all of them accepted.
- **Batches in flight** of a tenant (`Quota.batches_in_flight`): its batches queued or
  processing, from the readers (`state.reader`: they hold the records' outcomes), as their latest
  totals say (`state.remote.ReaderTotals`, asked every half second), and the batches this
  ingress accepted since. Over it: 429.
- **The workers' backlog** (`Settings.max_backlog_records`): records accepted that no worker
  has taken yet, all tenants together, from the readers' totals likewise. Over it: 503 until it
  drains.

An ingress counts a batch once its registration is in its store: its own at once, another
ingress's once committed and read — a few ms when idle, up to a worker commit interval (~100 ms)
under load, since the store reads committed events only and a worker's open transaction holds
back what follows it. Within that time an ingress can give out allowance another one has just
used; over any longer span the rate holds, as every batch is counted once read. (Waiting for
the store to catch up before each decision made it exact, but added 20-75 ms to the p50 and
~120 ms to the p90 of every upload of a tenant with a quota under load.) Requests of one process
are counted while they are being published or held (`Reservation`), so they never overlap.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest import answer_budget
from ingest.context import ingress_of
from ingest.responses import ApiError
from reach.config import Quota, Settings
from state.bookkeeping import BatchLedger
from state.remote import ReaderTotals

PACE_S = 1.0  # how early a write may come and be held rather than refused (Retry-After's unit)
IN_FLIGHT_RETRY_S = 1  # a batch takes about this long to finish on an idle service
DRAIN_WINDOW_S = 10.0  # the workers' recent pace, for a 503's Retry-After


def record_spacing_ms(settings: Settings) -> Callable[[str], float | None]:
    """For `BatchStore`: the time one record takes of a partner's tenants' records quota."""
    def spacing(partner_id: str) -> float | None:
        per_minute = settings.quota_for(partner_id).records_per_minute
        return None if per_minute is None else 60_000 / per_minute
    return spacing


@dataclass(frozen=True)
class Standing:
    """Where one tenant stands against its quota, now."""

    quota: Quota
    used_ms: float  # how far its records quota is spent ahead of now
    in_flight: int

    def records_left(self) -> int:
        """What the tenant may send now: the bucket's tokens."""
        assert self.quota.records_per_minute is not None
        spacing = 60_000 / self.quota.records_per_minute
        return max(0, int((self.quota.burst() * spacing - self.used_ms) // spacing))

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` for the limits the tenant has (none: no fields)."""
        policies, limits = [], []
        q = self.quota
        if q.records_per_minute is not None:
            policies.append(f'"records";q={q.records_per_minute};qu="records";w=60;reach-burst={q.burst()}')
            limits.append(f'"records";r={self.records_left()};t={math.ceil(self.used_ms / 1000)}')
        if q.batches_in_flight is not None:
            policies.append(f'"batches";q={q.batches_in_flight};qu="concurrent-requests"')
            limits.append(f'"batches";r={max(0, q.batches_in_flight - self.in_flight)}')
        if not policies:
            return {}
        return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(limits)}


class Reservation:
    """A write being published: counted against its tenant until the store counts its batch."""

    def __init__(self, admission: Admission, tenant: tuple[str, str], records: int) -> None:
        self.admission, self.tenant, self.records = admission, tenant, records
        self.headers: dict[str, str] = {}

    def release(self) -> None:
        reserved = self.admission._reserved
        records, batches = reserved[self.tenant]
        if batches == 1:
            del reserved[self.tenant]
        else:
            reserved[self.tenant] = (records - self.records, batches - 1)
        self.admission._reserved_records -= self.records


class Admission:
    """Decides, for one ingress process, whether a write is taken now (`admit`).

    The records quota comes from the ledger (every batch's arrival, in topic order); batches in
    flight and the backlog from the readers, which hold the records' outcomes: their latest
    totals (`ReaderTotals`, asked every half second, each counting every batch committed before
    it was asked), and what this ingress accepted since, at once.
    """

    def __init__(self, settings: Settings, ledger: BatchLedger, totals: ReaderTotals) -> None:
        self.settings = settings
        self.ledger, self.totals = ledger, totals
        self._reserved: dict[tuple[str, str], tuple[int, int]] = {}  # tenant -> (records, batches)
        self._reserved_records = 0
        # (monotonic time, tenant, records) of the batches accepted here, until the totals count them.
        self._accepted: deque[tuple[float, tuple[str, str], int]] = deque()
        self._pace: deque[tuple[float, int]] = deque()  # (monotonic time, records taken by workers)

    def standing(self, partner_id: str, tenant_id: str, now_ms: float | None = None) -> Standing:
        quota = self.settings.quota_for(partner_id)
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        records, batches = self._reserved.get((partner_id, tenant_id), (0, 0))
        used_ms = 0.0
        if quota.records_per_minute is not None:
            spacing = 60_000 / quota.records_per_minute
            used_ms = max(self.ledger.arrival(partner_id, tenant_id), now_ms) - now_ms + records * spacing
        in_flight = 0
        if quota.batches_in_flight is not None:
            tenant = (partner_id, tenant_id)
            self.totals.tenants.add(tenant)
            in_flight = (self.totals.in_flight(partner_id, tenant_id) + batches
                         + sum(1 for _, t, _ in self._since_totals() if t == tenant))
        return Standing(quota, used_ms, in_flight)

    def accepted(self, partner_id: str, tenant_id: str, records: int) -> None:
        """A batch of `records` records was accepted here: it counts at once (backlog, batches in flight)."""
        self._accepted.append((time.monotonic(), (partner_id, tenant_id), records))

    def _since_totals(self) -> deque[tuple[float, tuple[str, str], int]]:
        """The batches accepted here that the readers' latest totals may not count yet."""
        since = self.totals.asked_at()
        while self._accepted and self._accepted[0][0] < since:
            self._accepted.popleft()
        return self._accepted

    def backlog(self) -> int:
        """Records accepted (here: also being published) that no worker has taken yet: the
        readers' latest totals, and what this ingress accepted since they were asked for."""
        return self.totals.backlog() + self._reserved_records + sum(n for _, _, n in self._since_totals())

    def overloaded(self) -> tuple[int, float] | None:
        """(backlog, seconds it may take to drain below the bound) while over the bound, else None."""
        bound = self.settings.max_backlog_records
        if bound is None:
            return None
        backlog = self.backlog()
        if backlog <= bound:
            return None
        return backlog, self._drain_s(backlog - bound)

    def _drain_s(self, excess: int) -> float:
        """How long the workers take for `excess` records at their pace of the last seconds."""
        now, taken = time.monotonic(), self.totals.outcomes()
        pace = self._pace
        if pace and taken < pace[-1][1]:
            pace.clear()  # batches expired: the total fell
        pace.append((now, taken))
        while len(pace) > 2 and pace[0][0] < now - DRAIN_WINDOW_S:
            pace.popleft()
        elapsed = now - pace[0][0]
        rate = (taken - pace[0][1]) / elapsed if elapsed >= 1.0 else 0.0
        return min(30.0, max(1.0, excess / rate)) if rate > 0 else 5.0

    async def admit(self, partner_id: str, tenant_id: str, records: int, wait_s: float) -> Reservation:
        """Reserve a write of `records` records for the tenant, or raise 503 (backlog) or 429
        (quota) with Retry-After; asking the readers takes at most `wait_s`. The caller releases
        the reservation once the batch is in the store or surely not accepted."""
        over = self.overloaded()
        if over is not None:
            # Refused on the latest totals: ask the readers now. The totals asked in the
            # background may already count a batch accepted here after they were asked, which
            # this ingress then counts a second time; the figure it refuses with, and the
            # client reads, must be right.
            await self.totals.refresh(wait_s)
            over = self.overloaded()
        if over is not None:
            backlog, drain_s = over
            raise ApiError(503, f"The service is overloaded: {backlog} records wait for the workers, more than "
                                f"{self.settings.max_backlog_records} (REACH_MAX_BACKLOG_RECORDS); nothing was "
                                "accepted, retry later",
                           data={"reason": "backlog", "backlogRecords": backlog,
                                 "maxBacklogRecords": self.settings.max_backlog_records},
                           headers={"Retry-After": str(math.ceil(drain_s))})
        standing = self.standing(partner_id, tenant_id)
        limit = standing.quota.batches_in_flight
        if limit is not None and standing.in_flight >= limit:
            # Refused on the latest totals: ask the readers now, so that a batch seen finished
            # through any ingress frees its place at once.
            await self.totals.refresh(wait_s)
            standing = self.standing(partner_id, tenant_id)
        early_s = self._early_or_refused(standing, records)
        tenant = (partner_id, tenant_id)
        reserved_records, reserved_batches = self._reserved.get(tenant, (0, 0))
        self._reserved[tenant] = (reserved_records + records, reserved_batches + 1)
        self._reserved_records += records
        reservation = Reservation(self, tenant, records)
        reservation.headers = self.standing(partner_id, tenant_id).headers()
        if early_s > 0:
            try:  # held, reserved: the tenant's next write counts this one
                await asyncio.sleep(early_s)
            except BaseException:
                reservation.release()
                raise
        return reservation

    @staticmethod
    def _early_or_refused(standing: Standing, records: int) -> float:
        """How long the write must be held to keep to the tenant's records rate (0: not at all),
        or 429 over its batches in flight or more than `PACE_S` early."""
        quota = standing.quota
        if quota.batches_in_flight is not None and standing.in_flight >= quota.batches_in_flight:
            raise ApiError(429, f"Quota exceeded: at most {quota.batches_in_flight} batches in flight per tenant "
                                f"(batchesInFlight); {standing.in_flight} are queued or processing; retry when "
                                "one has finished",
                           data={"limit": "batchesInFlight", "quota": quota.batches_in_flight,
                                 "inFlight": standing.in_flight, "retryAfterSeconds": IN_FLIGHT_RETRY_S},
                           headers={"Retry-After": str(IN_FLIGHT_RETRY_S), **standing.headers()})
        per_minute = quota.records_per_minute
        if per_minute is None:
            return 0.0
        spacing, burst = 60_000 / per_minute, quota.burst()
        # A write larger than the burst (a deleteAll, a batch over a small burst) is taken with
        # a full allowance, and the tenant then waits it off.
        over_ms = standing.used_ms + min(records, burst) * spacing - burst * spacing
        if over_ms > PACE_S * 1000:
            retry_s = math.ceil(over_ms / 1000)
            raise ApiError(429, f"Quota exceeded: {per_minute} records per minute per tenant (recordsPerMinute); "
                                f"{standing.records_left()} can be sent now, this write has {records}; "
                                f"retry in {retry_s} s",
                           data={"limit": "recordsPerMinute", "quota": per_minute,
                                 "available": standing.records_left(), "requested": records,
                                 "retryAfterSeconds": retry_s},
                           headers={"Retry-After": str(retry_s), **standing.headers()})
        return max(0.0, over_ms / 1000)


def describe(request: Request, partner_id: str, tenant_id: str) -> None:
    """Give the answer to this request the tenant's RateLimit fields (`RateLimitHeaders`)."""
    request.state.rate_limit = ingress_of(request).admission.standing(partner_id, tenant_id).headers()


async def admit(request: Request, partner_id: str, tenant_id: str, records: int) -> Reservation:
    """`Admission.admit` for this request; its answer then carries the fields as of after it."""
    reservation = await ingress_of(request).admission.admit(partner_id, tenant_id, records,
                                                          answer_budget.seconds_left(request))
    request.state.rate_limit = reservation.headers
    return reservation


class RateLimitHeaders:
    """Adds the RateLimit fields a handler found (`describe`) to its answer, whatever its status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                fields = scope.get("state", {}).get("rate_limit")
                if fields:
                    headers = MutableHeaders(scope=message)
                    for name, value in fields.items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_fields)
