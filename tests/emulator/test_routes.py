"""BFL's public routes: submit, get_result, credits, and every error with its exact body."""

import contextlib
import io
import uuid

import anyio
import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount

from service.catalog import MODELS
from service.emulator import EmulatorConfig, create_emulator_app
from tests.emulator.support import KEY, emulator, wait_for
from tests.support.servers import running_server

RESULT_KEYS = ["id", "status", "result", "progress", "details", "preview"]
MANUAL = EmulatorConfig(seed=7, manual=True)


async def test_submit_answers_like_bfl():
    async with emulator(MANUAL) as emu:
        response = await emu.submit("flux-dev", width=256, height=256)
        body = response.json()
        assert response.status_code == 200
        assert list(body) == ["id", "polling_url", "cost", "input_mp", "output_mp"]
        assert uuid.UUID(body["id"]).version == 4
        assert body["polling_url"] == f"{emu.url}/regions/eu4/v1/get_result?id={body['id']}"
        assert (body["cost"], body["input_mp"], body["output_mp"]) == (None, None, None)
        assert "x-ratelimit-limit" not in response.headers


async def test_flux2_submit_shows_the_cost():
    async with emulator(MANUAL) as emu:
        body = (await emu.submit("flux-2-max", width=256, height=256)).json()
        assert (body["cost"], body["input_mp"], body["output_mp"]) == (7.000000000000001, 0.0, 0.06)


async def test_v1_image_is_the_2024_route_of_flux_pro_and_answers_the_id_alone():
    async with emulator(MANUAL) as emu:
        response = await emu.submit("image", width=512, height=256)
        assert response.status_code == 200
        (task_id,) = response.json().values()
        assert list(response.json()) == ["id"] and uuid.UUID(task_id).version == 4
        task = await emu.task(task_id)
        assert (task["model"], task["cost"]) == ("flux-pro", 5.0)  # FLUX.1 [pro]'s price
        assert (await emu.poll(task_id))["status"] == "Pending"
        await emu.finish(task_id)
        result = await emu.poll(task_id)
        assert list(result) == RESULT_KEYS and result["status"] == "Ready"
        image = await emu.http.get(result["result"]["sample"])
        assert Image.open(io.BytesIO(image.content)).size == (512, 256)
        refused = await emu.submit("image", width=500)
        assert refused.json()["detail"][0]["loc"] == ["body", "width"]


async def test_every_catalog_model_has_a_route():
    async with emulator(MANUAL) as emu:
        for name in MODELS:
            response = await emu.http.post(f"/v1/{name}", json={}, headers={"x-key": KEY})
            assert response.status_code in (200, 422), (name, response.text)


async def test_tools_route_with_a_slash():
    async with emulator(MANUAL) as emu:
        response = await emu.submit("flux-tools/erase-v1", image="aW1n", mask="bWFzaw==")
        assert response.status_code == 200
        assert response.json()["cost"] > 0


async def test_unknown_model_and_bare_v1_are_404():
    async with emulator(MANUAL) as emu:
        for path in ("/v1/flux-9000", "/v1/", "/v1/bad%20model"):
            response = await emu.http.post(path, json={"prompt": "x"}, headers={"x-key": KEY})
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


async def test_missing_key_is_403_not_authenticated():
    async with emulator(MANUAL) as emu:
        for headers in ({}, {"x-key": ""}):
            response = await emu.http.post("/v1/flux-dev", json={"prompt": "x"}, headers=headers)
            assert (response.status_code, response.json()) == (403, {"detail": "Not authenticated"})
        response = await emu.http.get("/v1/credits")
        assert response.status_code == 403


async def test_unknown_key_is_403_invalid_authentication():
    async with emulator(MANUAL, keys=["good"]) as emu:
        response = await emu.submit(key="bad")
        assert response.status_code == 403
        assert response.json() == {"detail": "Not authenticated - Invalid Authentication"}
        assert (await emu.submit(key="good")).status_code == 200
        assert (await emu.http.get("/v1/credits", headers={"x-key": "bad"})).status_code == 403


async def test_get_result_works_without_a_key_and_keeps_six_keys():
    async with emulator(MANUAL) as emu:
        task_id = (await emu.submit()).json()["id"]
        response = await emu.http.get("/v1/get_result", params={"id": task_id})
        body = response.json()
        assert response.status_code == 200
        assert list(body) == RESULT_KEYS
        assert (body["status"], body["progress"]) == ("Pending", 0.1)
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-ratelimit-limit"] == "1200"
        assert response.headers["x-ratelimit-remaining"] == "1199"
        assert float(response.headers["x-ratelimit-reset"]) > 0


