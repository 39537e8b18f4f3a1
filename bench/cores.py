"""Cores apart: the server under test on a core of its own, the bench and the emulator on the
others, while a row that measures a notification's latency runs (`notify`, `pixels`).

Why: the load generator, the SSE client, the subscriber and the emulator stand in for other
machines, but on this two-core machine they shared the server's cores. A trace of `pixels_10`
(temporary timestamps and `getrusage(RUSAGE_THREAD)` in the serve process, bench/README.md
"tenth pass") counted one involuntary context switch per notification, right after the SSE
client's chunk had woken the bench: 0.4–0.6 ms off the CPU in the middle of the fan-out. With
the cores apart the same path ran without one, its wall time equal to its CPU time.

The throughput rows (ingest, the whole pipeline, cost, scale-out) keep the cores shared:
there fluxhook's own threads (SQLite's checkpoints) and PostgreSQL use the second core, and
two interleaved pairs of `ingest_sqlite` with the cores apart moved within the row's noise.
`BENCH_CORES=shared` leaves the cores shared, to compare. A machine with one core shares it.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SHARED = "shared"


def _threads(pid: int) -> list[int]:
    """Every thread of `pid`: affinity is per thread (a new thread takes its creator's)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return [pid]


def _pin(pid: int, cpus: set[int]) -> None:
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def apart(server_pid: int, harness_pids: list[int]) -> Iterator[str]:
    """`server_pid` on the last usable core; this process and `harness_pids` on the others.
    Yields how the cores were split (for the results); afterwards every one of them may use
    every core again."""
    if not _can_split():
        yield SHARED
        return
    usable = sorted(os.sched_getaffinity(0))
    server, rest = {usable[-1]}, set(usable[:-1])
    harness = [os.getpid(), *harness_pids]
    _pin(server_pid, server)
    for pid in harness:
        _pin(pid, rest)
    try:
        yield f"server on core {usable[-1]}, bench and emulator on {sorted(rest)}"
    finally:
        for pid in [server_pid, *harness]:
            _pin(pid, set(usable))


def _can_split() -> bool:
    """Linux (per-thread affinity, /proc) with two usable cores or more, unless told not to."""
    if os.environ.get("BENCH_CORES") == SHARED or not hasattr(os, "sched_setaffinity"):
        return False
    return len(os.sched_getaffinity(0)) >= 2 and Path("/proc/self/task").is_dir()
