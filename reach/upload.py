"""`reach upload`: load a file of records through the HTTP API, with live progress and safe retries.

    reach upload FILE --schema NAME [--tenant T] [--batch-size N] [--concurrency N] [--no-wait]
                 [--failed PATH] [--json] [--url URL] [--token TOKEN]

FILE is `.jsonl`/`.ndjson` (an object per line), `.json` (an array of objects), `.csv` (a header
row; each cell typed by the schema's property of that name: integers, numbers, booleans, arrays
and objects as JSON; an empty cell leaves the field out), or `-` for JSON lines on stdin. A line
of a `failed.jsonl` is uploaded as its `record`, so a fixed failed file can be fed back in.

Records go in batches (`--batch-size`, at most 1000) sent `--concurrency` at a time, each with
its own Idempotency-Key, so that a retry never doubles a batch: 429, 503, 409 and lost
connections are retried with backoff, honouring Retry-After. A batch the ingress refuses for
some of its records (400 naming them) is sent again without them. With `--wait` (the default)
the command follows every batch's events (`GET /api/batches/{id}/events`) until all are
terminal. It ends with a summary, writes every failed record to `failed.jsonl` (line number,
record, code, message), and exits 1 if any record failed, 2 if the service refused the upload
as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import random
import re
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reach.config import Settings
from reach.token import make_token

MAX_BATCH = 1000
RETRIED = (409, 429, 503)
MAX_BACKOFF_S = 30.0
_RECORD_ERROR = re.compile(r"^resources\[(\d+)\]")


class Refused(Exception):
    """The service refused the upload as a whole (authentication, schema, a bad request)."""


@dataclass
class Record:
    line: int  # where it is in the file (an array element's position, for .json)
    data: Any
    problem: str | None = None  # why it cannot be sent at all


@dataclass
class Failure:
    line: int
    record: Any
    code: str
    message: str


@dataclass
class Tally:
    """What the progress line and the summary show."""

    total: int = 0
    sent: int = 0
    applied: int = 0
    failed: int = 0
    pending: int = 0
    waiting: str = ""  # why sending waits, if it does
    retries: int = 0  # requests sent again (429, 503, 409, lost connections)
    retried: Counter[str] = field(default_factory=Counter)  # ... by why
    read_all: bool = False  # the whole file is read: `total` is final
    batches: list[str] = field(default_factory=list)
    by_batch: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # applied, failed, pending

    def batch_progress(self, batch_id: str, applied: int, failed: int, pending: int) -> None:
        old = self.by_batch.get(batch_id, (0, 0, 0))
        self.applied += applied - old[0]
        self.failed += failed - old[1]
        self.pending += pending - old[2]
        self.by_batch[batch_id] = (applied, failed, pending)


# -- reading ---------------------------------------------------------------------------------

def read_records(path: str, properties: dict[str, Any] | None) -> Iterator[Record]:
    """The records of the file at `path` ('-': stdin, JSON lines)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            yield from _csv_records(handle, properties or {})
        return
    if suffix == ".json":
        try:
            items = orjson.loads(Path(path).read_bytes())
        except orjson.JSONDecodeError as exc:
            raise Refused(f"{path} is not JSON: {exc}") from None
        if not isinstance(items, list):
            raise Refused(f"{path} holds no array of records")
        for n, item in enumerate(items, 1):
            yield _record(n, item)
        return
    lines: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")
    with lines:
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                text = raw.decode("utf-8", errors="replace").rstrip("\n")
                yield Record(n, text, f"INVALID_JSON: not valid JSON ({exc})")
                continue
            if isinstance(item, dict) and set(item) == {"line", "record", "code", "message"}:
                item = item["record"]  # a line of failed.jsonl
            yield _record(n, item)


def _record(line: int, item: Any) -> Record:
    if isinstance(item, dict):
        return Record(line, item)
    return Record(line, item, "NOT_AN_OBJECT: a record is a JSON object")


