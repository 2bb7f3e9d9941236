"""Batch deletes: `DELETE /api/resources/{schema}/batch` (docs/api.md 6a), its dry run and deleteAll.

What a delete will do is decided by the workers, on each resource's partition, in order with
every other write of it. The ingress reads the same state (`state.remote`, reverse index
included) to answer a dry run and to tell each delete which referrers the request deletes too:

- with `cascade`: the named resources and, transitively, everything that references them;
- without: the named resources that exist, less those that a resource *not deleted by this
  request* references, and those in a cycle of references (A→B→A: neither may go before the
  other; cascade deletes cycles) — repeatedly, since a named resource left in place keeps what
  it references in place too (a fixpoint).

Without cascade, each delete's message carries (header `reach-delete-plan`) the referrers
that this request deletes too: the worker waits for those to go before it deletes (`wait`);
they are deleted in reference order, the referrers first. With cascade, a named resource that
references another named one is marked `byCascade`: found already deleted, it succeeds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import idempotency, quotas
from ingest.auth import tenant_principal
from ingest.batch_status import names
from ingest.context import ingress_of
from ingest.request_parsing import json_object, read_body
from ingest.responses import ApiError, ok
from ingest.uploads import find_definition, publish_accepted, replay_if_accepted
from schemas.events import resource_key, resource_key_parts
from schemas.records import MAX_DELETE_RECORDS, MAX_RECORDS
from state.remote import ResourceReads


@dataclass(frozen=True)
class DeleteRequest:
    external_ids: list[str]
    cascade: bool = False
    delete_all: bool = False
    dry_run: bool = False


@dataclass
class DeletePlan:
    """What a delete request does on the state read at one moment."""

    deleted: list[bytes] = field(default_factory=list)  # every resource it deletes (named first)
    skipped: int = 0  # named resources left in place: referenced by one it does not delete
    # Per named resource, what its delete is told ({"wait": [...]} without cascade: its
    # referrers deleted too; {"byCascade": true}: another named one's cascade reaches it).
    told: dict[bytes, dict[str, Any]] = field(default_factory=dict)


def delete_request(body: bytes) -> DeleteRequest:
    """A batch delete's body, or a 400 naming every problem."""
    parsed = json_object(body, "an 'externalIds' array")
    problems = [f"'{name}' must be true or false" for name in ("cascade", "deleteAll", "dryRun")
                if name in parsed and not isinstance(parsed[name], bool)]
    ids = parsed.get("externalIds")
    delete_all = parsed.get("deleteAll") is True
    if delete_all and ids:
        problems.append("'externalIds' must be empty or absent with deleteAll")
    elif delete_all and ids is not None and not isinstance(ids, list):
        problems.append("'externalIds' must be an array")
    elif not delete_all:
        if not isinstance(ids, list) or not ids:
            problems.append("'externalIds' must be an array of 1 to 1000 external ids (or deleteAll: true)")
        elif len(ids) > MAX_RECORDS:
            problems.append(f"'externalIds' has {len(ids)} items; at most {MAX_RECORDS} are allowed")
        else:
            problems.extend(f"externalIds[{i}]: must be a non-empty string or an integer" for i, x in enumerate(ids)
                            if isinstance(x, bool) or not isinstance(x, (str, int)) or x == "")
    if problems:
        raise ApiError(400, "; ".join(problems))
    return DeleteRequest([str(x) for x in ids or []], parsed.get("cascade") is True, delete_all,
                         parsed.get("dryRun") is True)


