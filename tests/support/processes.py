"""fluxhook as a separate OS process (`python -m service …`), for crash and multi-process tests."""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx

from service.server import base_url, listening_socket
from tests.support.stack import TEST_SECRET


def free_port() -> int:
    sock = listening_socket()
    port = int(base_url(sock).rsplit(":", 1)[1])
    sock.close()
    return port


def fluxhook_env(database_url: str, emulator_url: str, port: int, **extra) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SECRET_KEY": TEST_SECRET,
        "BFL_API_KEY": "test-bfl-key",
        "BFL_API_URL": emulator_url,
        "ALLOW_PRIVATE_TARGETS": "true",
        "LOG_FORMAT": "json",
        "RECONCILE_INTERVAL_S": "0.5",
        "BFL_TIMEOUT_S": "5",
    }
    env.update({key: str(value) for key, value in extra.items()})
    return env


def cli(*args: str, env: dict) -> str:
    """Run a `fluxhook` verb to completion; its stdout."""
    done = subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout


class Process:
    def __init__(self, env: dict, log: Path, verb: str = "serve") -> None:
        self.env, self.log_path = env, log
        self.url = env["PUBLIC_URL"]
        self._log = log.open("ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "service", verb], env=env,
                                      stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip

    async def ready(self, within_s: float = 30.0) -> None:
        """Wait until it answers /healthz (or fail if it died)."""
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(within_s):
                while True:
                    assert self.popen.poll() is None, self.log_path.read_text()[-3000:]
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{self.url}/healthz")).status_code == 200:
                            return
                    await anyio.sleep(0.05)

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()

    def terminate(self, within_s: float = 30.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(within_s)
        self._log.close()
        return code

    def logs(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def cleanup(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            if process.popen.poll() is None:
                process.kill()


@contextlib.asynccontextmanager
async def fluxhook_process(env: dict, log: Path, verb: str = "serve") -> AsyncIterator[Process]:
    process = Process(env, log, verb)
    with cleanup(process):
        if verb == "serve":
            await process.ready()
        yield process