def _csv_records(handle: io.TextIOBase, properties: dict[str, Any]) -> Iterator[Record]:
    reader = csv.DictReader(handle)
    for row in reader:
        record: dict[str, Any] = {}
        problem = None
        for column, cell in row.items():
            if column is None or cell is None or cell == "":
                continue  # no value: the field is left out
            try:
                record[column] = typed_cell(cell, properties.get(column, {}))
            except ValueError as exc:
                problem = f"INVALID_VALUE: column {column!r}: {exc}"
        yield Record(reader.line_num, record if problem is None else row, problem)


def typed_cell(cell: str, schema: dict[str, Any]) -> Any:
    """A CSV cell as the JSON value its property's schema asks for (a string if it says nothing)."""
    kinds = schema.get("type", "string")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "$ref" in schema or "string" in kinds:
        return cell
    if "integer" in kinds:
        try:
            return int(cell)
        except ValueError:
            raise ValueError(f"{cell!r} is not an integer") from None
    if "number" in kinds:
        try:
            return float(cell) if any(c in cell for c in ".eE") else int(cell)
        except ValueError:
            raise ValueError(f"{cell!r} is not a number") from None
    if "boolean" in kinds:
        lowered = cell.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{cell!r} is not a boolean (true/false)")
    try:
        return orjson.loads(cell)  # arrays and objects as JSON
    except orjson.JSONDecodeError:
        raise ValueError(f"{cell!r} is not JSON") from None


# -- sending ---------------------------------------------------------------------------------

