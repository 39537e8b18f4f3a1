"""`--profile`: py-spy samples fluxhook while a measurement runs, and the top frames are
summarised (`bench/results/profile-<measurement>-run<N>.txt`, next to py-spy's raw stacks).

py-spy samples the thread holding the GIL (`--gil`), so the shares are of fluxhook's Python
CPU time. About half of the stacks come without their callers (resumed coroutines, and the
greenlets SQLAlchemy's async layer runs statements in); each counts by its own first
fluxhook frame, so "by activity" is where the time goes, not where it was called from.

py-spy is not a dependency of fluxhook: `pip install py-spy` into the venv first.
"""

import asyncio
import collections
import contextlib
import contextvars
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# Set by `python -m bench --profile`: where profiles go, and the measurement's name.
TARGET: contextvars.ContextVar[Path | None] = contextvars.ContextVar("profile", default=None)
RATE_HZ = 250
TOP = 25


@contextlib.asynccontextmanager
async def sampling(pid: int, suffix: str = ""):
    """py-spy records `pid` until the block ends; then the summary is written."""
    target = TARGET.get()
    if target is not None and suffix:
        target = target.with_name(target.name + suffix)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if target is None or py_spy is None:
        yield
        return
    raw = target.with_suffix(".raw")
    recorder = _record(py_spy, pid, raw)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        await asyncio.to_thread(recorder.wait, 60)
        if raw.exists():
            target.with_suffix(".txt").write_text(summarise(raw.read_text()))


def _record(py_spy: str, pid: int, raw: Path) -> subprocess.Popen:
    args = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--nolineno"]
    args += ["--gil", "--format", "raw", "--output", str(raw), "--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(collapsed: str) -> str:
    """Top frames by inclusive and by own time, from py-spy's collapsed stacks."""
    activity, inclusive, own = (collections.Counter() for _ in range(3))
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = [_short(f) for f in stack.split(";")], int(count)
        total += n
        activity[_activity(frames)] += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    ours = collections.Counter({f: n for f, n in inclusive.items() if "(service/" in f})
    lines = [f"{total} samples at {RATE_HZ} Hz of the thread holding the GIL", ""]
    lines += _section(
        "by activity (the first fluxhook frame that is not plumbing)", activity, total
    )
    lines += _section("fluxhook's own functions, inclusive", ours, total)
    lines += _section("every frame, inclusive (itself and what it calls)", inclusive, total)
    lines += _section("own time (the frame itself)", own, total)
    return "\n".join(lines)


PLUMBING = ("service/cli.py", "service/__main__.py", "service/runtime.py", "service/logs.py",
            "service/loops/base.py")  # fmt: skip


def _activity(frames: list[str]) -> str:
    """The first fluxhook frame that is not plumbing. py-spy catches about half of the
    samples without their callers (a resumed coroutine's frames, a greenlet's): those count
    by their own first fluxhook frame too, and without one, by what they are."""
    if any("Thread._bootstrap" in frame for frame in frames):
        return "database driver threads (aiosqlite)"
    for frame in frames:
        if "(service/" in frame and not any(p in frame for p in PLUMBING):
            return frame
    if any("run_serve (service/cli.py)" in frame for frame in frames):
        return "server and event loop (hypercorn, starlette, asyncio; no fluxhook frame)"
    if any("(sqlalchemy/" in frame or "(sqlmodel/" in frame for frame in frames):
        return "SQLAlchemy in greenlets, caught without the fluxhook frame that called it"
    return "caught without its callers, no fluxhook frame (server, event loop, drivers)"


def _section(title: str, counts: collections.Counter, total: int) -> list[str]:
    rows = [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counts.most_common(TOP)]
    return [f"{title}:", *rows, ""]


def _short(frame: str) -> str:
    """`fn (/…/site-packages/pkg/mod.py)` → `fn (pkg/mod.py)`; fluxhook's own files keep
    their `service/…` path."""
    return re.sub(r"\(.*?(site-packages/|/python3\.\d+/|/(?=service/))", "(", frame)
