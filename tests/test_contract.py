"""The API keeps its published contract, as machines check it.

fluxhook runs for real (hypercorn on loopback, background loops on) in front of the BFL
emulator. schemathesis loads the served `/openapi.json` and runs every phase (examples,
coverage, fuzzing, stateful) and every check against it as tenant A, with tenant B as the peer
that must never see A's objects. The run is seeded and bounded (about a minute on two cores)
and must find nothing but what `EXCUSED` lists: the few rules OpenAPI cannot express, each
with its reason. Routes that share a model's inputs are tested through one of them, and the
streams are read for one event or one second; the rest of the bounds are in `_config`.

The findings of the first run stay pinned by plain tests at the end of this file.
"""

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import jsonschema
import schemathesis
from pydantic import ValidationError
from schemathesis.engine import StopReason, from_schema
from schemathesis.engine import events as engine_events
from schemathesis.engine.run import PhaseName
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from service import catalog
from service.api import usage
from service.api.http import http_error
from service.api.openapi import document
from service.app import api_routes, ops_routes
from tests.support.stack import running_emulator, running_stack

SEED = 11  # the same cases every run
MAX_EXAMPLES = 5  # per operation and phase (the coverage phase enumerates its own cases)
# The first few dozen jobs complete (image rendered, fetched, stored; callbacks sent), the rest
# fail upstream with BFL's 402: rendering every accepted job's image would double the CPU.
CREDITS = 100
MODEL_ROUTES = {f"POST /v1/{name}": spec for name, spec in catalog.MODELS.items()}


def _same_inputs_as_an_earlier_model() -> list[str]:
    """Model routes whose inputs an earlier route has (flux-2-max has flux-2-pro's): the same
    schema and the same validation, so the first stands for all (a fifth of the run)."""
    seen, repeats = set(), []
    for label, spec in MODEL_ROUTES.items():
        if spec.inputs in seen:
            repeats.append(label)
        seen.add(spec.inputs)
    return repeats


# ---- what OpenAPI cannot say ------------------------------------------------------------------


@dataclass(frozen=True)
class Excuse:
    """A failure schemathesis reports, the narrow test that recognises it, and why it is not
    a bug: the schema cannot express the rule."""

    check: str
    applies: Callable[[schemathesis.Case, schemathesis.Response], bool]
    reason: str


def _detail(response: schemathesis.Response):
    try:
        return response.json().get("detail")
    except (ValueError, AttributeError):
        return None


def _rule_written_as_code(case, response) -> bool:
    # pydantic reports what a validator function raises as `value_error`; a field's declared
    # type or bounds (which the schema does state) have their own error types.
    detail = _detail(response)
    return (
        case.operation.label in MODEL_ROUTES
        and response.status_code == 422
        and isinstance(detail, list)
        and all(item.get("type") == "value_error" for item in detail)
    )


def _idempotency_key_reused(_case, response) -> bool:
    reused = "Idempotency-Key was already used with a different request"
    return response.status_code == 422 and _detail(response) == reused


def _foreign_cursor(case, response) -> bool:
    return (
        case.operation.label == "GET /v1/jobs"
        and response.status_code == 422
        and _detail(response) == "cursor is not one this API gave out"
    )


def _usage_range(case, response) -> bool:
    return (
        case.operation.label == "GET /v1/usage"
        and response.status_code == 422
        and _detail(response) == usage.RANGE_RULE
    )


def _lax_value(case, _response) -> bool:
    """Valid to the model's own lax validation, invalid to its strict one: the body differs
    from the schema only by values pydantic coerces."""
    spec = MODEL_ROUTES.get(case.operation.label)
    if spec is None or not isinstance(case.body, dict):
        return False
    body = json.dumps(case.body)
    try:
        spec.inputs.model_validate_json(body)
    except ValidationError:
        return False
    try:
        spec.inputs.model_validate_json(body, strict=True)
    except ValidationError:
        return True
    return False


EXCUSED = (
    Excuse(
        "positive_data_acceptance",
        _rule_written_as_code,
        "A model's rules written as code: cross-field rules (canny and depth need a control "
        "image; FLUX.2 outputs at most 4 MP), the aspect-ratio range (21:9 to 9:21) and the "
        "webhook_url policy. JSON Schema states each field alone.",
    ),
    Excuse(
        "positive_data_acceptance",
        _idempotency_key_reused,
        "Idempotency-Key replay: a key reused with another body is refused, and schemathesis "
        "draws the same short keys again. OpenAPI cannot say 'unique per request'. (The body "
        "was valid: it is validated before the key is looked up.)",
    ),
    Excuse(
        "positive_data_acceptance",
        _foreign_cursor,
        "`cursor` is opaque: only a next_cursor this API gave out is accepted.",
    ),
    Excuse(
        "positive_data_acceptance",
        _usage_range,
        "/v1/usage's `from` must not be after `to`, and the range is at most 366 days: a rule "
        "across two parameters, which a parameter's schema cannot state.",
    ),
    Excuse(
        "negative_data_rejection",
        _lax_value,
        "BFL validates in pydantic's lax mode (FastAPI's default) and so does the drop-in: "
        "true/false read as 1/0 and numeric strings as numbers. The submit operations' "
        "description says so; a JSON Schema type cannot.",
    ),
)


