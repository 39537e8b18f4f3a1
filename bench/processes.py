"""Child processes on loopback: start, wait until they answer, sample their memory, stop.

Every server the bench measures is its own OS process (`python -m service serve`, `python -m
service emulator`, `python -m bench.bare`), started with this interpreter, its output kept in a
log file in the bench's work directory so a failure can be read afterwards.
"""

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

START_TIMEOUT_S = 60.0  # a PaaS gives the web process 60 s to bind $PORT; so do we
STOP_TIMEOUT_S = 10.0  # the bench does not measure shutdown: a backlog is cut short
RSS_EVERY_S = 0.1


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args: list[str], env: dict[str, str], log: Path) -> str:
    """Run a command to completion; its output, or RuntimeError with the log's path."""
    with log.open("ab") as out:
        done = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=out, check=False)
    out_text = done.stdout.decode()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}); see {log}")
    return out_text


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start; see {self.log}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(self.url + path)).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {path} in {START_TIMEOUT_S} s")

    async def wait_logged(self, line: str) -> None:
        """Until the process has written `line` to its log (one that serves no HTTP)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            if line in self.log.read_text(errors="replace"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not log {line!r} in {START_TIMEOUT_S} s")

    async def stop(self) -> None:
        """SIGTERM (what a PaaS sends), then SIGKILL if it has not exited in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.popen.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            await asyncio.to_thread(self.popen.wait)


def spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`python args…` in the background, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def start(name: str, args: list[str], env: dict, workdir: Path, port: int, ready: str):
    """Spawn a server and wait until `ready` (a path) answers 200."""
    log = workdir / f"{name}.log"
    process = Process(name, spawn(args, env, log), f"http://127.0.0.1:{port}", log)
    try:
        await process.wait_ready(ready)
    except BaseException:
        await process.stop()
        raise
    return process


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` in MB (VmRSS of /proc/<pid>/status); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (/proc/<pid>/stat); NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessMeter:
    """Samples one process's RSS every 0.1 s while running: peak and latest. Also its CPU
    use since the last `reset()`, in percent of one core."""

    pid: int
    peak: float = 0.0
    last: float = 0.0
    _cpu_from: tuple[float, float] = (0.0, 0.0)
    _task: asyncio.Task | None = field(default=None, repr=False)

    def start(self) -> "ProcessMeter":
        self._task = asyncio.create_task(self._sample())
        return self

    def read(self) -> float:
        value = rss_mb(self.pid)
        if value == value:  # not NaN
            self.last, self.peak = value, max(self.peak, value)
        return value

    def reset(self) -> None:
        """Start a new peak from the current value (a new load phase)."""
        self.peak = 0.0
        self.read()
        self._cpu_from = (time.monotonic(), cpu_seconds(self.pid))

    async def _sample(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(RSS_EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cpu_percent(self) -> float:
        since, used = self._cpu_from
        elapsed = time.monotonic() - since
        return round(100 * (cpu_seconds(self.pid) - used) / elapsed, 1) if since else math.nan

    def summary(self, prefix: str = "rss") -> dict[str, float]:
        self.read()
        return {
            f"{prefix}_peak_mb": round(self.peak, 1),
            f"{prefix}_end_mb": round(self.last, 1),
            "cpu_percent": self.cpu_percent(),
        }


def child_env(**values: str) -> dict[str, str]:
    """This environment without the variables fluxhook reads, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in FLUXHOOK_VARIABLES}
    env.update(values)
    return env


FLUXHOOK_VARIABLES = {
    "DATABASE_URL",
    "PORT",
    "PUBLIC_URL",
    "SECRET_KEY",
    "BFL_API_KEY",
    "BFL_API_URL",
    "BFL_POLL_HOSTS",
    "BFL_MAX_ACTIVE",
    "RUN_WORKERS",
    "DYNO",
}
