"""`/schema-registry/*`: the part of Confluent's Schema Registry API the ingest events need.

So that stock serializers (confluent-kafka's `AvroSerializer`, Java's `KafkaAvroSerializer`)
can write the ingest topic with `schema.registry.url=http://<ingress>/schema-registry`: they
register or look up the schema they were given, then frame each value with its id
(`schemas.wire_format`); deserializers fetch a schema by id. Only the published versions of
the ingest event schema can be registered, only under the ingest topic's subjects
(`schemas.subjects`); answers and errors have Confluent's shapes and error codes.

No authentication: what is served is the public event contract, and a write can only record
that a subject holds a published version.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from avro.schema import Schema as AvroSchema
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from ingest.context import ingress_of
from ingest.request_parsing import read_body
from ingest.responses import ApiError
from schemas import compatibility
from schemas.subjects import Subjects, writable_subjects
from schemas.wire_format import BY_ID, PUBLISHED, PublishedVersion, known_ids

PREFIX = "/schema-registry"
MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY_BYTES = 1024 * 1024
MAX_VERSION = 2**31 - 1
# Confluent's error codes.
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
INCOMPATIBLE, INVALID_SCHEMA, INVALID_VERSION, NOT_PERMITTED = 409, 42201, 42202, 42205
TIMED_OUT = 50002


class RegistryResponse(Response):
    media_type = MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RegistryError(Exception):
    """An error answer in Confluent's shape: `{"error_code": ..., "message": ...}`."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message

    def response(self) -> Response:
        return RegistryResponse({"error_code": self.error_code, "message": self.message}, status_code=self.status)


async def registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return exc.response()


def http_error(request: Request, exc: HTTPException) -> Response:
    """A 404 or 405 under the prefix, in Confluent's shape (clients read its error_code)."""
    headers = None
    if exc.status_code == 405:
        scope = {**request.scope, "path": request.url.path.removeprefix(PREFIX), "root_path": ""}
        allowed = {m for route in routes if route.matches(scope)[0] is not Match.NONE for m in route.methods or ()}
        headers = {"Allow": ", ".join(sorted(allowed))}
    return RegistryResponse({"error_code": exc.status_code, "message": f"HTTP {exc.status_code} {exc.detail}"},
                            status_code=exc.status_code, headers=headers)


def _subjects(request: Request) -> Subjects:
    return ingress_of(request).subjects


def _ingest_topic(request: Request) -> str:
    return ingress_of(request).topics.ingest.name


def _schema_id(request: Request) -> PublishedVersion:
    raw = request.path_params["id"]
    published = BY_ID.get(int(raw)) if raw.isascii() and raw.isdigit() and len(raw) < 10 else None
    if published is None:
        raise RegistryError(404, SCHEMA_NOT_FOUND, f"Schema {raw} not found (the schema ids here are {known_ids()})")
    return published


async def _versions(request: Request, subject: str) -> dict[int, int]:
    versions = _subjects(request).versions(subject)
    if not versions:
        await _subjects(request).sync()  # registered moments ago through another ingress
        versions = _subjects(request).versions(subject)
    if not versions:
        raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    return versions


async def _version(request: Request) -> tuple[str, int, PublishedVersion]:
    subject, raw = request.path_params["subject"], request.path_params["version"]
    if raw not in ("latest", "-1") and not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_VERSION):
        raise RegistryError(422, INVALID_VERSION, f"The specified version '{raw}' is not a valid version id. "
                            f"Allowed values are between [1, {MAX_VERSION}] and the string \"latest\"")
    versions = await _versions(request, subject)
    version = max(versions) if raw in ("latest", "-1") else int(raw)
    if version not in versions:
        raise RegistryError(404, VERSION_NOT_FOUND, f"Version {raw} not found.")
    return subject, version, BY_ID[versions[version]]


def _described(subject: str, version: int, published: PublishedVersion) -> dict[str, Any]:
    return {"subject": subject, "version": version, "id": published.schema_id, "schema": published.text}


async def _candidate(request: Request) -> tuple[AvroSchema, PublishedVersion | None]:
    """The schema in the request body, and the published version it is, if any."""
    try:
        raw = await read_body(request, MAX_BODY_BYTES)
    except ApiError as exc:
        raise RegistryError(exc.status, exc.status, exc.message) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RegistryError(400, 400, "The body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, INVALID_SCHEMA, 'Invalid schema: the body must be an object with "schema", '
                            "the schema's text")
    if (body.get("schemaType") or "AVRO") != "AVRO":
        raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: schemaType {body['schemaType']!r} is not "
                            "supported here; the ingest events are AVRO")
    if body.get("references"):
        raise RegistryError(422, INVALID_SCHEMA, "Invalid schema: references are not supported here; the ingest "
                            "event schemas have none")
    try:
        schema = compatibility.parse(body["schema"])
    except compatibility.InvalidSchema as exc:
        raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: {exc}") from None
    form = compatibility.canonical_form(schema)
    return schema, next((p for p in PUBLISHED if _canonical(p.schema_id) == form), None)


@cache
def _parsed(schema_id: int) -> AvroSchema:
    return compatibility.parse(BY_ID[schema_id].text)


@cache
def _canonical(schema_id: int) -> str:
    # avro recomputes the form at each access (~40 µs a schema): once per process is enough.
    return compatibility.canonical_form(_parsed(schema_id))


def _problems(schema: AvroSchema, subject: str, version: int, schema_id: int) -> list[str]:
    return compatibility.backward_problems(schema, _parsed(schema_id),
                                           f"version {version} of {subject} (schema id {schema_id})")


