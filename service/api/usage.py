"""`GET /v1/usage?from=&to=`: the caller's tenant's jobs by day, model and final status, with
BFL's reported cost (credits). Kept after retention prunes the jobs themselves."""

import re
from datetime import date, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.api.auth import authenticate
from service.api.http import error, services
from service.usage import usage

ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DEFAULT_DAYS = 30
MAX_DAYS = 366
RANGE_RULE = f"from must not be after to, and the range at most {MAX_DAYS} days"


def _day(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        if not ISO_DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise error(422, f"{name} must be a date like 2026-12-02") from None


async def get_usage(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    svc = services(request)
    today = svc.clock.now().date()
    end = _day(request, "to", today)
    start = _day(request, "from", end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end or (end - start).days >= MAX_DAYS:
        raise error(422, RANGE_RULE)
    async with svc.db.read() as session:
        rows = await usage(session, start, end, tenant_id)
    return JSONResponse(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "jobs": sum(row.jobs for row in rows),
            "cost": round(sum(row.cost for row in rows), 6),
            "days": [row.view() for row in rows],
        }
    )
