"""The profile summary's "by activity" buckets (bench/profiling.py), on py-spy's collapsed
stacks: whole stacks, stacks caught without their callers, and greenlets."""

from bench.profiling import summarise

ROOT = "<module> (service/__main__.py);run_serve (service/cli.py);Handle._run (asyncio/events.py)"


def _activity_shares(collapsed: str) -> dict[str, str]:
    text = summarise(collapsed)
    section = text.split("by activity")[1].split("\n\n")[0]
    rows = [line.split("%  ", 1) for line in section.splitlines()[1:]]
    return {label: share.strip() for share, label in rows}


def test_each_stack_counts_by_its_first_fluxhook_frame_that_is_not_plumbing():
    collapsed = "\n".join(
        [
            f"{ROOT};Loop._tracked (service/loops/base.py);receive (service/receiver.py);"
            "json.loads (json/__init__.py) 3",
            # Caught without its callers (a resumed coroutine): its own frames still say.
            "Loop.contained (service/loops/base.py);Dispatcher.work (service/loops/"
            "dispatcher.py);_post (service/loops/dispatcher.py) 1",
            f"{ROOT};H11Protocol.handle (hypercorn/protocol/h11.py) 2",
            "Session.execute (sqlalchemy/orm/session.py) 1",
            "TCPServer._read_data (hypercorn/asyncio/tcp_server.py) 1",
            "Thread._bootstrap (threading.py);Connection.run (aiosqlite/core.py) 2",
        ]
    )
    shares = _activity_shares(collapsed)
    assert shares["receive (service/receiver.py)"] == "30.0"
    assert shares["Dispatcher.work (service/loops/dispatcher.py)"] == "10.0"
    assert (
        shares["server and event loop (hypercorn, starlette, asyncio; no fluxhook frame)"] == "20.0"
    )
    assert (
        shares["SQLAlchemy in greenlets, caught without the fluxhook frame that called it"]
        == "10.0"
    )
    assert (
        shares["caught without its callers, no fluxhook frame (server, event loop, drivers)"]
        == "10.0"
    )
    assert shares["database driver threads (aiosqlite)"] == "20.0"
