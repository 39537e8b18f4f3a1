"""`GET /openapi.json`: an OpenAPI 3.1 description of the client API, built once per process.

Request schemas of the drop-in routes come from the catalog's pydantic models, so the document
cannot drift from what `POST /v1/{model}` validates. The rest is written out by hand from the
route modules; `tests/test_openapi.py` checks that every route in the table is described.
"""

import functools
import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from typing import Annotated

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from service import catalog, jobs
from service.api import compat, deliveries, subscriptions
from service.api.events import HEADERS as SSE_HEADERS
from service.api.models import describe
from service.events import PING

REF = "#/components/schemas/{model}"
DROP_IN, JOBS, EVENTS, CALLBACKS, OPS = "BFL drop-in", "Jobs", "Events", "Callbacks", "Operations"


def ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def nullable(type_: str, **extra) -> dict:
    return {"type": [type_, "null"], **extra}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def obj(required: tuple[str, ...] = (), **properties) -> dict:
    return {"type": "object", "required": list(required or properties), "properties": properties}


def json_body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Shared error responses, referenced from components: (name, description); body {"detail": …}.
ERRORS = {
    "400": ("BadRequest", "The body is not a JSON object, or a header is malformed"),
    "403": ("Forbidden", "The key is missing or not accepted"),
    "404": ("NotFound", "Not found (another tenant's resources do not exist for this key)"),
    "409": ("Conflict", "The request conflicts with the resource's state"),
    "413": ("TooLarge", "The body is too large"),
    "422": ("Invalid", "Invalid input"),
    "502": ("BadGateway", "BFL could not be reached"),
}


def errors(*codes: str) -> dict:
    return {code: {"$ref": f"#/components/responses/{ERRORS[code][0]}"} for code in codes}


def error_responses() -> dict:
    return {name: json_body(ref("Error"), text) for name, text in ERRORS.values()}