def _excused(_context, failure, case, response) -> bool:
    """schemathesis's `filter_failure` hook: False drops the failure."""
    return not any(
        excuse.check in failure.checks and excuse.applies(case, response) for excuse in EXCUSED
    )


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    tested: set[str] = field(default_factory=set)  # operations that got at least one request


def _user(name: str, key: str) -> dict:
    return {"name": name, "fixedHeaders": [{"name": "x-key", "value": key}]}


def _disabled(label: str) -> dict:
    return {"include-name": label, "enabled": False}


def _config(tmp_path: Path, keys: dict[str, str]) -> schemathesis.Config:
    auth = tmp_path / "tenants.json"  # Web Fuzzing Commons' format, which schemathesis reads
    users = [_user(name, key) for name, key in keys.items()]
    auth.write_text(json.dumps({"auth": users}))
    repeats = [_disabled(label) for label in _same_inputs_as_an_earlier_model()]
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "workers": 1,
            # Seconds: get_result may long-poll 25. (Hypothesis runs with no deadline here.)
            "request-timeout": 30,
            # Nothing carried over from an earlier run: each run starts from the seed alone.
            "cache": {"enabled": False},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {"enabled": True},
            # The first user is the one tests run as; peers are probed for each other's objects.
            "auth": {"wfc": {"path": str(auth), "peers": list(keys)}},
            "operations": [
                *repeats,
                # Streams never end: read one event, or stop after 1 s without one.
                {"include-path-regex": "events$", "request-timeout": 1, "max-stream-events": 1},
            ],
        }
    )


def _run(url: str, config: schemathesis.Config) -> Report:
    schema = schemathesis.openapi.from_url(url, config=config)
    schema.hook("filter_failure")(_excused)
    report = Report()
    for event in from_schema(schema).execute():
        if _tests_an_operation(event):
            report.tested.add(event.recorder.label)
        report.problems.extend(_problems(event))
    return report


def _tests_an_operation(event) -> bool:
    return (
        isinstance(event, engine_events.ScenarioFinished)
        and event.phase is not PhaseName.STATEFUL_TESTING  # its label names no operation
        and bool(event.recorder.cases)
    )


def _problems(event) -> Iterator[str]:
    """What a schemathesis event reports as wrong, readably: failed checks and errors."""
    if isinstance(event, engine_events.ScenarioFinished):
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                if check.failure_info is not None:
                    yield _describe(event.recorder, case_id, check.failure_info)
    elif isinstance(event, engine_events.NonFatalError):
        yield f"{event.label}: {event.info.format()}"
    elif isinstance(event, engine_events.FatalError):
        yield f"schemathesis stopped: {event.exception!r}"
    elif (
        isinstance(event, engine_events.EngineFinished)
        and event.stop_reason is not StopReason.COMPLETED
    ):
        yield f"schemathesis stopped early: {event.stop_reason}"


def _describe(recorder, case_id: str, info) -> str:
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction is not None else None
    answer = "-" if response is None else f"{response.status_code} {response.text_lossy()[:500]}"
    failure = info.failure
    return f"{recorder.label}: {failure.title}\n{failure.message}\n-> {answer}\n{info.code_sample}"


def _operations() -> set[str]:
    """What the run must reach: every operation but the repeats and `GET /openapi.json`
    (schemathesis leaves out the document it tests from; test_openapi.py checks that one)."""
    paths = document()["paths"]
    every = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    return every - set(_same_inputs_as_an_earlier_model()) - {"GET /openapi.json"}


async def test_schemathesis_finds_nothing(tmp_path, sqlite_url):
    # Subscribers are whatever URLs schemathesis invents: callbacks stop at this transport.
    callbacks = httpx.MockTransport(lambda _request: httpx.Response(204))
    async with (
        running_emulator(time_scale=0.01, credits=CREDITS) as emulator,
        running_stack(
            sqlite_url, emulator, runtime={"delivery_transport": callbacks}, run_workers=True
        ) as stack,
    ):
        keys = {"tenant-a": stack.key, "tenant-b": await stack.new_key("tenant-b")}
        url, config = f"{stack.url}/openapi.json", _config(tmp_path, keys)
        report = await anyio.to_thread.run_sync(_run, url, config)
        await _tenant_b_sees_none_of_a(stack.url, keys)
    assert not report.problems, "\n\n".join(report.problems)
    assert report.tested == _operations()


