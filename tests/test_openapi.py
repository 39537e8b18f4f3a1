"""`GET /openapi.json`: a structurally valid OpenAPI 3.1 document that describes every route."""

import re

import httpx
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from service import catalog
from service.api.openapi import document
from service.app import api_routes, ops_routes
from tests.support.stack import running_emulator, running_stack

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
UNDESCRIBED = {"/", "/webhooks/bfl/{token}"}  # the page, and BFL's side (not the client API)
CATCH_ALL = "/v1/{model:path}"  # described as one path per catalog model


def _refs(node, found: list[str]) -> list[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append(node["$ref"])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)
    return found


def _resolve(doc: dict, pointer: str):
    assert pointer.startswith("#/"), pointer
    node = doc
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _operations(doc: dict):
    for group in ("paths", "webhooks"):
        for path, item in doc[group].items():
            for method, operation in item.items():
                yield path, method, operation


def _parameters(doc: dict, operation: dict) -> list[dict]:
    return [_resolve(doc, p["$ref"]) if "$ref" in p else p for p in operation.get("parameters", [])]


def test_the_document_is_structurally_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "bearer"}
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey", "in": "header", "name": "x-key"
    }  # fmt: skip
    for pointer in _refs(doc, []):
        assert _resolve(doc, pointer) is not None, pointer

    operation_ids = []
    for path, method, operation in _operations(doc):
        assert method in METHODS, (path, method)
        operation_ids.append(operation["operationId"])
        assert operation["responses"], (path, method)
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5](\d\d|XX)|default", status), (path, status)
            response = _resolve(doc, response["$ref"]) if "$ref" in response else response
            assert response["description"] is not None, (path, status)
        parameters = _parameters(doc, operation)
        for parameter in parameters:
            assert parameter["in"] in {"query", "header", "path", "cookie"}
            assert "schema" in parameter, parameter
        templated = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in parameters if p["in"] == "path"}
        assert templated == declared, (path, method)
        assert all(p["required"] for p in parameters if p["in"] == "path")
        for scheme in operation.get("security", doc["security"]):
            assert set(scheme) <= set(doc["components"]["securitySchemes"])
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def _spec_errors(doc: dict) -> list[str]:
    """What openapi-spec-validator (the OpenAPI 3.1 meta-schema and more) finds wrong."""
    errors = OpenAPIV31SpecValidator(doc).iter_errors()
    return [f"{list(error.absolute_path)}: {error.message}" for error in errors]


def test_openapi_spec_validator_finds_nothing():
    assert _spec_errors(document()) == []


def test_a_default_the_field_refuses_is_described_instead():
    # FLUX.2's width/height default to 0 in pydantic (a placeholder for "absent": BFL picks),
    # but 0 is below their minimum, and a default must fit its schema.
    width = document()["components"]["schemas"]["Flux2Inputs"]["properties"]["width"]
    assert "default" not in width
    assert width["description"] == "Absent or null: BFL chooses"
    assert {"minimum": 64, "type": "integer"} in width["anyOf"]


def test_every_route_in_the_table_is_described():
    paths = document()["paths"]
    for route in api_routes() + ops_routes():
        if not isinstance(route, Route) or route.path in UNDESCRIBED | {CATCH_ALL}:
            continue
        assert route.path in paths, route.path
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert methods <= set(paths[route.path]), (route.path, methods)


def test_every_catalog_model_has_its_path_and_request_schema():
    doc = document()
    for name, spec in catalog.MODELS.items():
        submit = doc["paths"][f"/v1/{name}"]["post"]
        body = submit["requestBody"]["content"]["application/json"]["schema"]
        schema = _resolve(doc, body["$ref"])
        assert set(schema["properties"]) == set(spec.inputs.model_fields), name
        assert set(schema.get("required", [])) == set(
            spec.inputs.model_json_schema().get("required", [])
        )
        success = submit["responses"]["200"]["content"]["application/json"]["schema"]
        assert success == {"$ref": "#/components/schemas/AsyncResponse"}
        assert {"403", "404", "413", "422"} <= set(submit["responses"])


def test_streams_and_long_polls_are_described_as_built():
    doc = document()
    stream = doc["paths"]["/v1/events"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {p["name"] for p in stream["parameters"]} == {"Last-Event-ID", "last_event_id"}
    wait = next(
        p for p in doc["paths"]["/v1/get_result"]["get"]["parameters"] if p["name"] == "wait"
    )
    assert wait["schema"]["maximum"] == 25
    public = {"/healthz", "/readyz", "/metrics", "/images/{token}", "/openapi.json"}
    for path in public:
        assert doc["paths"][path]["get"]["security"] == []


async def test_the_document_is_served_without_a_key(sqlite_url):
    async with (
        running_emulator() as emulator,
        running_stack(sqlite_url, emulator) as stack,
        httpx.AsyncClient(base_url=stack.url) as anonymous,
    ):
        response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == document()
    assert _spec_errors(response.json()) == []


def _keys(name: str) -> set[str]:
    schema = document()["components"]["schemas"][name]
    parts = schema.get("allOf", [schema])
    return {key for part in parts for key in _resolve_schema(part).get("properties", {})}


def _resolve_schema(schema: dict) -> dict:
    return _resolve(document(), schema["$ref"]) if "$ref" in schema else schema


async def test_responses_carry_exactly_the_described_fields(sqlite_url):
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        submitted = await stack.submit("flux-dev", width=256, height=256)
        result = await stack.settled(submitted["id"])
        job = (await stack.client.get(f"/v1/jobs/{submitted['id']}")).json()
        listed = (await stack.client.get("/v1/jobs")).json()
        models = (await stack.client.get("/v1/models")).json()
        hook = {"url": "https://example.com/hook"}
        created = (await stack.client.post("/v1/subscriptions", json=hook)).json()
        deliveries = (await stack.client.get("/v1/deliveries")).json()
    assert set(submitted) == _keys("AsyncResponse")
    assert set(result) == _keys("ResultResponse")
    assert set(job) == _keys("JobDetail")
    assert set(job["events"][0]) == _keys("JobEventSummary")
    assert set(listed) == _keys("JobList")
    assert set(listed["jobs"][0]) == _keys("Job")
    assert set(models["models"][0]) == _keys("Model")
    assert set(created) == _keys("SubscriptionWithSecret")
    assert set(deliveries) == _keys("DeliveryList")