# -- routes ---------------------------------------------------------------------------------

async def schema_by_id(request: Request) -> Response:
    return RegistryResponse({"schema": _schema_id(request).text})


async def schema_text_by_id(request: Request) -> Response:
    return Response(_schema_id(request).text, media_type=MEDIA_TYPE)


async def _holding(request: Request) -> list[tuple[str, int]]:
    """(subject, version) of every subject version that holds the schema id in the path."""
    schema_id = _schema_id(request).schema_id
    subjects = _subjects(request)
    await subjects.sync()
    return [(s, v) for s in subjects.subjects() for v, i in subjects.versions(s).items() if i == schema_id]


async def subjects_of_id(request: Request) -> Response:
    return RegistryResponse(list(dict.fromkeys(s for s, _ in await _holding(request))))


async def versions_of_id(request: Request) -> Response:
    return RegistryResponse([{"subject": s, "version": v} for s, v in await _holding(request)])


async def schema_types(request: Request) -> Response:
    return RegistryResponse(["AVRO"])


async def list_subjects(request: Request) -> Response:
    await _subjects(request).sync()
    return RegistryResponse(_subjects(request).subjects())


async def list_versions(request: Request) -> Response:
    return RegistryResponse(list(await _versions(request, request.path_params["subject"])))


async def get_version(request: Request) -> Response:
    return RegistryResponse(_described(*await _version(request)))


async def get_version_schema(request: Request) -> Response:
    return Response((await _version(request))[2].text, media_type=MEDIA_TYPE)


async def register(request: Request) -> Response:
    """POST /subjects/{subject}/versions: the id of a published version, registered if need be."""
    subject = request.path_params["subject"]
    allowed = writable_subjects(_ingest_topic(request)).get(subject)
    if allowed is None:
        raise RegistryError(422, NOT_PERMITTED, f"Subject '{subject}' is not writable here: this registry holds the "
                            f"ingest event schemas only, under {', '.join(writable_subjects(_ingest_topic(request)))}")
    schema, published = await _candidate(request)
    subjects = _subjects(request)
    if published is not None and published in allowed:
        await subjects.register(ingress_of(request).kafka.producer, subject, published)
        # Only the id, as Confluent's registry answers: clients may refuse fields they do not know.
        return RegistryResponse({"id": published.schema_id})
    await subjects.sync()
    versions = subjects.versions(subject)
    if versions:
        latest = max(versions)
        problems = _problems(schema, subject, latest, versions[latest])
        if problems:
            raise RegistryError(409, INCOMPATIBLE, "Schema being registered is incompatible with an earlier schema "
                                f"for subject \"{subject}\", details: {problems}")
    raise RegistryError(422, NOT_PERMITTED, f"Not a published version of the ingest event schema for subject "
                        f"'{subject}': it accepts "
                        f"{', '.join(f'{p.full_name} (schema id {p.schema_id})' for p in allowed)}"
                        f", exactly as published (GET {PREFIX}/schemas/ids/<id>); docs and defaults may differ, "
                        "the fields and types may not")


async def lookup(request: Request) -> Response:
    """POST /subjects/{subject}: the version of `subject` that holds this schema."""
    subject = request.path_params["subject"]
    schema, published = await _candidate(request)
    versions = await _versions(request, subject)
    version = next((v for v, i in versions.items() if published is not None and i == published.schema_id), None)
    if version is None or published is None:
        raise RegistryError(404, SCHEMA_NOT_FOUND, "Schema not found")
    return RegistryResponse(_described(subject, version, published))


async def check_compatibility(request: Request) -> Response:
    """POST /compatibility/subjects/{subject}/versions[/{version}]: whether the schema could be
    registered after that version (after the latest, without one) at level BACKWARD."""
    if "version" in request.path_params:
        subject, version, published = await _version(request)
    else:
        subject = request.path_params["subject"]
        versions = await _versions(request, subject)
        version = max(versions)
        published = BY_ID[versions[version]]
    schema, _ = await _candidate(request)
    problems = _problems(schema, subject, version, published.schema_id)
    answer: dict[str, Any] = {"is_compatible": not problems}
    if request.query_params.get("verbose", "").lower() == "true":
        answer["messages"] = problems
    return RegistryResponse(answer)


async def config(request: Request) -> Response:
    return RegistryResponse({"compatibilityLevel": compatibility.LEVEL})


async def mode(request: Request) -> Response:
    return RegistryResponse({"mode": "READWRITE"})


routes = [
    Route("/schemas/types", schema_types),
    Route("/schemas/ids/{id}", schema_by_id),
    Route("/schemas/ids/{id}/schema", schema_text_by_id),
    Route("/schemas/ids/{id}/subjects", subjects_of_id),
    Route("/schemas/ids/{id}/versions", versions_of_id),
    Route("/subjects", list_subjects),
    Route("/subjects/{subject}", lookup, methods=["POST"]),
    Route("/subjects/{subject}/versions", list_versions),
    Route("/subjects/{subject}/versions", register, methods=["POST"]),
    Route("/subjects/{subject}/versions/{version}", get_version),
    Route("/subjects/{subject}/versions/{version}/schema", get_version_schema),
    Route("/compatibility/subjects/{subject}/versions", check_compatibility, methods=["POST"]),
    Route("/compatibility/subjects/{subject}/versions/{version}", check_compatibility, methods=["POST"]),
    Route("/config", config),
    Route("/config/{subject}", config),
    Route("/mode", mode),
    Route("/mode/{subject}", mode),
]