async def plan(store: ResourceReads, named: list[bytes], cascade: bool, count: bool = True,
               sync: bool | str = True) -> DeletePlan:
    """What deleting the resources `named` (keys, in request order) does on `store`'s state
    (`sync`: as `ResourceReads`).
    Without `count` (a real run needs only `told`), absent named resources are not looked for:
    they reference nothing and nothing listed references them."""
    result = DeletePlan()
    unique = list(dict.fromkeys(named))
    existing = [k for k, found in zip(unique, await store.exist(unique, sync)) if found] if count else unique
    if cascade:
        named_set = set(existing)
        seen = set(existing)
        result.deleted = list(existing)
        frontier = list(existing)
        while frontier:  # breadth first, each resource once
            found = await store.referrers_of_many(frontier, sync)
            frontier = []
            for key in found:
                for referrer in found[key]:
                    if referrer in named_set:
                        result.told[referrer] = {"byCascade": True}
                    if referrer not in seen:
                        seen.add(referrer)
                        result.deleted.append(referrer)
                        frontier.append(referrer)
        return result
    referrers = await store.referrers_of_many(existing, sync)
    kept = {key for key, found in referrers.items() if any(r not in referrers for r in found)}
    cycle_of = _cycles({key: found for key, found in referrers.items() if key not in kept})
    sizes = Counter(cycle_of.values())
    kept |= {key for key, cycle in cycle_of.items() if sizes[cycle] > 1}
    targets: dict[bytes, list[bytes]] = {}  # named referrer -> the named resources it references
    for key, referring in referrers.items():
        for referrer in referring:
            targets.setdefault(referrer, []).append(key)
    left = list(kept)
    while left:  # a resource left in place keeps what it references in place
        for key in targets.get(left.pop(), []):
            if key not in kept:
                kept.add(key)
                left.append(key)
    result.deleted = [key for key in existing if key not in kept]
    result.skipped = len(kept)
    for key in result.deleted:
        if referrers[key]:
            result.told[key] = {"wait": [r.decode() for r in referrers[key]]}
    return result


def _cycles(edges: dict[bytes, list[bytes]]) -> dict[bytes, int]:
    """The strongly connected component of every node (Tarjan's algorithm, iterative)."""
    index: dict[bytes, int] = {}
    low: dict[bytes, int] = {}
    component: dict[bytes, int] = {}
    stack: list[bytes] = []
    on_stack: set[bytes] = set()
    counter = 0
    successors_of = {node: [s for s in found if s in edges] for node, found in edges.items()}
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = successors_of[node]
            if i < len(successors):
                work.append((node, i + 1))
                nxt = successors[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = index[node]
                    if member == node:
                        break
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return component


async def delete_batch(request: Request) -> Response:
    """`DELETE /api/resources/{schema}/batch`: delete resources by external id, or all of a schema."""
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    partner_id, tenant_id = principal.partner_id, principal.tenant_id
    quotas.describe(request, partner_id, tenant_id)
    definition = await find_definition(request, partner_id)
    raw = await read_body(request, state.settings.max_body_bytes)
    keyed = idempotency.keyed(request, raw)
    replay = replay_if_accepted(request, partner_id, tenant_id, keyed)
    if replay is not None:
        return replay
    body = delete_request(raw)
    store: ResourceReads = state.resources
    # The state as of every write committed before this request. A real delete by external id
    # may be planned on a state a moment old (commit markers under way not waited for; what a
    # reader holds if it cannot catch up in time): it only makes a delete wait for referrers that
    # the request names, so waiting for the markers would only hold each request of a cascade
    # back by a worker's commit under way.
    sync: bool | str = True if body.dry_run or body.delete_all else "last-stable"
    if body.delete_all:
        count = await store.count(partner_id, tenant_id, definition.id)
        most = min(state.settings.delete_all_max, MAX_DELETE_RECORDS)
        if count > most and not body.dry_run:
            raise ApiError(400, f"deleteAll deletes at most {most:,} resources in one request "
                                f"(REACH_DELETE_ALL_MAX); {definition.name} has {count:,}: delete by external id in "
                                "batches of 1000 (reach delete --ids-file); nothing was enqueued")
    ids = await store.external_ids(partner_id, tenant_id, definition.id) if body.delete_all else body.external_ids
    named = [resource_key(partner_id, tenant_id, definition.id, x) for x in ids]
    if body.dry_run:
        result = await plan(store, named, body.cascade)
        name_of = names(state, partner_id)
        would: Counter[str] = Counter()
        for key in result.deleted:
            _, _, definition_id, _ = resource_key_parts(key)
            would[name_of(definition_id) or definition_id] += 1
        return ok({"dryRun": True, "schemaDefinitionId": definition.id, "wouldDelete": dict(would),
                   "skippedDueToReferences": result.skipped, "totalRecords": len(result.deleted)},
                  "Dry run: nothing was deleted")
    plans: dict[int, dict[str, Any]] = {}
    told = (await plan(store, named, body.cascade, count=False, sync=sync)).told
    for index, key in enumerate(named):
        if key in told:
            plans[index] = told.pop(key)  # its first naming only
    return await publish_accepted(request, keyed, partner_id, tenant_id, definition, [(x, None) for x in ids],
                                  "delete", cascade=body.cascade, plans=plans)


routes = [Route("/api/resources/{schema}/batch", delete_batch, methods=["DELETE"])]