async def test_duplicated_id_params_are_tolerated():
    async with emulator(MANUAL) as emu:
        submitted = (await emu.submit()).json()
        response = await emu.http.get(f"{submitted['polling_url']}&id={submitted['id']}")
        assert response.url.query.decode().count("id=") == 2
        assert response.json()["id"] == submitted["id"]


async def test_unknown_task_is_404_task_not_found():
    async with emulator(MANUAL) as emu:
        response = await emu.http.get("/v1/get_result", params={"id": "nope"})
        assert response.status_code == 404
        assert response.json() == {
            "id": "nope",
            "status": "Task not found",
            "result": None,
            "progress": None,
            "details": None,
            "preview": None,
        }


async def test_missing_id_is_422_missing_query():
    async with emulator(MANUAL) as emu:
        response = await emu.http.get("/v1/get_result")
        assert response.status_code == 422
        assert response.json() == {
            "detail": [
                {"type": "missing", "loc": ["query", "id"], "msg": "Field required", "input": None}
            ]
        }


async def test_regions_and_global_mode():
    async with emulator(EmulatorConfig(seed=7, manual=True, global_mode=True)) as emu:
        submitted = (await emu.submit()).json()
        assert (await emu.http.get(submitted["polling_url"])).status_code == 200
        plain = await emu.http.get("/v1/get_result", params={"id": submitted["id"]})
        assert (plain.status_code, plain.json()["status"]) == (404, "Task not found")
        other = await emu.http.get("/regions/us1/v1/get_result", params={"id": submitted["id"]})
        assert other.status_code == 404
        await emu.configure(global_mode=False)
        assert (await emu.http.get("/v1/get_result", params={"id": submitted["id"]})).is_success


async def test_credits_are_charged_at_submit():
    async with emulator(MANUAL) as emu:
        before = (await emu.http.get("/v1/credits", headers={"x-key": KEY})).json()
        await emu.submit("flux-dev")
        after = (await emu.http.get("/v1/credits", headers={"x-key": KEY})).json()
        assert (before, after) == ({"credits": 1000.0}, {"credits": 997.5})


async def test_overdraw_is_402_and_creates_nothing():
    async with emulator(EmulatorConfig(seed=7, manual=True, credits=9)) as emu:
        assert (await emu.submit("flux-kontext-max")).status_code == 200
        response = await emu.submit("flux-kontext-max")
        assert response.status_code == 402
        assert response.json()["detail"].startswith("Insufficient credits")
        assert (await emu.stats())["credits"] == {KEY: 1.0}
        assert len((await emu.http.get("/_emulator/tasks")).json()) == 1


async def test_24_active_tasks_per_key_then_429():
    async with emulator(MANUAL) as emu:
        for _ in range(24):
            assert (await emu.submit("flux-2-klein-4b")).status_code == 200
        response = await emu.submit("flux-2-klein-4b")
        assert response.status_code == 429
        assert "limit 24" in response.json()["detail"]
        assert (await emu.submit("flux-2-klein-4b", key="someone-else")).status_code == 200
        first = (await emu.http.get("/_emulator/tasks")).json()[0]["id"]
        await emu.finish(first)
        assert (await emu.submit("flux-2-klein-4b")).status_code == 200


async def test_6_active_kontext_max_per_key_then_429():
    async with emulator(MANUAL) as emu:
        for _ in range(6):
            assert (await emu.submit("flux-kontext-max")).status_code == 200
        response = await emu.submit("flux-kontext-max")
        assert response.status_code == 429
        assert "flux-kontext-max" in response.json()["detail"]
        assert (await emu.submit("flux-kontext-pro")).status_code == 200
        assert len((await emu.http.get("/_emulator/tasks")).json()) == 7


