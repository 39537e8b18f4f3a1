"""PostgreSQL's pooled connections are checked at checkout, with a round trip only when in
doubt.

SQLAlchemy's `pool_pre_ping` sends `SELECT 1` at every checkout: ≈ 150 µs of CPU in
psycopg's Python layer each time (bench/README.md, fifth pass), and a job checks out about
six connections. What the ping guards against is a connection the server has ended: a
restart or failover, `idle_session_timeout`, `pg_terminate_backend`, a pooler closing idle
connections. The server then says so (its FATAL message, then the close), and the idle
socket turns readable. A pooled connection between transactions expects nothing from the
server, so it is pinged only when its socket has something to read, or when it has sat idle
for PING_AFTER_IDLE_S or more: a peer that cannot say so (a host that crashed and came back,
or whose address moved to a standby, answers only once something is sent) is then found
before use, as the pre-ping found it, unless the connection was in use within the last
second, when work in flight on the same server fails anyway. Under load, connections go back
and forth far more often than that, and are not pinged. A ping that fails makes the pool
replace the connection (`DisconnectionError`): the caller never sees it.
"""

import select
import time

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

PING_AFTER_IDLE_S = 1.0
IDLE_SINCE = "fluxhook.idle_since"  # in the pool entry's info: cleared when it is replaced


def check_connections_at_checkout(
    engine: AsyncEngine, ping_after_idle_s: float = PING_AFTER_IDLE_S
) -> None:
    """Instead of `pool_pre_ping`, on an engine built without it."""
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "connect")
    def opened(_dbapi_connection, entry) -> None:
        entry.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def returned(_dbapi_connection, entry) -> None:
        entry.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def checked_out(dbapi_connection, entry, _proxy) -> None:
        if not in_doubt(dbapi_connection, entry.info.get(IDLE_SINCE), ping_after_idle_s):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the server ended this pooled connection") from exc


def in_doubt(dbapi_connection, idle_since: float | None, ping_after_idle_s: float) -> bool:
    if idle_since is None or time.monotonic() - idle_since >= ping_after_idle_s:
        return True
    return has_input(dbapi_connection)


def has_input(dbapi_connection) -> bool:
    """Whether the connection's socket can be read without waiting (data, or its close)."""
    try:
        fd = dbapi_connection.driver_connection.fileno()
    except Exception:  # closed already, or no socket: a ping will say
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poll.poll(0))
