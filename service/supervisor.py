"""Several `serve` processes on one port (WEB_CONCURRENCY > 1, PostgreSQL only).

`fluxhook serve` binds $PORT once, then starts WEB_CONCURRENCY children (`fluxhook serve`
again), each inheriting the listening socket (hypercorn's `fd://` bind). The kernel hands each
new connection to whichever child accepts first, so a busy child takes fewer; and a connection
still waiting in the backlog when a child dies is accepted by another (with SO_REUSEPORT each
child has its own queue, and a dead child's queued connections are reset).

Each child is a whole fluxhook (API, receiver and, unless RUN_WORKERS=false, the loops); they
coordinate through the database exactly as separate dynos do.

- SIGTERM/SIGINT: forwarded to every child, which drains as a lone process does; the supervisor
  exits once all have (0 if all exited cleanly). A second signal kills them at once.
- A child that exits on its own (a crash, an OOM kill): the others are stopped the same way and
  the supervisor exits 1, for the platform to restart the dyno (Heroku does, with backoff);
  restarting children in place would hide a crash loop behind a process that looks healthy.
- A supervisor that disappears (SIGKILL) closes its end of a socket pair the children hold the
  other end of: each child notices and shuts down, so no orphan keeps the port.
- Metrics: the children get PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory unless it is
  set), and a child that exits is marked dead there. One that a SIGKILLed supervisor left
  behind is removed when the next supervisor starts (`service.metrics_dir`).
"""

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import anyio
from anyio.abc import Process

from service.metrics_dir import held_metrics_dir
from service.server import serve

log = logging.getLogger("fluxhook")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def supervise(sock: socket.socket, count: int) -> int:
    """Run `count` serve processes on `sock` until a signal or a child's death; the exit code."""
    with _children_env() as env:
        return anyio.run(Supervisor(sock, count, env).run)


class Supervisor:
    def __init__(self, sock: socket.socket, count: int, env: dict[str, str]) -> None:
        self.sock, self.count, self.env = sock, count, env
        self.children: list[Process] = []
        self.signalled = self.stopping = False
        self.code = 0

    async def run(self) -> int:
        mine, theirs = socket.socketpair()
        with mine:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_signals)
                async with anyio.create_task_group() as watchers:
                    with theirs, self.sock:  # the children hold them now
                        for _ in range(self.count):
                            if self.stopping:
                                break  # a signal or a death came while starting: no more
                            child = await self._start(theirs)
                            watchers.start_soon(self._watch, child)
                tg.cancel_scope.cancel()
        return self.code

    async def _start(self, parent_end: socket.socket) -> Process:
        fds = (self.sock.fileno(), parent_end.fileno())
        command = [sys.executable, "-m", "service", "serve", "--listen-fd", str(fds[0])]
        command += ["--parent-fd", str(fds[1])]
        child = await anyio.open_process(
            command, stdin=None, stdout=None, stderr=None, env=self.env, pass_fds=fds
        )
        self.children.append(child)
        if self.stopping:  # the stop came while it started: it stops with the others
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        return child

    async def _watch(self, child: Process) -> None:
        code = await child.wait()
        _mark_dead(child.pid, self.env["PROMETHEUS_MULTIPROC_DIR"])
        if code != 0:
            self.code = 1
        if not self.stopping:
            log.error(
                "serve process %d exited unexpectedly (code %d); stopping the others",
                child.pid,
                code,
                extra={"fields": {"pid": child.pid, "code": code}},
            )
            self.code = 1
            self._signal_all(signal.SIGTERM)

    async def _forward_signals(self) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as received:
            async for signum in received:
                self._signal_all(signal.SIGKILL if self.signalled else signum)
                self.signalled = True

    def _signal_all(self, signum: int) -> None:
        self.stopping = True
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)


@contextlib.contextmanager
def _children_env() -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        yield env
        return
    with held_metrics_dir() as directory:
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
        yield env


def _mark_dead(pid: int, directory: str) -> None:
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return  # without prometheus-client each process keeps its own metrics
    multiprocess.mark_process_dead(pid, directory)


async def serve_child(
    app, sock: socket.socket, parent: socket.socket, on_stop: Callable[[], None]
) -> None:
    """One supervised serve process: `app` on the inherited `sock` until the first SIGTERM or
    SIGINT, or until the supervisor is gone (`parent` reads EOF)."""

    async def shutdown_trigger() -> None:
        await _stop_requested(parent)
        on_stop()

    await serve(app, sock, shutdown_trigger)


async def _stop_requested(parent: socket.socket) -> None:
    async with anyio.create_task_group() as tg:

        async def orphaned() -> None:
            await anyio.wait_readable(parent)  # nothing is ever written: readable means EOF
            log.error("the supervising process is gone; shutting down")
            tg.cancel_scope.cancel()

        tg.start_soon(orphaned)
        try:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as received:
                async for _ in received:
                    break
        finally:
            # On a PaaS both the platform and the supervisor send SIGTERM: the second must not
            # cut the drain short (the platform's SIGKILL still ends a drain that overruns).
            # Set with no await after the receiver puts the default handlers back.
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        tg.cancel_scope.cancel()
