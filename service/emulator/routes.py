"""BFL's public surface: submit, get_result (global and regional), credits, delivery URLs.

`POST /v1/image`, BFL's 2024 route, is FLUX.1 [pro] (`flux-pro`) under its old name and answers
as it did then, with the id alone; the task is a `flux-pro` task in every other way.

The order of checks follows BFL's FastAPI stack: route (404), body size (413), JSON (422), API key
(403), fields (422), then limits (429) and credits (402). Every URL handed out is built from the
request (host and `root_path`), so the emulator works standalone and mounted under a prefix.
"""

import hmac

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import catalog
from service.emulator.delivery import image_response, sleep_until
from service.emulator.engine import Emulator
from service.emulator.images import azure_error, etag
from service.emulator.ratelimit import RateLimits

MAX_BODY = 32 * 1024 * 1024  # 32 MiB: base64 images up to 20 MB, with room
# BFL's 2024 routes answered a submit with the id alone (API.md §3.1, the getting-started page).
ID_ONLY = {"image"}
SUBMIT_FAULTS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class BodyTooLarge(Exception):
    pass


def base_url(request: Request) -> str:
    """The emulator's own root as this client reaches it (a mount prefix included)."""
    return str(request.url.replace(path=request.scope.get("root_path", ""), query="")).rstrip("/")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, read chunk by chunk; stops as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class PublicRoutes:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.limits = RateLimits(emulator.clock)

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/v1/get_result", self.get_result, methods=["GET"]),
            Route("/v1/credits", self.credits, methods=["GET"]),
            Route("/regions/{region}/v1/get_result", self.get_result, methods=["GET"]),
            Route("/delivery/{task_id}/sample.{ext}", self.delivery, methods=["GET"]),
            Route("/v1/{model:path}", self.submit, methods=["POST"]),
        ]

    def authenticate(self, request: Request) -> str:
        key = request.headers.get("x-key")
        if not key:
            raise HTTPException(403, "Not authenticated")
        keys = self.emulator.keys
        if keys is not None and not any(hmac.compare_digest(key, known) for known in keys):
            raise HTTPException(403, "Not authenticated - Invalid Authentication")
        return key

    async def submit(self, request: Request) -> Response:
        emulator = self.emulator
        emulator.store.stats.submits += 1
        model = catalog.get_model(request.path_params["model"])
        if model is None:
            raise HTTPException(404, "Not Found")
        try:
            raw = await read_body(request)
        except BodyTooLarge:
            return JSONResponse({"detail": "Request body too large"}, status_code=413)
        body = catalog.parse_json_body(raw)
        key = self.authenticate(request)
        inputs = catalog.validate_inputs(model, body)
        if emulator.draw(emulator.config.submit_5xx):
            status = emulator.rng.choice(sorted(SUBMIT_FAULTS))
            return JSONResponse({"detail": SUBMIT_FAULTS[status]}, status_code=status)
        task = emulator.admit(key, catalog.canonical(model), inputs, base_url(request))
        if emulator.config.webhook_before_response:
            await emulator.finish_before_response(task)
        if emulator.draw(emulator.config.submit_timeout):
            await stall(request, emulator.config.submit_stall_s)
        if model.name in ID_ONLY:
            return JSONResponse({"id": task.id})
        return JSONResponse(submit_body(task, base_url(request)))

    async def get_result(self, request: Request) -> Response:
        stats = self.emulator.store.stats
        stats.get_result += 1
        task_id = request.query_params.get("id")  # the last of duplicated ids, like FastAPI
        if task_id is None:
            raise catalog.ValidationFailed([_missing_query("id")])
        stats.get_result_by_task[task_id] += 1
        headers = self.limits.headers(request.headers.get("x-key") or _client(request))
        task = self.emulator.lookup(task_id, request.path_params.get("region"))
        if task is None:
            return JSONResponse(not_found_body(task_id), status_code=404, headers=headers)
        return JSONResponse(self.emulator.result_body(task), headers=headers)

    async def credits(self, request: Request) -> Response:
        key = self.authenticate(request)
        return JSONResponse({"credits": self.emulator.store.balance(key)})

    async def delivery(self, request: Request) -> Response:
        config = self.emulator.config
        # Time to first byte counts from the request's arrival and overlaps the render, as a
        # blob host's latency overlaps its lookup; see delivery.py for why it precedes headers.
        first_byte_at = anyio.current_time() + config.delivery_ttfb_s
        response = await self._delivery(request, config.delivery_bytes_per_s)
        await sleep_until(first_byte_at)
        return response

    async def _delivery(self, request: Request, bytes_per_s: float | None) -> Response:
        task_id, ext = request.path_params["task_id"], request.path_params["ext"]
        query = request.query_params
        refusal = self.emulator.signer.check(
            task_id, ext, query.get("se", ""), query.get("sig", ""), self.emulator.clock()
        )
        if refusal:
            return _xml(403, azure_error("AuthenticationFailed", _AUTH_FAILED, refusal))
        self.emulator.forget_old()
        task = self.emulator.store.tasks.get(task_id)
        if task is None or task.status != "Ready" or task.output_format != ext:
            return _xml(404, azure_error("BlobNotFound", "The specified blob does not exist."))
        content = await self.emulator.images.get(task.seed, task.prompt, task.size, ext)
        tag = etag(content)
        headers = {"ETag": tag, "Cache-Control": "max-age=1200"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        self.emulator.store.stats.count_delivery(task_id, len(content))
        return image_response(content, f"image/{ext}", headers, bytes_per_s)


def submit_body(task, base: str) -> dict:
    costs = (task.price.cost, task.price.input_mp, task.price.output_mp)
    if not task.model.cost_on_submit:
        costs = (None, None, None)  # FLUX.1-era routes settle the cost later
    cost, input_mp, output_mp = costs
    if task.webhook_url:
        head = {"id": task.id, "status": "Pending", "webhook_url": task.webhook_url}
    else:
        polling_url = f"{base}/regions/{task.region}/v1/get_result?id={task.id}"
        head = {"id": task.id, "polling_url": polling_url}
    return {**head, "cost": cost, "input_mp": input_mp, "output_mp": output_mp}


def not_found_body(task_id: str) -> dict:
    return {
        "id": task_id,
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }


async def stall(request: Request, seconds: float) -> None:
    """Hold the response `seconds`, or until the client gives up and disconnects."""
    with anyio.move_on_after(seconds):
        while (await request.receive())["type"] != "http.disconnect":
            pass


_AUTH_FAILED = (
    "Server failed to authenticate the request. Make sure the value of Authorization header "
    "is formed correctly including the signature."
)


def _xml(status_code: int, body: str) -> Response:
    return Response(body, status_code=status_code, media_type="application/xml")


def _missing_query(name: str) -> dict:
    return {"type": "missing", "loc": ["query", name], "msg": "Field required", "input": None}


def _client(request: Request) -> str:
    return request.client.host if request.client else "anonymous"