def param(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    spec = {"name": name, "in": where, "schema": schema, "description": description}
    return spec | {"required": True} if required or where == "path" else spec


# ---- schemas written out by hand -------------------------------------------------------------

TIME = nullable("string", format="date-time")
# What get_result shows (DESIGN §6): BFL's words only, Queued and Processing as Pending.
BFL_STATUSES = sorted(
    {jobs.bfl_status(status) for status in jobs.STATUSES}, key=jobs.STATUSES.index
)
NUMBER = nullable("number")
# Every type an event can have: a job's stream carries the job's, /v1/events and callbacks all.
EVENT_TYPES = [*jobs.EVENT_TYPES, "subscription.disabled", PING]


def _schemas() -> dict:
    validation_item = obj(
        ("type", "loc", "msg"),
        type={"type": "string"},
        loc=array({"type": ["string", "integer"]}),
        msg={"type": "string"},
        input={},
        ctx={"type": "object"},
    )
    return {
        "Error": obj(detail={"type": "string"}),
        "HTTPValidationError": obj(detail=array(validation_item)),
        "AsyncResponse": obj(
            id={"type": "string"},
            polling_url={"type": "string", "format": "uri"},
            cost=NUMBER,
            input_mp=NUMBER,
            output_mp=NUMBER,
        ),
        "ResultResponse": obj(
            id={"type": "string"},
            status={"enum": [*BFL_STATUSES, jobs.TASK_NOT_FOUND]},
            result={"anyOf": [ref("Result"), {"type": "null"}]},
            progress=nullable("number", minimum=0, maximum=1),
            details=nullable("object"),
            preview=nullable("object"),
        ),
        "Result": {
            "type": "object",
            "description": "BFL's result, with `sample` pointing at fluxhook's stored copy",
            "required": ["sample"],
            "properties": {"sample": {"type": "string", "format": "uri"}},
        },
        "Job": _job(),
        "JobDetail": {"allOf": [ref("Job"), obj(events=array(ref("JobEventSummary")))]},
        "JobEventSummary": obj(
            seq={"type": "integer"},
            type={"enum": list(jobs.EVENT_TYPES)},
            timestamp={"type": "string", "format": "date-time"},
            status=nullable("string"),
            progress=NUMBER,
        ),
        "JobList": obj(jobs=array(ref("Job")), next_cursor=nullable("string")),
        "Event": obj(
            type={"enum": EVENT_TYPES},
            timestamp={"type": "string", "format": "date-time"},
            data={
                "description": "job.*: the job as GET /v1/jobs/{id} shows it; "
                "subscription.disabled: which and why; ping: the test event",
                "anyOf": [ref("Job"), ref("SubscriptionDisabled"), ref("Ping")],
            },
        ),
        "SubscriptionDisabled": obj(
            id={"type": "string", "format": "uuid"},
            url={"type": "string", "format": "uri"},
            reason={"type": "string"},
        ),
        "Ping": obj(
            subscription_id={"type": "string", "format": "uuid"},
            url={"type": "string", "format": "uri"},
            test={"const": True},
            message={"type": "string"},
        ),
        "PingSent": obj(
            delivery_id={"type": "string", "format": "uuid"},
            webhook_id={"type": "string", "description": "The ping's webhook-id header"},
        ),
        **_subscription_schemas(),
        "Delivery": _delivery(),
        "DeliveryList": obj(deliveries=array(ref("Delivery"))),
        "Model": _model(),
        "ModelList": obj(models=array(ref("Model"))),
        "Credits": obj(credits={"type": "number"}),
        "Usage": obj(
            ("from", "to", "jobs", "cost", "days"),
            **{"from": {"type": "string", "format": "date"}},
            to={"type": "string", "format": "date"},
            jobs={"type": "integer"},
            cost={"type": "number", "description": "BFL's reported cost, in credits"},
            days=array(
                obj(
                    ("day", "model", "status", "jobs", "cost"),
                    day={"type": "string", "format": "date"},
                    model={"type": "string"},
                    status={"type": "string"},
                    jobs={"type": "integer"},
                    cost={"type": "number"},
                )
            ),
        ),
        "Status": obj(
            ("status",),
            status={"enum": ["ok", "unavailable"]},
            migration={"type": "string", "description": "readyz: the database's revision"},
            reason={"type": "string", "description": "Why it is unavailable"},
        ),
    }


def _job() -> dict:
    return obj(
        id={"type": "string", "format": "uuid"},
        model={"type": "string"},
        status={"enum": list(jobs.STATUSES)},
        progress=nullable("number", minimum=0, maximum=1),
        image_stored={"type": "boolean", "description": "The image is in fluxhook's store"},
        inputs={"type": "object", "description": "Validated inputs; long values elided"},
        result={"anyOf": [ref("Result"), {"type": "null"}]},
        details=nullable("object"),
        bfl_id=nullable("string"),
        cost=NUMBER,
        input_mp=NUMBER,
        output_mp=NUMBER,
        completed_via={"enum": ["webhook", "reconciler", None]},
        created_at={"type": "string", "format": "date-time"},
        admitted_at={**TIME, "description": "First given an upstream slot"},
        submitted_at=TIME,
        finished_at=TIME,
        polling_url={"type": "string", "format": "uri"},
        image_url=nullable("string", format="uri"),
    )


def _subscription_schemas() -> dict:
    events = array({"enum": list(subscriptions.SUBSCRIPTION_EVENTS)})
    view = obj(
        id={"type": "string", "format": "uuid"},
        url={"type": "string", "format": "uri"},
        events=events,
        description={"type": "string"},
        enabled={"type": "boolean"},
        disabled_reason=nullable("string"),
        created_at={"type": "string", "format": "date-time"},
        previous_secret_expires_at=TIME,
    )
    secret = obj(secret={"type": "string", "description": "whsec_…, shown only here"})
    create = obj(
        ("url",),
        url={"type": "string", "format": "uri"},
        events={**events, "minItems": 1, "description": "Default: every job event"},
        description={"type": "string", "maxLength": subscriptions.MAX_DESCRIPTION},
    )
    return {
        "Subscription": view,
        "SubscriptionWithSecret": {"allOf": [ref("Subscription"), secret]},
        "SubscriptionCreate": create,
        "SubscriptionList": obj(subscriptions=array(ref("Subscription"))),
    }


def _delivery() -> dict:
    return obj(
        id={"type": "string", "format": "uuid"},
        webhook_id={"type": "string"},
        subscription_id={"type": "string", "format": "uuid"},
        job_id=nullable("string", format="uuid"),
        event_id={"type": "integer"},
        event_type={"type": "string"},
        status={"enum": list(deliveries.STATUSES)},
        attempts={"type": "integer"},
        next_attempt_at=TIME,
        last_status_code=nullable("integer"),
        last_error=nullable("string"),
        last_attempt_at=TIME,
        delivered_at=TIME,
        created_at={"type": "string", "format": "date-time"},
    )


def _model() -> dict:
    bounds = nullable("object")
    example = describe(catalog.MODELS["flux-dev"])
    return obj(
        name={"type": "string"},
        kind={
            "enum": ["text-to-image", "image-to-image", "finetuned"],
            "description": "text-to-image: a prompt alone is a valid request",
        },
        needs=nullable("string") | {"description": "what a request needs besides a prompt"},
        prompt_required={"type": "boolean"},
        size={"enum": ["dimensions", "aspect_ratio", None]},
        width=bounds,
        height=bounds,
        aspect_ratio=bounds,
        seed={"type": "boolean"},
        alias_of=nullable("string")
        | {"description": "another name for this model (BFL's 2024 `image` route: flux-pro)"},
    ) | {"examples": [example]}


def _catalog_schemas() -> tuple[dict[str, dict], dict]:
    """Each model's request schema (a $ref) and the definitions they use, from pydantic."""
    inputs = {spec.inputs for spec in catalog.MODELS.values()}
    keys, schema = models_json_schema([(model, "validation") for model in inputs], ref_template=REF)
    definitions = schema["$defs"]
    for model in inputs:
        properties = definitions[keys[(model, "validation")]["$ref"].rpartition("/")[2]]
        for name in _placeholder_defaults(model):
            field = properties["properties"][name]
            del field["default"]
            field["description"] = "Absent or null: BFL chooses"
    refs = {spec.name: keys[(spec.inputs, "validation")] for spec in catalog.MODELS.values()}
    return refs, definitions


def _placeholder_defaults(model: type[BaseModel]) -> Iterator[str]:
    """Fields whose default their own type refuses (FLUX.2's width 0): a placeholder for
    "absent", which OpenAPI cannot show as a default, since a default must fit its schema."""
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        try:
            TypeAdapter(Annotated[field.annotation, field]).validate_python(field.default)
        except ValidationError:
            yield name


# ---- paths ---------------------------------------------------------------------------------

UUID = {"type": "string", "format": "uuid"}
EVENT_ID = {"type": "string", "pattern": "^[0-9]*$"}  # empty: none, as EventSource has it
JOB_ID = param("job_id", "path", UUID, "The job's id")
SUBSCRIPTION_ID = param("subscription_id", "path", UUID, "The subscription's id")
LAST_EVENT_ID = (
    param("Last-Event-ID", "header", EVENT_ID, "Resume after this event id; the gap is replayed"),
    param("last_event_id", "query", EVENT_ID, "The same, for clients that cannot set headers"),
)
# OpenAPI 3.1 has no `itemSchema` (3.2 does): read as 3.2 reads a 3.1 document, and as tools
# such as schemathesis do, a stream's `schema` describes each event.
STREAM_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Sequence number"},
        "event": {"enum": EVENT_TYPES},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": ref("Event"),
        },
    },
}
SSE = {
    "description": "Server-Sent Events: `id:` the event's sequence number, `event:` its type, "
    "`data:` an Event; a comment heartbeat every 15 s",
    "headers": {name: {"schema": {"const": value}} for name, value in SSE_HEADERS.items()},
    "content": {"text/event-stream": {"schema": STREAM_EVENT}},
}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
STREAM_FROM_NOW = (
    "Without Last-Event-ID the stream starts from now and first says where: right after the "
    "`: connected` comment comes a message with an id and no data, `id: <seq>`, the sequence "
    "number it starts after. It dispatches no event (an EventSource only takes its id), and a "
    "client whose stream drops before any event resumes with it as Last-Event-ID, missing "
    "nothing. A stream resumed with Last-Event-ID has no such message."
)
SUBMIT_DESCRIPTION = (
    "Validated as BFL validates it: in pydantic's lax mode, as FastAPI does, so `true`/`false` "
    "also read as 1/0 and numeric strings as numbers. `webhook_url`/`webhook_secret`, if given, "
    "are not sent to BFL: they become this job's callback, which fluxhook sends itself."
)


