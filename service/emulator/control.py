"""The control API under `/_emulator` (no auth): stats, reset, config, tasks, manual finish.

Tests and benchmarks read task timestamps (`created_at`, `finished_at`, webhook attempt times,
all epoch seconds) from here instead of timing the emulator from outside.
"""

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.emulator.config import ConfigRejected
from service.emulator.engine import Emulator
from service.emulator.routes import BodyTooLarge, read_body
from service.emulator.state import TERMINAL, Task

MAX_CONTROL_BODY = 1024 * 1024  # 1 MiB: config updates are small


class ControlRoutes:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/config", self.get_config, methods=["GET"]),
            Route("/_emulator/config", self.set_config, methods=["POST"]),
            Route("/_emulator/tasks", self.tasks, methods=["GET"]),
            Route("/_emulator/tasks/{task_id}", self.task, methods=["GET"]),
            Route("/_emulator/tasks/{task_id}/finish", self.finish, methods=["POST"]),
        ]

    async def stats(self, request: Request) -> Response:
        store = self.emulator.store
        stats = store.stats
        return JSONResponse(
            {
                "submits": stats.submits,
                "tasks_created": stats.tasks_created,
                "get_result": stats.get_result,
                "get_result_by_task": dict(stats.get_result_by_task),
                "webhooks_attempted": stats.webhooks_attempted,
                "webhooks_delivered": stats.webhooks_delivered,
                "webhooks_failed": stats.webhooks_failed,
                "webhooks_dropped": stats.webhooks_dropped,
                "active_tasks": store.active_total,
                "max_active": stats.max_active,
                "deliveries": stats.deliveries,
                "delivery_bytes": stats.delivery_bytes,
                "deliveries_by_task": dict(stats.deliveries_by_task),
                "credits": dict(store.credits),
            }
        )

    async def reset(self, request: Request) -> Response:
        self.emulator.reset()
        return JSONResponse({"reset": True, "config": self.emulator.config.model_dump()})

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.emulator.config.model_dump())

    async def set_config(self, request: Request) -> Response:
        changes = await _json_body(request)
        try:
            config = self.emulator.configure(changes)
        except ConfigRejected as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(config.model_dump())

    async def tasks(self, request: Request) -> Response:
        self.emulator.forget_old()
        return JSONResponse([task_view(task) for task in self.emulator.store.tasks.values()])

    async def task(self, request: Request) -> Response:
        task = self._task(request)
        if task is None:
            return JSONResponse({"detail": "Task not found"}, status_code=404)
        return JSONResponse(task_view(task))

    async def finish(self, request: Request) -> Response:
        task = self._task(request)
        if task is None:
            return JSONResponse({"detail": "Task not found"}, status_code=404)
        body = await _json_body(request)
        status = body.get("status", "Ready") if isinstance(body, dict) else None
        if status not in TERMINAL:
            detail = f"status must be one of {', '.join(TERMINAL)}"
            return JSONResponse({"detail": detail}, status_code=422)
        if task.status != "Pending":
            return JSONResponse({"detail": f"task is already {task.status}"}, status_code=409)
        self.emulator.finish(task, status)
        return JSONResponse(task_view(task))

    def _task(self, request: Request) -> Task | None:
        self.emulator.forget_old()
        return self.emulator.store.tasks.get(request.path_params["task_id"])


def task_view(task: Task) -> dict:
    return {
        "id": task.id,
        "model": task.model.name,
        "prompt": task.prompt,
        "status": task.status,
        "seed": task.seed,
        "region": task.region,
        "cost": task.price.cost,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "webhook_url": task.webhook_url,
        "webhook_dropped": task.webhook_dropped,
        "webhook_attempts": [
            {"event": a.event, "at": a.at, "status_code": a.status_code, "error": a.error}
            for a in task.attempts
        ],
    }


async def _json_body(request: Request) -> object:
    """The request's JSON, or {} for an empty body; None when it is not JSON at all."""
    try:
        raw = await read_body(request, MAX_CONTROL_BODY)
    except BodyTooLarge:
        return None
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None
