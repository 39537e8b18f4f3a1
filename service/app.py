"""`create_app(settings)`: the route table and the lifespan that owns every shared resource."""

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from service import receiver
from service.api import (
    compat,
    deliveries,
    events,
    jobs,
    models,
    openapi,
    ops,
    subscriptions,
    usage,
)
from service.api.http import http_error
from service.logs import RequestContext
from service.runtime import running
from service.settings import EMULATOR_PREFIX, Settings
from service.startup import freeze_what_startup_built

log = logging.getLogger(__name__)
WEB = Path(__file__).parent / "web"
Endpoint = Callable[[Request], Awaitable[Response]]


class Resource(Route):
    """One path with all its methods, so a method it lacks is a 405 whose `Allow` lists them all.

    Starlette's router skips a path that matched under another method and keeps looking: with
    one `Route` per method, a sibling route's methods went missing from `Allow`, and the model
    catch-all `POST /v1/{model:path}` answered `POST /v1/credits` with a model 404. A resource
    claims its path for every method instead, and `Route.handle` answers the ones it lacks.
    """

    def __init__(self, path: str, **endpoints: Endpoint) -> None:
        self.endpoints = {method.upper(): endpoint for method, endpoint in endpoints.items()}
        super().__init__(path, self.dispatch, methods=list(self.endpoints))

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        return (Match.FULL if match is Match.PARTIAL else match), child_scope

    async def dispatch(self, request: Request) -> Response:
        # Starlette adds HEAD wherever there is GET.
        method = "GET" if request.method == "HEAD" else request.method
        return await self.endpoints[method](request)


# BFL's webhooks: in the route table, and matched ahead of it by `ReceiverFirst`.
WEBHOOK_ROUTE = Route("/webhooks/bfl/{token}", receiver.receive, methods=["POST"])


class ReceiverFirst:
    """Pure ASGI middleware: BFL's webhooks, `POST /webhooks/bfl/{token}`, go straight to the
    receiver. It is the route every task event takes, thousands a second under load, and
    Starlette's router would try the route table in order, then wrap the endpoint in its
    exception handling twice: ≈ 15 µs of CPU a webhook, 3–4 % of a verified one
    (bench/README.md, eleventh pass). The route's own matching decides (≈ 1 µs), so what a
    client sees is the same: the receiver's refusals get the app's `http_error` answer,
    anything else it raises goes on to the server-error handler, and `RequestContext`
    (outside this) adds the request id and the access line. Every other request goes through
    the router, a webhook path under another method (405) or of another shape (404) included."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        match, child_scope = WEBHOOK_ROUTE.matches(scope)
        if match is not Match.FULL:
            await self.app(scope, receive, send)
            return
        scope.update(child_scope)  # the token, as the router would set it
        request = Request(scope, receive, send)
        try:
            response = await receiver.receive(request)
        except HTTPException as exc:
            response = await http_error(request, exc)
        await response(scope, receive, send)


def api_routes() -> list[BaseRoute]:
    sub = "/v1/subscriptions/{subscription_id}"
    return [
        Resource("/v1/get_result", get=compat.get_result),
        Resource("/v1/credits", get=compat.credits),
        Resource("/v1/jobs", get=jobs.list_jobs),
        Resource("/v1/jobs/{job_id}", get=jobs.get_job),
        Resource("/v1/jobs/{job_id}/image", get=jobs.job_image),
        Resource("/v1/jobs/{job_id}/events", get=events.job_events),
        Resource("/v1/events", get=events.tenant_events),
        Resource("/v1/subscriptions", get=subscriptions.list_all, post=subscriptions.create),
        Resource(sub, get=subscriptions.get_one, delete=subscriptions.delete),
        Resource(sub + "/rotate-secret", post=subscriptions.rotate_secret),
        Resource(sub + "/enable", post=subscriptions.enable),
        Resource(sub + "/test", post=subscriptions.send_test),
        Resource("/v1/deliveries", get=deliveries.list_deliveries),
        Resource("/v1/deliveries/{delivery_id}/redeliver", post=deliveries.redeliver),
        Resource("/v1/models", get=models.list_models),
        Resource("/v1/usage", get=usage.get_usage),
        # Last, and reached only by paths no resource above claims: every BFL model route,
        # including ones with a slash (flux-tools/erase-v1). No model is named like a resource.
        Route("/v1/{model:path}", compat.submit, methods=["POST"]),
    ]


def ops_routes() -> list[BaseRoute]:
    return [
        Route("/", lambda _request: FileResponse(WEB / "index.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        WEBHOOK_ROUTE,
        Route("/images/{token}", jobs.signed_image, methods=["GET"]),
    ]


async def server_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


def create_app(
    settings: Settings | None = None, *, freeze_after_startup: bool = False, **runtime_options
) -> Starlette:
    """The fluxhook ASGI app. `runtime_options` (clock, transports) are for tests and benches;
    `freeze_after_startup` is for server processes (`runtime.freeze_what_startup_built`)."""
    settings = settings or Settings.from_env()
    emulator = _emulator() if settings.emulator_mode else None
    routes = ops_routes() + api_routes()
    if emulator is not None:
        routes.insert(0, Mount(EMULATOR_PREFIX, app=emulator))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with contextlib.AsyncExitStack() as stack:
            if emulator is not None:
                await stack.enter_async_context(emulator.router.lifespan_context(emulator))
            svc = await stack.enter_async_context(running(settings, **runtime_options))
            app.state.services = svc
            if freeze_after_startup:
                freeze_what_startup_built()
            yield {"services": svc}

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContext), Middleware(ReceiverFirst)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )


def _emulator():
    from service.emulator import create_emulator_app
    from service.emulator.config import EmulatorConfig

    # Progress on, so `make run` shows the progress bar; the emulator's own default stays off
    # (tests that count events rely on it).
    return create_emulator_app(EmulatorConfig(progress_events=True))