def page_size(high: int, default: int) -> dict:
    schema = {"type": "integer", "minimum": 1, "maximum": high, "default": default}
    return param("limit", "query", schema, "Page size")


def image_responses(description: str, **headers: dict) -> dict:
    text = {"schema": {"type": "string"}}
    headers = {"ETag": text, "Cache-Control": text, **headers}
    image = {"image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}}}
    return {
        "200": {"description": description, "headers": headers, "content": image},
        "304": {"description": "Not modified: If-None-Match matched the ETag"},
    }


class PathTable:
    """Operations collected path by path; `ok` is a schema name or a responses dict."""

    def __init__(self) -> None:
        self.paths: dict[str, dict] = {}

    def add(self, method: str, path: str, op_id: str, summary: str, tag: str, *, ok,
            fails=(), params=(), body=None, public=False, status="200") -> dict:  # fmt: skip
        good = {status: json_body(ref(ok), "OK")} if isinstance(ok, str) else ok
        operation = {"operationId": op_id, "summary": summary, "tags": [tag]}
        operation["responses"] = good | errors(*fails)
        if params:
            operation["parameters"] = list(params)
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        if public:
            operation["security"] = []
        self.paths.setdefault(path, {})[method] = operation
        return operation


IDEMPOTENCY_KEY = param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "The same key within 24 h returns the first response and submits nothing new",
)
SUBMIT_INVALID = json_body(
    {"anyOf": [ref("HTTPValidationError"), ref("Error")]},
    "Invalid input, reported as BFL (FastAPI) reports it",
)


