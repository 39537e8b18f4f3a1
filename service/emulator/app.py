"""`create_emulator_app`: the emulator as its own Starlette app.

Its resources (the httpx client for webhooks, the task group for task runs and couriers) live in
its lifespan. A host app that mounts it (`Mount("/emulator", app=emulator)`) enters
`emulator.router.lifespan_context(emulator)` itself.
"""

import contextlib

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.catalog import ValidationFailed
from service.emulator.config import EmulatorConfig
from service.emulator.control import ControlRoutes
from service.emulator.engine import Emulator, Rejected
from service.emulator.routes import PublicRoutes

# Webhook POSTs: the per-attempt timeout comes from the config; these bound the pool.
WEBHOOK_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def create_emulator_app(
    config: EmulatorConfig | None = None,
    *,
    keys: list[str] | None = None,
    http: httpx.AsyncClient | None = None,
) -> Starlette:
    """A BFL emulator; `keys` restricts the accepted API keys, `http` sends its webhooks."""
    emulator = Emulator(config or EmulatorConfig(), keys=keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with contextlib.AsyncExitStack() as stack:
            client = http or await stack.enter_async_context(
                httpx.AsyncClient(limits=WEBHOOK_LIMITS, trust_env=False)
            )
            async with anyio.create_task_group() as task_group:
                emulator.start(task_group, client)
                yield
                task_group.cancel_scope.cancel()

    app = Starlette(
        routes=[*ControlRoutes(emulator).routes, *PublicRoutes(emulator).routes],
        exception_handlers={
            HTTPException: _http_error,
            ValidationFailed: _validation_failed,
            Rejected: _rejected,
        },
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_failed(request: Request, exc: ValidationFailed) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=422)


async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