class Uploader:
    def __init__(self, http: httpx.AsyncClient, schema: str, tally: Tally, failures: list[Failure]) -> None:
        self.http = http
        self.path = f"/api/resources/{urllib.parse.quote(schema, safe='')}/batch"
        self.tally, self.failures = tally, failures
        self.run = uuid.uuid4().hex[:12]  # keys of this run: its retries are the same requests
        self.followers: list[asyncio.Task[None]] = []

    def following(self) -> bool:
        """Whether a batch is still being followed (forgets those that ended; raises what one raised)."""
        running = []
        for follower in self.followers:
            if not follower.done():
                running.append(follower)
            elif follower.exception() is not None:
                raise follower.exception()  # type: ignore[misc]
        self.followers = running
        return bool(running)

    async def send(self, number: int, batch: list[Record], wait: bool) -> None:
        """Send one batch until it is accepted; records a 400 names go to the failures."""
        attempt = 0
        while batch:
            body = orjson.dumps({"resources": [r.data for r in batch]})
            key = f"reach-upload-{self.run}-{number}-{attempt}"
            response = await retrying(self.http, self.tally, "POST", self.path, content=body,
                                      headers={"Idempotency-Key": key})
            if response.status_code == 202:
                batch_id = response.json()["data"]["batchId"]
                self.tally.sent += len(batch)
                self.tally.batches.append(batch_id)
                if wait:
                    self.followers.append(asyncio.create_task(self.follow(batch_id, batch)))
                return
            answer = _json(response)
            named = _named_records(answer, len(batch)) if response.status_code == 400 else {}
            if not named:
                raise Refused(f"POST {self.path} answered {response.status_code}: "
                              f"{answer.get('message', response.text)}")
            for index, message in named.items():
                record = batch[index]
                self.failures.append(Failure(record.line, record.data, "VALIDATION_FAILED", message))
                self.tally.failed += 1
            batch = [r for i, r in enumerate(batch) if i not in named]  # the rest, again
            attempt += 1

    async def follow(self, batch_id: str, batch: list[Record]) -> None:
        """Follow the batch's events until it is terminal; then collect its failed records."""
        last = None
        attempt = 0
        while True:
            headers: dict[str, str] = {"Last-Event-ID": last} if last else {}
            try:
                async with self.http.stream("GET", f"/api/batches/{batch_id}/events", headers=headers,
                                            timeout=httpx.Timeout(30, read=None)) as response:
                    if response.status_code == 204:
                        break
                    if response.status_code != 200:
                        raise httpx.TransportError(f"events answered {response.status_code}")
                    async for event, event_id, data in _events(response):
                        last = event_id
                        progress = data["progress"]
                        self.tally.batch_progress(batch_id, progress["successfulRecords"], progress["failedRecords"],
                                                  progress["pendingRecords"])
                        if event == "completed":
                            await self._collect_failures(batch_id, batch)
                            return
            except httpx.TransportError:
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def _collect_failures(self, batch_id: str, batch: list[Record]) -> None:
        cursor = None
        while True:
            params = {"status": "failed", "limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = (await self.http.get(f"/api/batches/{batch_id}/records", params=params)).json()["data"]
            for result in page["results"]:
                record = batch[result["index"]]
                self.failures.append(Failure(record.line, record.data, result["code"], result["message"]))
            cursor = page["pagination"]["cursor"]
            if not page["pagination"]["hasNextPage"]:
                return


async def retrying(http: httpx.AsyncClient, tally: Tally, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The answer to a request, sent again while what stops it may pass (429, 503, 409, lost
    connections), after Retry-After or a growing backoff; `tally` shows why it waits."""
    attempt = 0
    while True:
        try:
            response = await http.request(method, path, **kwargs)
            if response.status_code not in RETRIED:
                tally.waiting = ""
                return response
            reason = f"{response.status_code}{_limit_named(response)}"
            pause = _retry_after(response) or _backoff(attempt)
        except httpx.TransportError as exc:
            reason, pause = type(exc).__name__, _backoff(attempt)
        tally.waiting = f"retrying ({reason}) in {pause:.0f}s"
        tally.retries += 1
        tally.retried[reason] += 1
        attempt += 1
        await asyncio.sleep(pause)


async def _events(response: httpx.Response) -> Any:
    """(event, id, data) of an event stream as they arrive."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "event" in fields:
                yield fields["event"], fields.get("id"), orjson.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _named_records(answer: dict[str, Any], size: int) -> dict[int, str]:
    """Batch index → problem, for every record a 400's `errors` names (empty: the request as a whole)."""
    named: dict[int, str] = {}
    for error in answer.get("errors") or []:
        found = _RECORD_ERROR.match(error)
        if found and int(found.group(1)) < size:
            index = int(found.group(1))
            named[index] = f"{named[index]}; {error}" if index in named else error
    return named


def _limit_named(response: httpx.Response) -> str:
    """What a 429 or 503 names as the limit it hit (`ingest.quotas`), as ' <name>', or ''."""
    data = _json(response).get("data")
    if isinstance(data, dict):
        name = data.get("limit") or data.get("reason")
        if isinstance(name, str) and name.isidentifier():
            return f" {name}"
    return ""


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after", "")
    return float(raw) if raw.replace(".", "", 1).isdigit() else None


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, 0.5 * 2 ** attempt) * random.uniform(0.8, 1.2)


# -- the command -----------------------------------------------------------------------------

async def upload(args: argparse.Namespace, base_url: str, token: str, console: Console) -> int:
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    if args.tenant:
        headers["reach-tenant-id"] = args.tenant
    started = time.monotonic()
    tally, failures = Tally(), list[Failure]()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        properties = await _properties(http, tally, args.schema) if Path(args.file).suffix.lower() == ".csv" else None
        uploader = Uploader(http, args.schema, tally, failures)
        # The file is read as it is sent: memory holds the batches queued and those not yet
        # terminal (for failed.jsonl), not the file.
        queue: asyncio.Queue[tuple[int, list[Record]] | None] = asyncio.Queue(maxsize=2 * args.concurrency)

        async def reader() -> None:
            batch: list[Record] = []
            number = 0
            for record in read_records(args.file, properties):
                tally.total += 1
                if record.problem is not None:
                    code, _, message = record.problem.partition(": ")
                    failures.append(Failure(record.line, record.data, code, message))
                    tally.failed += 1
                    continue
                batch.append(record)
                if len(batch) == args.batch_size:
                    await queue.put((number, batch))
                    batch, number = [], number + 1
            if batch:
                await queue.put((number, batch))
            tally.read_all = True
            for _ in range(args.concurrency):
                await queue.put(None)

        async def sender() -> None:
            while (item := await queue.get()) is not None:
                await uploader.send(item[0], item[1], args.wait)

        with _progress(console, args.json) as progress:
            task = progress.add_task("upload", total=None)  # known once the file is read
            work = asyncio.gather(reader(), *(sender() for _ in range(args.concurrency)))
            try:
                while not work.done() or (args.wait and uploader.following()):
                    _show(progress, task, tally, args.wait)
                    await asyncio.wait([cast("asyncio.Future[Any]", work), *uploader.followers], timeout=0.2)
                    if work.done() and work.exception() is not None:
                        raise work.exception()  # type: ignore[misc]
                _show(progress, task, tally, args.wait)
            finally:
                work.cancel()
                for follower in uploader.followers:
                    follower.cancel()
    seconds = time.monotonic() - started
    failures.sort(key=lambda f: f.line)
    if failures:
        Path(args.failed).write_bytes(b"".join(orjson.dumps({"line": f.line, "record": f.record, "code": f.code,
                                                             "message": f.message}) + b"\n" for f in failures))
    codes = Counter(f.code for f in failures)
    summary = {"records": tally.total, "sent": tally.sent, "applied": tally.applied if args.wait else None,
               "failed": len(failures), "failedByCode": dict(codes), "pending": tally.pending if args.wait else None,
               "batches": tally.batches, "retries": tally.retries,
               "retriesBy": dict(tally.retried), "seconds": round(seconds, 3),
               "failedFile": str(args.failed) if failures else None}
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        console.print(f"{tally.total:,} records in {seconds:.1f} s: {tally.sent:,} sent in {len(tally.batches)} batches"
                      + (f", {tally.applied:,} applied" if args.wait else " (not waited for)")
                      + f", {len(failures):,} failed"
                      + (f" ({', '.join(f'{c} {n:,}' for c, n in codes.most_common())})" if codes else ""))
        if failures:
            console.print(f"failed records: {args.failed} (fix them and upload that file again)")
    return 1 if failures else 0


async def _properties(http: httpx.AsyncClient, tally: Tally, schema: str) -> dict[str, Any]:
    """The schema's top-level properties, to type CSV cells (needs a token that may read it)."""
    response = await retrying(http, tally, "GET", f"/partner/schema-definitions/{urllib.parse.quote(schema, safe='')}")
    if response.status_code != 200:
        raise Refused(f"reading schema {schema!r} to type the CSV columns answered {response.status_code}: "
                      f"{_json(response).get('message', response.text)} (a partner token can read it)")
    return response.json()["data"]["schema"].get("properties", {})


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet, transient=False)