def _drop_in(table: PathTable, refs: dict[str, dict]) -> None:
    for name, spec in catalog.MODELS.items():
        summary = f"Submit a {name} job"
        if spec.alias_of:
            summary = f"Submit a {spec.alias_of} job (BFL's 2024 route, an alias)"
        operation = table.add(
            "post", f"/v1/{name}", "submit_" + re.sub(r"[^a-z0-9]+", "_", name),
            summary, DROP_IN, ok="AsyncResponse",
            fails=("400", "403", "404", "413"), body=refs[name],
            params=[{"$ref": "#/components/parameters/IdempotencyKey"}],
        )  # fmt: skip
        operation["responses"]["422"] = {"$ref": "#/components/responses/SubmitInvalid"}
        operation["description"] = SUBMIT_DESCRIPTION
    wait = {"type": "number", "minimum": 0, "maximum": compat.MAX_WAIT_S}
    table.add(
        "get", "/v1/get_result", "get_result", "A job in BFL's get_result shape", DROP_IN,
        ok={"200": json_body(ref("ResultResponse"), "The job, from fluxhook's table"),
            "404": json_body(ref("ResultResponse"), "Task not found"),
            "422": json_body(ref("HTTPValidationError"), "Invalid query, as BFL reports it")},
        fails=("403",),
        params=[param("id", "query", {"type": "string"}, "The job id", required=True),
                param("wait", "query", wait, "Long-poll up to this many seconds until done")],
    )  # fmt: skip
    table.add(
        "get", "/v1/credits", "get_credits", "BFL credits left", DROP_IN,
        ok="Credits", fails=("403", "502"),
    )  # fmt: skip


