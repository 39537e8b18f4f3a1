"""The web page at `/` and the `/v1/models` route it builds its form from.

The browser tests drive Debian's headless Chromium with Playwright against fluxhook and the BFL
emulator, each under hypercorn on loopback: a prompt goes in, the image comes out, live.
"""

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from service import catalog
from tests.support.stack import Stack, running_emulator, running_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
FAST = {"time_scale": 0.02}
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide, so one browser serves every test here


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("FLUXHOOK_REQUIRE_BROWSER"):
            pytest.fail(f"FLUXHOOK_REQUIRE_BROWSER is set but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def open_page(browser: Browser, stack: Stack, streams=None) -> AsyncIterator[Page]:
    """The page, its key pasted in; uncaught script errors fail the test. The headers of each
    `/v1/events` request go to `streams`."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list = []
    page.on("pageerror", lambda error: errors.append(error))
    if streams is not None:
        page.on("request", lambda r: "/v1/events" in r.url and streams.append(r.headers))
    try:
        await page.goto(stack.url + "/")
        await page.get_by_label("fluxhook API key").fill(stack.key)
        await page.get_by_role("button", name="Save key").click()
        await expect(page.get_by_text("Live", exact=True)).to_be_visible(timeout=WAIT_MS)
        yield page
        assert not errors, errors
    finally:
        await page.close()


async def generate(page: Page, prompt: str, model: str = "flux-dev", **fields: str) -> None:
    await page.get_by_label("Model").select_option(model)
    for label, value in fields.items():
        await page.get_by_label(label.capitalize(), exact=True).fill(value)
    await page.get_by_label("Prompt").fill(prompt)
    await page.get_by_role("button", name="Generate").click()


async def loaded(page: Page, selector: str) -> bool:
    image = page.locator(selector)
    await expect(image).to_be_visible(timeout=WAIT_MS)
    handle = await image.element_handle()
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle)
    return True


# ---- browser ---------------------------------------------------------------------------------


@pytest.mark.browser
async def test_a_prompt_becomes_an_image_in_the_gallery_without_reloading(browser, sqlite_url):
    streams = []
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        open_page(browser, stack, streams) as page,
    ):
        await page.evaluate("window.notReloaded = true")
        await generate(page, "a lighthouse at dawn", width="256", height="256")

        image = '#gallery img[alt="a lighthouse at dawn"]'
        assert await loaded(page, image)
        row = page.locator("#jobs .job", has_text="a lighthouse at dawn")
        await expect(row.locator(".badge")).to_have_text("Ready")
        await expect(page.locator("#announcer")).to_have_text("Ready: a lighthouse at dawn")
        assert await page.evaluate("window.notReloaded === true")
        assert len(streams) == 1, "one stream carries every job's events"
        assert streams[0]["x-key"] == stack.key
        assert await page.evaluate("localStorage.getItem('fluxhook.key')") == stack.key

        await page.reload()  # the gallery comes back from GET /v1/jobs, the key from storage
        assert await loaded(page, image)

        await page.get_by_role("button", name="Forget key").click()
        await expect(page.get_by_label("fluxhook API key")).to_be_visible()
        assert await page.evaluate("localStorage.getItem('fluxhook.key')") is None


@pytest.mark.browser
async def test_a_moderated_prompt_shows_the_reason(browser, sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        open_page(browser, stack) as page,
    ):
        await generate(page, "a cat [content-moderated]", width="256", height="256")
        row = page.locator("#jobs .job", has_text="a cat [content-moderated]")
        await expect(row.locator(".badge")).to_have_text("Content Moderated", timeout=WAIT_MS)
        await expect(row.locator(".job-reason")).to_contain_text("Moderation Reasons")
        await page.set_viewport_size({"width": 360, "height": 800})  # a phone
        badge = await row.locator(".badge").bounding_box()
        when = await row.locator(".job-time").bounding_box()
        assert abs(badge["y"] - when["y"]) < badge["height"], "the time stays on the badge's line"
        await expect(page.locator("#gallery img")).to_have_count(0)


@pytest.mark.browser
async def test_validation_errors_show_next_to_the_form(browser, sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        open_page(browser, stack) as page,
    ):
        await generate(page, "a tiny fox", width="128", height="256")
        errors = page.get_by_role("alert").filter(has_text="not accepted")
        await expect(errors).to_contain_text("width: Input should be greater than or equal to 256")
        await expect(page.get_by_label("Width", exact=True)).to_have_attribute(
            "aria-invalid", "true"
        )

        await page.get_by_label("Model").select_option("flux-kontext-pro")
        await expect(page.get_by_label("Aspect ratio")).to_be_visible()
        await expect(page.get_by_label("Width", exact=True)).to_be_hidden()
        await generate(page, "  ", model="flux-kontext-pro")
        unsent = page.get_by_role("alert").filter(has_text="Nothing was sent")
        await expect(unsent).to_contain_text("prompt: write what the image should show")
        await expect(page.get_by_label("Prompt")).to_have_attribute("aria-invalid", "true")
        await expect(page.get_by_label("Prompt")).to_be_focused()
        assert (await stack.client.get("/v1/jobs")).json()["jobs"] == []


@pytest.mark.browser
async def test_a_dropped_stream_resumes_with_last_event_id(browser, sqlite_url):
    job = {
        "id": "00000000-0000-4000-8000-000000000001",
        "model": "flux-dev",
        "status": "Processing",
        "progress": 0.4,
        "inputs": {"prompt": "a resumed <b>heron</b>"},
        "created_at": "2026-01-01T00:00:00Z",
    }
    event = json.dumps({"type": "job.progress", "timestamp": job["created_at"], "data": job})
    # CRLF line ends, a retry of 20 ms, then the body ends: the stream "drops".
    first = f": connected\r\n\r\nretry: 20\r\nid: 7\r\nevent: job.progress\r\ndata: {event}\r\n\r\n"
    calls = []
    resumed = anyio.Event()

    async def stream(route):
        calls.append(route.request.headers)
        if len(calls) == 1:
            await route.fulfill(status=200, body=first, content_type="text/event-stream")
        else:
            resumed.set()
            await route.continue_()

    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        page = await browser.new_page()
        await page.route("**/v1/events", stream)
        await page.goto(stack.url + "/")
        await page.get_by_label("fluxhook API key").fill(stack.key)
        await page.get_by_role("button", name="Save key").click()

        row = page.locator("#jobs .job", has_text="a resumed <b>heron</b>")  # text, not markup
        await expect(row.locator("progress")).to_have_attribute("aria-label", "Processing, 40%")
        with anyio.fail_after(WAIT_MS / 1000):
            await resumed.wait()
        await expect(page.get_by_text("Live", exact=True)).to_be_visible(timeout=WAIT_MS)
        assert "last-event-id" not in calls[0]
        assert calls[1]["last-event-id"] == "7"
        assert calls[1]["x-key"] == stack.key
        await page.close()


@pytest.mark.browser
async def test_the_sse_parser_follows_the_standard(browser, sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        open_page(browser, stack) as page,
    ):
        parsed = await page.evaluate(
            """async (chunks) => {
                const { SSEParser } = await import("/static/sse.js");
                const out = [];
                const parser = new SSEParser({
                    onMessage: (m) => out.push(m),
                    onComment: (c) => out.push({ comment: c }),
                    onId: (id) => out.push({ idOnly: id }),
                });
                chunks.forEach((chunk) => parser.feed(chunk));
                return { out, lastEventId: parser.lastEventId, retry: parser.retry };
            }""",
            [": hi\r", "\nid: 1\nevent: a\ndata: x\ndata:y\r", "\n\r", "\ndata: z\n\n",
             "retry: 500\nid\n", "data:  spaced\n\n", "id: 3\n\n"],
        )  # fmt: skip
    assert parsed["out"] == [
        {"comment": "hi"},
        {"id": "1", "event": "a", "data": "x\ny"},
        {"id": "1", "event": "message", "data": "z"},
        {"id": "", "event": "message", "data": " spaced"},
        {"idOnly": "3"},  # an id with no data: no event, but the id to resume from
    ]
    assert parsed["lastEventId"] == "3"
    assert parsed["retry"] == 500


# ---- plain HTTP ------------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served_without_a_key(sqlite_url):
    async with (
        running_emulator() as emulator,
        running_stack(sqlite_url, emulator) as stack,
        httpx.AsyncClient(base_url=stack.url) as anonymous,
    ):
        page = await anonymous.get("/")
        script = await anonymous.get("/static/app.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in page.text
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]


async def test_models_lists_what_a_prompt_form_can_submit(sqlite_url):
    async with running_emulator() as emulator, running_stack(sqlite_url, emulator) as stack:
        async with httpx.AsyncClient(base_url=stack.url) as anonymous:
            assert (await anonymous.get("/v1/models")).status_code == 403
        response = await stack.client.get("/v1/models")
    assert response.status_code == 200
    models = {model["name"]: model for model in response.json()["models"]}
    assert set(models) == set(catalog.MODELS), "every model is listed"
    needs_an_image = (
        "flux-pro-1.0-fill",
        "flux-pro-1.0-expand",
        "flux-tools/erase-v1",
        "flux-pro-1.0-canny",
        "flux-2-flex-outpainting",
        "flux-tools/vto-v1",
    )
    for name in needs_an_image:
        assert models[name]["kind"] == "image-to-image", name
    assert models["flux-tools/erase-v1"]["needs"] == "image, mask"
    assert "control_image" in models["flux-pro-1.0-canny"]["needs"]
    finetuned = models["flux-pro-1.1-ultra-finetuned"]
    assert finetuned["kind"] == "finetuned" and finetuned["needs"] == "finetune_id"
    assert models["flux-dev"]["kind"] == "text-to-image" and models["flux-dev"]["needs"] is None
    assert models["image"]["alias_of"] == "flux-pro" and models["flux-pro"]["alias_of"] is None
    dev = models["flux-dev"]
    assert dev["size"] == "dimensions"
    assert dev["width"] == {
        "minimum": 256, "maximum": 1440, "multiple_of": 32, "default": 1024, "optional": False
    }  # fmt: skip
    assert dev["prompt_required"] is False
    assert models["flux-2-pro"]["width"]["optional"] is True
    assert models["flux-2-pro"]["prompt_required"] is True
    ultra = models["flux-pro-1.1-ultra"]
    assert ultra["size"] == "aspect_ratio"
    assert ultra["aspect_ratio"]["default"] == "16:9"
    assert {"21:9", "1:1", "9:21"} <= set(ultra["aspect_ratio"]["choices"])
    assert models["flux-kontext-pro"]["aspect_ratio"]["optional"] is True


@pytest.mark.browser
async def test_the_job_list_shows_a_page_then_more(browser, sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        for n in range(25):
            await stack.submit("flux-dev", prompt=f"job {n}", width=256, height=256)
        async with open_page(browser, stack) as page:
            rows = page.locator("#jobs .job")
            await expect(rows).to_have_count(25)
            await expect(page.locator("#jobs .job:visible")).to_have_count(20)
            await expect(rows.first).to_contain_text("job 24")  # newest first
            more = page.get_by_role("button", name="Show more (5 older)")
            await more.click()
            await expect(page.locator("#jobs .job:visible")).to_have_count(25)
            await expect(more).to_be_hidden()