async def _tenant_b_sees_none_of_a(base_url: str, keys: dict[str, str]) -> None:
    """What the run created, it created as tenant A: B lists nothing and reads none of it."""
    async with (
        httpx.AsyncClient(base_url=base_url, headers={"x-key": keys["tenant-a"]}) as a,
        httpx.AsyncClient(base_url=base_url, headers={"x-key": keys["tenant-b"]}) as b,
    ):
        jobs = (await a.get("/v1/jobs", params={"limit": 200})).json()["jobs"]
        subscriptions = (await a.get("/v1/subscriptions")).json()["subscriptions"]
        assert jobs, "the run created no job"
        for listing in ("/v1/jobs", "/v1/subscriptions", "/v1/deliveries"):
            assert not any((await b.get(listing)).json().values()), listing
        for job in jobs[:20]:
            assert (await b.get(f"/v1/jobs/{job['id']}")).status_code == 404
            assert (await b.get("/v1/get_result", params={"id": job["id"]})).status_code == 404
        for subscription in subscriptions[:20]:
            response = await b.get(f"/v1/subscriptions/{subscription['id']}")
            assert response.status_code == 404


# ---- its findings, pinned ---------------------------------------------------------------------


def _route_table() -> httpx.AsyncClient:
    """The route table alone: a 405 is answered before any endpoint (or database) runs."""
    handlers = {HTTPException: http_error}
    app = Starlette(routes=api_routes() + ops_routes(), exception_handlers=handlers)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://fluxhook")


def _concrete(path: str) -> str:
    for name in ("job_id", "subscription_id", "delivery_id", "token"):
        path = path.replace("{" + name + "}", str(uuid.uuid4()))
    return path


async def test_a_method_a_path_lacks_is_405_with_all_its_methods_in_allow():
    async with _route_table() as client:
        for path, item in document()["paths"].items():
            documented = {method.upper() for method in item}
            allowed = documented | ({"HEAD"} if "GET" in documented else set())
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
                response = await client.request(method, _concrete(path))
                assert response.status_code == 405, (method, path, response.text)
                assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
                assert response.json() == {"detail": "Method Not Allowed"}


async def test_an_unknown_model_is_still_a_bfl_404(sqlite_url):
    async with running_emulator() as emulator, running_stack(sqlite_url, emulator) as stack:
        response = await stack.client.post("/v1/flux-nonexistent", json={"prompt": "p"})
        deep = await stack.client.post("/v1/jobs/x/y", json={"prompt": "p"})
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    assert (deep.status_code, deep.json()) == (404, {"detail": "Not Found"})


def _conforms(response: httpx.Response, path: str) -> None:
    """The response's body fits what the document says `path` answers with that status."""
    doc = document()
    answer = doc["paths"][path][response.request.method.lower()]["responses"]
    answer = answer[str(response.status_code)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rpartition("/")[2]]
    schema = answer["content"]["application/json"]["schema"]
    # The components ride along, so the schema's `$ref`s resolve.
    jsonschema.validate(response.json(), {**schema, "components": doc["components"]})


async def test_what_the_first_run_found_stays_fixed(sqlite_url):
    async with running_emulator() as emulator, running_stack(sqlite_url, emulator) as stack:
        client = stack.client
        results = [
            await client.get("/v1/get_result"),
            await client.get("/v1/get_result", params={"id": str(uuid.uuid4()), "wait": ""}),
        ]
        deliveries = [
            await client.get("/v1/deliveries", params={name: ""})
            for name in ("subscription_id", "job_id", "status", "limit")
        ]
        jobs = await client.get("/v1/jobs", params={"status": ""})
        hook = "https://example.com/hook"
        subscriptions = [
            await client.post("/v1/subscriptions", json={"url": hook, "events": None}),
            await client.post("/v1/subscriptions", json={"url": hook, "description": None}),
        ]
        created = (await client.get("/v1/subscriptions")).json()["subscriptions"]
    answers = [(r, "/v1/get_result") for r in results] + [(r, "/v1/deliveries") for r in deliveries]
    answers += [(jobs, "/v1/jobs")] + [(r, "/v1/subscriptions") for r in subscriptions]
    for response, path in answers:
        assert response.status_code == 422, response.request.url
        _conforms(response, path)
    assert results[1].json()["detail"][0]["loc"] == ["query", "wait"]
    assert created == []