def _native(table: PathTable) -> None:
    status = param("status", "query", {"enum": list(jobs.STATUSES)}, "Only jobs in this status")
    model = param("model", "query", {"type": "string"}, "Only this model's jobs")
    cursor = param("cursor", "query", {"type": "string"}, "next_cursor of the previous page")
    table.add(
        "get", "/v1/jobs", "list_jobs", "The tenant's jobs, newest first", JOBS,
        ok="JobList", fails=("403", "422"), params=[status, model, cursor, page_size(200, 50)],
    )  # fmt: skip
    table.add(
        "get", "/v1/jobs/{job_id}", "get_job", "A job and its events", JOBS,
        ok="JobDetail", fails=("403", "404"), params=[JOB_ID],
    )  # fmt: skip
    table.add(
        "get", "/v1/jobs/{job_id}/image", "get_job_image", "The stored image", JOBS,
        ok=image_responses("The image bytes"), fails=("403", "404"), params=[JOB_ID],
    )  # fmt: skip
    table.add(
        "get", "/v1/jobs/{job_id}/events", "stream_job_events",
        "One job's events, live, after its history", EVENTS,
        ok={"200": SSE}, fails=("403", "404", "422"), params=[JOB_ID, *LAST_EVENT_ID],
    )  # fmt: skip
    stream = table.add(
        "get", "/v1/events", "stream_events",
        "All the tenant's job events, live, from now or from Last-Event-ID", EVENTS,
        ok={"200": SSE}, fails=("403", "422"), params=LAST_EVENT_ID,
    )  # fmt: skip
    stream["description"] = STREAM_FROM_NOW
    table.add(
        "get", "/v1/models", "list_models", "Every model, with its kind and required fields", JOBS,
        ok="ModelList", fails=("403",),
    )  # fmt: skip


def _callbacks(table: PathTable) -> None:
    one = "/v1/subscriptions/{subscription_id}"
    table.add(
        "post", "/v1/subscriptions", "create_subscription", "Register a callback URL", CALLBACKS,
        ok="SubscriptionWithSecret", status="201", fails=("400", "403", "413", "422"),
        body=ref("SubscriptionCreate"),
    )  # fmt: skip
    table.add(
        "get", "/v1/subscriptions", "list_subscriptions", "The tenant's subscriptions",
        CALLBACKS, ok="SubscriptionList", fails=("403",),
    )  # fmt: skip
    table.add(
        "get", one, "get_subscription", "A subscription", CALLBACKS,
        ok="Subscription", fails=("403", "404"), params=[SUBSCRIPTION_ID],
    )  # fmt: skip
    table.add(
        "delete", one, "delete_subscription", "Delete it and what it was still owed", CALLBACKS,
        ok={"204": {"description": "Deleted"}}, fails=("403", "404"), params=[SUBSCRIPTION_ID],
    )  # fmt: skip
    table.add(
        "post", one + "/rotate-secret", "rotate_subscription_secret",
        "A new secret; the old one keeps signing alongside for 24 h", CALLBACKS,
        ok="SubscriptionWithSecret", fails=("403", "404"), params=[SUBSCRIPTION_ID],
    )  # fmt: skip
    table.add(
        "post", one + "/enable", "enable_subscription", "Enable a disabled subscription",
        CALLBACKS, ok="Subscription", fails=("403", "404"), params=[SUBSCRIPTION_ID],
    )  # fmt: skip
    test = table.add(
        "post", one + "/test", "test_subscription",
        "Send it a signed ping event through the normal delivery path", CALLBACKS,
        ok="PingSent", status="202", fails=("403", "404", "409"), params=[SUBSCRIPTION_ID],
    )  # fmt: skip
    test["description"] = (
        "Queues a `ping` event for this subscription alone, whatever its event types: a "
        "delivery like any other (signed, retried, listed in /v1/deliveries). 409 when the "
        "subscription is disabled."
    )
    statuses = {"enum": list(deliveries.STATUSES)}
    table.add(
        "get", "/v1/deliveries", "list_deliveries", "Callback deliveries, newest first",
        CALLBACKS, ok="DeliveryList", fails=("403", "422"),
        params=[param("job_id", "query", UUID, "Only this job's"),
                param("subscription_id", "query", UUID, "Only this subscription's"),
                param("status", "query", statuses, "Only in this status"),
                page_size(500, 100)],
    )  # fmt: skip
    day = {"type": "string", "format": "date"}
    table.add(
        "get", "/v1/usage", "get_usage",
        "The tenant's jobs by day, model and final status, and BFL's cost", CALLBACKS,
        ok="Usage", fails=("403", "422"),
        params=[param("from", "query", day, "First day (default: 29 days before `to`)"),
                param("to", "query", day, "Last day, inclusive (default: today, UTC)")],
    )  # fmt: skip
    table.add(
        "post", "/v1/deliveries/{delivery_id}/redeliver", "redeliver",
        "Send a finished delivery again, with the same webhook-id", CALLBACKS,
        ok="Delivery", fails=("403", "404", "409"),
        params=[param("delivery_id", "path", UUID, "The delivery's id")],
    )  # fmt: skip


