"""Structured logs to stdout: JSON on a PaaS, text in a terminal. Every line carries the
request id and job id in context. Nothing here logs headers or bodies, so no secret or key
reaches a log line; paths with tokens in them are shortened."""

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
TOKEN_PATHS = re.compile(r"^/(webhooks/bfl|images)/[^/]+")
REQUEST_ID = re.compile(rb"[A-Za-z0-9_.-]{1,64}")  # what an incoming X-Request-ID may be
access_log = logging.getLogger("fluxhook.access")
QUIET_LIBRARIES = (
    "sqlalchemy",
    "aiosqlite",
    "psycopg",
    "httpx",
    "httpcore",
    "hpack",
    "PIL",
    "alembic.runtime.plugins",  # "setup plugin …" lines at every `fluxhook worker` start
)
# What alembic says each time a migration context opens, which /readyz does on every call.
# Its other INFO lines (`Running upgrade …`) still show during `fluxhook migrate`.
ALEMBIC_PREAMBLE = ("Context impl ", "Will assume ")


def _not_alembic_preamble(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(ALEMBIC_PREAMBLE))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in (("request_id", request_id), ("job_id", job_id)):
            if value := var.get():
                line[name] = value
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{k}={v.get()}" for k, v in (("req", request_id), ("job", job_id)) if v.get()
        )
        return f"{text} [{context}]" if context else text


def configure(log_format: str, level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    if log_format == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that would log SQL parameters, request URLs or headers (which carry keys,
    # secrets and signed tokens) stay at WARNING whatever LOG_LEVEL says.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    alembic = logging.getLogger("alembic.runtime.migration")
    if _not_alembic_preamble not in alembic.filters:
        alembic.addFilter(_not_alembic_preamble)


@contextlib.contextmanager
def job_context(value) -> Iterator[None]:
    """Log lines inside carry this job id."""
    token = job_id.set(str(value))
    try:
        yield
    finally:
        job_id.reset(token)


def safe_path(path: str) -> str:
    """A path fit for a log line: webhook and image tokens cut out."""
    return TOKEN_PATHS.sub(lambda m: f"/{m.group(1)}/…", path)


class RequestContext:
    """Pure ASGI middleware: a request id per request (from X-Request-ID or new), echoed in
    the response, set in the log context, and one access line per request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope["headers"])
        token = request_id.set(rid)
        # The access line's work is skipped when LOG_LEVEL drops it (as the bench runs).
        logged = access_log.isEnabledFor(logging.INFO)
        started, status = time.perf_counter() if logged else 0.0, [500]

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if logged:
                _access_line(scope, status[0], started)
            request_id.reset(token)


def _request_id(headers) -> str:
    """The caller's X-Request-ID (the last, if several) if it is a sane one, else a new one."""
    incoming = b""
    for name, value in headers:
        if name == b"x-request-id":
            incoming = value
    if REQUEST_ID.fullmatch(incoming):
        return incoming.decode("ascii")
    return os.urandom(16).hex()


def _access_line(scope, status: int, started: float) -> None:
    method, path = scope["method"], safe_path(scope["path"])
    ms = round((time.perf_counter() - started) * 1000, 1)
    fields = {"method": method, "path": path, "status": status, "ms": ms}
    access_log.info("%s %s %s", method, path, status, extra={"fields": fields})