def _show(progress: Progress, task: Any, tally: Tally, wait: bool) -> None:
    done = tally.applied + tally.failed if wait else tally.sent + tally.failed
    text = f"sent {tally.sent:,} → applied {tally.applied:,} · failed {tally.failed:,} · pending {tally.pending:,}"
    if tally.waiting:
        text += f" · {tally.waiting}"
    progress.update(task, completed=done, description=text, total=tally.total if tally.read_all else None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reach upload", description=__doc__.split("\n")[0])
    parser.add_argument("file", help=".jsonl, .ndjson, .json or .csv; '-': JSON lines on stdin")
    parser.add_argument("--schema", required=True, help="the schema definition's name, plural name or id")
    parser.add_argument("--tenant", help="the tenant (with a partner token)")
    parser.add_argument("--batch-size", type=int, default=MAX_BATCH, help=f"records per batch (1..{MAX_BATCH})")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="follow every batch until it is terminal (default)")
    parser.add_argument("--failed", default="failed.jsonl", help="where failed records go (default: failed.jsonl)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of progress")
    parser.add_argument("--partner", default="dev-partner", help="makes the token when none is given")
    parser.add_argument("--token", default=os.environ.get("REACH_TOKEN"), help="default: $REACH_TOKEN")
    parser.add_argument("--url", help="the ingress (default: the configured local one)")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be 1..{MAX_BATCH}")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    settings = Settings.from_env()
    token = args.token or make_token(settings, args.partner)
    console = Console(stderr=True)
    try:
        url = args.url or f"http://{settings.http_host}:{settings.http_port}"
        return asyncio.run(upload(args, url, token, console))
    except (Refused, OSError, httpx.HTTPError) as exc:
        print(f"reach upload: {exc}", file=sys.stderr)
        return 2
