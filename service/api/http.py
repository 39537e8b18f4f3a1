"""Small HTTP helpers shared by the routes: JSON errors, bounded bodies, the services."""

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

MIB = 1024 * 1024
INTEGER = re.compile(r"-?[0-9]+")
# A JSON number: float() would also take " 1", "1_0", "inf" and "nan".
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def services(request: Request):
    return request.state.services


def error(status_code: int, detail: Any, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code, detail=detail, headers=headers)


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """Every error is JSON: {"detail": …} (BFL's and FastAPI's shape)."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes `limit` bytes. What follows the limit is read and
    dropped (up to `limit` more), so the client is still reading when the 413 arrives;
    beyond that the connection is cut."""
    too_large = error(413, f"request body larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 2 * limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 2 * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int = MIB) -> dict:
    """A JSON object body, or 400/413 with the reason."""
    raw = await read_body(request, limit)
    try:
        data = json.loads(raw)
    except ValueError:
        raise error(400, "body must be JSON") from None
    if not isinstance(data, dict):
        raise error(400, "body must be a JSON object")
    return data


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The parameter as an integer in [low, high], `default` when absent, else 422."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # Digits only: int() would also take " 7", "1_0" and non-ASCII digits.
    if not INTEGER.fullmatch(raw):
        raise error(422, f"{name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise error(422, f"{name} must be between {low} and {high}")
    return value
