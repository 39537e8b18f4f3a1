"""bench/cores.py: the server under test on a core of its own while a latency row runs."""

import contextlib
import os
import subprocess
import sys

import pytest

from bench import cores

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="per-thread CPU affinity is Linux's"
)
usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
# A stand-in server with two threads (affinity is per thread), ready once it says so.
SERVER = (
    "import sys, threading; threading.Thread(target=sys.stdin.read).start(); "
    "print('ready', flush=True); sys.stdin.read()"
)
HARNESS = "print('ready', flush=True); import sys; sys.stdin.read()"


@contextlib.contextmanager
def _running(code: str):
    args = [sys.executable, "-c", code]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout.readline() == b"ready\n"
            yield child
        finally:
            child.kill()


@pytest.mark.skipif(len(usable) < 2, reason="needs two cores to split")
def test_the_server_gets_the_last_core_and_everything_else_the_rest():
    with _running(SERVER) as server, _running(HARNESS) as harness:
        with cores.apart(server.pid, [harness.pid]) as split:
            assert split.startswith(f"server on core {usable[-1]}")
            for tid in os.listdir(f"/proc/{server.pid}/task"):
                assert os.sched_getaffinity(int(tid)) == {usable[-1]}
            assert os.sched_getaffinity(harness.pid) == set(usable[:-1])
            assert os.sched_getaffinity(0) == set(usable[:-1])
        for pid in (0, server.pid, harness.pid):
            assert os.sched_getaffinity(pid) == set(usable)


def test_shared_on_request_changes_nothing(monkeypatch):
    monkeypatch.setenv("BENCH_CORES", "shared")
    with _running(SERVER) as server, cores.apart(server.pid, []) as split:
        assert split == "shared"
        assert os.sched_getaffinity(server.pid) == set(usable)
        assert os.sched_getaffinity(0) == set(usable)
