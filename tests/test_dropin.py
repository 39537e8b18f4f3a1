"""The BFL drop-in surface: BFL's validation, statuses and shapes; tenants kept apart."""

import io
import uuid

import httpx
import pytest
from PIL import Image

from tests.support.dbstate import snapshot
from tests.support.stack import running_emulator, running_stack


@pytest.fixture
async def stack(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, {"run_workers": False}) as stack,
    ):
        yield stack


BAD_SUBMITS = [
    ("unknown model", "flux-9000", {"prompt": "x"}, 404),
    ("bare /v1/", "", {"prompt": "x"}, 404),
    ("width out of range", "flux-dev", {"prompt": "x", "width": 2000}, 422),
    ("width not a multiple of 32", "flux-dev", {"prompt": "x", "width": 500}, 422),
    ("wrong type", "flux-dev", {"prompt": "x", "steps": "many"}, 422),
    ("missing prompt", "flux-2-pro", {"width": 512}, 422),
    ("safety too high for FLUX.2", "flux-2-pro", {"prompt": "x", "safety_tolerance": 6}, 422),
    ("body is a list", "flux-dev", [1], 422),
    ("private webhook_url is fine here, bad scheme is not", "flux-dev",
     {"prompt": "x", "webhook_url": "ftp://example.com/hook"}, 422),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "model", "body", "status"), BAD_SUBMITS, ids=[c[0] for c in BAD_SUBMITS]
)
async def test_bad_submissions_get_bfls_answer_and_change_nothing(stack, case, model, body, status):
    before = await snapshot(stack.services.db)
    response = await stack.client.post(f"/v1/{model}", json=body)
    assert response.status_code == status, response.text
    if status == 404:
        assert response.json() == {"detail": "Not Found"}
    else:
        (item,) = response.json()["detail"]
        assert set(item) >= {"type", "loc", "msg", "input"}
        assert item["loc"][0] == "body"
    assert await snapshot(stack.services.db) == before


async def test_body_that_is_not_json_or_too_large(stack):
    before = await snapshot(stack.services.db)
    response = await stack.client.post("/v1/flux-dev", content=b"{nope")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    huge = b'{"prompt": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    assert (await stack.client.post("/v1/flux-dev", content=huge)).status_code == 413
    assert await snapshot(stack.services.db) == before


async def test_keys_are_required_and_checked(stack):
    async with httpx.AsyncClient(base_url=stack.url) as anonymous:
        missing = await anonymous.post("/v1/flux-dev", json={"prompt": "x"})
        wrong = await anonymous.get("/v1/jobs", headers={"x-key": "fh_wrong"})
        bearer = await anonymous.get("/v1/jobs", headers={"authorization": f"Bearer {stack.key}"})
    assert (missing.status_code, missing.json()) == (403, {"detail": "Not authenticated"})
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "Not authenticated - Invalid Authentication"}
    assert bearer.status_code == 200


async def test_submit_answers_like_bfl_and_get_result_shows_pending(stack):
    job = await stack.submit("flux-2-pro", prompt="a kite", width=512, height=512)
    assert list(job) == ["id", "polling_url", "cost", "input_mp", "output_mp"]
    assert job["cost"] > 0  # FLUX.2 prices on submit; FLUX.1 models answer null there
    assert (await stack.submit("flux-dev"))["cost"] is None
    result = (await stack.client.get(f"/v1/get_result?id={job['id']}&id={job['id']}")).json()
    assert result == {"id": job["id"], "status": "Pending", "result": None, "progress": None,
                      "details": None, "preview": None}  # fmt: skip
    native = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
    assert native["status"] == "Queued"
    assert native["inputs"] == {"prompt": "a kite", "width": 512, "height": 512}, (
        "no defaults added"
    )


async def test_get_result_errors(stack):
    missing = await stack.client.get("/v1/get_result")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "id"]
    unknown = await stack.client.get(f"/v1/get_result?id={uuid.uuid4()}")
    assert unknown.status_code == 404
    assert unknown.json()["status"] == "Task not found"
    for bad_wait in ("26", "soon"):
        job = await stack.submit()
        response = await stack.client.get(f"/v1/get_result?id={job['id']}&wait={bad_wait}")
        assert response.status_code == 422


async def test_another_tenants_job_does_not_exist(stack):
    job = await stack.submit()
    other = await stack.new_key("tenant-b")
    async with httpx.AsyncClient(base_url=stack.url, headers={"x-key": other}) as b:
        result = await b.get(f"/v1/get_result?id={job['id']}")
        assert (result.status_code, result.json()["status"]) == (404, "Task not found")
        for path in ("", "/image", "/events"):
            response = await b.get(f"/v1/jobs/{job['id']}{path}")
            assert response.status_code == 404, path
        assert (await b.get("/v1/jobs")).json() == {"jobs": [], "next_cursor": None}


async def test_credits_are_proxied(stack):
    response = await stack.client.get("/v1/credits")
    assert response.status_code == 200
    assert response.json() == {"credits": 1000.0}


async def test_jobs_list_filters_and_pages(stack):
    ids = [(await stack.submit("flux-dev", prompt=f"p{i}"))["id"] for i in range(5)]
    await stack.submit("flux-2-pro", prompt="other model")
    seen, cursor = [], None
    while True:
        params = {"model": "flux-dev", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await stack.client.get("/v1/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    queued = (await stack.client.get("/v1/jobs", params={"status": "Queued"})).json()
    assert len(queued["jobs"]) == 6
    assert (await stack.client.get("/v1/jobs", params={"status": "Done"})).status_code == 422
    assert (await stack.client.get("/v1/jobs", params={"cursor": "!!"})).status_code == 422


async def test_v1_image_the_2024_route_is_a_flux_pro_job_end_to_end(sqlite_url):
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        # As BFL's 2024 getting-started page does it: width/height, read `id`, poll get_result.
        job = await stack.submit("image", prompt="a cat with a fish", width=512, height=256)
        assert list(job) == ["id", "polling_url", "cost", "input_mp", "output_mp"]
        result = await stack.settled(job["id"])
        assert result["status"] == "Ready"
        image = await stack.client.get(result["result"]["sample"])
        assert Image.open(io.BytesIO(image.content)).size == (512, 256)
        native = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert (native["model"], native["cost"]) == ("flux-pro", 5.0)
        (task,) = await emulator.tasks()
        assert task["model"] == "flux-pro", "BFL is asked for the model, not the old route"
        refused = await stack.client.post("/v1/image", json={"prompt": "x", "width": 500})
        assert refused.json()["detail"][0]["loc"] == ["body", "width"]