async def test_422_shapes():
    async with emulator(MANUAL) as emu:
        cases = {
            "less_than_equal": {"prompt": "x", "width": 2048},
            "multiple_of": {"prompt": "x", "width": 1000},
            "int_parsing": {"prompt": "x", "steps": "many"},
            "string_type": {"prompt": 5},
        }
        for kind, body in cases.items():
            response = await emu.http.post("/v1/flux-dev", json=body, headers={"x-key": KEY})
            assert response.status_code == 422
            assert response.json()["detail"][0]["type"] == kind
        missing = await emu.http.post("/v1/flux-2-pro", json={"seed": 1}, headers={"x-key": KEY})
        assert missing.json() == {
            "detail": [
                {
                    "type": "missing",
                    "loc": ["body", "prompt"],
                    "msg": "Field required",
                    "input": {"seed": 1},
                }
            ]
        }
        too_wide = await emu.http.post("/v1/flux-dev", json={"width": 2048}, headers={"x-key": KEY})
        assert too_wide.json()["detail"] == [
            {
                "type": "less_than_equal",
                "loc": ["body", "width"],
                "msg": "Input should be less than or equal to 1440",
                "input": 2048,
                "ctx": {"le": 1440},
            }
        ]


async def test_422_for_bodies_that_are_not_objects_or_not_json():
    async with emulator(MANUAL) as emu:
        headers = {"x-key": KEY}
        listed = await emu.http.post("/v1/flux-dev", json=[1, 2], headers=headers)
        assert listed.json()["detail"][0]["type"] == "model_attributes_type"
        assert listed.json()["detail"][0]["loc"] == ["body"]
        broken = await emu.http.post("/v1/flux-dev", content=b'{"prompt": ', headers=headers)
        assert broken.status_code == 422
        assert broken.json()["detail"][0] == {
            "type": "json_invalid",
            "loc": ["body", 11],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": "Expecting value"},
        }
        empty = await emu.http.post("/v1/flux-dev", content=b"", headers=headers)
        assert (empty.status_code, empty.json()["detail"][0]["type"]) == (422, "missing")
        binary = await emu.http.post("/v1/flux-dev", content=b"\xff\xfe\x00", headers=headers)
        assert binary.status_code == 422


async def test_oversized_body_is_413_without_reading_it_all():
    async with emulator(MANUAL) as emu:
        host, port = emu.url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = (
                "POST /v1/flux-dev HTTP/1.1\r\nHost: x\r\nx-key: k\r\n"
                f"Content-Type: application/json\r\nContent-Length: {40 * 1024 * 1024}\r\n\r\n"
            )
            await stream.send(head.encode() + b'{"prompt": "')
            answer = await stream.receive()
        assert answer.startswith(b"HTTP/1.1 413")
        assert answer.endswith(b'{"detail":"Request body too large"}')


async def test_oversized_chunked_body_is_413():
    async with emulator(MANUAL) as emu:
        chunk = b"x" * (1024 * 1024)

        async def body():
            for _ in range(33):
                yield chunk

        try:
            response = await emu.http.post("/v1/flux-dev", content=body(), headers={"x-key": KEY})
        except httpx.TransportError:  # the server may close before the client stops sending
            return
        assert (response.status_code, response.json()) == (
            413,
            {"detail": "Request body too large"},
        )


async def test_method_not_allowed_is_json():
    async with emulator(MANUAL) as emu:
        response = await emu.http.get("/v1/flux-dev")
        assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})


async def test_urls_follow_a_mount_prefix():
    inner = create_emulator_app(EmulatorConfig(seed=7, latency_s=0.0))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with inner.router.lifespan_context(inner):
            yield

    host = Starlette(routes=[Mount("/emulator", app=inner)], lifespan=lifespan)
    async with running_server(host) as url, httpx.AsyncClient(timeout=10) as http:
        submit_url = f"{url}/emulator/v1/flux-dev"
        submitted = await http.post(submit_url, json={"prompt": "x"}, headers={"x-key": KEY})
        polling_url = submitted.json()["polling_url"]
        assert polling_url.startswith(f"{url}/emulator/regions/eu4/v1/get_result?id=")

        async def ready():
            body = (await http.get(polling_url)).json()
            return body if body["status"] == "Ready" else None

        sample = (await wait_for(ready))["result"]["sample"]
        assert sample.startswith(f"{url}/emulator/delivery/")
        image = await http.get(sample)
        assert image.headers["content-type"] == "image/jpeg"


async def test_region_config_moves_the_polling_url():
    async with emulator(EmulatorConfig(seed=7, manual=True, region="us1")) as emu:
        submitted = (await emu.submit()).json()
        assert "/regions/us1/v1/get_result?id=" in submitted["polling_url"]
        assert (await emu.http.get(submitted["polling_url"])).status_code == 200
        regional = await emu.http.get("/regions/eu4/v1/get_result", params={"id": submitted["id"]})
        assert regional.status_code == 404
