"""`create_app(settings)`: the route table and the lifespan that owns every shared resource."""

import contextlib
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service import receiver
from service.api import compat, deliveries, events, jobs, models, openapi, ops, subscriptions
from service.api.http import http_error
from service.logs import RequestContext
from service.runtime import running
from service.settings import EMULATOR_PREFIX, Settings

log = logging.getLogger(__name__)
WEB = Path(__file__).parent / "web"


def api_routes() -> list[BaseRoute]:
    sub = "/v1/subscriptions/{subscription_id}"
    return [
        Route("/v1/get_result", compat.get_result, methods=["GET"]),
        Route("/v1/credits", compat.credits, methods=["GET"]),
        Route("/v1/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", jobs.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/image", jobs.job_image, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", events.job_events, methods=["GET"]),
        Route("/v1/events", events.tenant_events, methods=["GET"]),
        Route("/v1/subscriptions", subscriptions.create, methods=["POST"]),
        Route("/v1/subscriptions", subscriptions.list_all, methods=["GET"]),
        Route(sub, subscriptions.get_one, methods=["GET"]),
        Route(sub, subscriptions.delete, methods=["DELETE"]),
        Route(sub + "/rotate-secret", subscriptions.rotate_secret, methods=["POST"]),
        Route(sub + "/enable", subscriptions.enable, methods=["POST"]),
        Route("/v1/deliveries", deliveries.list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id}/redeliver", deliveries.redeliver, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        # Last: every BFL model route, including ones with a slash (flux-tools/erase-v1).
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
        Route("/webhooks/bfl/{token}", receiver.receive, methods=["POST"]),
        Route("/images/{token}", jobs.signed_image, methods=["GET"]),
    ]


async def server_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


def create_app(settings: Settings | None = None, **runtime_options) -> Starlette:
    """The fluxhook ASGI app. `runtime_options` (clock, transports) are for tests and benches."""
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
            yield {"services": svc}

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContext)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )


def _emulator():
    from service.emulator import create_emulator_app

    return create_emulator_app()
