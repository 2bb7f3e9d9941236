"""`reach delete`: delete a tenant's resources through the HTTP API, with a dry run first if asked.

    reach delete SCHEMA --tenant T (--id ID... | --ids-file FILE | --all) [--cascade] [--dry-run]

External ids go in batches of 1000 (a file holds one per line; `-` reads stdin). Each batch is
a `DELETE /api/resources/{schema}/batch`; the command waits until every batch is terminal,
showing progress, and ends with a summary: deleted, failed by code, deleted by cascade. It
exits 1 if any record failed, 2 on a request the service refused. The token is `--token`,
else `REACH_TOKEN`, else one made for `--partner` from the configured partner secrets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from reach.config import Settings
from reach.token import make_token

BATCH = 1000
TERMINAL = ("success", "partial_success", "failed")


class Refused(Exception):
    """The service answered a request with an error status."""


class Api:
    """A minimal JSON client of the ingress (stdlib only: the command needs no extra package)."""

    def __init__(self, url: str, token: str, tenant: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
        if tenant is not None:
            self.headers["reach-tenant-id"] = tenant

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers,
                                         data=None if body is None else orjson.dumps(body))
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return orjson.loads(response.read())["data"]
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = orjson.loads(raw)
                detail = answer.get("message") or raw.decode(errors="replace")
                if answer.get("errors"):
                    detail += ": " + "; ".join(answer["errors"][:5])
            except orjson.JSONDecodeError:
                detail = raw.decode(errors="replace")
            raise Refused(f"{method} {path} answered {exc.code}: {detail}") from None


def chunks(ids: list[str], size: int = BATCH) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def read_ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.id or [])
    if args.ids_file:
        handle = sys.stdin if args.ids_file == "-" else open(args.ids_file, encoding="utf-8")
        with handle:
            ids += [line.strip() for line in handle if line.strip()]
    return ids


def run(api: Api, schema: str, ids: list[str], delete_all: bool, cascade: bool, dry_run: bool,
        wait: bool, out: Any = None) -> int:
    """Send the deletes (or dry runs) and report to `out` (stdout); the exit code."""
    out = out or sys.stdout
    path = f"/api/resources/{urllib.parse.quote(schema, safe='')}/batch"
    bodies: list[dict[str, Any]] = ([{"deleteAll": True, "cascade": cascade}] if delete_all else
              [{"externalIds": part, "cascade": cascade} for part in chunks(ids)])
    if dry_run:
        would: Counter[str] = Counter()
        skipped = total = 0
        for body in bodies:
            data = api.call("DELETE", path, {**body, "dryRun": True})
            would.update(data["wouldDelete"])
            skipped += data["skippedDueToReferences"]
            total += data["totalRecords"]
        print(f"dry run: would delete {total} ({', '.join(f'{n} {s}' for s, n in sorted(would.items())) or 'none'}); "
              f"{skipped} left in place, still referenced", file=out)
        return 0
    batch_ids = []
    for n, body in enumerate(bodies, 1):
        accepted = api.call("DELETE", path, body)
        batch_ids.append(accepted["batchId"])
        print(f"batch {n}/{len(bodies)} accepted: {accepted['batchId']} ({accepted['recordCount']} records)", file=out)
    if not wait:
        return 0
    states: dict[str, dict[str, Any]] = {}
    shown = ""
    while True:
        for batch_id in batch_ids:
            if states.get(batch_id, {}).get("status") not in TERMINAL:
                states[batch_id] = api.call("GET", f"/api/batches/{batch_id}")
        done = sum(s["progress"]["processedRecords"] for s in states.values())
        total = sum(s["progress"]["totalRecords"] for s in states.values())
        line = f"processed {done}/{total}"
        if line != shown:
            print(line, file=out, flush=True)
            shown = line
        if all(s["status"] in TERMINAL for s in states.values()):
            break
        time.sleep(0.2)
    deleted = sum(s["progress"]["successfulRecords"] for s in states.values())
    failed: Counter[str] = Counter()
    cascaded: Counter[str] = Counter()
    for state in states.values():
        failed.update(state["errors"]["summary"])
        cascaded.update(state.get("cascade", {}).get("bySchema", {}))
    print(f"deleted {deleted}; failed {sum(failed.values())}"
          + (f" ({', '.join(f'{c} {n}' for c, n in sorted(failed.items()))})" if failed else "")
          + (f"; deleted by cascade {sum(cascaded.values())} "
             f"({', '.join(f'{n} {s}' for s, n in sorted(cascaded.items()))})" if cascaded else ""), file=out)
    for state in states.values():
        for detail in list(state["errors"]["details"].values())[:20]:
            print(f"  {detail['externalId']}: {detail['code']}: {detail['message']}", file=out)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reach delete", description=__doc__.split("\n")[0])
    parser.add_argument("schema", help="the schema definition's name, plural name or id")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", help="an external id (repeat for more)")
    which.add_argument("--ids-file", help="a file of external ids, one per line ('-': stdin)")
    which.add_argument("--all", action="store_true", help="every resource of the schema (deleteAll)")
    parser.add_argument("--cascade", action="store_true", help="also delete what references them, transitively")
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted; change nothing")
    parser.add_argument("--tenant", help="the tenant (with a partner token)")
    parser.add_argument("--partner", default="dev-partner", help="makes the token when none is given")
    parser.add_argument("--token", default=os.environ.get("REACH_TOKEN"), help="default: $REACH_TOKEN")
    parser.add_argument("--url", help="the ingress (default: the configured local one)")
    parser.add_argument("--no-wait", action="store_true", help="stop once every batch is accepted")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    token = args.token or make_token(settings, args.partner)
    api = Api(args.url or f"http://{settings.http_host}:{settings.http_port}", token, args.tenant)
    ids = [] if args.all else read_ids(args)
    if not args.all and not ids:
        parser.error("no external ids given")
    try:
        return run(api, args.schema, ids, args.all, args.cascade, args.dry_run, not args.no_wait)
    except (Refused, urllib.error.URLError) as exc:
        print(f"reach delete: {exc}", file=sys.stderr)
        return 2