def _operations(table: PathTable) -> None:
    token = param("token", "path", {"type": "string"}, "The signed token of result.sample")
    cors = {"Access-Control-Allow-Origin": {"schema": {"const": "*"}}}
    table.add(
        "get", "/images/{token}", "get_signed_image", "result.sample: a signed, expiring link",
        JOBS, ok=image_responses("The image; no key needed", **cors), fails=("404",),
        params=[token], public=True,
    )  # fmt: skip
    table.add("get", "/healthz", "healthz", "The process is alive", OPS, ok="Status", public=True)
    table.add(
        "get", "/readyz", "readyz", "The database answers and is migrated to head", OPS,
        ok={"200": json_body(ref("Status"), "Ready"),
            "503": json_body(ref("Status"), "Not ready, and why")},
        public=True,
    )  # fmt: skip
    table.add(
        "get", "/metrics", "metrics", "Prometheus metrics", OPS,
        ok={"200": {"description": "Prometheus text format", "content": TEXT}}, public=True,
    )  # fmt: skip
    table.add(
        "get", "/openapi.json", "openapi", "This document", OPS,
        ok={"200": json_body({"type": "object"}, "OpenAPI 3.1")}, public=True,
    )  # fmt: skip


def _webhooks() -> dict:
    """What fluxhook POSTs to a subscription (Standard Webhooks)."""
    table = PathTable()
    headers = [
        param(name, "header", {"type": "string"}, description, required=True)
        for name, description in (
            ("webhook-id", "Stable across retries of one delivery"),
            ("webhook-timestamp", "Unix seconds"),
            ("webhook-signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per key"),
        )
    ]
    received = {"2XX": {"description": "Delivered"}, "410": {"description": "Disables it"}}
    table.add(
        "post", "job-event", "job_event", "A job event, signed", CALLBACKS,
        ok=received, params=headers, body=ref("Event"), public=True,
    )  # fmt: skip
    return table.paths


@functools.cache
def document() -> dict:
    refs, definitions = _catalog_schemas()
    schemas = _schemas()
    assert not set(schemas) & set(definitions), "a hand-written schema shadows a catalog model"
    table = PathTable()
    for section in (_native, _callbacks, _operations):
        section(table)
    _drop_in(table, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fluxhook",
            "version": version("fluxhook"),
            "summary": "A webhook-driven gateway to the Black Forest Labs FLUX image API",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}, {"bearer": []}],
        "tags": [{"name": tag} for tag in (DROP_IN, JOBS, EVENTS, CALLBACKS, OPS)],
        "paths": table.paths,
        "webhooks": _webhooks(),
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {**definitions, **schemas},
            "responses": error_responses() | {"SubmitInvalid": SUBMIT_INVALID},
            "parameters": {"IdempotencyKey": IDEMPOTENCY_KEY},
        },
    }


@functools.cache
def _body() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


async def openapi_json(_request: Request) -> Response:
    """No key needed: the document describes the API, not a tenant's data."""
    return Response(_body(), media_type="application/json")
